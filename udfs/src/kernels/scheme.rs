//! What a `quantize` call asks for: bit width, group size and scheme, validated once; and what
//! each scheme is: its block size, the row lengths it takes, the bytes it stores and its next
//! wider step. Everything above the kernels (SQL arguments, the configuration, the pipeline's
//! strategy and fallback) asks these types instead of knowing the schemes itself, so a new
//! scheme is an arm here and its kernel.

use std::fmt;

use super::block_format::{BlockFormat, Encoder};
use super::error::{KernelError, PACKED_BITS, Result};
use super::gguf::GgufFormat;
use super::kquants::KFormat;
use super::packing::packed_len;

/// The storage schemes `quantize` understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Affine: a scale and an offset (the value of code 0) per group, with a clipping search
    /// and least-squares refinement.
    Asym,
    /// Symmetric: one signed scale per group, codes centred on zero, with the same search.
    Sym,
    /// Affine from the group's plain minimum and maximum (no search).
    AsymMinMax,
    /// Symmetric from the group's largest magnitude (no search).
    SymMinMax,
    /// llama.cpp's legacy block formats (blocks of 32).
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    /// llama.cpp's k-quants (super-blocks of 256 with quantized sub-block scales).
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    /// llama.cpp's non-linear 4-bit grid: blocks of 32, and its 256-value super-block form.
    Iq4Nl,
    Iq4Xs,
}

pub const SCHEME_NAMES: &str = "'asym', 'sym', 'asym_minmax', 'sym_minmax', 'q4_0', 'q4_1', \
     'q5_0', 'q5_1', 'q8_0', 'q2_K', 'q3_K', 'q4_K', 'q5_K', 'q6_K', 'iq4_nl', 'iq4_xs' (a GGUF \
     format may end in ':search', the default, or ':reference')";

impl Scheme {
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name.trim().to_ascii_lowercase().as_str() {
            "asym" | "affine" => Scheme::Asym,
            "sym" | "symmetric" => Scheme::Sym,
            "asym_minmax" => Scheme::AsymMinMax,
            "sym_minmax" => Scheme::SymMinMax,
            "q4_0" => Scheme::Q4_0,
            "q4_1" => Scheme::Q4_1,
            "q5_0" => Scheme::Q5_0,
            "q5_1" => Scheme::Q5_1,
            "q8_0" => Scheme::Q8_0,
            "q2_k" => Scheme::Q2K,
            "q3_k" => Scheme::Q3K,
            "q4_k" => Scheme::Q4K,
            "q5_k" => Scheme::Q5K,
            "q6_k" => Scheme::Q6K,
            "iq4_nl" => Scheme::Iq4Nl,
            "iq4_xs" => Scheme::Iq4Xs,
            _ => {
                return Err(KernelError::UnknownScheme {
                    name: name.to_string(),
                    expected: SCHEME_NAMES,
                });
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Scheme::Asym => "asym",
            Scheme::Sym => "sym",
            Scheme::AsymMinMax => "asym_minmax",
            Scheme::SymMinMax => "sym_minmax",
            Scheme::Q4_0 => "q4_0",
            Scheme::Q4_1 => "q4_1",
            Scheme::Q5_0 => "q5_0",
            Scheme::Q5_1 => "q5_1",
            Scheme::Q8_0 => "q8_0",
            Scheme::Q2K => "q2_K",
            Scheme::Q3K => "q3_K",
            Scheme::Q4K => "q4_K",
            Scheme::Q5K => "q5_K",
            Scheme::Q6K => "q6_K",
            Scheme::Iq4Nl => "iq4_nl",
            Scheme::Iq4Xs => "iq4_xs",
        }
    }

