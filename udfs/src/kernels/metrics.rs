//! Quality metrics between an original row and its reconstruction. Sums leave each short block
//! in f64 (see [`sums`]): the differences being measured are small next to the values (a cosine
//! of 0.99999 is read from the fifth decimal).

use super::error::{KernelError, Result};

/// Every metric of a pair of rows, from one pass.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PairSums {
    pub n: usize,
    pub dot: f64,
    pub aa: f64,
    pub bb: f64,
    /// Σ (a − b)²
    pub sq_err: f64,
    pub max_abs_err: f64,
}

impl PairSums {
    pub fn of(a: &[f32], b: &[f32]) -> Result<Self> {
        let mut sums = PairSums::default();
        sums.accumulate(a, b)?;
        Ok(sums)
    }

    /// Continues the sums with the next part of a pair of rows. Parts whose lengths are
    /// multiples of [`BLOCK`] (all but the last) give exactly [`of`](PairSums::of) of the
    /// whole rows, bit for bit: blocks are added in the same order. This lets a caller
    /// rebuild a long row piece by piece in a cache-sized buffer.
    pub fn accumulate(&mut self, a: &[f32], b: &[f32]) -> Result<()> {
        if a.len() != b.len() {
            return Err(KernelError::LengthMismatch {
                left: a.len(),
                right: b.len(),
            });
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(cpu) = super::cpu::Avx2::detect() {
            // SAFETY: `cpu` proves AVX2. The same code as the portable path, in the same order
            // (no FMA contraction): results are bit for bit the same, only the vectors wider.
            return unsafe { sums_avx2(cpu, self, a, b) };
        }
        sums(self, a, b)
    }

    /// Adds another row's sums (for whole-tensor metrics).
    pub fn merge(&mut self, other: &PairSums) {
        self.n += other.n;
        self.dot += other.dot;
        self.aa += other.aa;
        self.bb += other.bb;
        self.sq_err += other.sq_err;
        self.max_abs_err = self.max_abs_err.max(other.max_abs_err);
    }

    /// Cosine similarity of `a` and its reconstruction `b`: the one definition behind every
    /// cosine ArrowQuant reports (`cosine_similarity`, `tensor_cosine`, `sums_cosine`, the
    /// quantize report, the Python batch API).
    /// - `None` for no values;
    /// - 1 when `b` reproduces `a` exactly (Σ(a−b)² = 0), rows of zeros included: nothing
    ///   was lost;
    /// - `None` when one side is all zeros and the other is not: the angle is undefined;
    /// - otherwise Σab / (√Σa² · √Σb²), clamped to [−1, 1] (rounding can step past 1).
    pub fn cosine(&self) -> Option<f64> {
        if self.n == 0 {
            return None;
        }
        if self.sq_err == 0.0 {
            return Some(1.0);
        }
        if self.aa <= 0.0 || self.bb <= 0.0 {
            return None;
        }
        Some((self.dot / (self.aa.sqrt() * self.bb.sqrt())).clamp(-1.0, 1.0))
    }

    /// Mean squared error; `None` for empty rows.
    pub fn mse(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sq_err / self.n as f64)
    }

    /// Signal-to-quantization-noise ratio in dB: 10·log10(Σa² / Σ(a−b)²). Infinite for an
    /// exact reconstruction; `None` for empty rows.
    pub fn sqnr_db(&self) -> Option<f64> {
        sqnr_from(self.aa, self.sq_err, self.n)
    }

    pub fn max_abs_error(&self) -> Option<f64> {
        (self.n > 0).then_some(self.max_abs_err)
    }
}

