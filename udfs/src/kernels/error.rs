//! The kernels' error type. The SQL layer adds the row and argument names.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Error)]
pub enum KernelError {
    /// `expected` says which widths the refusing function takes: the packed schemes
    /// ([`PACKED_BITS`]) or the grid of codes that is never packed ([`GRID_BITS`]).
    #[error("unsupported bit width {bits}: expected {expected}")]
    UnsupportedBits { bits: i64, expected: &'static str },

    #[error(
        "group size {group_size} out of range: expected 16 to 4096, or 'row' for one group per row"
    )]
    GroupSize { group_size: i64 },

    #[error("group size '{text}' is neither a number nor 'row'")]
    GroupSizeText { text: String },

    #[error("unknown scheme '{name}': expected one of {expected}")]
    UnknownScheme {
        name: String,
        expected: &'static str,
    },

    #[error("scheme {scheme} stores {expected}-bit codes, but bits = {bits} was asked for")]
    SchemeBits {
        scheme: &'static str,
        bits: i64,
        expected: u8,
    },

    #[error(
        "scheme {scheme} uses blocks of {block} values, but group size {group_size} was asked for"
    )]
    SchemeGroup {
        scheme: &'static str,
        block: usize,
        /// As written: a number, or `row`.
        group_size: String,
    },

    #[error(
        "scheme {scheme} has no '{encoder}' encoder here: llama.cpp's reference k-quant \
         encoders are not implemented (gguf-py has none to hold them to); '{scheme}' alone \
         uses ours, the search"
    )]
    NoEncoder {
        scheme: &'static str,
        encoder: &'static str,
    },

    #[error("unknown encoder '{text}' in scheme '{scheme}': expected 'search' or 'reference'")]
    UnknownEncoder { scheme: String, text: String },

    #[error(
        "scheme {scheme} has one encoder: ':{encoder}' applies to the GGUF block formats (the \
         plain min/max form of the affine schemes is asym_minmax or sym_minmax)"
    )]
    EncoderNotApplicable {
        scheme: &'static str,
        encoder: &'static str,
    },

    #[error("row length {len} is not a multiple of the {scheme} block size {block}")]
    NotBlockMultiple {
        scheme: &'static str,
        len: usize,
        block: usize,
    },

    #[error("non-finite value {value} at index {index}")]
    NonFinite { index: usize, value: f32 },

    /// A NaN or infinity in one of two rows being compared.
    #[error("argument '{argument}': non-finite value {value} at index {index}")]
    NonFiniteIn {
        argument: &'static str,
        index: usize,
        value: f32,
    },

    #[error("lists of different lengths: {left} and {right}")]
    LengthMismatch { left: usize, right: usize },

    #[error(
        "importance weights steer the search encoder of the GGUF block formats; scheme \
         {scheme} ({encoder}) takes none"
    )]
    ImportanceNotApplicable {
        scheme: &'static str,
        encoder: &'static str,
    },

    #[error("importance {value} at index {index} is not a finite number ≥ 0")]
    BadImportance { index: usize, value: f32 },

    #[error("group {group} needs a scale or offset of {value:e}, beyond the range of f16 (±65504)")]
    ScaleOverflow { group: usize, value: f32 },

    #[error("corrupt quantized value: {0}")]
    Corrupt(String),

    /// A timestep schedule or spacing that does not make sense (the message says which part).
    #[error("{0}")]
    Schedule(String),
}

/// The widths of the packed schemes (`quantize` and what reads its values): 7 has no packing.
pub const PACKED_BITS: &str = "one of 2, 3, 4, 5, 6 or 8";
/// The widths of functions that model a grid of `2^bits` codes without storing them.
pub const GRID_BITS: &str = "2 to 8";

pub type Result<T, E = KernelError> = std::result::Result<T, E>;

/// Checks that a row of `len` values in a block format holds the `expected` bytes its blocks
/// take (a stored or read row that does not is corrupt).
pub fn check_row_bytes(format: &str, len: usize, expected: usize, got: usize) -> Result<()> {
    if got == expected {
        Ok(())
    } else {
        Err(KernelError::Corrupt(format!(
            "{len} values in {format} need {expected} bytes, found {got}"
        )))
    }
}

/// A number for a message: plain, or in exponent form when plain would be a long run of digits.
pub fn readable(v: f64) -> String {
    if v.is_finite() && v != 0.0 && !(1e-6..1e16).contains(&v.abs()) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

/// Refuses NaN and ±Inf: they would poison a whole group's scale silently.
pub fn check_finite(values: &[f32]) -> Result<()> {
    // A branch-free pass over the exponent bits vectorises; the search below only runs
    // when something is wrong.
    const EXPONENT: u32 = 0x7f80_0000;
    let any_non_finite = values.iter().fold(0u32, |acc, v| {
        acc | u32::from(v.to_bits() & EXPONENT == EXPONENT)
    });
    if any_non_finite == 0 {
        return Ok(());
    }
    let index = values.iter().position(|v| !v.is_finite()).unwrap_or(0);
    Err(KernelError::NonFinite {
        index,
        value: values[index],
    })
}
