//! llama.cpp's block formats as one type: the legacy ones ([`GgufFormat`]: q4_0 … q8_0,
//! blocks of 32) and the k-quants and IQ4 formats ([`KFormat`]). What a caller needs of a
//! format — its name, GGUF type id, sizes, decoder and encoders — without knowing which family
//! it is from.

use super::block_search::{BlockSearch, Weighting};
use super::error::{KernelError, Result};
use super::gguf::{self, GgufFormat};
use super::kquants::{self, KFormat};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockFormat {
    Legacy(GgufFormat),
    K(KFormat),
}

/// How a block format's codes are chosen: the layout is fixed, the encoder is a choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Encoder {
    /// Ours: the weighted least-squares search of [`super::block_search`].
    #[default]
    Search,
    /// llama.cpp's reference quantizer without an importance matrix, bit for bit (as
    /// `gguf.quants.quantize` mirrors it); the legacy formats only.
    Reference,
}

impl Encoder {
    pub fn name(self) -> &'static str {
        match self {
            Encoder::Search => "search",
            Encoder::Reference => "reference",
        }
    }

    pub fn parse(text: &str) -> Option<Encoder> {
        match text.trim().to_ascii_lowercase().as_str() {
            "search" => Some(Encoder::Search),
            "reference" | "ref" => Some(Encoder::Reference),
            _ => None,
        }
    }
}

impl std::fmt::Display for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl BlockFormat {
    pub fn name(self) -> &'static str {
        match self {
            BlockFormat::Legacy(f) => f.name(),
            BlockFormat::K(f) => f.name(),
        }
    }

    /// The format's id in GGUF files (ggml's `ggml_type`).
    pub fn ggml_type(self) -> u32 {
        match self {
            BlockFormat::Legacy(f) => f.ggml_type(),
            BlockFormat::K(f) => f.ggml_type(),
        }
    }

    pub fn from_ggml_type(id: u32) -> Option<BlockFormat> {
        GgufFormat::from_ggml_type(id)
            .map(BlockFormat::Legacy)
            .or_else(|| KFormat::from_ggml_type(id).map(BlockFormat::K))
    }

    /// The nominal code width, what `quantize`'s `bits` must say for it.
    pub fn bits(self) -> u8 {
        match self {
            BlockFormat::Legacy(f) => f.bits(),
            BlockFormat::K(f) => match f {
                KFormat::Q2K => 2,
                KFormat::Q3K => 3,
                KFormat::Q4K | KFormat::Iq4Nl | KFormat::Iq4Xs => 4,
                KFormat::Q5K => 5,
                KFormat::Q6K => 6,
            },
        }
    }

    pub fn block_values(self) -> usize {
        match self {
            BlockFormat::Legacy(f) => f.block_values(),
            BlockFormat::K(f) => f.block_values(),
        }
    }

    pub fn block_bytes(self) -> usize {
        match self {
            BlockFormat::Legacy(f) => f.block_bytes(),
            BlockFormat::K(f) => f.block_bytes(),
        }
    }

    /// Bytes for a row of `len` values (which must be a whole number of blocks).
    pub fn row_bytes(self, len: usize) -> Result<usize> {
        match self {
            BlockFormat::Legacy(f) => f.row_bytes(len),
            BlockFormat::K(f) => f.row_bytes(len),
        }
    }

    /// Whether `encoder` is available for this format.
    pub fn has_encoder(self, encoder: Encoder) -> bool {
        match encoder {
            Encoder::Search => true,
            Encoder::Reference => matches!(self, BlockFormat::Legacy(_)),
        }
    }

    /// Byte offsets of a block's f16 super-scales: `d`, and `dmin` or `m` where it has one.
    fn param_offsets(self) -> &'static [usize] {
        match self {
            BlockFormat::Legacy(GgufFormat::Q4_1 | GgufFormat::Q5_1) => &[0, 2],
            BlockFormat::Legacy(_) => &[0],
            BlockFormat::K(f) => match f {
                KFormat::Q2K => &[80, 82],
                KFormat::Q3K => &[108],
                KFormat::Q4K | KFormat::Q5K => &[0, 2],
                KFormat::Q6K => &[208],
                KFormat::Iq4Nl | KFormat::Iq4Xs => &[0],
            },
        }
    }

    /// The first block of `bytes` (whole blocks) whose f16 scale or minimum is NaN or
    /// infinite, with that value: what a stored row must not hold (it would decode to NaN).
    pub fn non_finite_param(self, bytes: &[u8]) -> Option<(usize, f32)> {
        const EXPONENT: u16 = 0x7c00;
        let offsets = self.param_offsets();
        for (block, src) in bytes.chunks_exact(self.block_bytes()).enumerate() {
            for &at in offsets {
                let bits = u16::from_le_bytes([src[at], src[at + 1]]);
                if bits & EXPONENT == EXPONENT {
                    return Some((block, half::f16::from_bits(bits).to_f32()));
                }
            }
        }
        None
    }

    /// Decodes `bytes` (whole blocks for `len` values) into `out`, which is cleared first.
    pub fn dequantize_row(self, bytes: &[u8], len: usize, out: &mut Vec<f32>) -> Result<()> {
        match self {
            BlockFormat::Legacy(f) => gguf::dequantize_row(f, bytes, len, out),
            BlockFormat::K(f) => kquants::dequantize_row(f, bytes, len, out),
        }
    }
}

/// Encoders' scratch space, reused across rows.
#[derive(Debug, Default)]
pub struct BlockEncoder {
    search: BlockSearch,
}

impl BlockEncoder {
    /// Appends the blocks of `row` (finite values, whole blocks) to `out`. A block whose f16
    /// scale cannot hold what it needs is refused, naming the block, and `out` is left as it
    /// was.
    /// `importance`, when given, weighs each value's squared error in the search (one finite
    /// weight ≥ 0 per value); the reference encoders take none.
    pub fn quantize_row(
        &mut self,
        format: BlockFormat,
        encoder: Encoder,
        row: &[f32],
        importance: Option<&[f32]>,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        if importance.is_some() && encoder == Encoder::Reference {
            return Err(KernelError::ImportanceNotApplicable {
                scheme: format.name(),
                encoder: encoder.name(),
            });
        }
        match (encoder, format) {
            (Encoder::Reference, BlockFormat::Legacy(f)) => gguf::quantize_row(f, row, out),
            (Encoder::Reference, BlockFormat::K(f)) => Err(KernelError::NoEncoder {
                scheme: f.name(),
                encoder: encoder.name(),
            }),
            (Encoder::Search, _) => {
                self.search
                    .quantize_row(format, row, importance, Weighting::default(), out)
            }
        }
    }
}
