//! Eight affine groups at a time (AVX2, FMA and F16C): the steps of
//! [`affine_group`](super::affine_group) with one group per lane for everything that is not a
//! pass over the values.
//!
//! One group alone spends most of its time outside its vector loops: a dozen horizontal sums,
//! f64 least-squares fits with their divisions, f16 roundings and candidate comparisons, all
//! scalar. Here each group's passes are the same eight-lane loops as the one-group path, the
//! eight groups' partial sums are then reduced together by a transposing tree that adds in the
//! order of [`reduce_lanes`](super::reduce_lanes) and leaves group `j` in lane `j`, and every
//! later step runs on eight groups at once (f64 steps four groups per vector). Each lane does
//! the scalar path's IEEE operations in the same order, so the results are the one-group
//! path's bit for bit. A batch where a group would leave the common path (a non-finite value,
//! a parameter beyond f16, a search without a usable candidate) is handed back whole.

use std::arch::x86_64::*;

use half::f16;

use super::avx2::{codes, lanes, write_codes};
use super::{ASYM_STRETCH, LANES, REFINE_STEPS, SUM_BLOCK};

/// How many groups a batch holds: one per f32 lane.
pub(super) const GROUPS: usize = 8;

// The refinement below is written out for one step, the search for three candidates.
const _: () = assert!(REFINE_STEPS == 1 && ASYM_STRETCH.len() == 3);

/// Whether groups of `group` values can be batched: whole chunks of eight values, and one
/// summation block per group (the one-group path's sums are then one tree per group).
pub(super) fn applies(group: usize) -> bool {
    group > 0 && group.is_multiple_of(LANES) && group <= SUM_BLOCK
}

/// Scales and offsets of a batch.
pub(super) type Params = ([f16; GROUPS], [f16; GROUPS]);

/// Quantizes `x` (eight groups of `group` values, [`applies`]) into `out`, or returns `None`
/// with nothing to rely on in `out` when a group needs the one-group path.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn affine_groups(
    x: &[f32],
    group: usize,
    bits: u8,
    search: bool,
    out: &mut [u8],
) -> Option<Params> {
    debug_assert!(applies(group) && x.len() == GROUPS * group && out.len() == x.len());
    let nmax = ((1u32 << bits) - 1) as f32;
    let n = _mm256_set1_pd(group as f64);
    let groups: [&[f32]; GROUPS] = std::array::from_fn(|j| &x[j * group..][..group]);

    let mut acc = [[_mm256_setzero_ps(); GROUPS]; 3];
    for (j, xs) in groups.iter().enumerate() {
        [acc[0][j], acc[1][j], acc[2][j]] = range_and_sum(xs);
    }
    let (lo, hi) = (reduce_min(acc[0]), reduce_max(acc[1]));
    let sx = wide_sum(reduce_add(acc[2]));
    let finite = bits_ps(_mm256_and_ps(finite_ps(lo), finite_ps(hi))) & finite_pd(sx);
    if finite != 0xff {
        return None;
    }
    let range = _mm256_sub_ps(hi, lo);
    let flat = _mm256_cmp_ps::<_CMP_LE_OQ>(range, _mm256_setzero_ps());
    // Plain min/max as stored; a scale rounding to zero means a group below f16's resolution.
    let d0 = round_f16(_mm256_div_ps(range, _mm256_set1_ps(nmax)));
    let m0 = round_f16(lo);
    let below = _mm256_andnot_ps(flat, _mm256_cmp_ps::<_CMP_LE_OQ>(d0, _mm256_setzero_ps()));
    let special = _mm256_or_ps(flat, below);
    // A flat group stores its value; one below resolution its mean (both with scale zero).
    let mean = round_f16(narrow(div_pd(sx, n)));
    let special_m = _mm256_blendv_ps(mean, m0, flat);
    // The one-group path stores both before looking at the scale, so both must fit in f16.
    let fits = _mm256_and_ps(finite_ps(d0), finite_ps(m0));
    if bits_ps(fits) & (bits_ps(finite_ps(mean)) | !bits_ps(below)) & 0xff != 0xff {
        return None;
    }
    let (mut best_d, mut best_m) = (d0, m0);
    if search {
        (best_d, best_m) = searched(&groups, n, nmax, lo, range, sx, special, d0, m0)?;
    }
    let best_d = _mm256_blendv_ps(best_d, _mm256_setzero_ps(), special);
    let best_m = _mm256_blendv_ps(best_m, special_m, special);

    let a = _mm256_div_ps(_mm256_set1_ps(1.0), best_d);
    let b = _mm256_mul_ps(negate(best_m), a);
    let (a, b, special) = (lanes(a), lanes(b), _mm256_movemask_ps(special));
    for (j, (xs, codes)) in groups.iter().zip(out.chunks_exact_mut(group)).enumerate() {
        if special & (1 << j) != 0 {
            codes.fill(0);
        } else {
            write_codes(xs, a[j], b[j], 0.0, nmax, 0.0, codes);
        }
    }
    Some((halves(best_d), halves(best_m)))
}

