//! Eight f32 lanes, portable or AVX2, for the block search: one lane per sub-block, so a
//! pass over eight sub-blocks is plain vertical arithmetic with no horizontal sums.
//!
//! Every operation is one IEEE operation per lane (no fused multiply-add, comparisons and
//! minima as `minps`/`maxps` define them), so the search, written once over [`Vector`], gives
//! the same bits on either path.

use std::ops::{Add, BitAnd, BitOr, Div, Mul, Not, Sub};

use half::f16;

use super::{GRID, GRID_MIDPOINTS};

pub const LANES: usize = 8;

/// Makes vectors; the only way to get one, so a vector of a SIMD type proves its CPU.
pub trait Lanes: Copy {
    type V: Vector;
    fn splat(self, v: f32) -> Self::V;
    fn load(self, a: &[f32; LANES]) -> Self::V;
    /// Eight rows of eight values as eight vectors of their columns: lane `j` of `out[i]`
    /// is `rows[j][i]`.
    fn transpose(self, rows: [&[f32; LANES]; LANES], out: &mut [Self::V]);
}

pub trait Vector:
    Copy + Add<Output = Self> + Sub<Output = Self> + Mul<Output = Self> + Div<Output = Self>
{
    type M: Mask<Self>;
    fn store(self, a: &mut [f32; LANES]);
    /// The lanes, small integers held as f32 (codes), as i32.
    fn store_i32(self, a: &mut [i32; LANES]);
    /// `if self < o { self } else { o }` per lane (`minps`).
    fn min(self, o: Self) -> Self;
    /// `if self > o { self } else { o }` per lane (`maxps`).
    fn max(self, o: Self) -> Self;
    fn abs(self) -> Self;
    fn gt(self, o: Self) -> Self::M;
    fn lt(self, o: Self) -> Self::M;
    fn le(self, o: Self) -> Self::M;
    fn eq(self, o: Self) -> Self::M;
    /// Rounded to the nearest f16 (ties to even) and back: what storing it as f16 keeps.
    fn round_f16(self) -> Self;
    /// The index of the IQ4 grid level nearest each lane (the number of midpoints below
    /// it, as f32) and that level.
    fn grid(self) -> (Self, Self);
}

pub trait Mask<V>:
    Copy + BitAnd<Output = Self> + BitOr<Output = Self> + Not<Output = Self>
{
    /// `if mask { a } else { b }` per lane.
    fn select(self, a: V, b: V) -> V;
    fn any(self) -> bool;
}

/// Plain Rust, lane by lane: the reference, and what runs where AVX2 is missing.
#[derive(Clone, Copy)]
pub struct Portable;

#[derive(Clone, Copy)]
pub struct F8([f32; LANES]);

#[derive(Clone, Copy)]
pub struct B8([bool; LANES]);

impl Lanes for Portable {
    type V = F8;
    #[inline(always)]
    fn splat(self, v: f32) -> F8 {
        F8([v; LANES])
    }
    #[inline(always)]
    fn load(self, a: &[f32; LANES]) -> F8 {
        F8(*a)
    }
    #[inline(always)]
    fn transpose(self, rows: [&[f32; LANES]; LANES], out: &mut [F8]) {
        for (i, out) in out.iter_mut().enumerate().take(LANES) {
            *out = F8(std::array::from_fn(|j| rows[j][i]));
        }
    }
}

#[inline(always)]
fn zip(a: F8, b: F8, f: impl Fn(f32, f32) -> f32) -> F8 {
    F8(std::array::from_fn(|k| f(a.0[k], b.0[k])))
}

#[inline(always)]
fn test(a: F8, b: F8, f: impl Fn(f32, f32) -> bool) -> B8 {
    B8(std::array::from_fn(|k| f(a.0[k], b.0[k])))
}

impl Add for F8 {
    type Output = F8;
    #[inline(always)]
    fn add(self, o: F8) -> F8 {
        zip(self, o, |a, b| a + b)
    }
}

impl Sub for F8 {
    type Output = F8;
    #[inline(always)]
    fn sub(self, o: F8) -> F8 {
        zip(self, o, |a, b| a - b)
    }
}

impl Mul for F8 {
    type Output = F8;
    #[inline(always)]
    fn mul(self, o: F8) -> F8 {
        zip(self, o, |a, b| a * b)
    }
}

impl Div for F8 {
    type Output = F8;
    #[inline(always)]
    fn div(self, o: F8) -> F8 {
        zip(self, o, |a, b| a / b)
    }
}

