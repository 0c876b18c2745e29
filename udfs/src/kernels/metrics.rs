//! Quality metrics between an original row and its reconstruction. Sums run in f64: the
//! differences being measured are small next to the values (a cosine of 0.99999 is read
//! from the fifth decimal).

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
        if a.len() != b.len() {
            return Err(KernelError::LengthMismatch {
                left: a.len(),
                right: b.len(),
            });
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 is present. The same code as the portable path, in the same order:
            // results are bit for bit the same, only the vectors are wider.
            return Ok(unsafe { sums_avx2(a, b) });
        }
        Ok(sums(a, b))
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

/// The one pass behind [`PairSums::of`]; `a` and `b` have the same length.
#[inline(always)]
fn sums(a: &[f32], b: &[f32]) -> PairSums {
    let mut s = PairSums {
        n: a.len(),
        ..PairSums::default()
    };
    // Four independent f64 accumulators per sum let the loop pipeline and vectorise.
    const W: usize = 4;
    let (mut dot, mut aa, mut bb, mut se, mut mx) =
        ([0f64; W], [0f64; W], [0f64; W], [0f64; W], [0f64; W]);
    let chunks_a = a.chunks_exact(W);
    let chunks_b = b.chunks_exact(W);
    let (tail_a, tail_b) = (chunks_a.remainder(), chunks_b.remainder());
    for (ca, cb) in chunks_a.zip(chunks_b) {
        for i in 0..W {
            let (x, y) = (f64::from(ca[i]), f64::from(cb[i]));
            let e = x - y;
            dot[i] += x * y;
            aa[i] += x * x;
            bb[i] += y * y;
            se[i] += e * e;
            let ae = e.abs();
            mx[i] = if ae > mx[i] { ae } else { mx[i] };
        }
    }
    for (&x, &y) in tail_a.iter().zip(tail_b) {
        let (x, y) = (f64::from(x), f64::from(y));
        let e = x - y;
        dot[0] += x * y;
        aa[0] += x * x;
        bb[0] += y * y;
        se[0] += e * e;
        mx[0] = mx[0].max(e.abs());
    }
    s.dot = dot.iter().sum();
    s.aa = aa.iter().sum();
    s.bb = bb.iter().sum();
    s.sq_err = se.iter().sum();
    s.max_abs_err = mx.iter().fold(0.0, |m, &v| m.max(v));
    s
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sums_avx2(a: &[f32], b: &[f32]) -> PairSums {
    sums(a, b)
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
        let portable = sums(&a, &b);
        assert_eq!(PairSums::of(&a, &b).unwrap(), portable);
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
