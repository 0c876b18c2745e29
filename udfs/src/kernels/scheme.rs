//! What a `quantize` call asks for: bit width, group size and scheme, validated once; and what
//! each scheme is: its block size, the row lengths it takes, the bytes it stores and its next
//! wider step. Everything above the kernels (SQL arguments, the configuration, the pipeline's
//! strategy and fallback) asks these types instead of knowing the schemes itself, so a new
//! scheme is an arm here and its kernel.

use std::fmt;

use super::error::{KernelError, PACKED_BITS, Result};
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
    /// llama.cpp block formats, bit-exact with its reference quantizer.
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
}

pub const SCHEME_NAMES: &str =
    "'asym', 'sym', 'asym_minmax', 'sym_minmax', 'q4_0', 'q4_1', 'q5_0', 'q5_1', 'q8_0'";

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
        }
    }

    /// The GGUF block format behind this scheme, if it is one.
    pub fn gguf(self) -> Option<super::gguf::GgufFormat> {
        use super::gguf::GgufFormat;
        match self {
            Scheme::Q4_0 => Some(GgufFormat::Q4_0),
            Scheme::Q4_1 => Some(GgufFormat::Q4_1),
            Scheme::Q5_0 => Some(GgufFormat::Q5_0),
            Scheme::Q5_1 => Some(GgufFormat::Q5_1),
            Scheme::Q8_0 => Some(GgufFormat::Q8_0),
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
            if let Some(group) = group {
                let group_size = match group {
                    GroupSize::Fixed(g) => g,
                    GroupSize::Row => 0,
                };
                if group_size != block {
                    return Err(KernelError::SchemeGroup {
                        scheme: scheme.name(),
                        block,
                        group_size,
                    });
                }
            }
            return Ok(QuantSpec {
                bits: expected,
                group: GroupSize::Fixed(block),
                scheme,
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
        })
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

    /// The spec for a row of `len` values: this one when it stores such rows, otherwise
    /// (a row GGUF blocks do not divide) the affine scheme at the same width in groups of the
    /// block size, which stores any length.
    pub fn for_row(&self, len: usize) -> QuantSpec {
        match self.scheme.block_values() {
            Some(block) if !self.accepts_row(len) => QuantSpec {
                bits: self.bits,
                group: GroupSize::Fixed(block),
                scheme: Scheme::Asym,
            },
            _ => *self,
        }
    }

    /// The spec for tensors that need `bits` (sensitive layers): the same scheme and group at
    /// that width; GGUF formats have fixed widths, so they take the widest GGUF format, q8_0.
    pub fn at_width(&self, bits: u8) -> Result<QuantSpec> {
        match self.scheme.gguf() {
            Some(_) => QuantSpec::new(8, None, Scheme::Q8_0),
            None => QuantSpec::new(i64::from(bits), Some(self.group), self.scheme),
        }
    }

    /// The next wider step, for a tensor whose quality falls short; `None` at the widest. The
    /// affine schemes keep their group and go 2 or 3 → 4 → 8 bits; the GGUF formats go q4_0 →
    /// q5_0 → q8_0 and q4_1 → q5_1 → q8_0.
    pub fn wider(&self) -> Option<QuantSpec> {
        let (bits, scheme) = match self.scheme {
            Scheme::Q4_0 => (5, Scheme::Q5_0),
            Scheme::Q4_1 => (5, Scheme::Q5_1),
            Scheme::Q5_0 | Scheme::Q5_1 => (8, Scheme::Q8_0),
            Scheme::Q8_0 => return None,
            Scheme::Asym | Scheme::Sym | Scheme::AsymMinMax | Scheme::SymMinMax => {
                match self.bits {
                    2 | 3 => (4, self.scheme),
                    4..=6 => (8, self.scheme),
                    _ => return None,
                }
            }
        };
        QuantSpec::new(i64::from(bits), Some(self.group), scheme)
            .or_else(|_| QuantSpec::new(i64::from(bits), None, scheme))
            .ok()
    }
}

/// `4-bit asym g64`, for reports.
impl fmt::Display for QuantSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-bit {} g{}", self.bits, self.scheme, self.group)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_scheme_name_back() {
        for name in SCHEME_NAMES.split(", ") {
            let name = name.trim_matches('\'');
            assert_eq!(Scheme::parse(name).unwrap().name(), name);
        }
        assert!(matches!(
            Scheme::parse("q3_k"),
            Err(KernelError::UnknownScheme { .. })
        ));
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