/// Σl, Σl², Σl·x of eight groups, one group per lane, widened to f64 (groups 0–3, 4–7).
struct Sums {
    l: [__m256d; 2],
    ll: [__m256d; 2],
    lx: [__m256d; 2],
}

/// The clipping search and its refinement: the stored pair (f16 values) that each group's
/// one-group search keeps. Lanes in `special` are ignored (the caller replaces them).
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
fn searched(
    groups: &[&[f32]; GROUPS],
    n: __m256d,
    nmax: f32,
    lo: __m256,
    range: __m256,
    sx: [__m256d; 2],
    special: __m256,
    d0: __m256,
    m0: __m256,
) -> Option<(__m256, __m256)> {
    let special = bits_ps(special);
    let zero = _mm256_setzero_pd();
    let inv_range = _mm256_div_ps(_mm256_set1_ps(1.0), range);
    let candidates = [0, 1, 2].map(|k| {
        let stretch = ASYM_STRETCH[k];
        let a = _mm256_mul_ps(_mm256_set1_ps(nmax + stretch), inv_range);
        let b = _mm256_sub_ps(_mm256_mul_ps(negate(lo), a), _mm256_set1_ps(stretch / 2.0));
        code_sums(groups, a, b, nmax)
    });
    let (d0_wide, m0_wide) = (widen(d0), widen(m0));
    let mut min_max_err = [zero; 2];
    let (mut fit_d, mut fit_m) = ([zero; 2], [zero; 2]);
    let mut found = 0;
    for h in 0..2 {
        min_max_err[h] = error(n, sx[h], &candidates[0], h, d0_wide[h], m0_wide[h]);
        // The candidate with the largest num²/det, first found on ties (as the one-group path).
        let (mut have, mut best_num, mut best_det, mut best_l) = (zero, zero, zero, zero);
        for sums in &candidates {
            let num = _mm256_sub_pd(
                _mm256_mul_pd(n, sums.lx[h]),
                _mm256_mul_pd(sums.l[h], sx[h]),
            );
            let det = _mm256_sub_pd(
                _mm256_mul_pd(n, sums.ll[h]),
                _mm256_mul_pd(sums.l[h], sums.l[h]),
            );
            let better = _mm256_cmp_pd::<_CMP_GT_OQ>(
                _mm256_mul_pd(_mm256_mul_pd(num, num), best_det),
                _mm256_mul_pd(_mm256_mul_pd(best_num, best_num), det),
            );
            let take = _mm256_and_pd(
                _mm256_and_pd(
                    _mm256_cmp_pd::<_CMP_GT_OQ>(num, zero),
                    _mm256_cmp_pd::<_CMP_GT_OQ>(det, zero),
                ),
                _mm256_or_pd(_mm256_andnot_pd(have, all_ones_pd()), better),
            );
            best_num = _mm256_blendv_pd(best_num, num, take);
            best_det = _mm256_blendv_pd(best_det, det, take);
            best_l = _mm256_blendv_pd(best_l, sums.l[h], take);
            have = _mm256_or_pd(have, take);
        }
        // Its least-squares fit: d = num/det, m = (Σx − d·Σl)/n.
        fit_d[h] = _mm256_div_pd(best_num, best_det);
        fit_m[h] = _mm256_div_pd(_mm256_sub_pd(sx[h], _mm256_mul_pd(fit_d[h], best_l)), n);
        let positive = _mm256_cmp_pd::<_CMP_GT_OQ>(fit_d[h], zero);
        found |= bits_pd(_mm256_and_pd(have, positive)) << (4 * h);
    }
    let (d, m) = (round_f16(narrow(fit_d)), round_f16(narrow(fit_m)));
    let stored = bits_ps(_mm256_and_ps(
        _mm256_and_ps(finite_ps(d), finite_ps(m)),
        _mm256_cmp_ps::<_CMP_GT_OQ>(d, _mm256_setzero_ps()),
    ));
    // (The one-group path then refines from min/max: rare enough to leave to it.)
    if (found & stored) | special != 0xff {
        return None;
    }

    // One refinement step: nearest codes for the stored pair, then a least-squares refit.
    let a = _mm256_div_ps(_mm256_set1_ps(1.0), d);
    let b = _mm256_mul_ps(negate(m), a);
    let sums = code_sums(groups, a, b, nmax);
    let (d_wide, m_wide) = (widen(d), widen(m));
    let (mut err, mut refit_d, mut refit_m) = ([zero; 2], [zero; 2], [zero; 2]);
    let (mut numbers, mut valid) = (0, 0);
    for h in 0..2 {
        err[h] = error(n, sx[h], &sums, h, d_wide[h], m_wide[h]);
        numbers |= bits_pd(_mm256_cmp_pd::<_CMP_ORD_Q>(err[h], err[h])) << (4 * h);
        let det = _mm256_sub_pd(
            _mm256_mul_pd(n, sums.ll[h]),
            _mm256_mul_pd(sums.l[h], sums.l[h]),
        );
        let num = _mm256_sub_pd(
            _mm256_mul_pd(n, sums.lx[h]),
            _mm256_mul_pd(sums.l[h], sx[h]),
        );
        refit_d[h] = _mm256_div_pd(num, det);
        refit_m[h] = _mm256_div_pd(
            _mm256_sub_pd(sx[h], _mm256_mul_pd(refit_d[h], sums.l[h])),
            n,
        );
        let fitted = _mm256_and_pd(
            _mm256_cmp_pd::<_CMP_GT_OQ>(det, zero),
            _mm256_cmp_pd::<_CMP_GT_OQ>(refit_d[h], zero),
        );
        valid |= bits_pd(fitted) << (4 * h);
    }
    if numbers | special != 0xff {
        return None;
    }
    let (refit_d, refit_m) = (round_f16(narrow(refit_d)), round_f16(narrow(refit_m)));
    valid &= bits_ps(_mm256_and_ps(
        _mm256_and_ps(finite_ps(refit_d), finite_ps(refit_m)),
        _mm256_cmp_ps::<_CMP_GT_OQ>(refit_d, _mm256_setzero_ps()),
    ));
    let (refit_d_wide, refit_m_wide) = (widen(refit_d), widen(refit_m));
    let (mut improves, mut min_max_wins) = (0, 0);
    for h in 0..2 {
        let refit_err = error(n, sx[h], &sums, h, refit_d_wide[h], refit_m_wide[h]);
        let lower = _mm256_cmp_pd::<_CMP_LT_OQ>(refit_err, err[h]);
        improves |= bits_pd(lower) << (4 * h);
        let kept = _mm256_blendv_pd(err[h], refit_err, mask_pd(valid & improves, h));
        min_max_wins |= bits_pd(_mm256_cmp_pd::<_CMP_LT_OQ>(min_max_err[h], kept)) << (4 * h);
    }
    let take = mask_ps(valid & improves);
    let (d, m) = (
        _mm256_blendv_ps(d, refit_d, take),
        _mm256_blendv_ps(m, refit_m, take),
    );
    let back = mask_ps(min_max_wins);
    Some((_mm256_blendv_ps(d, d0, back), _mm256_blendv_ps(m, m0, back)))
}

