//! Affine (scale and offset) and symmetric (scale only) group quantization.
//!
//! A row is cut into groups; each group stores its scale `d` (and, for the affine scheme, its
//! offset `m`, the value of code 0) as f16, and each value a code `l` so that `x ≈ m + d·l`
//! (affine) or `x ≈ d·(l − 2^(bits−1))` (symmetric).
//!
//! With the search on (the default), each group tries a few clipping ranges, fits `d` and `m`
//! to each candidate's codes by least squares (as llama.cpp's K-quants and HQQ do), and keeps
//! the pair with the smallest squared error *after* rounding to f16; a few refinement steps
//! then alternate between nearest codes and a least-squares refit. Every error is computed in
//! closed form from running sums, so a candidate costs one vectorisable pass over the group.

use half::f16;

use super::error::{KernelError, Result};
use super::scheme::Scheme;

/// What quantizing one row produces: unpacked codes (one byte each) and per-group parameters.
#[derive(Debug, Default, Clone)]
pub struct AffineOutput {
    pub codes: Vec<u8>,
    pub scales: Vec<f16>,
    pub offsets: Vec<f16>,
}

/// Clipping candidates: the code range is stretched by `δ` levels past the group's extremes,
/// half on each side, so the extreme values are clipped and the middle gets a finer grid.
const ASYM_STRETCH: [f32; 6] = [0.0, 0.25, 0.5, 0.8, 1.2, 1.7];
/// Symmetric candidates: fractions of the largest magnitude that map onto the extreme code.
const SYM_SHRINK: [f32; 6] = [1.0, 0.95, 0.9, 0.85, 0.78, 0.7];
/// Nearest-code / least-squares alternations after the search.
const REFINE_STEPS: usize = 2;

/// Quantizes `x` in groups of `group` values (the last group may be shorter).
pub fn quantize_row(
    x: &[f32],
    bits: u8,
    group: usize,
    scheme: Scheme,
    out: &mut AffineOutput,
) -> Result<()> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { quantize_row_avx2(x, bits, group, scheme, out) };
        }
    }
    quantize_row_portable(x, bits, group, scheme, out)
}

/// The same code as [`quantize_row_portable`], compiled for AVX2 so the lane loops use
/// 256-bit registers. No fused multiply-add is ever requested, so results are bit-identical.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_row_avx2(
    x: &[f32],
    bits: u8,
    group: usize,
    scheme: Scheme,
    out: &mut AffineOutput,
) -> Result<()> {
    quantize_row_body(x, bits, group, scheme, out)
}

/// The portable reference path (what runs where AVX2 is missing).
pub fn quantize_row_portable(
    x: &[f32],
    bits: u8,
    group: usize,
    scheme: Scheme,
    out: &mut AffineOutput,
) -> Result<()> {
    quantize_row_body(x, bits, group, scheme, out)
}

#[inline(always)]
fn quantize_row_body(
    x: &[f32],
    bits: u8,
    group: usize,
    scheme: Scheme,
    out: &mut AffineOutput,
) -> Result<()> {
    debug_assert!(group > 0 && (2..=8).contains(&bits));
    out.codes.clear();
    out.codes.resize(x.len(), 0);
    out.scales.clear();
    out.offsets.clear();
    let symmetric = scheme.is_symmetric();
    for (index, (xs, codes)) in x.chunks(group).zip(out.codes.chunks_mut(group)).enumerate() {
        let params = if symmetric {
            symmetric_group(xs, bits, scheme.searches(), codes)
        } else {
            affine_group(xs, bits, scheme.searches(), codes)
        };
        let (scale, offset) = params.map_err(|value| KernelError::ScaleOverflow {
            group: index,
            value,
        })?;
        out.scales.push(scale);
        if !symmetric {
            out.offsets.push(offset);
        }
    }
    Ok(())
}

