//! What the block decoders share (the k-quants' and the i-quants'): a row's byte count, the
//! loop over its blocks and the readers of a block's fields.

use half::f16;

use super::error::{KernelError, Result};

/// Bytes for a row of `len` values of `format`, which must be a whole number of its blocks.
/// (Every block is smaller in bytes than in values, so this cannot overflow.)
pub fn row_bytes(
    format: &'static str,
    len: usize,
    block_values: usize,
    block_bytes: usize,
) -> Result<usize> {
    if !len.is_multiple_of(block_values) {
        return Err(KernelError::NotBlockMultiple {
            scheme: format,
            len,
            block: block_values,
        });
    }
    Ok(len / block_values * block_bytes)
}

/// The block loop: `bytes` and `out` as arrays of whole blocks (checked by the caller), so
/// each block function sees fixed-size arrays and its loops need no bounds checks.
#[inline(always)]
pub fn decode_blocks<const B: usize, const V: usize>(
    bytes: &[u8],
    out: &mut [f32],
    block: impl Fn(&[u8; B], &mut [f32; V]),
) {
    let (src, _) = bytes.as_chunks::<B>();
    let (dst, _) = out.as_chunks_mut::<V>();
    for (b, y) in src.iter().zip(dst) {
        block(b, y);
    }
}

/// The `N` bytes of `block` from `at`, as an array. The offsets are the layouts' constants
/// (or sub-block arithmetic on them), so the check folds away.
#[inline(always)]
pub fn field<const N: usize>(block: &[u8], at: usize) -> &[u8; N] {
    block[at..]
        .first_chunk()
        .expect("a field lies inside its block")
}

/// The little-endian f16 at `at`, widened to f32 (exact, NaN payloads kept and quieted).
#[inline(always)]
pub fn f16_at(block: &[u8], at: usize) -> f32 {
    f16::from_le_bytes(*field(block, at)).to_f32()
}