    /// A scheme argument: a name, for a GGUF format optionally followed by `:search` or
    /// `:reference` (its encoder; search when left out).
    pub fn parse_with_encoder(text: &str) -> Result<(Self, Encoder)> {
        let (name, encoder) = match text.split_once(':') {
            Some((name, encoder)) => (name, Some(encoder)),
            None => (text, None),
        };
        let scheme = Scheme::parse(name)?;
        let Some(encoder_text) = encoder else {
            return Ok((scheme, Encoder::default()));
        };
        let encoder = Encoder::parse(encoder_text).ok_or_else(|| KernelError::UnknownEncoder {
            scheme: text.to_string(),
            text: encoder_text.to_string(),
        })?;
        match scheme.gguf() {
            None => Err(KernelError::EncoderNotApplicable {
                scheme: scheme.name(),
                encoder: encoder.name(),
            }),
            Some(format) if !format.has_encoder(encoder) => Err(KernelError::NoEncoder {
                scheme: scheme.name(),
                encoder: encoder.name(),
            }),
            Some(_) => Ok((scheme, encoder)),
        }
    }

    /// The GGUF block format behind this scheme, if it is one.
    pub fn gguf(self) -> Option<BlockFormat> {
        use BlockFormat::{K, Legacy};
        Some(match self {
            Scheme::Q4_0 => Legacy(GgufFormat::Q4_0),
            Scheme::Q4_1 => Legacy(GgufFormat::Q4_1),
            Scheme::Q5_0 => Legacy(GgufFormat::Q5_0),
            Scheme::Q5_1 => Legacy(GgufFormat::Q5_1),
            Scheme::Q8_0 => Legacy(GgufFormat::Q8_0),
            Scheme::Q2K => K(KFormat::Q2K),
            Scheme::Q3K => K(KFormat::Q3K),
            Scheme::Q4K => K(KFormat::Q4K),
            Scheme::Q5K => K(KFormat::Q5K),
            Scheme::Q6K => K(KFormat::Q6K),
            Scheme::Iq4Nl => K(KFormat::Iq4Nl),
            Scheme::Iq4Xs => K(KFormat::Iq4Xs),
            Scheme::Asym | Scheme::Sym | Scheme::AsymMinMax | Scheme::SymMinMax => return None,
        })
    }

    /// The GGUF type id (ggml's `ggml_type`) of a GGUF block scheme; `None` for the affine
    /// schemes, which GGUF has no type for.
    pub fn ggml_type(self) -> Option<u32> {
        self.gguf().map(BlockFormat::ggml_type)
    }

    /// The scheme of a GGUF type id, when it is one of ours.
    pub fn from_ggml_type(id: u32) -> Option<Scheme> {
        SCHEMES.into_iter().find(|s| s.ggml_type() == Some(id))
    }

    /// The format llama.cpp stores a tensor in when its rows are not a whole number of this
    /// format's blocks (`llama-quantize`'s `tensor_type_fallback`, as in llama-cpp-python
    /// 0.3.36's llama.cpp): the k-quants and iq4_xs have a 32-value format of about the same
    /// size; the others none.
    pub fn shape_fallback(self) -> Option<Scheme> {
        match self {
            Scheme::Q2K | Scheme::Q3K => Some(Scheme::Q4_0),
            Scheme::Iq4Xs => Some(Scheme::Iq4Nl),
            Scheme::Q4K => Some(Scheme::Q5_0),
            Scheme::Q5K => Some(Scheme::Q5_1),
            Scheme::Q6K => Some(Scheme::Q8_0),
            _ => None,
        }
    }

    pub fn is_symmetric(self) -> bool {
        matches!(self, Scheme::Sym | Scheme::SymMinMax)
    }

    /// Whether the clipping search and least-squares refinement run.
    pub fn searches(self) -> bool {
        matches!(self, Scheme::Asym | Scheme::Sym)
    }

    /// Values per block for a scheme with a fixed block (GGUF), whatever the group size asked.
    pub fn block_values(self) -> Option<usize> {
        self.gguf().map(|format| format.block_values())
    }
}

/// Every scheme, in the order of [`SCHEME_NAMES`].
pub const SCHEMES: [Scheme; 16] = [
    Scheme::Asym,
    Scheme::Sym,
    Scheme::AsymMinMax,
    Scheme::SymMinMax,
    Scheme::Q4_0,
    Scheme::Q4_1,
    Scheme::Q5_0,
    Scheme::Q5_1,
    Scheme::Q8_0,
    Scheme::Q2K,
    Scheme::Q3K,
    Scheme::Q4K,
    Scheme::Q5K,
    Scheme::Q6K,
    Scheme::Iq4Nl,
    Scheme::Iq4Xs,
];

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Group size: a fixed number of values, or one group spanning the whole row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupSize {
    Fixed(usize),
    Row,
}

