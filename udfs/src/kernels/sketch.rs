//! A mergeable histogram sketch of a value distribution, and the clipping search over it.
//!
//! Buckets follow the f32 bit pattern: a value's bucket is its sign, exponent and top
//! `MANTISSA_BITS` mantissa bits, so every bucket spans at most 2^-8 of its value (a
//! log-linear layout like HdrHistogram's). Bucket edges are the same for every sketch, so
//! merging two sketches is exact: counts add. That is what lets `quant_params` run its
//! clipping search over many rows and partitions.

use super::error::{KernelError, Result};

const MANTISSA_BITS: u32 = 8;
const SHIFT: u32 = 23 - MANTISSA_BITS;
const FORMAT_VERSION: u8 = 1;
/// One past the largest bucket key of a finite value (`f32::MAX`'s bits shifted): a state
/// whose buckets reach past it was not written by [`Sketch::to_bytes`].
const KEY_END: u32 = (f32::MAX.to_bits() >> SHIFT) + 1;
/// Values a state may count: far beyond any model (2^53, where f64 counts stop being exact),
/// so that merging states can never overflow the counts.
const MAX_COUNT: u64 = 1 << 53;

#[derive(Debug, Clone, Default, PartialEq)]
struct Buckets {
    first: u32,
    counts: Vec<u64>,
}

impl Buckets {
    #[inline]
    fn add(&mut self, key: u32, n: u64) {
        if self.counts.is_empty() {
            self.first = key;
            self.counts.push(0);
        } else if key < self.first {
            let grow = (self.first - key) as usize;
            self.counts.splice(0..0, std::iter::repeat_n(0, grow));
            self.first = key;
        } else if key as usize >= self.first as usize + self.counts.len() {
            self.counts.resize((key - self.first) as usize + 1, 0);
        }
        self.counts[(key - self.first) as usize] += n;
    }

    fn merge(&mut self, other: &Buckets) {
        for (i, &n) in other.counts.iter().enumerate() {
            if n > 0 {
                self.add(other.first + i as u32, n);
            }
        }
    }
}

