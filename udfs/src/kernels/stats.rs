//! Row statistics: range, moments and outliers, mergeable across rows and partitions.

/// Central moments kept in the mergeable form of Pébay (2008): counts, mean, and the sums of
/// the 2nd, 3rd and 4th powers of deviations, so partitions combine without a second pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Moments {
    pub n: f64,
    pub mean: f64,
    pub m2: f64,
    pub m3: f64,
    pub m4: f64,
    pub min: f64,
    pub max: f64,
}

impl Default for Moments {
    fn default() -> Self {
        Moments {
            n: 0.0,
            mean: 0.0,
            m2: 0.0,
            m3: 0.0,
            m4: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }
}

impl Moments {
    /// Moments of one row, in two passes (mean first) for accuracy.
    pub fn of(x: &[f32]) -> Self {
        if x.is_empty() {
            return Moments::default();
        }
        let n = x.len() as f64;
        let (mut sum, mut min, mut max) = (0.0f64, f64::INFINITY, f64::NEG_INFINITY);
        for &v in x {
            let v = f64::from(v);
            sum += v;
            min = min.min(v);
            max = max.max(v);
        }
        let mean = sum / n;
        let (mut m2, mut m3, mut m4) = (0.0, 0.0, 0.0);
        for &v in x {
            let d = f64::from(v) - mean;
            let d2 = d * d;
            m2 += d2;
            m3 += d2 * d;
            m4 += d2 * d2;
        }
        Moments {
            n,
            mean,
            m2,
            m3,
            m4,
            min,
            max,
        }
    }

    /// Combines two sets of moments (Pébay's pairwise update).
    pub fn merge(&mut self, o: &Moments) {
        if o.n == 0.0 {
            return;
        }
        if self.n == 0.0 {
            *self = *o;
            return;
        }
        let (na, nb) = (self.n, o.n);
        let n = na + nb;
        let delta = o.mean - self.mean;
        let d_n = delta / n;
        let d_n2 = d_n * d_n;
        let m2 = self.m2 + o.m2 + delta * d_n * na * nb;
        let m3 = self.m3
            + o.m3
            + delta * d_n2 * na * nb * (na - nb)
            + 3.0 * d_n * (na * o.m2 - nb * self.m2);
        let m4 = self.m4
            + o.m4
            + delta * d_n2 * d_n * na * nb * (na * na - na * nb + nb * nb)
            + 6.0 * d_n2 * (na * na * o.m2 + nb * nb * self.m2)
            + 4.0 * d_n * (na * o.m3 - nb * self.m3);
        self.mean += d_n * nb;
        self.n = n;
        self.m2 = m2;
        self.m3 = m3;
        self.m4 = m4;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
    }

    /// Population standard deviation.
    pub fn std(&self) -> f64 {
        if self.n > 0.0 {
            (self.m2 / self.n).sqrt()
        } else {
            f64::NAN
        }
    }

    /// Excess kurtosis (0 for a Gaussian); NaN when the values are constant.
    pub fn kurtosis(&self) -> f64 {
        if self.m2 > 0.0 {
            self.n * self.m4 / (self.m2 * self.m2) - 3.0
        } else {
            f64::NAN
        }
    }

    pub fn absmax(&self) -> f64 {
        self.min.abs().max(self.max.abs())
    }
}

/// Statistics `weight_stats` reports for a row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowStats {
    pub moments: Moments,
    /// Share of values more than 3σ from the mean.
    pub outlier_ratio: f64,
}

pub const OUTLIER_SIGMAS: f64 = 3.0;

impl RowStats {
    pub fn of(x: &[f32]) -> Self {
        let moments = Moments::of(x);
        RowStats {
            moments,
            outlier_ratio: outlier_ratio(x, &moments),
        }
    }
}

pub fn outlier_ratio(x: &[f32], m: &Moments) -> f64 {
    if x.is_empty() {
        return f64::NAN;
    }
    let limit = OUTLIER_SIGMAS * m.std();
    let outliers = x
        .iter()
        .filter(|&&v| (f64::from(v) - m.mean).abs() > limit)
        .count();
    outliers as f64 / x.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_moments_equal_moments_of_the_whole() {
        let x: Vec<f32> = (0..1000)
            .map(|i| ((i * 7919) % 1000) as f32 / 100.0 - 3.0)
            .collect();
        let whole = Moments::of(&x);
        let mut merged = Moments::of(&x[..137]);
        merged.merge(&Moments::of(&x[137..600]));
        merged.merge(&Moments::of(&x[600..]));
        for (a, b) in [
            (whole.mean, merged.mean),
            (whole.m2, merged.m2),
            (whole.m3, merged.m3),
            (whole.m4, merged.m4),
        ] {
            assert!((a - b).abs() <= 1e-9 * a.abs().max(1.0), "{a} vs {b}");
        }
        assert_eq!(whole.min, merged.min);
        assert_eq!(whole.max, merged.max);
    }

    #[test]
    fn uniform_kurtosis_and_outliers() {
        let x: Vec<f32> = (0..10_000).map(|i| i as f32 / 10_000.0).collect();
        let s = RowStats::of(&x);
        assert!((s.moments.kurtosis() + 1.2).abs() < 1e-3);
        assert_eq!(s.outlier_ratio, 0.0);
        let mut spiky = vec![0.0f32; 999];
        spiky.push(100.0);
        assert!((RowStats::of(&spiky).outlier_ratio - 0.001).abs() < 1e-12);
    }
}