/// The code sums of eight groups for per-group maps `l = x·a + b` (lane `j` for group `j`).
#[target_feature(enable = "avx2,fma")]
#[inline]
fn code_sums(groups: &[&[f32]; GROUPS], a: __m256, b: __m256, nmax: f32) -> Sums {
    let (a, b) = (lanes(a), lanes(b));
    let (lo, hi) = (_mm256_setzero_ps(), _mm256_set1_ps(nmax));
    let mut acc = [[_mm256_setzero_ps(); GROUPS]; 3];
    // Groups j and j + 4 side by side: two independent chains of sums in flight.
    for j in 0..GROUPS / 2 {
        let k = j + GROUPS / 2;
        let (va, vb) = (_mm256_set1_ps(a[j]), _mm256_set1_ps(b[j]));
        let (wa, wb) = (_mm256_set1_ps(a[k]), _mm256_set1_ps(b[k]));
        let mut s = [_mm256_setzero_ps(); 3];
        let mut t = [_mm256_setzero_ps(); 3];
        for (c, d) in groups[j]
            .chunks_exact(LANES)
            .zip(groups[k].chunks_exact(LANES))
        {
            // SAFETY: `c` and `d` hold exactly 8 f32 each.
            let (v, w) = unsafe { (_mm256_loadu_ps(c.as_ptr()), _mm256_loadu_ps(d.as_ptr())) };
            let (l, m) = (codes(v, va, vb, lo, hi), codes(w, wa, wb, lo, hi));
            (s, t) = (add_codes(s, l, v), add_codes(t, m, w));
        }
        for i in 0..3 {
            (acc[i][j], acc[i][k]) = (s[i], t[i]);
        }
    }
    Sums {
        l: wide_sum(reduce_add(acc[0])),
        ll: wide_sum(reduce_add(acc[1])),
        lx: wide_sum(reduce_add(acc[2])),
    }
}