/// The one pass behind [`PairSums::accumulate`]; `a` and `b` have the same length.
///
/// Blocked summation: each block of [`BLOCK`] values is summed in eight f32 lanes (32 terms a
/// lane, so a partial sum carries a relative error near 32 × 2⁻²⁴ ≈ 2·10⁻⁶ at worst and about
/// 10⁻⁷ typically), and the block sums are added in f64. Eight-wide f32 lanes run four times as
/// many values a cycle as f64 ones, and the error stays far below the fifth decimal a cosine is
/// read from. The difference a − b of a value and its reconstruction is exact in f32 whenever
/// they are within a factor of two of each other (Sterbenz), which quantization keeps.
///
/// f32 only has the range for squares of values between about 10⁻¹⁹ and 10¹⁹: a block whose
/// f32 sums overflowed (values beyond about 10¹⁸, or a − b beyond f32::MAX) or are so small
/// that f32 may have dropped squares (a side of the block all below about 10⁻¹⁵, zeros
/// included) is summed again in f64, which holds every such product exactly (see
/// [`wide_block`]). That is decided from the block's own sums, so both implementations, and
/// parts of whole blocks, still agree bit for bit; ordinary weights never leave the f32 path.
#[inline(always)]
fn sums(s: &mut PairSums, a: &[f32], b: &[f32]) -> Result<()> {
    const L: usize = 8;
    s.n += a.len();
    let mut max = 0f32;
    for (index, (block_a, block_b)) in a.chunks(BLOCK).zip(b.chunks(BLOCK)).enumerate() {
        let (mut dot, mut aa, mut bb, mut se, mut mx) =
            ([0f32; L], [0f32; L], [0f32; L], [0f32; L], [0f32; L]);
        let chunks_a = block_a.chunks_exact(L);
        let chunks_b = block_b.chunks_exact(L);
        for (ca, cb) in chunks_a.zip(chunks_b) {
            for i in 0..L {
                let (x, y) = (ca[i], cb[i]);
                let e = x - y;
                dot[i] += x * y;
                aa[i] += x * x;
                bb[i] += y * y;
                se[i] += e * e;
                let ae = e.abs();
                mx[i] = if ae > mx[i] { ae } else { mx[i] };
            }
        }
        let lanes = [dot, aa, bb, se, mx];
        end_block(s, &mut max, lanes, block_a, block_b, index * BLOCK)?;
    }
    // The largest of f32 values converts to f64 exactly: merging parts' maxima is exact.
    s.max_abs_err = s.max_abs_err.max(f64::from(max));
    Ok(())
}

/// Values a block of [`sums`] adds in f32 before moving the block's sums to f64.
pub const BLOCK: usize = 256;

/// Below this a block's Σa² or Σb² (or its Σ(a−b)², when a ≠ b) may have lost terms that f32
/// cannot hold (squares under 2⁻¹²⁶, at most 2⁻¹¹⁸ a block): the block is summed in f64.
const TINY: f64 = 1.0 / (1u128 << 90) as f64;

/// The end of a block, shared by both implementations: the values past the last whole
/// vector go to lane 0, then each sum's lanes move to f64 in lane order — or, when the f32
/// sums overflowed or may have underflowed, the block is summed in f64 instead.
#[inline(always)]
fn end_block(
    s: &mut PairSums,
    max: &mut f32,
    lanes: [[f32; 8]; 5],
    block_a: &[f32],
    block_b: &[f32],
    first: usize,
) -> Result<()> {
    let [mut dot, mut aa, mut bb, mut se, mut mx] = lanes;
    let whole = block_a.len() / 8 * 8;
    for (&x, &y) in block_a[whole..].iter().zip(&block_b[whole..]) {
        let e = x - y;
        dot[0] += x * y;
        aa[0] += x * x;
        bb[0] += y * y;
        se[0] += e * e;
        mx[0] = mx[0].max(e.abs());
    }
    let wide = |v: [f32; 8]| v.iter().map(|&x| f64::from(x)).sum::<f64>();
    let (dot, aa, bb, se) = (wide(dot), wide(aa), wide(bb), wide(se));
    let block_max = mx.iter().fold(0f32, |m, &v| m.max(v));
    // An f32 lane that overflowed is infinite (or NaN), and so is its f64 sum.
    let fits = dot.is_finite()
        && aa.is_finite()
        && bb.is_finite()
        && se.is_finite()
        && aa >= TINY
        && bb >= TINY
        && (se >= TINY || block_max == 0.0);
    if !fits {
        return wide_block(s, block_a, block_b, first);
    }
    s.dot += dot;
    s.aa += aa;
    s.bb += bb;
    s.sq_err += se;
    *max = max.max(block_max);
    Ok(())
}

