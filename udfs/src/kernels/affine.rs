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

use super::error::{KernelError, Result, check_finite};
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
const ASYM_STRETCH: [f32; 3] = [0.0, 0.7, 1.4];
// (The first must be 0: plain min/max's codes.)
/// Symmetric candidates: fractions of the largest magnitude that map onto the extreme code.
const SYM_SHRINK: [f32; 6] = [1.0, 0.95, 0.9, 0.85, 0.78, 0.7];
/// Nearest-code / least-squares alternations after the search.
const REFINE_STEPS: usize = 1;

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
        if let Some(avx2) = avx2::Avx2::detect() {
            // SAFETY: `detect` found AVX2, FMA and F16C.
            return unsafe { avx2::quantize_row(avx2, x, bits, group, scheme, out) };
        }
    }
    quantize_row_portable(x, bits, group, scheme, out)
}

/// The portable reference path (what runs where AVX2, FMA or F16C is missing). The AVX2 path does the same
/// operations in the same order, lane for lane, so the two agree bit for bit.
pub fn quantize_row_portable(
    x: &[f32],
    bits: u8,
    group: usize,
    scheme: Scheme,
    out: &mut AffineOutput,
) -> Result<()> {
    quantize_row_with(Portable, x, bits, group, scheme, out)
}

#[inline(always)]
fn quantize_row_with<P: Passes>(
    passes: P,
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
    let full_groups = x.len() / group;
    let mut index = 0;
    while index * group < x.len() {
        let start = index * group;
        if !symmetric && index + 8 <= full_groups {
            let end = start + 8 * group;
            let (xs, codes) = (&x[start..end], &mut out.codes[start..end]);
            if let Some((scales, offsets)) =
                passes.affine_groups(xs, group, bits, scheme.searches(), codes)
            {
                out.scales.extend_from_slice(&scales);
                out.offsets.extend_from_slice(&offsets);
                index += 8;
                continue;
            }
            // A group off the common path: these eight go one by one.
            for _ in 0..8 {
                one_group(passes, x, bits, group, index, scheme, out)?;
                index += 1;
            }
            continue;
        }
        one_group(passes, x, bits, group, index, scheme, out)?;
        index += 1;
    }
    Ok(())
}