impl Vector for F8 {
    type M = B8;
    #[inline(always)]
    fn store(self, a: &mut [f32; LANES]) {
        *a = self.0;
    }
    #[inline(always)]
    fn store_i32(self, a: &mut [i32; LANES]) {
        *a = self.0.map(|v| v as i32);
    }
    #[inline(always)]
    fn min(self, o: F8) -> F8 {
        zip(self, o, |a, b| if a < b { a } else { b })
    }
    #[inline(always)]
    fn max(self, o: F8) -> F8 {
        zip(self, o, |a, b| if a > b { a } else { b })
    }
    #[inline(always)]
    fn abs(self) -> F8 {
        F8(self.0.map(f32::abs))
    }
    #[inline(always)]
    fn gt(self, o: F8) -> B8 {
        test(self, o, |a, b| a > b)
    }
    #[inline(always)]
    fn lt(self, o: F8) -> B8 {
        test(self, o, |a, b| a < b)
    }
    #[inline(always)]
    fn le(self, o: F8) -> B8 {
        test(self, o, |a, b| a <= b)
    }
    #[inline(always)]
    fn eq(self, o: F8) -> B8 {
        test(self, o, |a, b| a == b)
    }
    #[inline(always)]
    fn round_f16(self) -> F8 {
        F8(self.0.map(|v| f16::from_f32(v).to_f32()))
    }
    #[inline(always)]
    fn grid(self) -> (F8, F8) {
        let n = self
            .0
            .map(|t| GRID_MIDPOINTS.iter().filter(|&&m| t > m).count());
        (F8(n.map(|n| n as f32)), F8(n.map(|n| GRID[n])))
    }
}

impl BitAnd for B8 {
    type Output = B8;
    #[inline(always)]
    fn bitand(self, o: B8) -> B8 {
        B8(std::array::from_fn(|k| self.0[k] & o.0[k]))
    }
}

impl BitOr for B8 {
    type Output = B8;
    #[inline(always)]
    fn bitor(self, o: B8) -> B8 {
        B8(std::array::from_fn(|k| self.0[k] | o.0[k]))
    }
}

impl Not for B8 {
    type Output = B8;
    #[inline(always)]
    fn not(self) -> B8 {
        B8(self.0.map(|b| !b))
    }
}