/// A block summed in f64: products of f32 values are exact there, and their sums cannot
/// overflow (f32::MAX² · 2⁶⁴ is still far below f64::MAX). Also where non-finite values are
/// found (they make the f32 sums non-finite): they are an error naming their side and index.
#[cold]
#[inline(never)]
fn wide_block(s: &mut PairSums, a: &[f32], b: &[f32], first: usize) -> Result<()> {
    // A block of zeros (padding, pruned weights) adds nothing: one quick pass says so.
    let bits = a
        .iter()
        .chain(b)
        .fold(0u32, |acc, v| acc | (v.to_bits() << 1));
    if bits == 0 {
        return Ok(());
    }
    let (mut dot, mut aa, mut bb, mut se, mut mx) = (0f64, 0f64, 0f64, 0f64, 0f64);
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        for (argument, value) in [("a", x), ("b", y)] {
            if !value.is_finite() {
                return Err(KernelError::NonFiniteIn {
                    argument,
                    index: first + i,
                    value,
                });
            }
        }
        let (x, y) = (f64::from(x), f64::from(y));
        let e = x - y;
        dot += x * y;
        aa += x * x;
        bb += y * y;
        se += e * e;
        mx = mx.max(e.abs());
    }
    s.dot += dot;
    s.aa += aa;
    s.bb += bb;
    s.sq_err += se;
    s.max_abs_err = s.max_abs_err.max(mx);
    Ok(())
}

/// [`sums`] with AVX2 intrinsics: the eight lanes of each block live in registers, then go
/// through the same tail and reduction code. (Left to the auto-vectoriser, the loop came out
/// as 128-bit shuffles and spills, five times slower.)
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sums_avx2(_cpu: super::cpu::Avx2, s: &mut PairSums, a: &[f32], b: &[f32]) -> Result<()> {
    use std::arch::x86_64::*;

    const L: usize = 8;
    s.n += a.len();
    let mut max = 0f32;
    let sign = _mm256_set1_ps(-0.0);
    let lanes = |v: __m256| {
        let mut out = [0f32; L];
        // SAFETY: `out` holds 8 f32; an unaligned store has no alignment requirement.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
        out
    };
    for (index, (block_a, block_b)) in a.chunks(BLOCK).zip(b.chunks(BLOCK)).enumerate() {
        let (mut dot, mut aa, mut bb, mut se, mut mx) = (
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
        );
        let (chunks_a, _) = block_a.as_chunks::<L>();
        let (chunks_b, _) = block_b.as_chunks::<L>();
        for (ca, cb) in chunks_a.iter().zip(chunks_b) {
            // SAFETY: each chunk holds exactly 8 f32.
            let (x, y) = unsafe { (_mm256_loadu_ps(ca.as_ptr()), _mm256_loadu_ps(cb.as_ptr())) };
            let e = _mm256_sub_ps(x, y);
            dot = _mm256_add_ps(dot, _mm256_mul_ps(x, y));
            aa = _mm256_add_ps(aa, _mm256_mul_ps(x, x));
            bb = _mm256_add_ps(bb, _mm256_mul_ps(y, y));
            se = _mm256_add_ps(se, _mm256_mul_ps(e, e));
            // maxps(a, b) is `if a > b { a } else { b }`, as the portable loop.
            mx = _mm256_max_ps(_mm256_andnot_ps(sign, e), mx);
        }
        let lanes = [lanes(dot), lanes(aa), lanes(bb), lanes(se), lanes(mx)];
        end_block(s, &mut max, lanes, block_a, block_b, index * BLOCK)?;
    }
    s.max_abs_err = s.max_abs_err.max(f64::from(max));
    Ok(())
}