pub const MIN_GROUP: i64 = 16;
pub const MAX_GROUP: i64 = 4096;
pub const DEFAULT_GROUP: usize = 64;

impl GroupSize {
    pub fn from_i64(group_size: i64) -> Result<Self> {
        if (MIN_GROUP..=MAX_GROUP).contains(&group_size) {
            Ok(GroupSize::Fixed(group_size as usize))
        } else {
            Err(KernelError::GroupSize { group_size })
        }
    }

    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("row") {
            return Ok(GroupSize::Row);
        }
        match text.parse::<i64>() {
            Ok(n) => GroupSize::from_i64(n),
            Err(_) => Err(KernelError::GroupSizeText {
                text: text.to_string(),
            }),
        }
    }

    /// Values per group for a row of `len` values (never zero).
    pub fn for_row(self, len: usize) -> usize {
        match self {
            GroupSize::Fixed(g) => g,
            GroupSize::Row => len.max(1),
        }
    }
}

/// `64` or `row`: the text [`GroupSize::parse`] reads back.
impl fmt::Display for GroupSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GroupSize::Fixed(g) => write!(f, "{g}"),
            GroupSize::Row => f.write_str("row"),
        }
    }
}

/// A validated request: what `quantize(weights, bits, group_size, scheme)` means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QuantSpec {
    pub bits: u8,
    pub group: GroupSize,
    pub scheme: Scheme,
    /// How a GGUF block scheme's codes are chosen (the affine schemes ignore it).
    pub encoder: Encoder,
}

pub const SUPPORTED_BITS: [u8; 6] = [2, 3, 4, 5, 6, 8];

impl QuantSpec {
    /// Validates a request. `group` is `None` when the caller left it out: the scheme's
    /// default then applies (64 for affine schemes, the block size for GGUF ones).
    pub fn new(bits: i64, group: Option<GroupSize>, scheme: Scheme) -> Result<Self> {
        if let Some(format) = scheme.gguf() {
            let expected = format.bits();
            if bits != i64::from(expected) {
                return Err(KernelError::SchemeBits {
                    scheme: scheme.name(),
                    bits,
                    expected,
                });
            }
            let block = format.block_values();
            if let Some(group) = group
                && group != GroupSize::Fixed(block)
            {
                return Err(KernelError::SchemeGroup {
                    scheme: scheme.name(),
                    block,
                    group_size: group.to_string(),
                });
            }
            return Ok(QuantSpec {
                bits: expected,
                group: GroupSize::Fixed(block),
                scheme,
                encoder: Encoder::default(),
            });
        }
        let bits = u8::try_from(bits)
            .ok()
            .filter(|b| SUPPORTED_BITS.contains(b))
            .ok_or(KernelError::UnsupportedBits {
                bits,
                expected: PACKED_BITS,
            })?;
        Ok(QuantSpec {
            bits,
            group: group.unwrap_or(GroupSize::Fixed(DEFAULT_GROUP)),
            scheme,
            encoder: Encoder::default(),
        })
    }

    /// This spec with `encoder` choosing its codes; refused where the scheme has no such
    /// encoder (the affine schemes have only their own, the k-quants no reference).
    pub fn with_encoder(self, encoder: Encoder) -> Result<Self> {
        if encoder == self.encoder {
            return Ok(self);
        }
        match self.scheme.gguf() {
            None => Err(KernelError::EncoderNotApplicable {
                scheme: self.scheme.name(),
                encoder: encoder.name(),
            }),
            Some(format) if !format.has_encoder(encoder) => Err(KernelError::NoEncoder {
                scheme: self.scheme.name(),
                encoder: encoder.name(),
            }),
            Some(_) => Ok(QuantSpec { encoder, ..self }),
        }
    }