/// Adds one chunk's codes `l` of values `v` to running lanes of (Σl, Σl², Σl·x).
#[target_feature(enable = "avx2,fma")]
#[inline]
fn add_codes(sums: [__m256; 3], l: __m256, v: __m256) -> [__m256; 3] {
    [
        _mm256_add_ps(sums[0], l),
        _mm256_fmadd_ps(l, l, sums[1]),
        _mm256_fmadd_ps(l, v, sums[2]),
    ]
}

/// One group's lanes of min, max and Σx (the one-group path's first pass).
#[target_feature(enable = "avx2,fma")]
#[inline]
fn range_and_sum(x: &[f32]) -> [__m256; 3] {
    let (mut lo, mut hi, mut sum) = (
        _mm256_set1_ps(f32::MAX),
        _mm256_set1_ps(f32::MIN),
        _mm256_setzero_ps(),
    );
    for c in x.chunks_exact(LANES) {
        // SAFETY: `c` holds exactly 8 f32.
        let v = unsafe { _mm256_loadu_ps(c.as_ptr()) };
        lo = _mm256_min_ps(v, lo);
        hi = _mm256_max_ps(v, hi);
        sum = _mm256_add_ps(sum, v);
    }
    [lo, hi, sum]
}

/// The one-group path's `affine_error` for lanes `4h..4h+4`, operation for operation.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn error(n: __m256d, x: __m256d, s: &Sums, h: usize, d: __m256d, m: __m256d) -> __m256d {
    let two = _mm256_set1_pd(2.0);
    let t1 = _mm256_mul_pd(_mm256_mul_pd(_mm256_set1_pd(-2.0), d), s.lx[h]);
    let t2 = _mm256_mul_pd(_mm256_mul_pd(two, m), x);
    let t3 = _mm256_mul_pd(_mm256_mul_pd(d, d), s.ll[h]);
    let t4 = _mm256_mul_pd(_mm256_mul_pd(_mm256_mul_pd(two, d), m), s.l[h]);
    let t5 = _mm256_mul_pd(_mm256_mul_pd(n, m), m);
    _mm256_add_pd(
        _mm256_add_pd(_mm256_add_pd(_mm256_sub_pd(t1, t2), t3), t4),
        t5,
    )
}

/// Reduces eight groups' lane vectors to one vector with group `j` in lane `j`, combining
/// lanes in the tree order of the one-group horizontal folds: `(v0∘v4 ∘ v2∘v6) ∘ (v1∘v5 ∘
/// v3∘v7)`, lower lanes first.
macro_rules! transposing_reduce {
    ($name:ident, $op:ident) => {
        #[target_feature(enable = "avx2,fma")]
        #[inline]
        fn $name(v: [__m256; GROUPS]) -> __m256 {
            // Groups j and j+4 share a vector: [q0..q3 of j | q0..q3 of j+4], qi = vi∘vi+4.
            let s0 = $op(
                _mm256_permute2f128_ps::<0x20>(v[0], v[4]),
                _mm256_permute2f128_ps::<0x31>(v[0], v[4]),
            );
            let s1 = $op(
                _mm256_permute2f128_ps::<0x20>(v[1], v[5]),
                _mm256_permute2f128_ps::<0x31>(v[1], v[5]),
            );
            let s2 = $op(
                _mm256_permute2f128_ps::<0x20>(v[2], v[6]),
                _mm256_permute2f128_ps::<0x31>(v[2], v[6]),
            );
            let s3 = $op(
                _mm256_permute2f128_ps::<0x20>(v[3], v[7]),
                _mm256_permute2f128_ps::<0x31>(v[3], v[7]),
            );
            // [h0 h1 of j, h0 h1 of j+1 | the same of j+4, j+5], h0 = q0∘q2, h1 = q1∘q3.
            let t01 = $op(
                _mm256_shuffle_ps::<0x44>(s0, s1),
                _mm256_shuffle_ps::<0xEE>(s0, s1),
            );
            let t23 = $op(
                _mm256_shuffle_ps::<0x44>(s2, s3),
                _mm256_shuffle_ps::<0xEE>(s2, s3),
            );
            // h0∘h1 of each group, in group order.
            $op(
                _mm256_shuffle_ps::<0x88>(t01, t23),
                _mm256_shuffle_ps::<0xDD>(t01, t23),
            )
        }
    };
}