pub fn sqnr_from(signal: f64, noise: f64, n: usize) -> Option<f64> {
    if n == 0 {
        return None;
    }
    if noise == 0.0 {
        return Some(f64::INFINITY);
    }
    Some(10.0 * (signal / noise).log10())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_of_a_known_pair() {
        let a = [1.0, 2.0, 3.0, 4.0, 5.0];
        let b = [1.0, 2.0, 3.0, 4.0, 4.0];
        let s = PairSums::of(&a, &b).unwrap();
        assert_eq!(s.mse(), Some(0.2));
        assert_eq!(s.max_abs_error(), Some(1.0));
        let cos = 50.0 / (55f64.sqrt() * 46f64.sqrt());
        assert!((s.cosine().unwrap() - cos).abs() < 1e-15);
        assert!((s.sqnr_db().unwrap() - 10.0 * 55f64.log10()).abs() < 1e-12);
    }

    #[test]
    fn vector_path_matches_portable_bit_for_bit() {
        let a: Vec<f32> = (0..1003)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013)
            .collect();
        let b: Vec<f32> = a
            .iter()
            .map(|x| x + ((*x * 1000.0).sin() * 0.001))
            .collect();
        let mut portable = PairSums::default();
        sums(&mut portable, &a, &b).unwrap();
        assert_eq!(PairSums::of(&a, &b).unwrap(), portable);
    }

    #[test]
    fn parts_of_whole_blocks_add_up_to_the_whole_bit_for_bit() {
        let a: Vec<f32> = (0..3000).map(|i| ((i as f32) * 0.31).sin()).collect();
        let b: Vec<f32> = a.iter().map(|x| x * 0.98 + 0.001).collect();
        let whole = PairSums::of(&a, &b).unwrap();
        for part in [BLOCK, 4 * BLOCK, 11 * BLOCK] {
            let mut pieces = PairSums::default();
            for (x, y) in a.chunks(part).zip(b.chunks(part)) {
                pieces.accumulate(x, y).unwrap();
            }
            assert_eq!(pieces, whole, "parts of {part}");
        }
    }

    #[test]
    fn blocked_sums_agree_with_f64() {
        // 100 000 values: many blocks, and a cosine near 1 as quantization gives.
        let a: Vec<f32> = (0..100_000).map(|i| ((i as f32) * 0.7312).sin()).collect();
        let b: Vec<f32> = a
            .iter()
            .enumerate()
            .map(|(i, x)| x + ((i as f32) * 1.37).cos() * 0.004)
            .collect();
        let s = PairSums::of(&a, &b).unwrap();
        let (mut dot, mut aa, mut bb, mut se) = (0f64, 0f64, 0f64, 0f64);
        for (&x, &y) in a.iter().zip(&b) {
            let (x, y) = (f64::from(x), f64::from(y));
            dot += x * y;
            aa += x * x;
            bb += y * y;
            se += (x - y) * (x - y);
        }
        let cosine = dot / (aa.sqrt() * bb.sqrt());
        assert!(
            (s.cosine().unwrap() - cosine).abs() < 2e-8,
            "{:?} vs {cosine}",
            s.cosine()
        );
        assert!((s.sq_err - se).abs() / se < 1e-5, "{} vs {se}", s.sq_err);
        assert!((s.dot - dot).abs() / dot < 1e-6);
    }

    #[test]
    fn degenerate_pairs() {
        assert!(PairSums::of(&[1.0], &[1.0, 2.0]).is_err());
        let zero = PairSums::of(&[0.0, 0.0], &[1.0, 1.0]).unwrap();
        assert_eq!(zero.cosine(), None);
        let empty = PairSums::of(&[], &[]).unwrap();
        assert_eq!(empty.mse(), None);
        let exact = PairSums::of(&[1.0], &[1.0]).unwrap();
        assert_eq!(exact.sqnr_db(), Some(f64::INFINITY));
    }

    /// Every edge of the one cosine definition.
    #[test]
    fn cosine_edges() {
        let cos = |a: &[f32], b: &[f32]| PairSums::of(a, b).unwrap().cosine();
        assert_eq!(cos(&[], &[]), None, "no values");
        assert_eq!(
            cos(&[0.0, 0.0], &[0.0, 0.0]),
            Some(1.0),
            "zeros reproduced exactly"
        );
        assert_eq!(cos(&[0.3, -0.7], &[0.3, -0.7]), Some(1.0), "exact");
        assert_eq!(cos(&[0.0, 0.0], &[1.0, 1.0]), None, "a all zeros");
        assert_eq!(cos(&[1.0, 1.0], &[0.0, 0.0]), None, "b all zeros");
        assert!((cos(&[1.0, 2.0], &[-1.0, -2.0]).unwrap() + 1.0).abs() < 1e-15);
        assert_eq!(cos(&[1.0, 0.0], &[0.0, 1.0]), Some(0.0));
        // Sums whose rounding steps past 1 are clamped.
        let past = PairSums {
            n: 2,
            dot: 2.000_000_1,
            aa: 2.0,
            bb: 2.0,
            sq_err: 1e-20,
            max_abs_err: 1e-10,
        };
        assert_eq!(past.cosine(), Some(1.0));
    }

    /// Rows whose blocks take every path: ordinary values, values near f32::MAX, differences
    /// beyond it, tiny values, zeros, and a mix within one row.
    fn awkward_rows() -> Vec<(Vec<f32>, Vec<f32>)> {
        let n = 3 * BLOCK + 37;
        let wave = |i: usize, k: f32| ((i as f32) * k).sin();
        let mut out = vec![
            (
                (0..n).map(|i| wave(i, 0.37) * 3.0e38).collect(),
                (0..n).map(|i| wave(i, 0.37) * 2.9e38).collect(),
            ),
            (
                (0..n).map(|i| wave(i, 0.11).signum() * f32::MAX).collect(),
                (0..n).map(|i| -wave(i, 0.11).signum() * f32::MAX).collect(),
            ),
            (
                (0..n).map(|i| wave(i, 0.7) * 1e-30).collect(),
                (0..n).map(|i| wave(i, 0.7) * 1.1e-30).collect(),
            ),
            (vec![0.0; n], vec![0.0; n]),
            (vec![0.0; n], (0..n).map(|i| wave(i, 0.5)).collect()),
        ];
        // One row, every kind of block in turn.
        let (a, b): (Vec<f32>, Vec<f32>) = out
            .iter()
            .flat_map(|(a, b)| a[..BLOCK].iter().copied().zip(b[..BLOCK].iter().copied()))
            .unzip();
        out.push((a, b));
        out
    }

    fn exact(a: &[f32], b: &[f32]) -> (f64, f64, f64, f64, f64) {
        let (mut dot, mut aa, mut bb, mut se, mut mx) = (0f64, 0f64, 0f64, 0f64, 0f64);
        for (&x, &y) in a.iter().zip(b) {
            let (x, y) = (f64::from(x), f64::from(y));
            dot += x * y;
            aa += x * x;
            bb += y * y;
            se += (x - y) * (x - y);
            mx = mx.max((x - y).abs());
        }
        (dot, aa, bb, se, mx)
    }

    #[test]
    fn values_near_the_ends_of_f32_are_summed_in_f64() {
        let close = |got: f64, want: f64| (got - want).abs() <= 1e-6 * want.abs().max(1e-300);
        for (a, b) in awkward_rows() {
            let s = PairSums::of(&a, &b).unwrap();
            let (dot, aa, bb, se, mx) = exact(&a, &b);
            for (got, want) in [(s.dot, dot), (s.aa, aa), (s.bb, bb), (s.sq_err, se)] {
                assert!(got.is_finite() && close(got, want), "{got} vs {want}");
            }
            assert!(close(s.max_abs_err, mx), "{} vs {mx}", s.max_abs_err);
            assert_eq!(s.mse().map(f64::is_finite), Some(true));
            assert_eq!(s.sqnr_db().map(|v| v.is_nan()), Some(false));
            if aa > 0.0 && bb > 0.0 {
                let want = dot / (aa.sqrt() * bb.sqrt());
                assert!((s.cosine().unwrap() - want).abs() < 1e-9);
            }
        }
        // The figures of the extreme pair: opposite rows of f32::MAX.
        let m = f64::from(f32::MAX);
        let s = PairSums::of(&[f32::MAX, -f32::MAX], &[-f32::MAX, f32::MAX]).unwrap();
        assert_eq!(s.cosine(), Some(-1.0));
        assert_eq!(s.mse(), Some(4.0 * m * m));
        assert_eq!(s.max_abs_error(), Some(2.0 * m));
        assert!((s.sqnr_db().unwrap() - 10.0 * 0.25f64.log10()).abs() < 1e-12);
        // Tiny rows keep their angle instead of losing every square.
        let t = PairSums::of(&[1e-30, 2e-30], &[2e-30, 4e-30]).unwrap();
        assert!((t.cosine().unwrap() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn both_paths_agree_bit_for_bit_on_awkward_rows() {
        for (a, b) in awkward_rows() {
            let mut portable = PairSums::default();
            sums(&mut portable, &a, &b).unwrap();
            assert_eq!(PairSums::of(&a, &b).unwrap(), portable);
            // Parts of whole blocks still add up to the whole.
            let mut parts = PairSums::default();
            for (x, y) in a.chunks(2 * BLOCK).zip(b.chunks(2 * BLOCK)) {
                parts.accumulate(x, y).unwrap();
            }
            assert_eq!(parts, portable);
        }
    }

    #[test]
    fn non_finite_values_are_refused_with_their_side_and_index() {
        let mut a: Vec<f32> = (0..700).map(|i| i as f32 * 0.01).collect();
        let b = a.clone();
        a[613] = f32::NAN;
        let err = PairSums::of(&a, &b).unwrap_err();
        assert!(
            matches!(
                err,
                KernelError::NonFiniteIn {
                    argument: "a",
                    index: 613,
                    ..
                }
            ),
            "{err}"
        );
        let err = PairSums::of(&b, &a).unwrap_err();
        assert!(
            matches!(
                err,
                KernelError::NonFiniteIn {
                    argument: "b",
                    index: 613,
                    ..
                }
            ),
            "{err}"
        );
        let err = PairSums::of(&[1.0, f32::NEG_INFINITY], &[1.0, 1.0]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "argument 'a': non-finite value -inf at index 1"
        );
    }
}
