//! What a `quantize` call asks for: bit width, group size and scheme, validated once.

use super::error::{KernelError, PACKED_BITS, Result};

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
}