    /// The same spec in another GGUF scheme, keeping the encoder where that scheme has it.
    fn in_scheme(&self, scheme: Scheme) -> Option<QuantSpec> {
        let format = scheme.gguf()?;
        let spec = QuantSpec::new(i64::from(format.bits()), None, scheme).ok()?;
        Some(spec.with_encoder(self.encoder).unwrap_or(spec))
    }

    /// Whether a row of `len` values can be stored in this scheme: GGUF blocks need whole
    /// blocks; the affine schemes take any length (the last group is shorter).
    pub fn accepts_row(&self, len: usize) -> bool {
        match self.scheme.block_values() {
            Some(block) => len.is_multiple_of(block),
            None => true,
        }
    }

    /// The bytes a row of `len` values takes: packed codes plus every f16 scale and offset
    /// (GGUF rows: their blocks, scales included). What `stored_bytes(q)` answers for a row
    /// quantized with this spec.
    pub fn stored_bytes(&self, len: usize) -> Result<usize> {
        if let Some(format) = self.scheme.gguf() {
            return format.row_bytes(len);
        }
        let groups = len.div_ceil(self.group.for_row(len));
        let params = if self.scheme.is_symmetric() { 1 } else { 2 };
        Ok(packed_len(len, self.bits) + 2 * params * groups)
    }

    /// Bits a weight for rows of `len` values, codes and scales together, exactly.
    pub fn bits_per_weight(&self, len: usize) -> Result<f64> {
        Ok(self.stored_bytes(len)? as f64 * 8.0 / len.max(1) as f64)
    }

    /// The spec for a row of `len` values: this one when it stores such rows; otherwise
    /// (a row the blocks do not divide) llama.cpp's fallback format when that stores it
    /// ([`Scheme::shape_fallback`]: q4_K → q5_0, …), else the affine scheme at the same width
    /// in groups of 32, which stores any length.
    pub fn for_row(&self, len: usize) -> QuantSpec {
        if self.accepts_row(len) {
            return *self;
        }
        self.for_gguf_row(len).unwrap_or(QuantSpec {
            bits: self.bits,
            group: GroupSize::Fixed(self.scheme.block_values().unwrap_or(32).min(32)),
            scheme: Scheme::Asym,
            encoder: Encoder::default(),
        })
    }

    /// The spec a row of `len` values takes in a GGUF file: this one when its blocks divide
    /// the row, else llama.cpp's fallback format when its blocks do; `None` when neither does,
    /// or for an affine scheme (llama.cpp then stores the tensor in F16).
    pub fn for_gguf_row(&self, len: usize) -> Option<QuantSpec> {
        self.scheme.gguf()?;
        if self.accepts_row(len) {
            return Some(*self);
        }
        let fallback = self.in_scheme(self.scheme.shape_fallback()?)?;
        fallback.accepts_row(len).then_some(fallback)
    }

    /// The spec for tensors that need `bits` (sensitive layers): the same scheme and group at
    /// that width; GGUF formats have fixed widths, so they take the widest GGUF format, q8_0.
    pub fn at_width(&self, bits: u8) -> Result<QuantSpec> {
        match self.scheme.gguf() {
            Some(_) => Ok(self.in_scheme(Scheme::Q8_0).expect("q8_0 is a GGUF scheme")),
            None => QuantSpec::new(i64::from(bits), Some(self.group), self.scheme),
        }
    }

    /// The next wider step, for a tensor whose quality falls short; `None` at the widest. The
    /// affine schemes keep their group and go 2 or 3 → 4 → 8 bits; the GGUF formats keep
    /// their block size where they can: q4_0 → q5_0 → q8_0, q4_1 → q5_1 → q8_0, iq4_nl →
    /// q5_0, and q2_K → q3_K → q4_K → q5_K → q6_K → q8_0 with iq4_xs → q5_K.
    pub fn wider(&self) -> Option<QuantSpec> {
        let next = match self.scheme {
            Scheme::Q4_0 | Scheme::Iq4Nl => Scheme::Q5_0,
            Scheme::Q4_1 => Scheme::Q5_1,
            Scheme::Q5_0 | Scheme::Q5_1 | Scheme::Q6K => Scheme::Q8_0,
            Scheme::Q2K => Scheme::Q3K,
            Scheme::Q3K => Scheme::Q4K,
            Scheme::Q4K | Scheme::Iq4Xs => Scheme::Q5K,
            Scheme::Q5K => Scheme::Q6K,
            Scheme::Q8_0 => return None,
            Scheme::Asym | Scheme::Sym | Scheme::AsymMinMax | Scheme::SymMinMax => {
                let bits = match self.bits {
                    2 | 3 => 4,
                    4..=6 => 8,
                    _ => return None,
                };
                return QuantSpec::new(bits, Some(self.group), self.scheme).ok();
            }
        };
        self.in_scheme(next)
    }
}

