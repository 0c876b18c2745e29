//! One entry point over every scheme: a row in, its stored form out, and back.

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::affine::{self, AffineOutput};
use super::block_format::BlockEncoder;
use super::error::{KernelError, PACKED_BITS, Result, check_finite};
use super::metrics::{self, PairSums};
use super::packing;
use super::scheme::{QuantSpec, SUPPORTED_BITS, Scheme};

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

impl QuantizedRef<'_> {
    /// Appends each group's parameters in f32: its scale, its offset (the value of code 0;
    /// for the symmetric schemes, whose code 2^(bits−1) is zero, −scale·2^(bits−1)) and its
    /// zero point, the signed code of the value 0 (see [`zero_point_of`]). GGUF rows keep
    /// their scales inside their blocks and append nothing.
    pub fn append_group_parameters(
        &self,
        scales: &mut Vec<f32>,
        offsets: &mut Vec<f32>,
        zero_points: &mut Vec<i8>,
    ) {
        if self.scheme.gguf().is_some() {
            return;
        }
        let centre = 1i32 << (self.bits - 1);
        let first = scales.len();
        let groups = self.scales.len();
        // Whole slices through F16C where the CPU has it.
        scales.resize(first + groups, 0.0);
        self.scales.convert_to_f32_slice(&mut scales[first..]);
        let first_offset = offsets.len();
        offsets.resize(first_offset + groups, 0.0);
        if self.offsets.is_empty() {
            for (o, &s) in offsets[first_offset..].iter_mut().zip(&scales[first..]) {
                *o = -s * centre as f32;
            }
        } else {
            self.offsets
                .convert_to_f32_slice(&mut offsets[first_offset..]);
        }
        zero_points.extend(
            scales[first..]
                .iter()
                .zip(&offsets[first_offset..])
                .map(|(&s, &o)| zero_point_of(s, o, centre)),
        );
    }
}

/// The zero point of a group: the signed code of the value 0, `round(−offset/scale) − centre`
/// (halves away from zero), saturated to i8; 0 for a zero scale.
pub fn zero_point_of(scale: f32, offset: f32, centre: i32) -> i8 {
    // Beyond ±1000 the result saturates anyway; within, truncation and the fraction are
    // exact, so this is `f32::round` without its libm call, and without branches on the
    // fraction (random data would mispredict them half the time).
    let v = (-offset / scale).clamp(-1000.0, 1000.0);
    let whole = v as i32;
    let fraction = v - whole as f32;
    let rounded = whole + i32::from(fraction >= 0.5) - i32::from(fraction <= -0.5);
    let zero = (rounded - centre).clamp(-128, 127) as i8;
    if scale > 0.0 { zero } else { 0 }
}

/// Values rebuilt at a time when a row is measured against its reconstruction: a multiple of
/// the metrics' summation block (so that the sums add up in the order of a whole-row pass, bit
/// for bit) and of the GGUF block, and small enough (16 KB of f32) to stay in the first-level
/// cache instead of making a second trip through memory.
const PIECE: usize = 4096;

/// Reusable scratch space, so that a loop over rows allocates nothing once warm.
#[derive(Debug, Default)]
pub struct Quantizer {
    affine: AffineOutput,
    blocks: BlockEncoder,
    unpacked: Vec<u8>,
    values: Vec<f32>,
}

impl Quantizer {
    /// Quantizes `x` as `spec` asks, into `out` (overwritten).
    pub fn quantize(&mut self, x: &[f32], spec: &QuantSpec, out: &mut QuantizedRow) -> Result<()> {
        self.quantize_weighted(x, spec, None, out)
    }