/// Decodes unpacked `codes` back to values, into `out` (cleared first).
pub fn dequantize_row(
    codes: &[u8],
    group: usize,
    bits: u8,
    symmetric: bool,
    scales: &[f16],
    offsets: &[f16],
    out: &mut Vec<f32>,
) -> Result<()> {
    let groups = codes.len().div_ceil(group.max(1));
    if group == 0 || scales.len() != groups || (!symmetric && offsets.len() != groups) {
        return Err(KernelError::Corrupt(format!(
            "{} values in groups of {group} need {groups} scales{}, found {} scales and {} offsets",
            codes.len(),
            if symmetric { "" } else { " and offsets" },
            scales.len(),
            offsets.len()
        )));
    }
    out.clear();
    out.reserve(codes.len());
    let centre = if symmetric {
        (1u32 << (bits - 1)) as f32
    } else {
        0.0
    };
    for (g, cs) in codes.chunks(group).enumerate() {
        let d = scales[g].to_f32();
        let m = if symmetric {
            -centre * d
        } else {
            offsets[g].to_f32()
        };
        out.extend(cs.iter().map(|&l| m + d * f32::from(l)));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Group kernels. `Err(value)` reports a scale or offset beyond f16's range.

const LANES: usize = 8;
/// 1.5·2²³: adding then subtracting it rounds any |v| < 2²² to the nearest integer (ties to
/// even) in two vectorisable additions, where `f32::round` would be a libm call.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// Nearest integer code of `v·a + b`, clamped to `[lo, hi]`.
#[inline(always)]
fn code_of(v: f32, a: f32, b: f32, lo: f32, hi: f32) -> f32 {
    let t = v * a + b;
    // Plain comparisons (not f32::max/min) so the compiler emits one max/min instruction.
    let t = if t < lo { lo } else { t };
    let t = if t > hi { hi } else { t };
    (t + ROUND_MAGIC) - ROUND_MAGIC
}

/// Sums over a group that the least-squares fits need.
#[derive(Debug, Default, Clone, Copy)]
struct Moments {
    n: f64,
    x: f64,
    xx: f64,
}

#[derive(Debug, Default, Clone, Copy)]
struct CodeSums {
    l: f64,
    ll: f64,
    lx: f64,
}

/// Partial sums run in f32 lanes over blocks this long, then add up in f64: exact for the
/// integer sums of codes, and accurate for the rest even in whole-row groups.
const SUM_BLOCK: usize = 256;

#[inline(always)]
fn lane_sum(lanes: [f32; LANES]) -> f64 {
    lanes.iter().map(|&v| f64::from(v)).sum()
}

#[inline(always)]
fn range_and_moments(x: &[f32]) -> (f32, f32, Moments) {
    let mut lo = [f32::MAX; LANES];
    let mut hi = [f32::MIN; LANES];
    let mut m = Moments {
        n: x.len() as f64,
        ..Moments::default()
    };
    for block in x.chunks(SUM_BLOCK) {
        let mut sx = [0.0f32; LANES];
        let mut sxx = [0.0f32; LANES];
        let chunks = block.chunks_exact(LANES);
        let tail = chunks.remainder();
        for c in chunks {
            for i in 0..LANES {
                let v = c[i];
                lo[i] = if v < lo[i] { v } else { lo[i] };
                hi[i] = if v > hi[i] { v } else { hi[i] };
                sx[i] += v;
                sxx[i] += v * v;
            }
        }
        for (i, &v) in tail.iter().enumerate() {
            lo[i] = lo[i].min(v);
            hi[i] = hi[i].max(v);
            sx[i] += v;
            sxx[i] += v * v;
        }
        m.x += lane_sum(sx);
        m.xx += lane_sum(sxx);
    }
    let lo = lo.iter().fold(f32::MAX, |a, &b| a.min(b));
    let hi = hi.iter().fold(f32::MIN, |a, &b| a.max(b));
    (lo, hi, m)
}

#[inline(always)]
fn code_sums(x: &[f32], a: f32, b: f32, lo: f32, hi: f32) -> CodeSums {
    let mut total = CodeSums::default();
    for block in x.chunks(SUM_BLOCK) {
        let mut sl = [0.0f32; LANES];
        let mut sll = [0.0f32; LANES];
        let mut slx = [0.0f32; LANES];
        let chunks = block.chunks_exact(LANES);
        let tail = chunks.remainder();
        for c in chunks {
            for i in 0..LANES {
                let l = code_of(c[i], a, b, lo, hi);
                sl[i] += l;
                sll[i] += l * l;
                slx[i] += l * c[i];
            }
        }
        for (i, &v) in tail.iter().enumerate() {
            let l = code_of(v, a, b, lo, hi);
            sl[i] += l;
            sll[i] += l * l;
            slx[i] += l * v;
        }
        total.l += lane_sum(sl);
        total.ll += lane_sum(sll);
        total.lx += lane_sum(slx);
    }
    total
}

#[inline(always)]
fn write_codes(x: &[f32], a: f32, b: f32, lo: f32, hi: f32, bias: f32, codes: &mut [u8]) {
    for (code, &v) in codes.iter_mut().zip(x) {
        *code = (code_of(v, a, b, lo, hi) + bias) as u8;
    }
}

/// Squared error of `x ≈ m + d·l` summed over the group, from the sums alone.
fn affine_error(mo: &Moments, s: &CodeSums, d: f64, m: f64) -> f64 {
    mo.xx - 2.0 * d * s.lx - 2.0 * m * mo.x + d * d * s.ll + 2.0 * d * m * s.l + mo.n * m * m
}

/// Rounds a parameter to f16, or reports it when f16 cannot hold it.
fn to_f16(value: f64) -> std::result::Result<f16, f32> {
    let h = f16::from_f64(value);
    if h.is_finite() {
        Ok(h)
    } else {
        Err(value as f32)
    }
}

/// Least-squares `(d, m)` for the codes behind `s`, rounded to f16, with its error.
fn affine_fit(mo: &Moments, s: &CodeSums) -> Option<(f16, f16, f64)> {
    let det = mo.n * s.ll - s.l * s.l;
    if det <= 0.0 {
        return None;
    }
    let d = (mo.n * s.lx - s.l * mo.x) / det;
    let m = (mo.x - d * s.l) / mo.n;
    let (dh, mh) = (to_f16(d).ok()?, to_f16(m).ok()?);
    if dh.to_f32() <= 0.0 {
        return None;
    }
    let err = affine_error(mo, s, dh.to_f64(), mh.to_f64());
    Some((dh, mh, err))
}

#[inline(always)]
fn affine_group(
    x: &[f32],
    bits: u8,
    search: bool,
    codes: &mut [u8],
) -> std::result::Result<(f16, f16), f32> {
    let nmax = ((1u32 << bits) - 1) as f32;
    let (lo, hi, mo) = range_and_moments(x);
    let range = hi - lo;
    if range <= 0.0 {
        codes.fill(0);
        return Ok((f16::ZERO, to_f16(f64::from(lo))?));
    }
    // Plain min/max, with the scale and offset as stored.
    let mut best_d = to_f16(f64::from(range / nmax))?;
    let mut best_m = to_f16(f64::from(lo))?;
    if best_d.to_f32() <= 0.0 {
        // The range is below f16's resolution: one level represents the group.
        codes.fill(0);
        return Ok((f16::ZERO, to_f16(mo.x / mo.n)?));
    }
    if search {
        let mut best_err = f64::INFINITY;
        for stretch in ASYM_STRETCH {
            let a = (nmax + stretch) / range;
            let b = -lo * a - stretch / 2.0;
            let sums = code_sums(x, a, b, 0.0, nmax);
            if let Some((d, m, err)) = affine_fit(&mo, &sums)
                && err < best_err
            {
                (best_d, best_m, best_err) = (d, m, err);
            }
        }
        for _ in 0..REFINE_STEPS {
            let (a, b) = affine_map(best_d, best_m);
            let sums = code_sums(x, a, b, 0.0, nmax);
            let current = affine_error(&mo, &sums, best_d.to_f64(), best_m.to_f64());
            best_err = best_err.min(current);
            match affine_fit(&mo, &sums) {
                Some((d, m, err)) if err < best_err => (best_d, best_m, best_err) = (d, m, err),
                _ => break,
            }
        }
    }
    let (a, b) = affine_map(best_d, best_m);
    write_codes(x, a, b, 0.0, nmax, 0.0, codes);
    Ok((best_d, best_m))
}

/// The code map `l = x·a + b` that inverts `x = m + d·l`.
fn affine_map(d: f16, m: f16) -> (f32, f32) {
    let a = 1.0 / d.to_f32();
    (a, -m.to_f32() * a)
}

#[inline(always)]
fn symmetric_group(
    x: &[f32],
    bits: u8,
    search: bool,
    codes: &mut [u8],
) -> std::result::Result<(f16, f16), f32> {
    let half_levels = (1u32 << (bits - 1)) as f32;
    let (lo, hi, mo) = range_and_moments(x);
    // The value of largest magnitude maps onto code −2^(bits−1), the one extra negative level,
    // whatever its sign (llama.cpp's q4_0 trick): the scale is signed.
    let extreme = if -lo >= hi { lo } else { hi };
    let (qlo, qhi) = (-half_levels, half_levels - 1.0);
    let mut best_d = to_f16(f64::from(extreme / -half_levels))?;
    if best_d.to_f32() == 0.0 {
        codes.fill(half_levels as u8);
        return Ok((f16::ZERO, f16::ZERO));
    }
    if search {
        let mut best_err = f64::INFINITY;
        let fit = |s: &CodeSums| -> Option<(f16, f64)> {
            if s.ll <= 0.0 {
                return None;
            }
            let d = to_f16(s.lx / s.ll).ok()?;
            if d.to_f32() == 0.0 {
                return None;
            }
            let dd = d.to_f64();
            Some((d, mo.xx - 2.0 * dd * s.lx + dd * dd * s.ll))
        };
        for shrink in SYM_SHRINK {
            let a = -half_levels / (extreme * shrink);
            let sums = code_sums(x, a, 0.0, qlo, qhi);
            if let Some((d, err)) = fit(&sums)
                && err < best_err
            {
                (best_d, best_err) = (d, err);
            }
        }
        for _ in 0..REFINE_STEPS {
            let a = 1.0 / best_d.to_f32();
            let sums = code_sums(x, a, 0.0, qlo, qhi);
            let dd = best_d.to_f64();
            best_err = best_err.min(mo.xx - 2.0 * dd * sums.lx + dd * dd * sums.ll);
            match fit(&sums) {
                Some((d, err)) if err < best_err => (best_d, best_err) = (d, err),
                _ => break,
            }
        }
    }
    let a = 1.0 / best_d.to_f32();
    write_codes(x, a, 0.0, qlo, qhi, half_levels, codes);
    Ok((best_d, f16::ZERO))
}