/// `4-bit asym g64`, for reports.
impl fmt::Display for QuantSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.encoder {
            Encoder::Search => write!(f, "{}-bit {} g{}", self.bits, self.scheme, self.group),
            encoder => write!(
                f,
                "{}-bit {}:{} g{}",
                self.bits,
                self.scheme,
                encoder.name(),
                self.group
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_scheme_name_back() {
        for scheme in SCHEMES {
            let name = scheme.name();
            assert!(SCHEME_NAMES.contains(&format!("'{name}'")), "{name}");
            assert_eq!(Scheme::parse(name).unwrap(), scheme);
            assert_eq!(Scheme::parse(&name.to_uppercase()).unwrap(), scheme);
            if let Some(id) = scheme.ggml_type() {
                assert_eq!(Scheme::from_ggml_type(id), Some(scheme));
            }
        }
        assert!(matches!(
            Scheme::parse("q3_kk"),
            Err(KernelError::UnknownScheme { .. })
        ));
    }

    #[test]
    fn encoders_follow_the_scheme_name() {
        let parse = Scheme::parse_with_encoder;
        assert_eq!(parse("q4_K").unwrap(), (Scheme::Q4K, Encoder::Search));
        assert_eq!(parse("q4_0").unwrap(), (Scheme::Q4_0, Encoder::Search));
        assert_eq!(
            parse("Q4_0:Reference").unwrap(),
            (Scheme::Q4_0, Encoder::Reference)
        );
        assert_eq!(
            parse("iq4_xs:search").unwrap(),
            (Scheme::Iq4Xs, Encoder::Search)
        );
        let no_reference = parse("q4_K:reference").unwrap_err();
        assert!(matches!(
            no_reference,
            KernelError::NoEncoder { scheme: "q4_K", .. }
        ));
        assert!(no_reference.to_string().contains("'q4_K' alone uses ours"));
        assert!(matches!(
            parse("asym:reference"),
            Err(KernelError::EncoderNotApplicable { scheme: "asym", .. })
        ));
        assert!(matches!(
            parse("q4_0:best"),
            Err(KernelError::UnknownEncoder { .. })
        ));
        let reference = spec(4, None, Scheme::Q4_0)
            .with_encoder(Encoder::Reference)
            .unwrap();
        assert_eq!(reference.to_string(), "4-bit q4_0:reference g32");
        // Sensitive layers and fallbacks keep the encoder where the new scheme has it.
        assert_eq!(reference.at_width(8).unwrap().encoder, Encoder::Reference);
        assert_eq!(reference.wider().unwrap().encoder, Encoder::Reference);
    }

    #[test]
    fn super_block_schemes_take_their_width_and_block() {
        let q4k = spec(4, None, Scheme::Q4K);
        assert_eq!(q4k.group, GroupSize::Fixed(256));
        assert_eq!(q4k.to_string(), "4-bit q4_K g256");
        assert_eq!(
            QuantSpec::new(4, Some(GroupSize::Fixed(64)), Scheme::Q4K),
            Err(KernelError::SchemeGroup {
                scheme: "q4_K",
                block: 256,
                group_size: "64".into()
            })
        );
        // 'row' is named as written, not as a number.
        let row = QuantSpec::new(4, Some(GroupSize::Row), Scheme::Q4K).unwrap_err();
        assert_eq!(
            row.to_string(),
            "scheme q4_K uses blocks of 256 values, but group size row was asked for"
        );
        assert!(matches!(
            QuantSpec::new(4, None, Scheme::Q6K),
            Err(KernelError::SchemeBits { expected: 6, .. })
        ));
        for (scheme, bits, bytes) in [
            (Scheme::Q2K, 2, 84),
            (Scheme::Q3K, 3, 110),
            (Scheme::Q4K, 4, 144),
            (Scheme::Q5K, 5, 176),
            (Scheme::Q6K, 6, 210),
            (Scheme::Iq4Xs, 4, 136),
        ] {
            assert_eq!(
                spec(bits, None, scheme).stored_bytes(512).unwrap(),
                2 * bytes
            );
        }
        assert_eq!(
            spec(4, None, Scheme::Iq4Nl).bits_per_weight(64).unwrap(),
            4.5
        );
    }

    /// llama.cpp's shape fallbacks: rows the super-block does not divide take a 32-value
    /// format; rows neither divides take F16 in GGUF and affine in Parquet.
    #[test]
    fn rows_super_blocks_do_not_divide_take_llama_cpp_fallbacks() {
        let cases = [
            (Scheme::Q2K, 2, Some(Scheme::Q4_0)),
            (Scheme::Q3K, 3, Some(Scheme::Q4_0)),
            (Scheme::Q4K, 4, Some(Scheme::Q5_0)),
            (Scheme::Q5K, 5, Some(Scheme::Q5_1)),
            (Scheme::Q6K, 6, Some(Scheme::Q8_0)),
            (Scheme::Iq4Xs, 4, Some(Scheme::Iq4Nl)),
        ];
        for (scheme, bits, fallback) in cases {
            let s = spec(bits, None, scheme);
            assert_eq!(s.for_gguf_row(512), Some(s));
            let f = s.for_gguf_row(384).map(|f| f.scheme);
            assert_eq!(f, fallback, "{scheme}");
            assert_eq!(s.for_row(384).scheme, fallback.unwrap());
            assert_eq!(s.for_gguf_row(100), None);
            assert_eq!(s.for_row(100), spec(bits, Some(32), Scheme::Asym));
        }
        assert_eq!(spec(4, None, Scheme::Q4_0).for_gguf_row(48), None);
        assert_eq!(spec(4, Some(64), Scheme::Asym).for_gguf_row(64), None);
        assert_eq!(Scheme::Asym.ggml_type(), None);
        assert_eq!(Scheme::Q4K.ggml_type(), Some(12));
    }

    #[test]
    fn gguf_ladders_keep_their_block_family() {
        let up = |bits, scheme| spec(bits, None, scheme).wider().map(|s| s.scheme);
        assert_eq!(up(2, Scheme::Q2K), Some(Scheme::Q3K));
        assert_eq!(up(3, Scheme::Q3K), Some(Scheme::Q4K));
        assert_eq!(up(4, Scheme::Q4K), Some(Scheme::Q5K));
        assert_eq!(up(4, Scheme::Iq4Xs), Some(Scheme::Q5K));
        assert_eq!(up(5, Scheme::Q5K), Some(Scheme::Q6K));
        assert_eq!(up(6, Scheme::Q6K), Some(Scheme::Q8_0));
        assert_eq!(up(4, Scheme::Iq4Nl), Some(Scheme::Q5_0));
        assert_eq!(
            spec(4, None, Scheme::Q4K).at_width(8).unwrap().scheme,
            Scheme::Q8_0
        );
    }

    #[test]
    fn validates_bits_and_groups() {
        assert!(QuantSpec::new(4, None, Scheme::Asym).is_ok());
        assert!(matches!(
            QuantSpec::new(7, None, Scheme::Asym),
            Err(KernelError::UnsupportedBits { bits: 7, .. })
        ));
        assert!(matches!(
            QuantSpec::new(4, None, Scheme::Q8_0),
            Err(KernelError::SchemeBits { .. })
        ));
        assert!(matches!(
            QuantSpec::new(4, Some(GroupSize::Fixed(64)), Scheme::Q4_0),
            Err(KernelError::SchemeGroup { .. })
        ));
        assert_eq!(
            QuantSpec::new(8, None, Scheme::Q8_0).unwrap().group,
            GroupSize::Fixed(32)
        );
        assert!(GroupSize::from_i64(0).is_err());
        assert!(GroupSize::from_i64(-64).is_err());
        assert!(GroupSize::from_i64(8192).is_err());
        assert_eq!(GroupSize::parse("ROW").unwrap(), GroupSize::Row);
    }

    #[test]
    fn group_sizes_print_what_parses_back() {
        for g in [GroupSize::Fixed(16), GroupSize::Fixed(4096), GroupSize::Row] {
            assert_eq!(GroupSize::parse(&g.to_string()).unwrap(), g);
        }
    }

    fn spec(bits: i64, group: Option<usize>, scheme: Scheme) -> QuantSpec {
        QuantSpec::new(bits, group.map(GroupSize::Fixed), scheme).unwrap()
    }

    #[test]
    fn rows_blocks_do_not_divide_take_affine_at_the_same_width() {
        let q4 = spec(4, None, Scheme::Q4_0);
        assert_eq!(q4.for_row(64), q4);
        assert_eq!(q4.for_row(48), spec(4, Some(32), Scheme::Asym));
        let q8 = spec(8, None, Scheme::Q8_0);
        assert_eq!(q8.for_row(33), spec(8, Some(32), Scheme::Asym));
        let asym = spec(3, Some(64), Scheme::Asym);
        assert_eq!(asym.for_row(7), asym);
    }

    #[test]
    fn sensitive_widths_keep_the_scheme_or_take_the_widest_gguf_format() {
        let asym = spec(4, Some(128), Scheme::Sym);
        assert_eq!(asym.at_width(8).unwrap(), spec(8, Some(128), Scheme::Sym));
        assert_eq!(
            spec(4, None, Scheme::Q4_1).at_width(6).unwrap(),
            spec(8, None, Scheme::Q8_0)
        );
        assert!(matches!(
            asym.at_width(7),
            Err(KernelError::UnsupportedBits { bits: 7, .. })
        ));
    }

    #[test]
    fn fallback_ladder() {
        let asym = |bits| spec(bits, Some(64), Scheme::Asym);
        assert_eq!(asym(2).wider(), Some(asym(4)));
        assert_eq!(asym(3).wider(), Some(asym(4)));
        assert_eq!(
            spec(4, Some(64), Scheme::Sym).wider(),
            Some(spec(8, Some(64), Scheme::Sym))
        );
        assert_eq!(asym(8).wider(), None);
        assert_eq!(
            spec(4, None, Scheme::Q4_0).wider(),
            Some(spec(5, None, Scheme::Q5_0))
        );
        assert_eq!(
            spec(4, None, Scheme::Q4_1).wider(),
            Some(spec(5, None, Scheme::Q5_1))
        );
        assert_eq!(
            spec(5, None, Scheme::Q5_1).wider(),
            Some(spec(8, None, Scheme::Q8_0))
        );
        assert_eq!(spec(8, None, Scheme::Q8_0).wider(), None);
        assert_eq!(asym(4).to_string(), "4-bit asym g64");
    }

    #[test]
    fn row_lengths_and_sizes() {
        let q4 = spec(4, None, Scheme::Q4_0);
        assert!(q4.accepts_row(4096) && !q4.accepts_row(100));
        assert_eq!(q4.stored_bytes(64).unwrap(), 36);
        assert_eq!(q4.bits_per_weight(4096).unwrap(), 4.5);
        assert!(q4.stored_bytes(100).is_err());
        let asym = spec(4, Some(64), Scheme::Asym);
        assert!(asym.accepts_row(100));
        // 100 values: 50 bytes of codes, two groups of a scale and an offset.
        assert_eq!(asym.stored_bytes(100).unwrap(), 50 + 8);
        assert_eq!(asym.bits_per_weight(4096).unwrap(), 4.5);
        assert_eq!(
            spec(4, Some(64), Scheme::Sym)
                .bits_per_weight(4096)
                .unwrap(),
            4.25
        );
        assert_eq!(
            spec(8, None, Scheme::Q8_0).bits_per_weight(32).unwrap(),
            8.5
        );
    }
}