    /// [`quantize`](Self::quantize) with per-value importance steering the search (GGUF block
    /// formats with the search encoder only; one finite weight ≥ 0 per value).
    pub fn quantize_weighted(
        &mut self,
        x: &[f32],
        spec: &QuantSpec,
        importance: Option<&[f32]>,
        out: &mut QuantizedRow,
    ) -> Result<()> {
        start_row(x, out)?;
        Self::check_importance(x, spec, importance)?;
        if let Some(format) = spec.scheme.gguf() {
            // (The affine kernels refuse non-finite values in their first pass.)
            check_finite(x)?;
            self.blocks
                .quantize_row(format, spec.encoder, x, importance, &mut out.codes)?;
            out.group_size = format.block_values() as u32;
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

    /// Refuses importance that does not fit the row or the scheme: one finite weight ≥ 0 per
    /// value, for the search encoder of a GGUF block format.
    fn check_importance(x: &[f32], spec: &QuantSpec, importance: Option<&[f32]>) -> Result<()> {
        let Some(imp) = importance else {
            return Ok(());
        };
        if spec.scheme.gguf().is_none()
            || spec.encoder != crate::kernels::block_format::Encoder::Search
        {
            return Err(KernelError::ImportanceNotApplicable {
                scheme: spec.scheme.name(),
                encoder: spec.encoder.name(),
            });
        }
        if imp.len() != x.len() {
            return Err(KernelError::LengthMismatch {
                left: x.len(),
                right: imp.len(),
            });
        }
        if let Some((index, &value)) = imp
            .iter()
            .enumerate()
            .find(|(_, w)| !(w.is_finite() && **w >= 0.0))
        {
            return Err(KernelError::BadImportance { index, value });
        }
        Ok(())
    }

    /// Rebuilds the values of a stored row into `out` (overwritten), checking every length
    /// first so that a corrupted row is an error, never an out-of-bounds read.
    pub fn dequantize(&mut self, q: &QuantizedRef<'_>, out: &mut Vec<f32>) -> Result<()> {
        let len = q.len as usize;
        check_stored(q)?;
        if let Some(format) = q.scheme.gguf() {
            return format.dequantize_row(q.codes, len, out);
        }
        packing::unpack(q.codes, q.bits, len, &mut self.unpacked)?;
        affine::dequantize_row(
            &self.unpacked,
            q.group_size as usize,
            q.bits,
            q.scheme.is_symmetric(),
            q.scales,
            q.offsets,
            out,
        )
    }
}

impl Quantizer {
    /// The sums of [`PairSums::of`]`(x, dequantize(q))`, bit for bit, with the reconstruction
    /// rebuilt a cache-sized piece at a time instead of as a whole row.
    pub fn measure(&mut self, x: &[f32], q: &QuantizedRef<'_>) -> Result<PairSums> {
        let len = q.len as usize;
        if x.len() != len {
            return Err(KernelError::LengthMismatch {
                left: x.len(),
                right: len,
            });
        }
        check_stored(q)?;
        let mut sums = PairSums::default();
        for (piece, xs) in x.chunks(PIECE).enumerate() {
            let start = piece * PIECE;
            if let Some(format) = q.scheme.gguf() {
                let from = start / format.block_values() * format.block_bytes();
                let to = from + format.row_bytes(xs.len())?;
                format.dequantize_row(&q.codes[from..to], xs.len(), &mut self.values)?;
            } else {
                let from = start * usize::from(q.bits) / 8;
                let to = from + packing::packed_len(xs.len(), q.bits);
                packing::unpack(&q.codes[from..to], q.bits, xs.len(), &mut self.unpacked)?;
                affine::decode_codes(
                    &self.unpacked,
                    start,
                    q.group_size as usize,
                    q.bits,
                    q.scheme.is_symmetric(),
                    q.scales,
                    q.offsets,
                    &mut self.values,
                );
            }
            sums.accumulate(xs, &self.values)
                .map_err(|e| shift_error(e, start, 0))?;
        }
        Ok(sums)
    }

    /// [`quantize`](Quantizer::quantize) and [`measure`](Quantizer::measure) in one pass
    /// over `x`: each piece is quantized, rebuilt and compared while it is in cache. `out` is
    /// what `quantize` gives and the sums what `measure` gives, bit for bit.
    pub fn quantize_measured(
        &mut self,
        x: &[f32],
        spec: &QuantSpec,
        out: &mut QuantizedRow,
    ) -> Result<PairSums> {
        self.quantize_measured_weighted(x, spec, None, out)
            .map(|(sums, _)| sums)
    }

    /// [`quantize_measured`](Self::quantize_measured) with per-value importance steering the
    /// search (GGUF block formats only); also returns the importance-weighted squared error
    /// Σ importance·(x − x̂)² when importance is given.
    pub fn quantize_measured_weighted(
        &mut self,
        x: &[f32],
        spec: &QuantSpec,
        importance: Option<&[f32]>,
        out: &mut QuantizedRow,
    ) -> Result<(PairSums, Option<f64>)> {
        start_row(x, out)?;
        Self::check_importance(x, spec, importance)?;
        let mut sums = PairSums::default();
        if let Some(format) = spec.scheme.gguf() {
            out.codes.reserve(format.row_bytes(x.len())?);
            let block = format.block_values();
            out.group_size = block as u32;
            let mut weighted = importance.map(|_| 0.0f64);
            for (piece, xs) in x.chunks(PIECE).enumerate() {
                let start = piece * PIECE;
                let shift = |e| shift_error(e, start, start / block);
                check_finite(xs).map_err(shift)?;
                let imp = importance.map(|w| &w[start..start + xs.len()]);
                let from = out.codes.len();
                self.blocks
                    .quantize_row(format, spec.encoder, xs, imp, &mut out.codes)
                    .map_err(shift)?;
                format.dequantize_row(&out.codes[from..], xs.len(), &mut self.values)?;
                sums.accumulate(xs, &self.values).map_err(shift)?;
                if let (Some(total), Some(imp)) = (weighted.as_mut(), imp) {
                    let piece_sum: f64 = xs
                        .iter()
                        .zip(&self.values)
                        .zip(imp)
                        .map(|((a, b), w)| f64::from(*w) * f64::from(a - b) * f64::from(a - b))
                        .sum();
                    *total += piece_sum;
                }
            }
            return Ok((sums, weighted));
        }
        let group = spec.group.for_row(x.len());
        // Pieces end on group boundaries and on summation blocks; a group too long for a
        // cache-sized piece makes pieces of whole groups.
        let unit = lcm(group, metrics::BLOCK);
        let piece = if unit >= PIECE {
            unit
        } else {
            PIECE / unit * unit
        };
        out.codes.reserve(packing::packed_len(x.len(), spec.bits));
        out.group_size = group as u32;
        for (index, xs) in x.chunks(piece).enumerate() {
            let start = index * piece;
            affine::quantize_row(xs, spec.bits, group, spec.scheme, &mut self.affine)
                .map_err(|e| shift_error(e, start, start / group))?;
            // A piece holds a multiple of 8 codes of any width (but the last): packed pieces
            // join into the packed row.
            packing::pack(&self.affine.codes, spec.bits, &mut out.codes);
            out.scales.extend_from_slice(&self.affine.scales);
            out.offsets.extend_from_slice(&self.affine.offsets);
            affine::decode_codes(
                &self.affine.codes,
                0,
                group,
                spec.bits,
                spec.scheme.is_symmetric(),
                &self.affine.scales,
                &self.affine.offsets,
                &mut self.values,
            );
            sums.accumulate(xs, &self.values)
                .map_err(|e| shift_error(e, start, 0))?;
        }
        Ok((sums, None))
    }
}

/// Appends the codes of an affine or symmetric row to `out` as signed bytes, `code −
/// 2^(bits−1)` (one per value): the value is `offset + (signed + 2^(bits−1))·scale`, or
/// `signed·scale` for the symmetric schemes. GGUF blocks interleave codes and scales and are
/// refused here.
pub fn signed_codes(q: &QuantizedRef<'_>, out: &mut Vec<u8>) -> Result<()> {
    if q.scheme.gguf().is_some() {
        return Err(KernelError::Corrupt(format!(
            "{} blocks hold their codes with their scales; they have no plain codes",
            q.scheme.name()
        )));
    }
    check_stored(q)?;
    let centre = 1u8 << (q.bits - 1);
    let len = q.len as usize;
    out.reserve(len);
    // Piece by piece through a buffer in L1: the shift reads what the unpacking just wrote,
    // and `out` is written once (a buffer of the final size would be zeroed first).
    let mut piece = [0u8; PIECE];
    for start in (0..len).step_by(PIECE) {
        let codes = &mut piece[..PIECE.min(len - start)];
        let from = start * usize::from(q.bits) / 8;
        let to = from + packing::packed_len(codes.len(), q.bits);
        packing::unpack_into(&q.codes[from..to], q.bits, codes);
        for code in codes.iter_mut() {
            *code = code.wrapping_sub(centre);
        }
        out.extend_from_slice(codes);
    }
    Ok(())
}

/// Refuses a row too long for a stored length (u32) and empties `out`.
fn start_row(x: &[f32], out: &mut QuantizedRow) -> Result<()> {
    if u32::try_from(x.len()).is_err() {
        return Err(KernelError::Corrupt(format!(
            "a row of {} values is longer than 2^32 − 1",
            x.len()
        )));
    }
    out.codes.clear();
    out.scales.clear();
    out.offsets.clear();
    Ok(())
}

/// An error found in a piece, with its indices counted from the start of the row.
fn shift_error(error: KernelError, first_value: usize, first_group: usize) -> KernelError {
    match error {
        KernelError::NonFinite { index, value } => KernelError::NonFinite {
            index: index + first_value,
            value,
        },
        KernelError::NonFiniteIn {
            argument,
            index,
            value,
        } => KernelError::NonFiniteIn {
            argument,
            index: index + first_value,
            value,
        },
        KernelError::ScaleOverflow { group, value } => KernelError::ScaleOverflow {
            group: group + first_group,
            value,
        },
        other => other,
    }
}

fn lcm(a: usize, b: usize) -> usize {
    let (mut x, mut y) = (a, b);
    while y != 0 {
        (x, y) = (y, x % y);
    }
    a / x * b
}

/// The one check of a stored row, run before anything reads it (dequantize, measure,
/// signed_codes, and the SQL reader of quantized structs for every function taking one): width,
/// scheme, group size, every length, and the parameters themselves. A corrupted or hand-made
/// value is an error naming what is wrong (and the group), never an out-of-bounds read, an
/// allocation sized by `len` (it is checked against the bytes that are there first) or NaN in
/// the output.
pub fn check_stored(q: &QuantizedRef<'_>) -> Result<()> {
    let len = q.len as usize;
    let corrupt = |message: String| Err(KernelError::Corrupt(message));
    if let Some(format) = q.scheme.gguf() {
        let block = format.block_values();
        if q.bits != format.bits() || q.group_size as usize != block {
            return corrupt(format!(
                "{} stores {}-bit codes in groups of {block}, but the value says bits = {}, group_size = {}",
                format.name(),
                format.bits(),
                q.bits,
                q.group_size
            ));
        }
        if !len.is_multiple_of(block) {
            return corrupt(format!(
                "len = {len} is not a whole number of {} blocks of {block}",
                format.name(),
            ));
        }
        let expected = format.row_bytes(len)?;
        if q.codes.len() != expected {
            return corrupt(format!(
                "{len} values in {} need {expected} bytes, found {}",
                format.name(),
                q.codes.len()
            ));
        }
        if !q.scales.is_empty() || !q.offsets.is_empty() {
            return corrupt(format!(
                "{} keeps its scales in its blocks, but the value also has {} scales and {} offsets",
                format.name(),
                q.scales.len(),
                q.offsets.len()
            ));
        }
        if let Some((block, value)) = format.non_finite_param(q.codes) {
            return corrupt(format!(
                "block {block} has a non-finite scale or minimum: {value}"
            ));
        }
        return Ok(());
    }
    if !SUPPORTED_BITS.contains(&q.bits) {
        return corrupt(format!(
            "bits = {} for scheme {}, expected {PACKED_BITS}",
            q.bits,
            q.scheme.name()
        ));
    }
    if q.group_size == 0 {
        return corrupt("group_size is 0".to_string());
    }
    let needed = packing::packed_len(len, q.bits);
    if q.codes.len() != needed {
        return corrupt(format!(
            "{len} codes of {} bits need {needed} bytes, found {}",
            q.bits,
            q.codes.len()
        ));
    }
    let group = q.group_size as usize;
    let groups = len.div_ceil(group);
    let symmetric = q.scheme.is_symmetric();
    let offsets = if symmetric { 0 } else { groups };
    if q.scales.len() != groups || q.offsets.len() != offsets {
        return corrupt(format!(
            "{len} values in groups of {group} need {groups} scales and {offsets} offsets ({}), found {} scales and {} offsets",
            q.scheme.name(),
            q.scales.len(),
            q.offsets.len()
        ));
    }
    for (what, values) in [("scale", q.scales), ("offset", q.offsets)] {
        if let Some(g) = values.iter().position(|v| !v.is_finite()) {
            return corrupt(format!("the {what} of group {g} is {}", values[g]));
        }
    }
    Ok(())
}

/// Bytes a stored row takes: codes plus every scale and offset (2 bytes each).
pub fn stored_bytes(codes: usize, scales: usize, offsets: usize) -> usize {
    codes + 2 * (scales + offsets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::scheme::GroupSize;

    #[test]
    fn importance_lowers_the_weighted_error_and_ones_change_nothing() {
        let x = row(4096, 5);
        // Every eighth column matters a hundred times more (an imatrix's outlier channels).
        let imp: Vec<f32> = (0..x.len())
            .map(|i| if i % 8 == 0 { 100.0 } else { 1.0 })
            .collect();
        let weighted_error = |q: &QuantizedRow, spec: &QuantSpec| {
            let mut quantizer = Quantizer::default();
            let mut back = Vec::new();
            let r = q.view(spec, x.len());
            quantizer.dequantize(&r, &mut back).unwrap();
            x.iter()
                .zip(&back)
                .zip(&imp)
                .map(|((a, b), w)| f64::from(*w) * f64::from(a - b).powi(2))
                .sum::<f64>()
        };
        for scheme in [Scheme::Q4K, Scheme::Iq4Xs, Scheme::Q3K, Scheme::Q4_0] {
            let bits = i64::from(scheme.gguf().unwrap().bits());
            let spec = QuantSpec::new(bits, None, scheme).unwrap();
            let mut quantizer = Quantizer::default();
            let (mut plain, mut steered, mut ones) = Default::default();
            quantizer.quantize(&x, &spec, &mut plain).unwrap();
            let (_, w) = quantizer
                .quantize_measured_weighted(&x, &spec, Some(&imp), &mut steered)
                .unwrap();
            let w = w.unwrap();
            assert!((w - weighted_error(&steered, &spec)).abs() <= 1e-6 * w);
            assert!(
                w < weighted_error(&plain, &spec),
                "{scheme}: {w} not below {}",
                weighted_error(&plain, &spec)
            );
            let unit = vec![1.0f32; x.len()];
            quantizer
                .quantize_weighted(&x, &spec, Some(&unit), &mut ones)
                .unwrap();
            assert_eq!(ones.codes, plain.codes, "{scheme}");
        }
    }

    #[test]
    fn importance_that_does_not_fit_is_refused() {
        let x = row(256, 1);
        let q4k = QuantSpec::new(4, None, Scheme::Q4K).unwrap();
        let mut q = QuantizedRow::default();
        let mut quantizer = Quantizer::default();
        let short = vec![1.0f32; 255];
        assert_eq!(
            quantizer.quantize_weighted(&x, &q4k, Some(&short), &mut q),
            Err(KernelError::LengthMismatch {
                left: 256,
                right: 255
            })
        );
        let mut bad = vec![1.0f32; 256];
        bad[7] = -1.0;
        assert_eq!(
            quantizer.quantize_weighted(&x, &q4k, Some(&bad), &mut q),
            Err(KernelError::BadImportance {
                index: 7,
                value: -1.0
            })
        );
        let asym = QuantSpec::new(4, None, Scheme::Asym).unwrap();
        let ones = vec![1.0f32; 256];
        assert!(matches!(
            quantizer.quantize_weighted(&x, &asym, Some(&ones), &mut q),
            Err(KernelError::ImportanceNotApplicable { .. })
        ));
        let reference = QuantSpec::new(4, None, Scheme::Q4_0)
            .unwrap()
            .with_encoder(crate::kernels::block_format::Encoder::Reference)
            .unwrap();
        assert!(matches!(
            quantizer.quantize_weighted(&x, &reference, Some(&ones), &mut q),
            Err(KernelError::ImportanceNotApplicable { .. })
        ));
    }

    fn row(len: usize, seed: u32) -> Vec<f32> {
        // A deterministic mix of scales, so that groups differ.
        (0..len)
            .map(|i| {
                let t = (i as f32 + seed as f32 * 0.37) * 0.618;
                t.sin() * (1.0 + (i / 700) as f32 * 0.3) * 0.02
            })
            .collect()
    }

    fn specs() -> Vec<QuantSpec> {
        let fixed = |g| Some(GroupSize::Fixed(g));
        vec![
            QuantSpec::new(4, fixed(64), Scheme::Asym).unwrap(),
            QuantSpec::new(3, fixed(96), Scheme::Asym).unwrap(),
            QuantSpec::new(5, fixed(16), Scheme::Sym).unwrap(),
            QuantSpec::new(2, fixed(4096), Scheme::AsymMinMax).unwrap(),
            QuantSpec::new(6, Some(GroupSize::Row), Scheme::SymMinMax).unwrap(),
            QuantSpec::new(8, fixed(1000), Scheme::Asym).unwrap(),
            QuantSpec::new(4, None, Scheme::Q4_0).unwrap(),
            QuantSpec::new(5, None, Scheme::Q5_1).unwrap(),
            QuantSpec::new(8, None, Scheme::Q8_0).unwrap(),
        ]
    }

    #[test]
    fn the_spec_knows_the_bytes_a_row_stores() {
        let mut quantizer = Quantizer::default();
        for spec in specs() {
            for len in [32, 96, 4096, 12_352] {
                let mut q = QuantizedRow::default();
                quantizer.quantize(&row(len, 3), &spec, &mut q).unwrap();
                assert_eq!(
                    spec.stored_bytes(len).unwrap(),
                    stored_bytes(q.codes.len(), q.scales.len(), q.offsets.len()),
                    "{spec}, {len} values"
                );
            }
        }
    }

    #[test]
    fn quantize_measured_is_quantize_then_measure_bit_for_bit() {
        let mut quantizer = Quantizer::default();
        for spec in specs() {
            // Whole GGUF blocks; one piece, several, and a short last piece.
            for len in [32, 4096, 8992, 20_000, 12_352] {
                let x = row(len, len as u32);
                let mut plain = QuantizedRow::default();
                quantizer.quantize(&x, &spec, &mut plain).unwrap();
                let mut rebuilt = Vec::new();
                quantizer
                    .dequantize(&plain.view(&spec, len), &mut rebuilt)
                    .unwrap();
                let whole = PairSums::of(&x, &rebuilt).unwrap();

                let mut fused = QuantizedRow::default();
                let sums = quantizer.quantize_measured(&x, &spec, &mut fused).unwrap();
                let what = format!("{spec:?}, {len} values");
                assert_eq!(fused.codes, plain.codes, "{what}");
                assert_eq!(fused.scales, plain.scales, "{what}");
                assert_eq!(fused.offsets, plain.offsets, "{what}");
                assert_eq!(fused.group_size, plain.group_size, "{what}");
                assert_eq!(sums, whole, "{what}");
                let measured = quantizer.measure(&x, &plain.view(&spec, len)).unwrap();
                assert_eq!(measured, whole, "{what}");
            }
        }
    }

    #[test]
    fn errors_name_the_place_in_the_whole_row() {
        let mut quantizer = Quantizer::default();
        let mut out = QuantizedRow::default();
        let mut x = row(20_000, 1);
        x[13_001] = f32::NAN;
        for spec in [
            QuantSpec::new(4, Some(GroupSize::Fixed(64)), Scheme::Asym).unwrap(),
            QuantSpec::new(4, None, Scheme::Q4_0).unwrap(),
        ] {
            let err = quantizer.quantize_measured(&x[..19_968], &spec, &mut out);
            assert!(
                matches!(err, Err(KernelError::NonFinite { index: 13_001, .. })),
                "{err:?}"
            );
        }
        let mut big = row(8192, 2);
        big[5000] = 1e8;
        let spec = QuantSpec::new(8, Some(GroupSize::Fixed(64)), Scheme::AsymMinMax).unwrap();
        let err = quantizer.quantize_measured(&big, &spec, &mut out);
        assert!(
            matches!(err, Err(KernelError::ScaleOverflow { group: 78, .. })),
            "{err:?}"
        );
    }

    #[test]
    fn signed_codes_rebuild_the_values() {
        let mut quantizer = Quantizer::default();
        for spec in specs().into_iter().filter(|s| s.scheme.gguf().is_none()) {
            let x = row(9000, 4);
            let mut q = QuantizedRow::default();
            quantizer.quantize(&x, &spec, &mut q).unwrap();
            let view = q.view(&spec, x.len());
            let mut rebuilt = Vec::new();
            quantizer.dequantize(&view, &mut rebuilt).unwrap();
            let mut codes = vec![7u8];
            signed_codes(&view, &mut codes).unwrap();
            // Appended after what was there.
            assert_eq!((codes.len(), codes[0]), (x.len() + 1, 7));
            let codes = &codes[1..];
            let centre = f32::from(1u8 << (spec.bits - 1));
            let group = q.group_size as usize;
            for (i, (&c, &y)) in codes.iter().zip(&rebuilt).enumerate() {
                let d = q.scales[i / group].to_f32();
                let m = if spec.scheme.is_symmetric() {
                    -centre * d
                } else {
                    q.offsets[i / group].to_f32()
                };
                let signed = f32::from(c as i8);
                assert_eq!(m + d * (signed + centre), y, "{spec:?} value {i}");
            }
        }
        let spec = QuantSpec::new(4, None, Scheme::Q4_0).unwrap();
        let x = row(64, 5);
        let mut q = QuantizedRow::default();
        quantizer.quantize(&x, &spec, &mut q).unwrap();
        assert!(signed_codes(&q.view(&spec, 64), &mut Vec::new()).is_err());
    }

    #[test]
    fn measure_refuses_rows_that_do_not_fit() {
        let mut quantizer = Quantizer::default();
        let spec = QuantSpec::new(4, Some(GroupSize::Fixed(64)), Scheme::Asym).unwrap();
        let x = row(256, 3);
        let mut q = QuantizedRow::default();
        quantizer.quantize(&x, &spec, &mut q).unwrap();
        assert!(matches!(
            quantizer.measure(&x[..128], &q.view(&spec, 256)),
            Err(KernelError::LengthMismatch { .. })
        ));
        let mut short = q.clone();
        short.codes.pop();
        assert!(quantizer.measure(&x, &short.view(&spec, 256)).is_err());
        short = q.clone();
        short.scales.pop();
        assert!(quantizer.measure(&x, &short.view(&spec, 256)).is_err());
    }
    #[test]
    fn zero_points_round_halves_away_from_zero_and_saturate() {
        for (scale, offset, centre) in [
            (1.0f32, -2.5f32, 0),
            (1.0, 2.5, 0),
            (0.1, -0.74, 8),
            (0.5, 0.0, 8),
            (1e-6, -1.0, 8),
            (1e-6, 1.0, 8),
            (0.3, -0.49999997, 0),
            (1.0, -0.49999997, 0),
            (1.0, 0.49999997, 0),
            (0.0, 1.0, 8),
            (0.0, 0.0, 8),
            (-0.25, 1.0, 8),
            (0.1, -3.0e38, 8),
        ] {
            let expected = if scale > 0.0 {
                ((-offset / scale).round() as i32 - centre).clamp(-128, 127) as i8
            } else {
                0
            };
            assert_eq!(
                zero_point_of(scale, offset, centre),
                expected,
                "{scale} {offset}"
            );
        }
    }

    #[test]
    fn group_parameters_of_affine_symmetric_and_gguf_rows() {
        let mut q = Quantizer::default();
        let x: Vec<f32> = (0..64).map(|i| i as f32 / 8.0 - 3.0).collect();
        let (mut s, mut o, mut z) = (Vec::new(), Vec::new(), Vec::new());
        for scheme in [Scheme::Asym, Scheme::Sym, Scheme::Q4_0] {
            let group = scheme
                .gguf()
                .is_none()
                .then_some(crate::kernels::scheme::GroupSize::Fixed(32));
            let spec = QuantSpec::new(4, group, scheme).unwrap();
            let mut out = QuantizedRow::default();
            q.quantize(&x, &spec, &mut out).unwrap();
            out.view(&spec, x.len())
                .append_group_parameters(&mut s, &mut o, &mut z);
        }
        // Two groups each for asym and sym, none for q4_0.
        assert_eq!((s.len(), o.len(), z.len()), (4, 4, 4));
        // Symmetric: code 8 is zero, so the offset is −8·scale and the zero point 0.
        assert_eq!(o[2], -8.0 * s[2]);
        assert_eq!(z[2..], [0, 0]);
        // Asymmetric: the zero point is the code of 0 less the centre.
        assert_eq!(z[0], zero_point_of(s[0], o[0], 8));
    }
}