/// Midpoint of the magnitudes that fall in bucket `key`.
fn bucket_magnitude(key: u32) -> f64 {
    let lower = f64::from(f32::from_bits(key << SHIFT));
    let upper = f64::from(f32::from_bits((key + 1) << SHIFT));
    (lower + upper) / 2.0
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sketch {
    positive: Buckets,
    negative: Buckets,
    count: u64,
    sum: f64,
    min: f32,
    max: f32,
}

impl Default for Sketch {
    fn default() -> Self {
        Sketch {
            positive: Buckets::default(),
            negative: Buckets::default(),
            count: 0,
            sum: 0.0,
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
        }
    }
}

impl Sketch {
    /// Adds finite values (the caller checks finiteness).
    pub fn add(&mut self, values: &[f32]) {
        for &v in values {
            let bits = v.to_bits();
            let key = (bits & 0x7fff_ffff) >> SHIFT;
            if bits >> 31 == 0 {
                self.positive.add(key, 1);
            } else {
                self.negative.add(key, 1);
            }
            self.min = self.min.min(v);
            self.max = self.max.max(v);
            self.sum += f64::from(v);
        }
        self.count += values.len() as u64;
    }

    pub fn merge(&mut self, other: &Sketch) {
        self.positive.merge(&other.positive);
        self.negative.merge(&other.negative);
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// Memory held by the buckets.
    pub fn heap_bytes(&self) -> usize {
        8 * (self.positive.counts.capacity() + self.negative.counts.capacity())
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn min(&self) -> f32 {
        self.min
    }

    pub fn max(&self) -> f32 {
        self.max
    }

    /// (value, count) per non-empty bucket, in ascending order of value. The extreme buckets
    /// report the exact minimum and maximum.
    pub fn sorted_buckets(&self) -> Vec<(f64, f64)> {
        let mut out = Vec::new();
        for (i, &n) in self.negative.counts.iter().enumerate().rev() {
            if n > 0 {
                out.push((-bucket_magnitude(self.negative.first + i as u32), n as f64));
            }
        }
        for (i, &n) in self.positive.counts.iter().enumerate() {
            if n > 0 {
                out.push((bucket_magnitude(self.positive.first + i as u32), n as f64));
            }
        }
        if let Some(end) = out.len().checked_sub(1) {
            // The extremes are known exactly: the clipping search starts from them.
            out[0].0 = f64::from(self.min);
            out[end].0 = f64::from(self.max);
        }
        out
    }

    /// Share of values farther than `limit` from `centre`, at bucket resolution.
    pub fn share_beyond(&self, centre: f64, limit: f64) -> f64 {
        if self.count == 0 {
            return f64::NAN;
        }
        let beyond: f64 = self
            .sorted_buckets()
            .iter()
            .filter(|(v, _)| (v - centre).abs() > limit)
            .map(|(_, n)| n)
            .sum();
        beyond / self.count as f64
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(40 + 8 * (self.positive.counts.len() + self.negative.counts.len()));
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&self.sum.to_le_bytes());
        out.extend_from_slice(&self.min.to_le_bytes());
        out.extend_from_slice(&self.max.to_le_bytes());
        for b in [&self.positive, &self.negative] {
            out.extend_from_slice(&b.first.to_le_bytes());
            out.extend_from_slice(&(b.counts.len() as u32).to_le_bytes());
            for n in &b.counts {
                out.extend_from_slice(&n.to_le_bytes());
            }
        }
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let corrupt =
            || KernelError::Corrupt("histogram sketch state is truncated or malformed".into());
        let mut cursor = bytes;
        let mut take = |n: usize| -> Result<&[u8]> {
            if cursor.len() < n {
                return Err(corrupt());
            }
            let (head, tail) = cursor.split_at(n);
            cursor = tail;
            Ok(head)
        };
        if take(1)?[0] != FORMAT_VERSION {
            return Err(corrupt());
        }
        let u64_at = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
        let u32_at = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes"));
        let mut sketch = Sketch {
            count: u64_at(take(8)?),
            sum: f64::from_bits(u64_at(take(8)?)),
            min: f32::from_bits(u32_at(take(4)?)),
            max: f32::from_bits(u32_at(take(4)?)),
            ..Sketch::default()
        };
        let mut bucketed = 0u64;
        for which in 0..2 {
            let first = u32_at(take(4)?);
            let len = u32_at(take(4)?) as usize;
            // Buckets only ever hold keys of finite values; a state that claims others would
            // make merges allocate up to 2^32 buckets or overflow the keys.
            if u64::from(first) + len as u64 > u64::from(KEY_END) {
                return Err(corrupt());
            }
            let raw = take(len.checked_mul(8).ok_or_else(corrupt)?)?;
            let buckets = Buckets {
                first,
                counts: raw.chunks_exact(8).map(u64_at).collect(),
            };
            for &n in &buckets.counts {
                bucketed = bucketed.checked_add(n).ok_or_else(corrupt)?;
            }
            if which == 0 {
                sketch.positive = buckets
            } else {
                sketch.negative = buckets
            }
        }
        // The buckets hold every counted value, and the summary fields agree with them.
        let consistent = bucketed == sketch.count
            && sketch.count <= MAX_COUNT
            && sketch.sum.is_finite()
            && if sketch.count == 0 {
                sketch.min == f32::INFINITY && sketch.max == f32::NEG_INFINITY
            } else {
                sketch.min.is_finite() && sketch.max.is_finite() && sketch.min <= sketch.max
            };
        if !consistent || !cursor.is_empty() {
            return Err(corrupt());
        }
        Ok(sketch)
    }
}

/// Parameters chosen for a range of values: `x ≈ offset + scale·code`, codes `0..2^bits`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RangeParams {
    pub scale: f64,
    /// The value of code 0.
    pub offset: f64,
    /// The code that represents 0.0.
    pub zero_point: i64,
    pub clip_min: f64,
    pub clip_max: f64,
    /// The expected mean squared error of the choice, from the sketch.
    pub mse: f64,
}

/// Tail shares tried as clipping points, on each side.
const TAIL_SHARES: [f64; 16] = [
    0.0, 1e-7, 1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 3e-2, 5e-2, 0.1,
];

/// Chooses the clipping range that minimises the expected squared error (rounding noise
/// Δ²/12 inside the range, exact squared distance outside), over a grid of tail shares.
pub fn clip_search(buckets: &[(f64, f64)], bits: u8, symmetric: bool) -> Option<RangeParams> {
    let total: f64 = buckets.iter().map(|b| b.1).sum();
    if buckets.is_empty() || total <= 0.0 {
        return None;
    }
    let levels = f64::from(1u32 << bits);
    // Prefix sums of count, count·v and count·v².
    let mut c0 = vec![0.0; buckets.len() + 1];
    let mut c1 = c0.clone();
    let mut c2 = c0.clone();
    for (i, &(v, n)) in buckets.iter().enumerate() {
        c0[i + 1] = c0[i] + n;
        c1[i + 1] = c1[i] + n * v;
        c2[i + 1] = c2[i] + n * v * v;
    }
    // Σ n·(v − t)² over buckets [a, b).
    let outside = |a: usize, b: usize, t: f64| {
        (c2[b] - c2[a]) - 2.0 * t * (c1[b] - c1[a]) + t * t * (c0[b] - c0[a])
    };
    let error = |lo: f64, hi: f64| {
        let below = buckets.partition_point(|b| b.0 < lo);
        let above = buckets.partition_point(|b| b.0 <= hi);
        let step = (hi - lo) / (levels - 1.0);
        outside(0, below, lo)
            + outside(above, buckets.len(), hi)
            + (c0[above] - c0[below]) * step * step / 12.0
    };
    let quantile = |share: f64| {
        let target = share * total;
        let i = c0
            .partition_point(|&c| c <= target)
            .saturating_sub(1)
            .min(buckets.len() - 1);
        buckets[i].0
    };
    let (min, max) = (buckets[0].0, buckets[buckets.len() - 1].0);
    let mut best: Option<(f64, f64, f64)> = None;
    let mut consider = |lo: f64, hi: f64| {
        if hi > lo {
            let e = error(lo, hi);
            if best.is_none_or(|b| e < b.0) {
                best = Some((e, lo, hi));
            }
        }
    };
    for &p in &TAIL_SHARES {
        let lo_p = if p == 0.0 { min } else { quantile(p) };
        if symmetric {
            let hi_p = if p == 0.0 { max } else { quantile(1.0 - p) };
            let amax = lo_p.abs().max(hi_p.abs());
            let half = levels / 2.0;
            let d = amax / half;
            consider(-half * d, (half - 1.0) * d);
            let d = amax / (half - 1.0);
            consider(-half * d, (half - 1.0) * d);
        } else {
            for &q in &TAIL_SHARES {
                let hi_q = if q == 0.0 { max } else { quantile(1.0 - q) };
                consider(lo_p, hi_q);
            }
        }
    }
    let (err, lo, hi) = match best {
        Some(b) => b,
        // Every value is the same: one level at that value.
        None => (0.0, min, min),
    };
    let scale = (hi - lo) / (levels - 1.0);
    let zero_point = if scale > 0.0 {
        (-lo / scale).round().clamp(0.0, levels - 1.0) as i64
    } else {
        0
    };
    Some(RangeParams {
        scale,
        offset: lo,
        zero_point,
        clip_min: lo,
        clip_max: hi,
        mse: err / total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaussian_like(n: usize) -> Vec<f32> {
        // A deterministic, bell-shaped sample: sums of uniform hashes.
        (0..n)
            .map(|i| {
                let u = |k: u64| ((i as u64 * 2654435761 + k * 40503) % 10007) as f32 / 10007.0;
                (u(1) + u(2) + u(3) + u(4) - 2.0) * 1.7
            })
            .collect()
    }

    #[test]
    fn merging_equals_adding_everything_at_once() {
        let x = gaussian_like(5000);
        let mut whole = Sketch::default();
        whole.add(&x);
        let (mut a, mut b) = (Sketch::default(), Sketch::default());
        a.add(&x[..1234]);
        b.add(&x[1234..]);
        a.merge(&b);
        assert_eq!(a.sorted_buckets(), whole.sorted_buckets());
        assert_eq!(a.count(), 5000);
        let back = Sketch::from_bytes(&a.to_bytes()).unwrap();
        assert_eq!(back, a);
        assert!(Sketch::from_bytes(&a.to_bytes()[..20]).is_err());
        assert!(Sketch::from_bytes(&[]).is_err());
    }

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn states_that_no_sketch_writes_are_refused() {
        // Found by fuzzing quant_params' merge: a bucket far from another (a merge would
        // allocate ~2^32 buckets), a bucket key that overflows u32, a count near u64::MAX.
        for found in [
            "010100000000000000000000000000000000000000000000000000ffff0100000001000000000000000000000000000000",
            "01010000000000000000000000000000000000000000000000ffffffff0100000001000000000000000000000000000000",
            "01feffffffffffffff6101000001000000050000ffffffff0000000000000000000000000000000000",
        ] {
            assert!(Sketch::from_bytes(&hex(found)).is_err(), "{found}");
        }
        let mut s = Sketch::default();
        s.add(&[1.0, -2.0, 3.5]);
        let good = s.to_bytes();
        assert_eq!(Sketch::from_bytes(&good).unwrap(), s);
        let edit = |at: usize, bytes: &[u8]| {
            let mut b = good.clone();
            b[at..at + bytes.len()].copy_from_slice(bytes);
            Sketch::from_bytes(&b)
        };
        // count (bytes 1..9) disagrees with the buckets.
        assert!(edit(1, &4u64.to_le_bytes()).is_err());
        // sum (9..17) not finite; min (17..21) above max (21..25).
        assert!(edit(9, &f64::NAN.to_le_bytes()).is_err());
        assert!(edit(17, &10f32.to_le_bytes()).is_err());
        // A trailing byte.
        let mut longer = good.clone();
        longer.push(0);
        assert!(Sketch::from_bytes(&longer).is_err());
        // The largest finite values still round-trip.
        let mut extreme = Sketch::default();
        extreme.add(&[f32::MAX, -f32::MAX, 0.0]);
        assert_eq!(Sketch::from_bytes(&extreme.to_bytes()).unwrap(), extreme);
    }

    #[test]
    fn clipping_helps_at_low_bits_and_not_at_high_bits() {
        let mut x = gaussian_like(20000);
        x[7] = 40.0; // one far outlier
        let mut s = Sketch::default();
        s.add(&x);
        let p4 = clip_search(&s.sorted_buckets(), 4, false).unwrap();
        assert!(
            p4.clip_max < 40.0,
            "the outlier is clipped at 4 bits: {p4:?}"
        );
        assert!(p4.clip_min > f64::from(s.min()) - 1e-9);
        let p8s = clip_search(&s.sorted_buckets(), 8, true).unwrap();
        assert!(p8s.scale > 0.0 && (p8s.offset + 128.0 * p8s.scale).abs() < 1e-9);
    }
}