impl Mask<F8> for B8 {
    #[inline(always)]
    fn select(self, a: F8, b: F8) -> F8 {
        F8(std::array::from_fn(
            |k| if self.0[k] { a.0[k] } else { b.0[k] },
        ))
    }
    #[inline(always)]
    fn any(self) -> bool {
        self.0.iter().any(|&b| b)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! [`Portable`](super::Portable)'s lanes as AVX2 registers. An [`Avx`] is made only by
    //! the [`Avx2`] token, which `Avx2::detect` makes only where AVX2 and F16C are present:
    //! so every operation on one may use them.

    use std::arch::x86_64::*;
    use std::ops::{Add, BitAnd, BitOr, Div, Mul, Not, Sub};

    use super::{GRID, GRID_MIDPOINTS, LANES, Lanes, Mask, Vector};
    use crate::kernels::cpu::Avx2;

    #[derive(Clone, Copy)]
    pub struct Avx(__m256);

    /// A lane mask: all bits set where true (a comparison's result).
    #[derive(Clone, Copy)]
    pub struct AvxMask(__m256);

    impl Lanes for Avx2 {
        type V = Avx;
        #[inline(always)]
        fn splat(self, v: f32) -> Avx {
            // SAFETY: `self` is the token `Avx2::detect` makes only where AVX2 is present.
            unsafe { Avx(_mm256_set1_ps(v)) }
        }
        #[inline(always)]
        fn load(self, a: &[f32; LANES]) -> Avx {
            // SAFETY: `a` holds 8 f32; an unaligned load has no alignment requirement.
            unsafe { Avx(_mm256_loadu_ps(a.as_ptr())) }
        }
        #[inline(always)]
        fn transpose(self, rows: [&[f32; LANES]; LANES], out: &mut [Avx]) {
            // SAFETY: an `Avx` or `AvxMask` exists only where AVX2 was found (see above).
            unsafe {
                let mut r = [_mm256_setzero_ps(); LANES];
                for (r, row) in r.iter_mut().zip(rows) {
                    *r = _mm256_loadu_ps(row.as_ptr());
                }
                // Pairs of rows interleaved, then pairs of pairs, then the 128-bit halves.
                let t0 = _mm256_unpacklo_ps(r[0], r[1]);
                let t1 = _mm256_unpackhi_ps(r[0], r[1]);
                let t2 = _mm256_unpacklo_ps(r[2], r[3]);
                let t3 = _mm256_unpackhi_ps(r[2], r[3]);
                let t4 = _mm256_unpacklo_ps(r[4], r[5]);
                let t5 = _mm256_unpackhi_ps(r[4], r[5]);
                let t6 = _mm256_unpacklo_ps(r[6], r[7]);
                let t7 = _mm256_unpackhi_ps(r[6], r[7]);
                let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
                let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
                let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
                let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
                let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
                let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
                let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
                let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
                out[0] = Avx(_mm256_permute2f128_ps::<0x20>(u0, u4));
                out[1] = Avx(_mm256_permute2f128_ps::<0x20>(u1, u5));
                out[2] = Avx(_mm256_permute2f128_ps::<0x20>(u2, u6));
                out[3] = Avx(_mm256_permute2f128_ps::<0x20>(u3, u7));
                out[4] = Avx(_mm256_permute2f128_ps::<0x31>(u0, u4));
                out[5] = Avx(_mm256_permute2f128_ps::<0x31>(u1, u5));
                out[6] = Avx(_mm256_permute2f128_ps::<0x31>(u2, u6));
                out[7] = Avx(_mm256_permute2f128_ps::<0x31>(u3, u7));
            }
        }
    }

    macro_rules! binary {
        ($trait:ident, $method:ident, $intrinsic:ident) => {
            impl $trait for Avx {
                type Output = Avx;
                #[inline(always)]
                fn $method(self, o: Avx) -> Avx {
                    // SAFETY: an `Avx` or `AvxMask` exists only where AVX2 was found (see above).
                    unsafe { Avx($intrinsic(self.0, o.0)) }
                }
            }
        };
    }
    binary!(Add, add, _mm256_add_ps);
    binary!(Sub, sub, _mm256_sub_ps);
    binary!(Mul, mul, _mm256_mul_ps);
    binary!(Div, div, _mm256_div_ps);

    impl Vector for Avx {
        type M = AvxMask;
        #[inline(always)]
        fn store(self, a: &mut [f32; LANES]) {
            // SAFETY: an `Avx` or `AvxMask` exists only where AVX2 was found (see above).
            unsafe { _mm256_storeu_ps(a.as_mut_ptr(), self.0) }
        }
        #[inline(always)]
        fn store_i32(self, a: &mut [i32; LANES]) {
            // Integral values: truncation is exact.
            // SAFETY: an `Avx` or `AvxMask` exists only where AVX2 was found (see above).
            unsafe { _mm256_storeu_si256(a.as_mut_ptr().cast(), _mm256_cvttps_epi32(self.0)) }
        }
        #[inline(always)]
        fn min(self, o: Avx) -> Avx {
            // SAFETY: an `Avx` or `AvxMask` exists only where AVX2 was found (see above).
            unsafe { Avx(_mm256_min_ps(self.0, o.0)) }
        }
        #[inline(always)]
        fn max(self, o: Avx) -> Avx {
            // SAFETY: an `Avx` or `AvxMask` exists only where AVX2 was found (see above).
            unsafe { Avx(_mm256_max_ps(self.0, o.0)) }
        }
        #[inline(always)]
        fn abs(self) -> Avx {
            // SAFETY: an `Avx` or `AvxMask` exists only where AVX2 was found (see above).
            unsafe { Avx(_mm256_andnot_ps(_mm256_set1_ps(-0.0), self.0)) }
        }
        #[inline(always)]
        fn gt(self, o: Avx) -> AvxMask {
            // SAFETY: an `Avx` or `AvxMask` exists only where AVX2 was found (see above).
            unsafe { AvxMask(_mm256_cmp_ps::<_CMP_GT_OQ>(self.0, o.0)) }
        }
        #[inline(always)]
        fn lt(self, o: Avx) -> AvxMask {
            // SAFETY: an `Avx` or `AvxMask` exists only where AVX2 was found (see above).
            unsafe { AvxMask(_mm256_cmp_ps::<_CMP_LT_OQ>(self.0, o.0)) }
        }
        #[inline(always)]
        fn le(self, o: Avx) -> AvxMask {
            // SAFETY: an `Avx` or `AvxMask` exists only where AVX2 was found (see above).
            unsafe { AvxMask(_mm256_cmp_ps::<_CMP_LE_OQ>(self.0, o.0)) }
        }
        #[inline(always)]
        fn eq(self, o: Avx) -> AvxMask {
            // SAFETY: an `Avx` or `AvxMask` exists only where AVX2 was found (see above).
            unsafe { AvxMask(_mm256_cmp_ps::<_CMP_EQ_OQ>(self.0, o.0)) }
        }
        #[inline(always)]
        fn round_f16(self) -> Avx {
            // SAFETY: an `Avx` or `AvxMask` exists only where AVX2 was found (see above).
            unsafe {
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(self.0);
                Avx(_mm256_cvtph_ps(h))
            }
        }
        #[inline(always)]
        fn grid(self) -> (Avx, Avx) {
            // SAFETY: an `Avx` or `AvxMask` exists only where AVX2 was found (see above).
            unsafe {
                // The number of midpoints below t by binary search over the 16 slots of
                // the sorted midpoints (slot 15 is +inf, never below): four comparisons, each
                // against the midpoint its lane's range so far points at. The same count as
                // the portable path's.
                let mids_lo = _mm256_setr_ps(
                    GRID_MIDPOINTS[0],
                    GRID_MIDPOINTS[1],
                    GRID_MIDPOINTS[2],
                    GRID_MIDPOINTS[3],
                    GRID_MIDPOINTS[4],
                    GRID_MIDPOINTS[5],
                    GRID_MIDPOINTS[6],
                    GRID_MIDPOINTS[7],
                );
                let mids_hi = _mm256_setr_ps(
                    GRID_MIDPOINTS[8],
                    GRID_MIDPOINTS[9],
                    GRID_MIDPOINTS[10],
                    GRID_MIDPOINTS[11],
                    GRID_MIDPOINTS[12],
                    GRID_MIDPOINTS[13],
                    GRID_MIDPOINTS[14],
                    f32::INFINITY,
                );
                let mut n = _mm256_setzero_si256();
                for step in [8, 4, 2, 1] {
                    n = advance(self.0, n, step, mids_lo, mids_hi);
                }
                let grid_lo = _mm256_setr_ps(
                    GRID[0], GRID[1], GRID[2], GRID[3], GRID[4], GRID[5], GRID[6], GRID[7],
                );
                let grid_hi = _mm256_setr_ps(
                    GRID[8], GRID[9], GRID[10], GRID[11], GRID[12], GRID[13], GRID[14], GRID[15],
                );
                let low = _mm256_permutevar8x32_ps(grid_lo, n);
                let high = _mm256_permutevar8x32_ps(grid_hi, n);
                let upper = _mm256_castsi256_ps(_mm256_cmpgt_epi32(n, _mm256_set1_epi32(7)));
                (
                    Avx(_mm256_cvtepi32_ps(n)),
                    Avx(_mm256_blendv_ps(low, high, upper)),
                )
            }
        }
    }

    impl BitAnd for AvxMask {
        type Output = AvxMask;
        #[inline(always)]
        fn bitand(self, o: AvxMask) -> AvxMask {
            // SAFETY: an `Avx` or `AvxMask` exists only where AVX2 was found (see above).
            unsafe { AvxMask(_mm256_and_ps(self.0, o.0)) }
        }
    }

    impl BitOr for AvxMask {
        type Output = AvxMask;
        #[inline(always)]
        fn bitor(self, o: AvxMask) -> AvxMask {
            // SAFETY: an `Avx` or `AvxMask` exists only where AVX2 was found (see above).
            unsafe { AvxMask(_mm256_or_ps(self.0, o.0)) }
        }
    }

    impl Not for AvxMask {
        type Output = AvxMask;
        #[inline(always)]
        fn not(self) -> AvxMask {
            // SAFETY: an `Avx` or `AvxMask` exists only where AVX2 was found (see above).
            unsafe {
                let ones = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
                AvxMask(_mm256_xor_ps(self.0, ones))
            }
        }
    }

    impl Mask<Avx> for AvxMask {
        #[inline(always)]
        fn select(self, a: Avx, b: Avx) -> Avx {
            // SAFETY: an `Avx` or `AvxMask` exists only where AVX2 was found (see above).
            unsafe { Avx(_mm256_blendv_ps(b.0, a.0, self.0)) }
        }
        #[inline(always)]
        fn any(self) -> bool {
            // SAFETY: an `Avx` or `AvxMask` exists only where AVX2 was found (see above).
            unsafe { _mm256_movemask_ps(self.0) != 0 }
        }
    }

    /// One step of the grid's binary search: `n + step` in the lanes where `t` is above
    /// midpoint slot `n + step − 1` (slots 0..8 in `lo`, 8..16 in `hi`), else `n`. A plain
    /// function, not a closure, so the intrinsics inline into the AVX2 caller.
    #[inline(always)]
    unsafe fn advance(t: __m256, n: __m256i, step: i32, lo: __m256, hi: __m256) -> __m256i {
        // SAFETY: called from `Avx::grid` only, where AVX2 was found.
        unsafe {
            let probe = _mm256_add_epi32(n, _mm256_set1_epi32(step - 1));
            let low = _mm256_permutevar8x32_ps(lo, probe);
            let high = _mm256_permutevar8x32_ps(hi, probe);
            let upper = _mm256_cmpgt_epi32(probe, _mm256_set1_epi32(7));
            let midpoint = _mm256_blendv_ps(low, high, _mm256_castsi256_ps(upper));
            let above = _mm256_cmp_ps::<_CMP_GT_OQ>(t, midpoint);
            let add = _mm256_and_si256(_mm256_castps_si256(above), _mm256_set1_epi32(step));
            _mm256_add_epi32(n, add)
        }
    }
}