transposing_reduce!(reduce_add, _mm256_add_ps);
transposing_reduce!(reduce_min, _mm256_min_ps);
transposing_reduce!(reduce_max, _mm256_max_ps);

/// `0.0 + f64::from(v)` per lane, as the one-group path accumulates its f64 totals.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn wide_sum(v: __m256) -> [__m256d; 2] {
    let [a, b] = widen(v);
    let zero = _mm256_setzero_pd();
    [_mm256_add_pd(zero, a), _mm256_add_pd(zero, b)]
}

#[target_feature(enable = "avx2,fma")]
#[inline]
fn widen(v: __m256) -> [__m256d; 2] {
    [
        _mm256_cvtps_pd(_mm256_castps256_ps128(v)),
        _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v)),
    ]
}

/// `as f32` per lane (to nearest, ties to even).
#[target_feature(enable = "avx2,fma")]
#[inline]
fn narrow(v: [__m256d; 2]) -> __m256 {
    _mm256_set_m128(_mm256_cvtpd_ps(v[1]), _mm256_cvtpd_ps(v[0]))
}

#[target_feature(enable = "avx2,fma")]
#[inline]
fn div_pd(a: [__m256d; 2], b: __m256d) -> [__m256d; 2] {
    [_mm256_div_pd(a[0], b), _mm256_div_pd(a[1], b)]
}

/// Each lane rounded to f16 (to nearest, ties to even) and back: the value decoding will use.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn round_f16(v: __m256) -> __m256 {
    _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v))
}

/// The f16 of lanes holding f16 values (exact).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn halves(v: __m256) -> [f16; GROUPS] {
    let mut bits = [0u16; GROUPS];
    // SAFETY: `bits` holds 8 u16; an unaligned store has no alignment requirement.
    unsafe {
        _mm_storeu_si128(
            bits.as_mut_ptr().cast(),
            _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v),
        )
    };
    bits.map(f16::from_bits)
}

#[target_feature(enable = "avx2,fma")]
#[inline]
fn negate(v: __m256) -> __m256 {
    _mm256_xor_ps(v, _mm256_set1_ps(-0.0))
}

#[target_feature(enable = "avx2,fma")]
#[inline]
fn finite_ps(v: __m256) -> __m256 {
    let magnitude = _mm256_andnot_ps(_mm256_set1_ps(-0.0), v);
    _mm256_cmp_ps::<_CMP_LT_OQ>(magnitude, _mm256_set1_ps(f32::INFINITY))
}

#[target_feature(enable = "avx2,fma")]
#[inline]
fn finite_pd(v: [__m256d; 2]) -> u32 {
    let inf = _mm256_set1_pd(f64::INFINITY);
    let sign = _mm256_set1_pd(-0.0);
    let lo = _mm256_cmp_pd::<_CMP_LT_OQ>(_mm256_andnot_pd(sign, v[0]), inf);
    let hi = _mm256_cmp_pd::<_CMP_LT_OQ>(_mm256_andnot_pd(sign, v[1]), inf);
    bits_pd(lo) | bits_pd(hi) << 4
}

#[target_feature(enable = "avx2,fma")]
#[inline]
fn all_ones_pd() -> __m256d {
    _mm256_castsi256_pd(_mm256_set1_epi64x(-1))
}

/// Lane `j` of a mask as bit `j`.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn bits_ps(mask: __m256) -> u32 {
    _mm256_movemask_ps(mask) as u32
}

#[target_feature(enable = "avx2,fma")]
#[inline]
fn bits_pd(mask: __m256d) -> u32 {
    _mm256_movemask_pd(mask) as u32
}

/// Bits `0..8` as an f32 lane mask.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn mask_ps(bits: u32) -> __m256 {
    let lane_bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    let set = _mm256_and_si256(_mm256_set1_epi32(bits as i32), lane_bits);
    _mm256_castsi256_ps(_mm256_cmpeq_epi32(set, lane_bits))
}

/// Bits `4h..4h+4` as an f64 lane mask.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn mask_pd(bits: u32, h: usize) -> __m256d {
    let lane_bits = _mm256_setr_epi64x(1, 2, 4, 8);
    let set = _mm256_and_si256(_mm256_set1_epi64x(i64::from(bits >> (4 * h))), lane_bits);
    _mm256_castsi256_pd(_mm256_cmpeq_epi64(set, lane_bits))
}