/// Quantizes group `index` of `x` into `out` (its codes in place, its parameters appended).
#[inline(always)]
fn one_group<P: Passes>(
    passes: P,
    x: &[f32],
    bits: u8,
    group: usize,
    index: usize,
    scheme: Scheme,
    out: &mut AffineOutput,
) -> Result<()> {
    let start = index * group;
    let end = (start + group).min(x.len());
    let (xs, codes) = (&x[start..end], &mut out.codes[start..end]);
    let symmetric = scheme.is_symmetric();
    let params = if symmetric {
        symmetric_group(passes, xs, bits, scheme.searches(), codes)
    } else {
        affine_group(passes, xs, bits, scheme.searches(), codes)
    };
    let (scale, offset) = params.map_err(|e| match e {
        GroupError::ScaleOverflow(value) => KernelError::ScaleOverflow {
            group: index,
            value,
        },
        // The first pass saw a NaN or an infinity (or sums beyond f32): find which.
        GroupError::NonFinite => match check_finite(xs) {
            Err(KernelError::NonFinite { index: at, value }) => KernelError::NonFinite {
                index: start + at,
                value,
            },
            _ => KernelError::ScaleOverflow {
                group: index,
                value: f32::INFINITY,
            },
        },
    })?;
    out.scales.push(scale);
    if !symmetric {
        out.offsets.push(offset);
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
    decode_codes(codes, 0, group, bits, symmetric, scales, offsets, out);
    Ok(())
}

/// Decodes `codes`, the values from index `first` of a row on, into `out` (cleared first).
/// The caller has checked that `scales` (and `offsets`) cover every group these values fall in.
#[allow(clippy::too_many_arguments)]
pub fn decode_codes(
    codes: &[u8],
    first: usize,
    group: usize,
    bits: u8,
    symmetric: bool,
    scales: &[f16],
    offsets: &[f16],
    out: &mut Vec<f32>,
) {
    out.clear();
    out.resize(codes.len(), 0.0);
    #[cfg(target_arch = "x86_64")]
    {
        if let Some(cpu) = avx2::Avx2::detect() {
            // SAFETY: `cpu` proves AVX2.
            unsafe {
                decode_codes_avx2(
                    cpu, codes, first, group, bits, symmetric, scales, offsets, out,
                )
            };
            return;
        }
    }
    decode_into(codes, first, group, bits, symmetric, scales, offsets, out);
}

/// [`decode_into`] compiled for AVX2: the same operations (no fused multiply-add), eight
/// values at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
fn decode_codes_avx2(
    _cpu: avx2::Avx2,
    codes: &[u8],
    first: usize,
    group: usize,
    bits: u8,
    symmetric: bool,
    scales: &[f16],
    offsets: &[f16],
    out: &mut [f32],
) {
    decode_into(codes, first, group, bits, symmetric, scales, offsets, out)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn decode_into(
    codes: &[u8],
    first: usize,
    group: usize,
    bits: u8,
    symmetric: bool,
    scales: &[f16],
    offsets: &[f16],
    out: &mut [f32],
) {
    let centre = if symmetric {
        (1u32 << (bits - 1)) as f32
    } else {
        0.0
    };
    let mut index = first;
    let mut at = 0;
    while at < codes.len() {
        let g = index / group;
        // The values left in group `g`, or in the piece.
        let take = (group - index % group).min(codes.len() - at);
        let d = scales[g].to_f32();
        let m = if symmetric {
            -centre * d
        } else {
            offsets[g].to_f32()
        };
        for (y, &l) in out[at..at + take].iter_mut().zip(&codes[at..at + take]) {
            *y = m + d * f32::from(l);
        }
        index += take;
        at += take;
    }
}

// ---------------------------------------------------------------------------------------------
// Group kernels. `Err(value)` reports a scale or offset beyond f16's range.

const LANES: usize = 8;
/// 1.5·2²³: adding then subtracting it rounds any |v| < 2²² to the nearest integer (ties to
/// even) in two vectorisable additions, where `f32::round` would be a libm call.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// `a·b + c` rounded once, as an FMA instruction computes it. Where the build has no FMA to
/// rely on, `f32::mul_add` would be a libm call per value; instead the product, exact in f64,
/// is added in f64 with the result rounded to odd (its rounding error found exactly by
/// TwoSum), and rounding that to f32 is then correct (Boldo and Melquiond: round-to-odd with
/// two spare bits makes the double rounding innocuous). Finite inputs.
#[inline(always)]
pub fn fused(a: f32, b: f32, c: f32) -> f32 {
    if cfg!(any(target_feature = "fma", target_arch = "aarch64")) {
        return a.mul_add(b, c);
    }
    let (p, c) = (f64::from(a) * f64::from(b), f64::from(c));
    let s = p + c;
    let bv = s - p;
    let e = (p - (s - bv)) + (c - bv);
    // Inexact with an even last bit: step to the neighbour on the side of the exact sum,
    // whose last bit is 1 (written without branches, so that the loops stay vectorised).
    let bits = s.to_bits();
    let inexact = (e != 0.0) & (bits & 1 == 0) & s.is_finite();
    let step = if (e > 0.0) == (s > 0.0) { 1 } else { u64::MAX };
    let odd = bits.wrapping_add(step & u64::from(inexact).wrapping_neg());
    f64::from_bits(odd) as f32
}

/// Nearest integer code of `v·a + b`, clamped to `[lo, hi]`.
#[inline(always)]
fn code_of(v: f32, a: f32, b: f32, lo: f32, hi: f32) -> f32 {
    // Fused: one rounding, and one instruction where the CPU has FMA.
    let t = fused(v, a, b);
    // Plain comparisons (not f32::max/min) so the compiler emits one max/min instruction.
    let t = if t < lo { lo } else { t };
    let t = if t > hi { hi } else { t };
    (t + ROUND_MAGIC) - ROUND_MAGIC
}

/// Sums over a group that the least-squares fits need. Σx² is left out: it is the same for
/// every candidate, so errors are compared as `error − Σx²`.
#[derive(Debug, Default, Clone, Copy)]
struct Moments {
    n: f64,
    x: f64,
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

/// Adds up 8 lanes in a fixed tree order (the order a SIMD horizontal sum takes), so every
/// implementation of [`Passes`] rounds the same way.
#[inline(always)]
fn reduce_lanes(v: [f32; LANES]) -> f64 {
    f64::from(((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7])))
}

/// The passes over a group's values, the hot loops of the search. Implementations differ in
/// instructions only: each value goes to lane `i % 8` of a block of [`SUM_BLOCK`] values, the
/// remainder of a block to lanes `0..rem` after the full chunks, and lanes reduce by
/// [`reduce_lanes`].
trait Passes: Copy {
    /// (min, max, Σx, Σx²)
    fn range_and_moments(self, x: &[f32]) -> (f32, f32, Moments);
    /// Σl, Σl², Σl·x for the codes `l = clamp(round(x·a + b), lo, hi)`.
    #[inline(always)]
    fn code_sums(self, x: &[f32], a: f32, b: f32, lo: f32, hi: f32) -> CodeSums {
        self.code_sums_many(x, [a], [b], lo, hi)[0]
    }
    /// [`code_sums`](Passes::code_sums) for several `(a, b)` in one pass over the values:
    /// each candidate's sums are the ones it would have alone, bit for bit.
    fn code_sums_many<const K: usize>(
        self,
        x: &[f32],
        a: [f32; K],
        b: [f32; K],
        lo: f32,
        hi: f32,
    ) -> [CodeSums; K];
    /// Writes `l + bias` for each value as a byte.
    #[allow(clippy::too_many_arguments)]
    fn write_codes(self, x: &[f32], a: f32, b: f32, lo: f32, hi: f32, bias: f32, codes: &mut [u8]);
    /// `v` rounded to f16 (to nearest, ties to even), with that f16's exact value.
    fn round_f16(self, v: f32) -> Stored;
    /// Eight affine groups at once, bit for bit as eight calls of [`affine_group`], when the
    /// implementation has such a path and every group takes its common case.
    #[inline(always)]
    fn affine_groups(
        self,
        _x: &[f32],
        _group: usize,
        _bits: u8,
        _search: bool,
        _codes: &mut [u8],
    ) -> Option<([f16; 8], [f16; 8])> {
        None
    }
}

/// A parameter as stored (f16) and the exact value decoding will use.
#[derive(Debug, Clone, Copy)]
struct Stored {
    half: f16,
    value: f32,
}

impl Stored {
    const ZERO: Stored = Stored {
        half: f16::ZERO,
        value: 0.0,
    };

    #[inline(always)]
    fn wide(self) -> f64 {
        f64::from(self.value)
    }
}

#[derive(Debug, Clone, Copy)]
struct Portable;

/// The scalar steps of a remainder, shared by every implementation.
#[inline(always)]
fn tail_moments(tail: &[f32], lo: &mut [f32; LANES], hi: &mut [f32; LANES], sx: &mut [f32; LANES]) {
    for (i, &v) in tail.iter().enumerate() {
        lo[i] = if v < lo[i] { v } else { lo[i] };
        hi[i] = if v > hi[i] { v } else { hi[i] };
        sx[i] += v;
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tail_code_sums(
    tail: &[f32],
    a: f32,
    b: f32,
    lo: f32,
    hi: f32,
    sl: &mut [f32; LANES],
    sll: &mut [f32; LANES],
    slx: &mut [f32; LANES],
) {
    for (i, &v) in tail.iter().enumerate() {
        let l = code_of(v, a, b, lo, hi);
        sl[i] += l;
        // l² of a code is exact in f32, so this is the fused result without the emulation.
        sll[i] += l * l;
        slx[i] = fused(l, v, slx[i]);
    }
}

/// The smallest and largest of the lanes, folded in the tree order of a SIMD horizontal
/// min/max (`if a < b { a } else { b }` at each step, as `minps` does), so that every
/// implementation picks the same zero when both signs are present.
fn fold_range(lo: [f32; LANES], hi: [f32; LANES]) -> (f32, f32) {
    let min = |a: f32, b: f32| if a < b { a } else { b };
    let max = |a: f32, b: f32| if a > b { a } else { b };
    let fold = |v: [f32; LANES], f: &dyn Fn(f32, f32) -> f32| {
        let q = [f(v[0], v[4]), f(v[1], v[5]), f(v[2], v[6]), f(v[3], v[7])];
        let h = [f(q[0], q[2]), f(q[1], q[3])];
        f(h[0], h[1])
    };
    (fold(lo, &min), fold(hi, &max))
}

impl Passes for Portable {
    fn range_and_moments(self, x: &[f32]) -> (f32, f32, Moments) {
        let mut lo = [f32::MAX; LANES];
        let mut hi = [f32::MIN; LANES];
        let mut m = Moments {
            n: x.len() as f64,
            ..Moments::default()
        };
        for block in x.chunks(SUM_BLOCK) {
            let mut sx = [0.0f32; LANES];
            let chunks = block.chunks_exact(LANES);
            let tail = chunks.remainder();
            for c in chunks {
                for i in 0..LANES {
                    let v = c[i];
                    lo[i] = if v < lo[i] { v } else { lo[i] };
                    hi[i] = if v > hi[i] { v } else { hi[i] };
                    sx[i] += v;
                }
            }
            tail_moments(tail, &mut lo, &mut hi, &mut sx);
            m.x += reduce_lanes(sx);
        }
        let (lo, hi) = fold_range(lo, hi);
        (lo, hi, m)
    }

    fn code_sums_many<const K: usize>(
        self,
        x: &[f32],
        a: [f32; K],
        b: [f32; K],
        lo: f32,
        hi: f32,
    ) -> [CodeSums; K] {
        let mut total = [CodeSums::default(); K];
        for block in x.chunks(SUM_BLOCK) {
            let mut sl = [[0.0f32; LANES]; K];
            let mut sll = [[0.0f32; LANES]; K];
            let mut slx = [[0.0f32; LANES]; K];
            let chunks = block.chunks_exact(LANES);
            let tail = chunks.remainder();
            for c in chunks {
                for k in 0..K {
                    for i in 0..LANES {
                        let l = code_of(c[i], a[k], b[k], lo, hi);
                        sl[k][i] += l;
                        // l² of a code is exact in f32: the fused result, bit for bit.
                        sll[k][i] += l * l;
                        slx[k][i] = fused(l, c[i], slx[k][i]);
                    }
                }
            }
            for k in 0..K {
                tail_code_sums(
                    tail,
                    a[k],
                    b[k],
                    lo,
                    hi,
                    &mut sl[k],
                    &mut sll[k],
                    &mut slx[k],
                );
                total[k].l += reduce_lanes(sl[k]);
                total[k].ll += reduce_lanes(sll[k]);
                total[k].lx += reduce_lanes(slx[k]);
            }
        }
        total
    }

    fn write_codes(self, x: &[f32], a: f32, b: f32, lo: f32, hi: f32, bias: f32, codes: &mut [u8]) {
        for (code, &v) in codes.iter_mut().zip(x) {
            *code = (code_of(v, a, b, lo, hi) + bias) as u8;
        }
    }

    fn round_f16(self, v: f32) -> Stored {
        let half = f16::from_f32(v);
        Stored {
            half,
            value: half.to_f32(),
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod eight_groups;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! The passes with AVX2 intrinsics: the same operations as [`Portable`](super::Portable),
    //! eight lanes at a time.

    use std::arch::x86_64::*;

    use super::{
        CodeSums, LANES, Moments, Passes, SUM_BLOCK, code_of, reduce_lanes, tail_code_sums,
        tail_moments,
    };

    pub use crate::kernels::cpu::Avx2;

    /// The whole row loop compiled for AVX2, FMA and F16C, so that the passes and the f16
    /// conversions inline into the group search.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub fn quantize_row(
        avx2: Avx2,
        x: &[f32],
        bits: u8,
        group: usize,
        scheme: super::Scheme,
        out: &mut super::AffineOutput,
    ) -> super::Result<()> {
        super::quantize_row_with(avx2, x, bits, group, scheme, out)
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(super) fn lanes(v: __m256) -> [f32; LANES] {
        let mut out = [0.0f32; LANES];
        // SAFETY: `out` holds 8 f32; an unaligned store has no alignment requirement.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
        out
    }

    /// The lanes' sum in the tree order of [`reduce_lanes`], without leaving registers.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn hsum(v: __m256) -> f64 {
        // (v0+v4, v1+v5, v2+v6, v3+v7)
        let q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        // ((v0+v4)+(v2+v6), (v1+v5)+(v3+v7))
        let h = _mm_add_ps(q, _mm_movehl_ps(q, q));
        f64::from(_mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1))))
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn range_and_moments(x: &[f32]) -> (f32, f32, Moments) {
        let mut vlo = _mm256_set1_ps(f32::MAX);
        let mut vhi = _mm256_set1_ps(f32::MIN);
        let mut m = Moments {
            n: x.len() as f64,
            ..Moments::default()
        };
        for block in x.chunks(SUM_BLOCK) {
            let mut sx = _mm256_setzero_ps();
            let chunks = block.chunks_exact(LANES);
            let tail = chunks.remainder();
            for c in chunks {
                // SAFETY: `c` holds exactly 8 f32.
                let v = unsafe { _mm256_loadu_ps(c.as_ptr()) };
                // min(v, lo) keeps lo on ties, as `if v < lo { v } else { lo }` does.
                vlo = _mm256_min_ps(v, vlo);
                vhi = _mm256_max_ps(v, vhi);
                sx = _mm256_add_ps(sx, v);
            }
            if tail.is_empty() {
                m.x += hsum(sx);
                continue;
            }
            let (mut lo, mut hi, mut sx) = (lanes(vlo), lanes(vhi), lanes(sx));
            tail_moments(tail, &mut lo, &mut hi, &mut sx);
            // SAFETY: plain loads from 8-element arrays.
            unsafe {
                vlo = _mm256_loadu_ps(lo.as_ptr());
                vhi = _mm256_loadu_ps(hi.as_ptr());
            }
            m.x += reduce_lanes(sx);
        }
        (hmin(vlo), hmax(vhi), m)
    }

    /// [`fold_range`](super::fold_range)'s minimum without leaving registers: `minps(a, b)`
    /// is `if a < b { a } else { b }`, in the same tree order.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn hmin(v: __m256) -> f32 {
        let q = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let h = _mm_min_ps(q, _mm_movehl_ps(q, q));
        _mm_cvtss_f32(_mm_min_ss(h, _mm_shuffle_ps(h, h, 1)))
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn hmax(v: __m256) -> f32 {
        let q = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let h = _mm_max_ps(q, _mm_movehl_ps(q, q));
        _mm_cvtss_f32(_mm_max_ss(h, _mm_shuffle_ps(h, h, 1)))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn round_f16(v: f32) -> super::Stored {
        let h = _mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(v));
        super::Stored {
            half: half::f16::from_bits(_mm_extract_epi16::<0>(h) as u16),
            value: _mm_cvtss_f32(_mm_cvtph_ps(h)),
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn codes(v: __m256, a: __m256, b: __m256, lo: __m256, hi: __m256) -> __m256 {
        let t = _mm256_fmadd_ps(v, a, b);
        // max(t, lo) then min(t, hi): the clamp of `code_of` (ties give the bound itself,
        // equal in value).
        let t = _mm256_min_ps(_mm256_max_ps(t, lo), hi);
        // Ties to even, as the add-and-subtract of ROUND_MAGIC in `code_of` (|t| < 2²²).
        _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t)
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn code_sums_many<const K: usize>(
        x: &[f32],
        a: [f32; K],
        b: [f32; K],
        lo: f32,
        hi: f32,
    ) -> [CodeSums; K] {
        let (va, vb) = (a.map(|a| _mm256_set1_ps(a)), b.map(|b| _mm256_set1_ps(b)));
        let (vlo, vhi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
        let mut total = [CodeSums::default(); K];
        for block in x.chunks(SUM_BLOCK) {
            let mut sl = [_mm256_setzero_ps(); K];
            let mut sll = [_mm256_setzero_ps(); K];
            let mut slx = [_mm256_setzero_ps(); K];
            let chunks = block.chunks_exact(LANES);
            let tail = chunks.remainder();
            for c in chunks {
                // SAFETY: `c` holds exactly 8 f32.
                let v = unsafe { _mm256_loadu_ps(c.as_ptr()) };
                for k in 0..K {
                    let l = codes(v, va[k], vb[k], vlo, vhi);
                    sl[k] = _mm256_add_ps(sl[k], l);
                    sll[k] = _mm256_fmadd_ps(l, l, sll[k]);
                    slx[k] = _mm256_fmadd_ps(l, v, slx[k]);
                }
            }
            for k in 0..K {
                if tail.is_empty() {
                    total[k].l += hsum(sl[k]);
                    total[k].ll += hsum(sll[k]);
                    total[k].lx += hsum(slx[k]);
                } else {
                    let (mut l, mut ll, mut lx) = (lanes(sl[k]), lanes(sll[k]), lanes(slx[k]));
                    tail_code_sums(tail, a[k], b[k], lo, hi, &mut l, &mut ll, &mut lx);
                    total[k].l += reduce_lanes(l);
                    total[k].ll += reduce_lanes(ll);
                    total[k].lx += reduce_lanes(lx);
                }
            }
        }
        total
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn write_codes(
        x: &[f32],
        a: f32,
        b: f32,
        lo: f32,
        hi: f32,
        bias: f32,
        out: &mut [u8],
    ) {
        // (Adding a zero bias changes nothing: the affine codes skip the addition.)
        if bias == 0.0 {
            write_codes_with::<false>(x, a, b, lo, hi, bias, out)
        } else {
            write_codes_with::<true>(x, a, b, lo, hi, bias, out)
        }
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn write_codes_with<const BIASED: bool>(
        x: &[f32],
        a: f32,
        b: f32,
        lo: f32,
        hi: f32,
        bias: f32,
        out: &mut [u8],
    ) {
        let (va, vb, vlo, vhi, vbias) = (
            _mm256_set1_ps(a),
            _mm256_set1_ps(b),
            _mm256_set1_ps(lo),
            _mm256_set1_ps(hi),
            _mm256_set1_ps(bias),
        );
        // Whole numbers in 0..=255: truncation is exact, and packing cannot saturate.
        let code_words = |c: &[f32]| {
            // SAFETY: `c` holds at least 8 f32; AVX2 is enabled in this function.
            unsafe {
                let l = codes(_mm256_loadu_ps(c.as_ptr()), va, vb, vlo, vhi);
                _mm256_cvttps_epi32(if BIASED { _mm256_add_ps(l, vbias) } else { l })
            }
        };
        // 32 codes per store: two in-lane packs, then one permute puts the 4-byte pieces in order.
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let wide = x.len() / 32 * 32;
        for (c, dst) in x[..wide]
            .chunks_exact(32)
            .zip(out[..wide].chunks_exact_mut(32))
        {
            let ab = _mm256_packus_epi32(code_words(&c[..8]), code_words(&c[8..16]));
            let cd = _mm256_packus_epi32(code_words(&c[16..24]), code_words(&c[24..]));
            let bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(ab, cd), order);
            // SAFETY: `dst` holds exactly 32 bytes.
            unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), bytes) };
        }
        let chunks = x[wide..].chunks_exact(LANES);
        let tail = chunks.remainder();
        for (c, dst) in chunks.zip(out[wide..].chunks_exact_mut(LANES)) {
            let q = code_words(c);
            let words = _mm_packus_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
            let bytes = _mm_packus_epi16(words, words);
            // SAFETY: `dst` holds exactly 8 bytes.
            unsafe { _mm_storel_epi64(dst.as_mut_ptr().cast(), bytes) };
        }
        let done = x.len() - tail.len();
        for (code, &v) in out[done..].iter_mut().zip(tail) {
            *code = (code_of(v, a, b, lo, hi) + bias) as u8;
        }
    }

    impl Passes for Avx2 {
        #[inline(always)]
        fn range_and_moments(self, x: &[f32]) -> (f32, f32, Moments) {
            // SAFETY: `self` exists only where AVX2 and FMA were detected.
            unsafe { range_and_moments(x) }
        }

        #[inline(always)]
        fn code_sums_many<const K: usize>(
            self,
            x: &[f32],
            a: [f32; K],
            b: [f32; K],
            lo: f32,
            hi: f32,
        ) -> [CodeSums; K] {
            // SAFETY: as above.
            unsafe { code_sums_many(x, a, b, lo, hi) }
        }

        #[inline(always)]
        fn write_codes(
            self,
            x: &[f32],
            a: f32,
            b: f32,
            lo: f32,
            hi: f32,
            bias: f32,
            codes: &mut [u8],
        ) {
            // SAFETY: as above.
            unsafe { write_codes(x, a, b, lo, hi, bias, codes) }
        }

        #[inline(always)]
        fn round_f16(self, v: f32) -> super::Stored {
            // SAFETY: `self` exists only where AVX2, FMA and F16C were detected.
            unsafe { round_f16(v) }
        }

        #[inline(always)]
        fn affine_groups(
            self,
            x: &[f32],
            group: usize,
            bits: u8,
            search: bool,
            codes: &mut [u8],
        ) -> Option<super::eight_groups::Params> {
            if !super::eight_groups::applies(group) {
                return None;
            }
            // SAFETY: as above.
            unsafe { super::eight_groups::affine_groups(x, group, bits, search, codes) }
        }
    }
}

/// Squared error of `x ≈ m + d·l` summed over the group, less Σx², from the sums alone.
#[inline(always)]
fn affine_error(mo: &Moments, s: &CodeSums, d: f64, m: f64) -> f64 {
    -2.0 * d * s.lx - 2.0 * m * mo.x + d * d * s.ll + 2.0 * d * m * s.l + mo.n * m * m
}

/// Why a group cannot be stored.
#[derive(Debug, Clone, Copy)]
enum GroupError {
    /// A scale or offset beyond f16's range.
    ScaleOverflow(f32),
    /// A NaN or an infinity among the values: the row is refused (rows are checked here, in
    /// the first pass over each group, rather than in a pass of their own).
    NonFinite,
}

impl From<f32> for GroupError {
    fn from(value: f32) -> Self {
        GroupError::ScaleOverflow(value)
    }
}

/// Rounds a parameter to f16, or reports it when f16 cannot hold it.
#[inline(always)]
fn to_f16<P: Passes>(passes: P, value: f64) -> std::result::Result<Stored, f32> {
    let stored = passes.round_f16(value as f32);
    if stored.value.is_finite() {
        Ok(stored)
    } else {
        Err(value as f32)
    }
}

/// Least-squares `(d, m)` for the codes behind `s` (unrounded), with its error.
#[inline(always)]
fn affine_fit(mo: &Moments, s: &CodeSums) -> Option<(f64, f64, f64)> {
    let det = mo.n * s.ll - s.l * s.l;
    if det <= 0.0 {
        return None;
    }
    let d = (mo.n * s.lx - s.l * mo.x) / det;
    let m = (mo.x - d * s.l) / mo.n;
    (d > 0.0).then(|| (d, m, affine_error(mo, s, d, m)))
}

/// Both parameters as stored, when f16 can hold them and the scale stays positive.
#[inline(always)]
fn stored_pair<P: Passes>(passes: P, d: f64, m: f64) -> Option<(Stored, Stored)> {
    let (dh, mh) = (to_f16(passes, d).ok()?, to_f16(passes, m).ok()?);
    (dh.value > 0.0).then_some((dh, mh))
}

#[inline(always)]
fn affine_group<P: Passes>(
    passes: P,
    x: &[f32],
    bits: u8,
    search: bool,
    codes: &mut [u8],
) -> std::result::Result<(f16, f16), GroupError> {
    let nmax = ((1u32 << bits) - 1) as f32;
    let (lo, hi, mo) = passes.range_and_moments(x);
    // min/max see infinities, and a NaN poisons the sum.
    if !(lo.is_finite() && hi.is_finite() && mo.x.is_finite()) {
        return Err(GroupError::NonFinite);
    }
    let range = hi - lo;
    if range <= 0.0 {
        codes.fill(0);
        return Ok((f16::ZERO, to_f16(passes, f64::from(lo))?.half));
    }
    // Plain min/max, with the scale and offset as stored.
    let mut best_d = to_f16(passes, f64::from(range / nmax))?;
    let mut best_m = to_f16(passes, f64::from(lo))?;
    if best_d.value <= 0.0 {
        // The range is below f16's resolution: one level represents the group.
        codes.fill(0);
        return Ok((f16::ZERO, to_f16(passes, mo.x / mo.n)?.half));
    }
    if search {
        // Candidates compare by their unrounded least-squares error: rounding to f16 moves
        // every candidate alike, and is accounted for by the refinement below.
        let mut best: Option<(CodeSums, f64, f64)> = None;
        let inv_range = 1.0 / range;
        let a = ASYM_STRETCH.map(|stretch| (nmax + stretch) * inv_range);
        let b = std::array::from_fn(|k| -lo * a[k] - ASYM_STRETCH[k] / 2.0);
        let candidates = passes.code_sums_many(x, a, b, 0.0, nmax);
        // The first candidate (no stretch) has min/max's own codes: its error as stored is
        // the bar to clear.
        let min_max_err = affine_error(&mo, &candidates[0], best_d.wide(), best_m.wide());
        for sums in candidates {
            // The least-squares error is Σx² − (Σx)²/n − num²/(n·det): the candidate with the
            // largest num²/det wins, compared by cross-multiplying (no division per candidate).
            let num = mo.n * sums.lx - sums.l * mo.x;
            let det = mo.n * sums.ll - sums.l * sums.l;
            if num > 0.0
                && det > 0.0
                && best.is_none_or(|(_, bn, bd)| num * num * bd > bn * bn * det)
            {
                best = Some((sums, num, det));
            }
        }
        let (min_max_d, min_max_m) = (best_d, best_m);
        if let Some((dh, mh)) = best
            .and_then(|(sums, _, _)| affine_fit(&mo, &sums))
            .and_then(|(d, m, _)| stored_pair(passes, d, m))
        {
            (best_d, best_m) = (dh, mh);
        }
        // Nearest codes for the stored pair, then a least-squares refit, while it helps.
        let mut best_err = f64::INFINITY;
        for _ in 0..REFINE_STEPS {
            let (a, b) = affine_map(best_d, best_m);
            let sums = passes.code_sums(x, a, b, 0.0, nmax);
            best_err = best_err.min(affine_error(&mo, &sums, best_d.wide(), best_m.wide()));
            let refit = affine_fit(&mo, &sums).and_then(|(d, m, _)| {
                let (dh, mh) = stored_pair(passes, d, m)?;
                Some((dh, mh, affine_error(&mo, &sums, dh.wide(), mh.wide())))
            });
            match refit {
                Some((d, m, err)) if err < best_err => (best_d, best_m, best_err) = (d, m, err),
                _ => break,
            }
        }
        if min_max_err < best_err {
            (best_d, best_m) = (min_max_d, min_max_m);
        }
    }
    let (a, b) = affine_map(best_d, best_m);
    passes.write_codes(x, a, b, 0.0, nmax, 0.0, codes);
    Ok((best_d.half, best_m.half))
}

/// The code map `l = x·a + b` that inverts `x = m + d·l`.
#[inline(always)]
fn affine_map(d: Stored, m: Stored) -> (f32, f32) {
    let a = 1.0 / d.value;
    (a, -m.value * a)
}

#[inline(always)]
fn symmetric_group<P: Passes>(
    passes: P,
    x: &[f32],
    bits: u8,
    search: bool,
    codes: &mut [u8],
) -> std::result::Result<(f16, f16), GroupError> {
    let half_levels = (1u32 << (bits - 1)) as f32;
    let (lo, hi, mo) = passes.range_and_moments(x);
    if !(lo.is_finite() && hi.is_finite() && mo.x.is_finite()) {
        return Err(GroupError::NonFinite);
    }
    // The value of largest magnitude maps onto code −2^(bits−1), the one extra negative level,
    // whatever its sign (llama.cpp's q4_0 trick): the scale is signed.
    let extreme = if -lo >= hi { lo } else { hi };
    let (qlo, qhi) = (-half_levels, half_levels - 1.0);
    let mut best_d = to_f16(passes, f64::from(extreme / -half_levels))?;
    if best_d.value == 0.0 {
        codes.fill(half_levels as u8);
        return Ok((f16::ZERO, f16::ZERO));
    }
    if search {
        let error = |s: &CodeSums, d: f64| d * d * s.ll - 2.0 * d * s.lx;
        let stored = |d: f64| to_f16(passes, d).ok().filter(|h| h.value != 0.0);
        // Candidates compare unrounded, as in the affine search.
        let mut best: Option<(f64, f64)> = None;
        for shrink in SYM_SHRINK {
            let a = -half_levels / (extreme * shrink);
            let sums = passes.code_sums(x, a, 0.0, qlo, qhi);
            if sums.ll > 0.0 {
                let d = sums.lx / sums.ll;
                let err = error(&sums, d);
                if best.is_none_or(|b| err < b.1) {
                    best = Some((d, err));
                }
            }
        }
        let min_max_d = best_d;
        let min_max_sums = passes.code_sums(x, 1.0 / min_max_d.value, 0.0, qlo, qhi);
        let min_max_err = error(&min_max_sums, min_max_d.wide());
        if let Some(d) = best.and_then(|(d, _)| stored(d)) {
            best_d = d;
        }
        let mut best_err = f64::INFINITY;
        for _ in 0..REFINE_STEPS {
            let sums = passes.code_sums(x, 1.0 / best_d.value, 0.0, qlo, qhi);
            best_err = best_err.min(error(&sums, best_d.wide()));
            let refit = (sums.ll > 0.0)
                .then(|| stored(sums.lx / sums.ll))
                .flatten()
                .map(|d| (d, error(&sums, d.wide())));
            match refit {
                Some((d, err)) if err < best_err => (best_d, best_err) = (d, err),
                _ => break,
            }
        }
        if min_max_err < best_err {
            best_d = min_max_d;
        }
    }
    let a = 1.0 / best_d.value;
    passes.write_codes(x, a, 0.0, qlo, qhi, half_levels, codes);
    Ok((best_d.half, Stored::ZERO.half))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_paths_agree_bit_for_bit() {
        let codes: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 16) as u8).collect();
        let scales: Vec<f16> = (0..20)
            .map(|g| f16::from_f32(0.01 + g as f32 * 0.003))
            .collect();
        let offsets: Vec<f16> = (0..20)
            .map(|g| f16::from_f32(-0.1 + g as f32 * 0.01))
            .collect();
        for (first, symmetric) in [(0, false), (0, true), (96, false), (130, true)] {
            let mut dispatched = Vec::new();
            decode_codes(
                &codes,
                first,
                64,
                4,
                symmetric,
                &scales,
                &offsets,
                &mut dispatched,
            );
            let mut portable = vec![0.0; codes.len()];
            decode_into(
                &codes,
                first,
                64,
                4,
                symmetric,
                &scales,
                &offsets,
                &mut portable,
            );
            assert_eq!(
                dispatched.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                portable.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            );
            // The value of code 0 at the start of the first whole group after `first`.
            let g = first.div_ceil(64);
            let at = g * 64 - first;
            let expected = if symmetric {
                -8.0 * scales[g].to_f32() + scales[g].to_f32() * f32::from(codes[at])
            } else {
                offsets[g].to_f32() + scales[g].to_f32() * f32::from(codes[at])
            };
            assert_eq!(dispatched[at], expected);
        }
    }
}
