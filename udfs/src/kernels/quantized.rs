//! One entry point over every scheme: a row in, its stored form out, and back.

use half::f16;

use super::affine::{self, AffineOutput};
use super::error::{KernelError, Result, check_finite};
use super::gguf;
use super::packing;
use super::scheme::{QuantSpec, Scheme};

/// A quantized row as stored: packed codes (or GGUF blocks) and per-group parameters.
#[derive(Debug, Default, Clone)]
pub struct QuantizedRow {
    pub codes: Vec<u8>,
    pub scales: Vec<f16>,
    pub offsets: Vec<f16>,
    pub group_size: u32,
}

impl QuantizedRow {
    /// This row as [`dequantize`](Quantizer::dequantize) reads it: `spec` and `len` are what
    /// it was quantized with.
    pub fn view(&self, spec: &QuantSpec, len: usize) -> QuantizedRef<'_> {
        QuantizedRef {
            codes: &self.codes,
            scales: &self.scales,
            offsets: &self.offsets,
            bits: spec.bits,
            group_size: self.group_size,
            len: len as u32,
            scheme: spec.scheme,
        }
    }
}

/// A borrowed view of a stored row, as read back from a table.
#[derive(Debug, Clone, Copy)]
pub struct QuantizedRef<'a> {
    pub codes: &'a [u8],
    pub scales: &'a [f16],
    pub offsets: &'a [f16],
    pub bits: u8,
    pub group_size: u32,
    pub len: u32,
    pub scheme: Scheme,
}

/// Reusable scratch space, so that a loop over rows allocates nothing once warm.
#[derive(Debug, Default)]
pub struct Quantizer {
    affine: AffineOutput,
    unpacked: Vec<u8>,
}

impl Quantizer {
    /// Quantizes `x` as `spec` asks, into `out` (overwritten).
    pub fn quantize(&mut self, x: &[f32], spec: &QuantSpec, out: &mut QuantizedRow) -> Result<()> {
        if u32::try_from(x.len()).is_err() {
            return Err(KernelError::Corrupt(format!(
                "a row of {} values is longer than 2^32 − 1",
                x.len()
            )));
        }
        out.codes.clear();
        out.scales.clear();
        out.offsets.clear();
        if let Some(format) = spec.scheme.gguf() {
            // (The affine kernels refuse non-finite values in their first pass.)
            check_finite(x)?;
            gguf::quantize_row(format, x, &mut out.codes)?;
            out.group_size = gguf::BLOCK as u32;
            return Ok(());
        }
        let group = spec.group.for_row(x.len());
        affine::quantize_row(x, spec.bits, group, spec.scheme, &mut self.affine)?;
        packing::pack(&self.affine.codes, spec.bits, &mut out.codes);
        out.scales.extend_from_slice(&self.affine.scales);
        out.offsets.extend_from_slice(&self.affine.offsets);
        out.group_size = group as u32;
        Ok(())
    }

    /// Rebuilds the values of a stored row into `out` (overwritten), checking every length
    /// first so that a corrupted row is an error, never an out-of-bounds read.
    pub fn dequantize(&mut self, q: &QuantizedRef<'_>, out: &mut Vec<f32>) -> Result<()> {
        let len = q.len as usize;
        if let Some(format) = q.scheme.gguf() {
            if q.bits != format.bits() || q.group_size as usize != gguf::BLOCK {
                return Err(KernelError::Corrupt(format!(
                    "{} stores {}-bit codes in groups of {}, but the value says bits = {}, group_size = {}",
                    format.name(),
                    format.bits(),
                    gguf::BLOCK,
                    q.bits,
                    q.group_size
                )));
            }
            return gguf::dequantize_row(format, q.codes, len, out);
        }
        if !(2..=8).contains(&q.bits) || q.bits == 7 {
            return Err(KernelError::Corrupt(format!(
                "unsupported bit width {}",
                q.bits
            )));
        }
        if q.group_size == 0 && len > 0 {
            return Err(KernelError::Corrupt("group_size is 0".to_string()));
        }
        packing::unpack(q.codes, q.bits, len, &mut self.unpacked)?;
        affine::dequantize_row(
            &self.unpacked,
            q.group_size.max(1) as usize,
            q.bits,
            q.scheme.is_symmetric(),
            q.scales,
            q.offsets,
            out,
        )
    }
}

/// Bytes a stored row takes: codes plus every scale and offset (2 bytes each).
pub fn stored_bytes(codes: usize, scales: usize, offsets: usize) -> usize {
    codes + 2 * (scales + offsets)
}
