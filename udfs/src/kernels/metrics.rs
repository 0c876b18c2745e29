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
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 is present. The same code as the portable path, in the same order
            // (no FMA contraction): results are bit for bit the same, only the vectors wider.
            unsafe { sums_avx2(self, a, b) };
            return Ok(());
        }
        sums(self, a, b);
        Ok(())
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

    /// Cosine similarity; `None` when a side is all zeros (or empty) and the angle undefined.
    pub fn cosine(&self) -> Option<f64> {
        cosine_from(self.dot, self.aa, self.bb)
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
#[inline(always)]
fn sums(s: &mut PairSums, a: &[f32], b: &[f32]) {
    const L: usize = 8;
    s.n += a.len();
    let mut max = 0f32;
    for (block_a, block_b) in a.chunks(BLOCK).zip(b.chunks(BLOCK)) {
        let (mut dot, mut aa, mut bb, mut se, mut mx) =
            ([0f32; L], [0f32; L], [0f32; L], [0f32; L], [0f32; L]);
        let chunks_a = block_a.chunks_exact(L);
        let chunks_b = block_b.chunks_exact(L);
        let (tail_a, tail_b) = (chunks_a.remainder(), chunks_b.remainder());
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
        end_block(s, &mut max, [dot, aa, bb, se, mx], tail_a, tail_b);
    }
    // The largest of f32 values converts to f64 exactly: merging parts' maxima is exact.
    s.max_abs_err = s.max_abs_err.max(f64::from(max));
}

/// Values a block of [`sums`] adds in f32 before moving the block's sums to f64.
pub const BLOCK: usize = 256;

/// The end of a block, shared by both implementations: the values past the last whole
/// vector go to lane 0, then each sum's lanes move to f64 in lane order.
#[inline(always)]
fn end_block(
    s: &mut PairSums,
    max: &mut f32,
    lanes: [[f32; 8]; 5],
    tail_a: &[f32],
    tail_b: &[f32],
) {
    let [mut dot, mut aa, mut bb, mut se, mut mx] = lanes;
    for (&x, &y) in tail_a.iter().zip(tail_b) {
        let e = x - y;
        dot[0] += x * y;
        aa[0] += x * x;
        bb[0] += y * y;
        se[0] += e * e;
        mx[0] = mx[0].max(e.abs());
    }
    let wide = |v: [f32; 8]| v.iter().map(|&x| f64::from(x)).sum::<f64>();
    s.dot += wide(dot);
    s.aa += wide(aa);
    s.bb += wide(bb);
    s.sq_err += wide(se);
    *max = mx.iter().fold(*max, |m, &v| m.max(v));
}

/// [`sums`] with AVX2 intrinsics: the eight lanes of each block live in registers, then go
/// through the same tail and reduction code. (Left to the auto-vectoriser, the loop came out
/// as 128-bit shuffles and spills, five times slower.)
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sums_avx2(s: &mut PairSums, a: &[f32], b: &[f32]) {
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
    for (block_a, block_b) in a.chunks(BLOCK).zip(b.chunks(BLOCK)) {
        let (mut dot, mut aa, mut bb, mut se, mut mx) = (
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
        );
        let (chunks_a, tail_a) = block_a.as_chunks::<L>();
        let (chunks_b, tail_b) = block_b.as_chunks::<L>();
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
        end_block(s, &mut max, lanes, tail_a, tail_b);
    }
    s.max_abs_err = s.max_abs_err.max(f64::from(max));
}

pub fn cosine_from(dot: f64, aa: f64, bb: f64) -> Option<f64> {
    if aa <= 0.0 || bb <= 0.0 {
        return None;
    }
    Some((dot / (aa.sqrt() * bb.sqrt())).clamp(-1.0, 1.0))
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
        sums(&mut portable, &a, &b);
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
}
