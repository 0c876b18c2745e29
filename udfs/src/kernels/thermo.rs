//! The thermodynamic constraint system over a chain of timestep groups, and adaptive timestep
//! grouping. Everything here works on one ordered partition (one layer's groups or timesteps).
//!
//! - Phase 1, Markov validation: [`markov_smoothness`], the relative change of a scale from one
//!   group to the next.
//! - Phase 2, boundary smoothing: [`smooth_steps`] turns a step series (runs of equal values,
//!   one run per group) into a curve through the run centres.
//! - Phase 3, transition optimisation: [`optimize_chain`] chooses one clipping range per group
//!   to minimise weighted MSE + λ₁·Markov + λ₂·entropy, exactly, by dynamic programming over
//!   candidate ranges (the objective only couples neighbouring groups).
//! - [`adaptive_segments`]: the optimal segmentation of a per-timestep statistic into groups of
//!   least within-group squared deviation, also by dynamic programming.

use crate::kernels::error::{GRID_BITS, KernelError, Result, check_finite, readable};

fn schedule_error(message: String) -> KernelError {
    KernelError::Schedule(message)
}

/// Refuses a scale that is not a positive finite number: relative changes need a positive base.
pub fn check_scale(position: usize, scale: f64) -> Result<()> {
    if scale.is_finite() && scale > 0.0 {
        Ok(())
    } else {
        Err(schedule_error(format!(
            "scale at position {position} of the partition must be positive and finite, got {scale}"
        )))
    }
}

/// Refuses a grid that does not describe f32 values: a scale that is not positive and finite,
/// or a scale or offset beyond f32 (where `offset + scale · code` is no longer a value).
pub fn check_range(position: usize, choice: RangeChoice) -> Result<()> {
    check_scale(position, choice.scale)?;
    let limit = f64::from(f32::MAX);
    for (what, value) in [("scale", choice.scale), ("offset", choice.offset)] {
        if !(value.is_finite() && value.abs() <= limit) {
            return Err(schedule_error(format!(
                "{what} at position {position} of the partition must be finite and within Float32 (±3.4e38), got {}",
                readable(value)
            )));
        }
    }
    Ok(())
}

/// Phase 1: `|s(t+1) − s(t)| / |s(t)|` for each position; `None` where there is no next value or
/// either value is missing.
pub fn markov_smoothness(scales: &[Option<f64>]) -> Result<Vec<Option<f64>>> {
    for (position, scale) in scales.iter().enumerate() {
        if let Some(s) = scale {
            check_scale(position, *s)?;
        }
    }
    let mut out = Vec::with_capacity(scales.len());
    for pair in scales.windows(2) {
        out.push(match (pair[0], pair[1]) {
            (Some(a), Some(b)) => Some((b - a).abs() / a),
            _ => None,
        });
    }
    if !scales.is_empty() {
        out.push(None);
    }
    Ok(out)
}

/// How [`smooth_steps`] joins neighbouring groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmoothMethod {
    /// Straight lines between group centres (C⁰).
    Linear,
    /// A natural cubic spline through the group centres (C²), kept within the series' range.
    Cubic,
    /// A logistic ramp between group centres: flat near each centre, steep at the boundary.
    Sigmoid,
}

impl SmoothMethod {
    pub const NAMES: &'static str = "'linear', 'cubic' or 'sigmoid'";

    pub fn parse(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "linear" => Ok(Self::Linear),
            "cubic" => Ok(Self::Cubic),
            "sigmoid" => Ok(Self::Sigmoid),
            _ => Err(schedule_error(format!(
                "unknown smoothing method '{name}': expected {}",
                Self::NAMES
            ))),
        }
    }
}

/// Steepness of the sigmoid ramp over one interval between group centres.
const SIGMOID_STEEPNESS: f64 = 10.0;

/// Phase 2: the values at `points` (position, value) — a step series, each run of equal values
/// one group — replaced by a curve through the centre of every run. Before the first centre and
/// after the last the value is the first and last group's; a series of one run is unchanged.
pub fn smooth_steps(points: &[(f64, f64)], method: SmoothMethod) -> Result<Vec<f64>> {
    for (position, (_, value)) in points.iter().enumerate() {
        if !value.is_finite() {
            return Err(schedule_error(format!(
                "value at position {position} of the partition is not finite: {value}"
            )));
        }
    }
    // Centres of the runs of equal values.
    let mut knots: Vec<(f64, f64)> = Vec::new();
    let mut start = 0;
    for i in 1..=points.len() {
        if i == points.len() || points[i].1 != points[start].1 {
            let centre = (points[start].0 + points[i - 1].0) / 2.0;
            knots.push((centre, points[start].1));
            start = i;
        }
    }
    if knots.len() < 2 {
        return Ok(points.iter().map(|p| p.1).collect());
    }
    // Differences of values near f64::MAX overflow (1e308 − (−1e308)): such a series is
    // smoothed scaled down by a power of two (exact), then scaled back.
    let unit = power_of_two_unit(knots.iter().map(|k| k.1));
    if unit != 1.0 {
        let scaled: Vec<(f64, f64)> = points.iter().map(|&(x, v)| (x, v / unit)).collect();
        let out = smooth_steps(&scaled, method)?;
        // Every method stays within the knots' range; the clamp keeps the last rounding so.
        let (lowest, highest) = knot_range(&knots);
        return Ok(out
            .into_iter()
            .map(|v| (v * unit).clamp(lowest, highest))
            .collect());
    }
    let second_derivatives = match method {
        SmoothMethod::Cubic => natural_spline(&knots),
        _ => Vec::new(),
    };
    let (lowest, highest) = knot_range(&knots);
    let mut interval = 0;
    let mut out = Vec::with_capacity(points.len());
    for &(x, _) in points {
        let last = knots.len() - 1;
        if x <= knots[0].0 {
            out.push(knots[0].1);
            continue;
        }
        if x >= knots[last].0 {
            out.push(knots[last].1);
            continue;
        }
        while knots[interval + 1].0 < x {
            interval += 1;
        }
        let (x0, y0) = knots[interval];
        let (x1, y1) = knots[interval + 1];
        let h = x1 - x0;
        let u = (x - x0) / h;
        let value = match method {
            SmoothMethod::Linear => y0 + (y1 - y0) * u,
            SmoothMethod::Sigmoid => {
                let logistic = |z: f64| 1.0 / (1.0 + (-z).exp());
                let low = logistic(-SIGMOID_STEEPNESS / 2.0);
                let high = logistic(SIGMOID_STEEPNESS / 2.0);
                let ramp = (logistic(SIGMOID_STEEPNESS * (u - 0.5)) - low) / (high - low);
                y0 + (y1 - y0) * ramp
            }
            SmoothMethod::Cubic => {
                let (m0, m1) = (
                    second_derivatives[interval],
                    second_derivatives[interval + 1],
                );
                let a = 1.0 - u;
                let cubic =
                    a * y0 + u * y1 + ((a * a * a - a) * m0 + (u * u * u - u) * m1) * h * h / 6.0;
                cubic.clamp(lowest, highest)
            }
        };
        out.push(value);
    }
    Ok(out)
}

fn knot_range(knots: &[(f64, f64)]) -> (f64, f64) {
    knots
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), k| {
            (lo.min(k.1), hi.max(k.1))
        })
}

/// 1, or, for values so large that their differences and squares could overflow f64, the
/// power of two to divide them by (exact) so that they are near 1.
fn power_of_two_unit(values: impl Iterator<Item = f64>) -> f64 {
    const LARGE: f64 = 1e150;
    let largest = values.fold(0.0f64, |m, v| m.max(v.abs()));
    if largest <= LARGE {
        return 1.0;
    }
    // 2^e ≤ largest < 2^(e+1), with e between 498 and 1023.
    let e = ((largest.to_bits() >> 52) & 0x7ff) as i32 - 1023;
    2f64.powi(e)
}

/// Second derivatives of the natural cubic spline through `knots` (Thomas algorithm).
fn natural_spline(knots: &[(f64, f64)]) -> Vec<f64> {
    let n = knots.len();
    let mut m = vec![0.0; n];
    if n < 3 {
        return m;
    }
    let mut diag = vec![0.0; n];
    let mut rhs = vec![0.0; n];
    for i in 1..n - 1 {
        let h0 = knots[i].0 - knots[i - 1].0;
        let h1 = knots[i + 1].0 - knots[i].0;
        diag[i] = 2.0 * (h0 + h1);
        rhs[i] = 6.0 * ((knots[i + 1].1 - knots[i].1) / h1 - (knots[i].1 - knots[i - 1].1) / h0);
        if i > 1 {
            let factor = h0 / diag[i - 1];
            diag[i] -= factor * h0;
            rhs[i] -= factor * rhs[i - 1];
        }
    }
    for i in (1..n - 1).rev() {
        let h1 = knots[i + 1].0 - knots[i].0;
        let next = if i + 1 < n - 1 { m[i + 1] } else { 0.0 };
        m[i] = (rhs[i] - h1 * next) / diag[i];
    }
    m
}

/// The exact search of [`adaptive_segments`] refuses partitions that would take more than this
/// many steps (about (groups − 2) · (rows − groups)² / 2; a second or so) …
pub const ADAPTIVE_MAX_STEPS: u64 = 1 << 28;
/// … or more than this many back-pointers (4 bytes each: 64 MB; about groups · (rows − groups)).
pub const ADAPTIVE_MAX_CELLS: u64 = 1 << 24;

/// Adaptive grouping: group ids (0, 1, …, non-decreasing) cutting `stats` into `groups`
/// contiguous non-empty runs with the least total squared deviation from their run means.
/// Exact: dynamic programming over prefix sums, in O(groups · (n − groups)²) time and
/// O(groups · (n − groups)) memory, bounded by [`ADAPTIVE_MAX_STEPS`] and
/// [`ADAPTIVE_MAX_CELLS`] (the cost is not Monge for unsorted series, so the usual speed-ups
/// would not be exact).
pub fn adaptive_segments(stats: &[f64], groups: usize) -> Result<Vec<usize>> {
    let n = stats.len();
    if groups == 0 || groups > n {
        return Err(schedule_error(format!(
            "num_groups must be between 1 and the number of timesteps in the partition ({n}), got {groups}"
        )));
    }
    if let Some(position) = stats.iter().position(|v| !v.is_finite()) {
        return Err(schedule_error(format!(
            "statistic at position {position} of the partition is not finite: {}",
            stats[position]
        )));
    }
    // Run g (0-based) of an optimal cut ends somewhere in g + 1 ..= n − (groups − 1 − g):
    // `span` end positions, each tried against `span` starts at most.
    let span = (n - groups + 1) as u64;
    let middle = groups.saturating_sub(2) as u64;
    let steps = middle * span * (span + 1) / 2 + span;
    let cells = middle * span;
    if steps > ADAPTIVE_MAX_STEPS || cells > ADAPTIVE_MAX_CELLS {
        return Err(schedule_error(format!(
            "{n} timesteps in {groups} groups need {steps} steps and {cells} back-pointers of the exact search, more than its limits of {ADAPTIVE_MAX_STEPS} and {ADAPTIVE_MAX_CELLS} (about (num_groups − 2) · (rows − num_groups)² / 2 and num_groups · (rows − num_groups)); use fewer groups or timesteps, or timestep_group for fixed groups"
        )));
    }
    // Scaled by a power of two when huge, so that squares stay finite (the cut is the same);
    // shifted by the mean, which keeps the prefix sums well conditioned.
    let unit = power_of_two_unit(stats.iter().copied());
    let mean = stats.iter().map(|v| v / unit).sum::<f64>() / n as f64;
    let mut sum = vec![0.0; n + 1];
    let mut sum_sq = vec![0.0; n + 1];
    for (i, v) in stats.iter().enumerate() {
        let d = v / unit - mean;
        sum[i + 1] = sum[i] + d;
        sum_sq[i + 1] = sum_sq[i] + d * d;
    }
    // Squared deviation of stats[a..b] from its mean.
    let cost = |a: usize, b: usize| {
        let s = sum[b] - sum[a];
        ((sum_sq[b] - sum_sq[a]) - s * s / (b - a) as f64).max(0.0)
    };
    // best[i]: least cost of cutting stats[..i] into the runs so far; start[g][i − g − 1]:
    // where run g begins when it ends at i (runs 1 ..= groups − 2; the last run ends at n).
    let span = span as usize;
    let mut best: Vec<f64> = (0..=n)
        .map(|i| if i == 0 { f64::INFINITY } else { cost(0, i) })
        .collect();
    let mut start: Vec<Vec<u32>> = Vec::with_capacity(groups);
    start.push(Vec::new());
    for g in 1..groups.saturating_sub(1) {
        let mut next = vec![f64::INFINITY; n + 1];
        let mut from = vec![0u32; span];
        for i in g + 1..g + 1 + span {
            for (j, &before) in best.iter().enumerate().take(i).skip(g) {
                let candidate = before + cost(j, i);
                if candidate < next[i] {
                    next[i] = candidate;
                    from[i - g - 1] = j as u32;
                }
            }
        }
        best = next;
        start.push(from);
    }
    let mut ids = vec![0; n];
    let mut end = n;
    if groups >= 2 {
        // The last run: every start that leaves the earlier runs one value each at least.
        let g = groups - 1;
        let (mut begin, mut least) = (g, f64::INFINITY);
        for (j, &before) in best.iter().enumerate().take(n).skip(g) {
            let candidate = before + cost(j, n);
            if candidate < least {
                (begin, least) = (j, candidate);
            }
        }
        ids[begin..].fill(g);
        end = begin;
        for g in (1..groups - 1).rev() {
            let begin = start[g][end - g - 1] as usize;
            ids[begin..end].fill(g);
            end = begin;
        }
    }
    ids[..end].fill(0);
    Ok(ids)
}

/// One group's clipping range: codes 0..=levels cover [offset, offset + scale · levels].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RangeChoice {
    pub scale: f64,
    pub offset: f64,
}

impl RangeChoice {
    pub fn clip_max(&self, levels: f64) -> f64 {
        self.offset + self.scale * levels
    }
}

/// Mean squared error of `values` rounded to the grid `offset + scale · k`, k in 0..=levels.
pub fn range_mse(values: &[f32], choice: RangeChoice, levels: u32) -> f64 {
    range_mse_entropy(values, choice, levels, false).0
}

/// The MSE and, when asked, the entropy of the codes (bits per value).
fn range_mse_entropy(
    values: &[f32],
    choice: RangeChoice,
    levels: u32,
    entropy: bool,
) -> (f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0);
    }
    let inverse = 1.0 / choice.scale;
    let top = f64::from(levels);
    let mut histogram = [0u32; 256];
    let mut err = 0.0;
    for &v in values {
        // max/min rather than clamp: a NaN code (0 · ∞ under a subnormal scale) becomes 0.
        let code = ((f64::from(v) - choice.offset) * inverse)
            .round()
            .max(0.0)
            .min(top);
        let d = f64::from(v) - (choice.offset + code * choice.scale);
        err += d * d;
        if entropy {
            histogram[code as usize] += 1;
        }
    }
    let n = values.len() as f64;
    let bits = if entropy {
        histogram
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| {
                let p = f64::from(c) / n;
                -p * p.log2()
            })
            .sum()
    } else {
        0.0
    };
    (err / n, bits)
}

/// Weights of the three terms of the transition objective.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChainWeights {
    pub bits: u8,
    pub lambda_markov: f64,
    pub lambda_entropy: f64,
}

impl ChainWeights {
    pub fn new(bits: i64, lambda_markov: f64, lambda_entropy: f64) -> Result<Self> {
        if !(2..=8).contains(&bits) {
            return Err(KernelError::UnsupportedBits {
                bits,
                expected: GRID_BITS,
            });
        }
        for (name, value) in [
            ("lambda_markov", lambda_markov),
            ("lambda_entropy", lambda_entropy),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(schedule_error(format!(
                    "{name} must be a finite number ≥ 0, got {value}"
                )));
            }
        }
        Ok(Self {
            bits: bits as u8,
            lambda_markov,
            lambda_entropy,
        })
    }

    fn levels(&self) -> u32 {
        (1u32 << self.bits) - 1
    }
}

/// One candidate range of a group with its cost terms.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    choice: RangeChoice,
    mse: f64,
    entropy: f64,
}

/// The chosen range of one group in an optimised chain.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupSolution {
    pub choice: RangeChoice,
    pub mse: f64,
}

/// The optimised chain and the value of its objective.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainSolution {
    pub groups: Vec<GroupSolution>,
    pub objective: f64,
}

/// Clipping fractions on each side of zero (or of the nearer end, for one-signed data).
const LOW_FRACTIONS: [f64; 8] = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3];
const HIGH_STEPS: usize = 24;

/// The candidate ranges of one group: a grid of clipping fractions below and above its centre
/// of clipping, then (added by the caller) the best scale of every other group re-centred on this
/// group's data, so that the chain can hold one scale across a boundary.
fn grid_candidates(values: &[f32], levels: u32) -> Vec<RangeChoice> {
    let (lo, hi) = values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(f64::from(v)), hi.max(f64::from(v)))
        });
    let top = f64::from(levels);
    let width = (hi - lo).max(f64::from(f32::EPSILON) * hi.abs().max(lo.abs()).max(1e-30));
    let centre = 0.0f64.clamp(lo, hi);
    let mut out = Vec::with_capacity(LOW_FRACTIONS.len() * HIGH_STEPS);
    for a in LOW_FRACTIONS {
        for step in 0..HIGH_STEPS {
            let b = 1.0 - 0.7 * step as f64 / (HIGH_STEPS - 1) as f64;
            let low = centre + (lo - centre) * a;
            let high = centre + (hi - centre) * b;
            let span = (high - low).max(width * 1e-3);
            out.push(RangeChoice {
                scale: span / top,
                offset: low,
            });
        }
    }
    out
}

/// Group g's weighted objective terms for a candidate.
fn evaluate(values: &[f32], choice: RangeChoice, weights: &ChainWeights) -> Candidate {
    let (mse, entropy) = range_mse_entropy(
        values,
        choice,
        weights.levels(),
        weights.lambda_entropy > 0.0,
    );
    Candidate {
        choice,
        mse,
        entropy,
    }
}

fn markov_cost(from: f64, to: f64) -> f64 {
    let r = (to - from) / from;
    r * r
}

/// The candidate of least MSE (the first of equals).
fn best_of(candidates: &[Candidate]) -> Candidate {
    *candidates
        .iter()
        .min_by(|a, b| a.mse.total_cmp(&b.mse))
        .expect("grid is not empty")
}

/// The prepared optimisation problem: candidates and their costs per group.
struct Chain {
    candidates: Vec<Vec<Candidate>>,
    /// 1 / the group's least MSE over its grid: the MSE term is relative, 1.0 at the best range.
    mse_weight: Vec<f64>,
    weights: ChainWeights,
}

/// Each group also takes the best scales of this many groups on either side of it,
/// re-centred on its own data. A window rather than every other group: the candidates per
/// group, and so the work per transition, stay bounded however long the chain (with every
/// group, 4000 groups meant 4000 candidates a group and minutes of search); a scale held
/// across more groups than this is still reachable, one window at a time. Chains of up to
/// `NEIGHBOURS + 1` groups see every other group, as before.
pub const NEIGHBOURS: usize = 16;

impl Chain {
    /// Each group's grid of candidates, evaluated, and the weight of its MSE term.
    fn grids(groups: &[&[f32]], weights: ChainWeights) -> Result<Self> {
        for (g, values) in groups.iter().enumerate() {
            if values.is_empty() {
                return Err(schedule_error(format!(
                    "group at position {g} has no values"
                )));
            }
            check_finite(values)
                .map_err(|e| schedule_error(format!("group at position {g}: {e}")))?;
        }
        let levels = weights.levels();
        let candidates: Vec<Vec<Candidate>> = groups
            .iter()
            .map(|values| {
                grid_candidates(values, levels)
                    .into_iter()
                    .map(|c| evaluate(values, c, &weights))
                    .collect()
            })
            .collect();
        let mse_weight = candidates
            .iter()
            .zip(groups)
            .map(|(cs, values)| {
                let mean_square =
                    values.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / values.len() as f64;
                1.0 / best_of(cs)
                    .mse
                    .max(mean_square * 1e-12)
                    .max(f64::MIN_POSITIVE)
            })
            .collect();
        Ok(Self {
            candidates,
            mse_weight,
            weights,
        })
    }

    fn new(groups: &[&[f32]], weights: ChainWeights) -> Result<Self> {
        let mut chain = Self::grids(groups, weights)?;
        let levels = f64::from(weights.levels());
        let best: Vec<RangeChoice> = chain
            .candidates
            .iter()
            .map(|cs| best_of(cs).choice)
            .collect();
        // A group may also take a neighbour's best scale, centred where its own best range is
        // centred, when that range stays within f32 (the range is returned as f32).
        let limit = f64::from(f32::MAX);
        for (g, values) in groups.iter().enumerate() {
            let own = best[g];
            let middle = own.offset + own.scale * levels / 2.0;
            let window = g.saturating_sub(NEIGHBOURS)..(g + NEIGHBOURS + 1).min(groups.len());
            for h in window.filter(|&h| h != g) {
                let scale = best[h].scale;
                let choice = RangeChoice {
                    scale,
                    offset: middle - scale * levels / 2.0,
                };
                if choice.offset >= -limit && choice.clip_max(levels) <= limit {
                    chain.candidates[g].push(evaluate(values, choice, &weights));
                }
            }
        }
        Ok(chain)
    }

    fn unary(&self, g: usize, c: &Candidate) -> f64 {
        self.mse_weight[g] * c.mse
            + self.weights.lambda_entropy * c.entropy / f64::from(self.weights.bits)
    }

    fn pair(&self, from: &Candidate, to: &Candidate) -> f64 {
        self.weights.lambda_markov * markov_cost(from.choice.scale, to.choice.scale)
    }

    /// Exact minimum by dynamic programming (Viterbi): O(groups · candidates²).
    fn solve(&self) -> ChainSolution {
        let n = self.candidates.len();
        let mut cost: Vec<f64> = self.candidates[0]
            .iter()
            .map(|c| self.unary(0, c))
            .collect();
        let mut back: Vec<Vec<usize>> = Vec::with_capacity(n);
        back.push(Vec::new());
        for g in 1..n {
            let mut next = Vec::with_capacity(self.candidates[g].len());
            let mut from = Vec::with_capacity(self.candidates[g].len());
            for c in &self.candidates[g] {
                let (k, total) = self.candidates[g - 1]
                    .iter()
                    .zip(&cost)
                    .map(|(p, &acc)| acc + self.pair(p, c))
                    .enumerate()
                    .min_by(|a, b| a.1.total_cmp(&b.1))
                    .expect("candidates are not empty");
                next.push(total + self.unary(g, c));
                from.push(k);
            }
            cost = next;
            back.push(from);
        }
        let (mut k, objective) = cost
            .iter()
            .copied()
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .expect("candidates are not empty");
        let mut picks = vec![0; n];
        for g in (0..n).rev() {
            picks[g] = k;
            if g > 0 {
                k = back[g][k];
            }
        }
        ChainSolution {
            groups: picks
                .iter()
                .enumerate()
                .map(|(g, &k)| {
                    let c = self.candidates[g][k];
                    GroupSolution {
                        choice: c.choice,
                        mse: c.mse,
                    }
                })
                .collect(),
            objective,
        }
    }

    #[cfg(test)]
    fn objective_of(&self, picks: &[usize]) -> f64 {
        let mut total = 0.0;
        for (g, &k) in picks.iter().enumerate() {
            total += self.unary(g, &self.candidates[g][k]);
            if g > 0 {
                total += self.pair(
                    &self.candidates[g - 1][picks[g - 1]],
                    &self.candidates[g][k],
                );
            }
        }
        total
    }
}

/// Phase 3: one range per group (in chain order) minimising
/// Σ mse_g / best_mse_g + λ_markov · Σ ((s_{g+1} − s_g) / s_g)² + λ_entropy · Σ H_g / bits,
/// where best_mse_g is the group's least MSE over its own grid and H_g the entropy of its codes.
pub fn optimize_chain(groups: &[&[f32]], weights: ChainWeights) -> Result<ChainSolution> {
    if groups.is_empty() {
        return Ok(ChainSolution {
            groups: Vec::new(),
            objective: 0.0,
        });
    }
    Ok(Chain::new(groups, weights)?.solve())
}

/// The objective of [`optimize_chain`] for given ranges (one per group), for comparisons.
pub fn chain_objective(
    groups: &[&[f32]],
    choices: &[RangeChoice],
    weights: ChainWeights,
) -> Result<f64> {
    // Only the MSE weights are needed: the grids give them, without the neighbours.
    let chain = Chain::grids(groups, weights)?;
    let mut total = 0.0;
    for (g, (values, choice)) in groups.iter().zip(choices).enumerate() {
        let c = evaluate(values, *choice, &weights);
        total += chain.unary(g, &c);
        if g > 0 {
            total += weights.lambda_markov * markov_cost(choices[g - 1].scale, choice.scale);
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exhaustive search over every combination of candidates: for tests of [`optimize_chain`]
    /// on short chains only (candidates^groups combinations).
    fn brute_force_chain(groups: &[&[f32]], weights: ChainWeights) -> Result<f64> {
        let chain = Chain::new(groups, weights)?;
        let sizes: Vec<usize> = chain.candidates.iter().map(Vec::len).collect();
        let mut picks = vec![0; sizes.len()];
        let mut best = f64::INFINITY;
        loop {
            best = best.min(chain.objective_of(&picks));
            let mut g = 0;
            loop {
                if g == picks.len() {
                    return Ok(best);
                }
                picks[g] += 1;
                if picks[g] < sizes[g] {
                    break;
                }
                picks[g] = 0;
                g += 1;
            }
        }
    }

    #[test]
    fn smoothness_is_relative_change_to_the_next_group() {
        let s = markov_smoothness(&[Some(1.0), Some(1.5), None, Some(2.0)]).unwrap();
        assert_eq!(s, vec![Some(0.5), None, None, None]);
        assert!(markov_smoothness(&[Some(1.0), Some(0.0)]).is_err());
        assert!(markov_smoothness(&[Some(f64::NAN)]).is_err());
        assert_eq!(markov_smoothness(&[Some(3.0)]).unwrap(), vec![None]);
    }

    #[test]
    fn linear_smoothing_runs_through_group_centres() {
        // Two groups of 4: centres at 1.5 and 5.5.
        let points: Vec<(f64, f64)> = (0..8)
            .map(|i| (i as f64, if i < 4 { 1.0 } else { 2.0 }))
            .collect();
        let out = smooth_steps(&points, SmoothMethod::Linear).unwrap();
        assert_eq!(out[0], 1.0);
        assert_eq!(out[1], 1.0);
        assert!((out[2] - 1.125).abs() < 1e-12);
        assert!((out[5] - 1.875).abs() < 1e-12);
        assert_eq!(out[7], 2.0);
        for method in [SmoothMethod::Cubic, SmoothMethod::Sigmoid] {
            let out = smooth_steps(&points, method).unwrap();
            assert!(out.windows(2).all(|w| w[1] >= w[0]), "{method:?}: {out:?}");
            assert_eq!((out[0], out[7]), (1.0, 2.0));
        }
    }

    #[test]
    fn cubic_smoothing_stays_within_the_series() {
        let points: Vec<(f64, f64)> = [1.0, 1.0, 5.0, 5.0, 1.0, 1.0, 4.0, 4.0]
            .iter()
            .enumerate()
            .map(|(i, v)| (i as f64, *v))
            .collect();
        let out = smooth_steps(&points, SmoothMethod::Cubic).unwrap();
        assert!(out.iter().all(|v| (1.0..=5.0).contains(v)), "{out:?}");
        assert!(smooth_steps(&[(0.0, f64::INFINITY)], SmoothMethod::Linear).is_err());
    }

    #[test]
    fn adaptive_segments_find_the_steps() {
        let stats = [1.0, 1.1, 0.9, 5.0, 5.2, 4.9, 5.1, 9.0, 9.0];
        assert_eq!(
            adaptive_segments(&stats, 3).unwrap(),
            vec![0, 0, 0, 1, 1, 1, 1, 2, 2]
        );
        assert_eq!(
            adaptive_segments(&stats, 9).unwrap(),
            (0..9).collect::<Vec<_>>()
        );
        assert_eq!(adaptive_segments(&stats, 1).unwrap(), vec![0; 9]);
        assert!(adaptive_segments(&stats, 0).is_err());
        assert!(adaptive_segments(&stats, 10).is_err());
        assert!(adaptive_segments(&[1.0, f64::NAN], 1).is_err());
    }

    #[test]
    fn adaptive_segments_match_brute_force() {
        // Every placement of 2 cuts in 9 positions.
        let stats = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0];
        let sse = |run: &[f64]| {
            let m = run.iter().sum::<f64>() / run.len() as f64;
            run.iter().map(|v| (v - m).powi(2)).sum::<f64>()
        };
        let mut best = f64::INFINITY;
        for a in 1..stats.len() {
            for b in a + 1..stats.len() {
                best = best.min(sse(&stats[..a]) + sse(&stats[a..b]) + sse(&stats[b..]));
            }
        }
        let ids = adaptive_segments(&stats, 3).unwrap();
        let total: f64 = (0..3)
            .map(|g| {
                let run: Vec<f64> = stats
                    .iter()
                    .zip(&ids)
                    .filter(|(_, id)| **id == g)
                    .map(|(v, _)| *v)
                    .collect();
                sse(&run)
            })
            .sum();
        assert!((total - best).abs() < 1e-9, "{total} vs {best}");
    }

    #[test]
    fn range_mse_of_exact_grid_is_zero() {
        let values = [0.0f32, 0.5, 1.0, 1.5];
        let choice = RangeChoice {
            scale: 0.5,
            offset: 0.0,
        };
        assert_eq!(range_mse(&values, choice, 3), 0.0);
        // Clamped beyond the top code: 2.0 → 1.5.
        assert!((range_mse(&[2.0], choice, 3) - 0.25).abs() < 1e-12);
    }

    #[test]
    fn weights_are_validated() {
        assert!(ChainWeights::new(4, -1.0, 0.0).is_err());
        assert!(ChainWeights::new(4, 0.0, f64::NAN).is_err());
        assert!(ChainWeights::new(9, 0.0, 0.0).is_err());
    }

    fn seeded_groups(seed: u64, groups: usize, len: usize) -> Vec<Vec<f32>> {
        // xorshift: deterministic, no dependency.
        let mut state = seed | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        (0..groups)
            .map(|g| {
                let width = 0.5 + 2.0 * next() + g as f64 * 0.3;
                (0..len)
                    .map(|_| ((next() - 0.3) * width + (next() - 0.5) * 0.2) as f32)
                    .collect()
            })
            .collect()
    }

    #[test]
    fn optimize_chain_matches_brute_force() {
        for (seed, groups, bits, markov, entropy) in [
            (1, 2, 4, 1.0, 0.0),
            (2, 2, 2, 5.0, 0.5),
            (3, 3, 4, 1.0, 0.01),
            (4, 3, 8, 20.0, 0.0),
            (5, 3, 2, 0.0, 1.0),
        ] {
            let data = seeded_groups(seed, groups, 48);
            let slices: Vec<&[f32]> = data.iter().map(Vec::as_slice).collect();
            let weights = ChainWeights::new(bits, markov, entropy).unwrap();
            let solution = optimize_chain(&slices, weights).unwrap();
            let exhaustive = brute_force_chain(&slices, weights).unwrap();
            assert!(
                (solution.objective - exhaustive).abs() <= 1e-9 * exhaustive.abs().max(1.0),
                "seed {seed}: dp {} vs brute force {exhaustive}",
                solution.objective
            );
            let choices: Vec<RangeChoice> = solution.groups.iter().map(|g| g.choice).collect();
            let again = chain_objective(&slices, &choices, weights).unwrap();
            assert!((again - solution.objective).abs() <= 1e-9 * again.max(1.0));
        }
    }

    #[test]
    fn markov_weight_pulls_scales_together() {
        let data = seeded_groups(7, 6, 64);
        let slices: Vec<&[f32]> = data.iter().map(Vec::as_slice).collect();
        let free = optimize_chain(&slices, ChainWeights::new(4, 0.0, 0.0).unwrap()).unwrap();
        let tied = optimize_chain(&slices, ChainWeights::new(4, 50.0, 0.0).unwrap()).unwrap();
        let jumps = |s: &ChainSolution| {
            s.groups
                .windows(2)
                .map(|w| markov_cost(w[0].choice.scale, w[1].choice.scale))
                .sum::<f64>()
        };
        assert!(jumps(&tied) < jumps(&free));
        // A chain of one group: its best range, objective 1 (relative MSE) with no other terms.
        let one = optimize_chain(&slices[..1], ChainWeights::new(4, 1.0, 0.0).unwrap()).unwrap();
        assert!((one.objective - 1.0).abs() < 1e-12);
        assert!(
            optimize_chain(&[&[1.0, f32::NAN]], ChainWeights::new(4, 1.0, 0.0).unwrap()).is_err()
        );
        assert!(optimize_chain(&[&[]], ChainWeights::new(4, 1.0, 0.0).unwrap()).is_err());
    }

    /// The search as it was before its bounds: every cut end for every run, for comparison.
    fn adaptive_reference(stats: &[f64], groups: usize) -> Vec<usize> {
        let n = stats.len();
        let mean = stats.iter().sum::<f64>() / n as f64;
        let mut sum = vec![0.0; n + 1];
        let mut sum_sq = vec![0.0; n + 1];
        for (i, v) in stats.iter().enumerate() {
            let d = v - mean;
            sum[i + 1] = sum[i] + d;
            sum_sq[i + 1] = sum_sq[i] + d * d;
        }
        let cost = |a: usize, b: usize| {
            let s = sum[b] - sum[a];
            ((sum_sq[b] - sum_sq[a]) - s * s / (b - a) as f64).max(0.0)
        };
        let mut best = vec![vec![f64::INFINITY; n + 1]; groups];
        let mut start = vec![vec![0usize; n + 1]; groups];
        for (i, first) in best[0].iter_mut().enumerate().skip(1) {
            *first = cost(0, i);
        }
        for g in 1..groups {
            for i in g + 1..=n {
                for j in g..i {
                    let candidate = best[g - 1][j] + cost(j, i);
                    if candidate < best[g][i] {
                        best[g][i] = candidate;
                        start[g][i] = j;
                    }
                }
            }
        }
        let mut ids = vec![0; n];
        let mut end = n;
        for g in (0..groups).rev() {
            let begin = if g == 0 { 0 } else { start[g][end] };
            ids[begin..end].fill(g);
            end = begin;
        }
        ids
    }

    #[test]
    fn adaptive_segments_equal_the_unbounded_search() {
        let data = seeded_groups(11, 1, 60);
        let stats: Vec<f64> = data[0].iter().map(|&v| f64::from(v)).collect();
        for groups in [1, 2, 3, 5, 17, 58, 59, 60] {
            assert_eq!(
                adaptive_segments(&stats, groups).unwrap(),
                adaptive_reference(&stats, groups),
                "{groups} groups"
            );
        }
        // Ties (a constant series) break the same way.
        for groups in [1, 2, 4] {
            assert_eq!(
                adaptive_segments(&[2.0; 7], groups).unwrap(),
                adaptive_reference(&[2.0; 7], groups)
            );
        }
    }

    #[test]
    fn adaptive_segments_refuse_searches_beyond_their_bound() {
        let stats = vec![1.0; 4000];
        assert!(adaptive_segments(&stats, 36).is_ok());
        let err = adaptive_segments(&stats, 37).unwrap_err().to_string();
        assert!(
            err.contains("4000 timesteps in 37 groups need") && err.contains("268435456"),
            "{err}"
        );
        // Few groups, or almost one group per timestep, stay cheap whatever the length.
        assert!(adaptive_segments(&vec![1.0; 100_000], 2).is_ok());
        assert!(adaptive_segments(&stats, 3990).is_ok());
    }

    #[test]
    fn huge_values_are_smoothed_and_segmented_without_overflow() {
        let big = f64::MAX;
        let points: Vec<(f64, f64)> = (0..8)
            .map(|i| (i as f64, if i < 4 { -big } else { big }))
            .collect();
        for method in [
            SmoothMethod::Linear,
            SmoothMethod::Cubic,
            SmoothMethod::Sigmoid,
        ] {
            let out = smooth_steps(&points, method).unwrap();
            assert!(out.iter().all(|v| v.is_finite()), "{method:?}: {out:?}");
            assert!(out.windows(2).all(|w| w[1] >= w[0]), "{method:?}: {out:?}");
            assert_eq!((out[0], out[7]), (-big, big));
        }
        // Linear through the centres 1.5 and 5.5: a quarter of the way at 2.5.
        let out = smooth_steps(&points, SmoothMethod::Linear).unwrap();
        assert!((out[3] / big + 0.25).abs() < 1e-12, "{}", out[3]);
        let stats = [1e308, 1.1e308, -1e308, -1.2e308, 1e308];
        assert_eq!(adaptive_segments(&stats, 3).unwrap(), vec![0, 0, 1, 1, 2]);
    }

    #[test]
    fn long_chains_keep_a_bounded_candidate_set() {
        let data = seeded_groups(21, 300, 16);
        let slices: Vec<&[f32]> = data.iter().map(Vec::as_slice).collect();
        let weights = ChainWeights::new(4, 1.0, 0.0).unwrap();
        let chain = Chain::new(&slices, weights).unwrap();
        let most = chain.candidates.iter().map(Vec::len).max().unwrap();
        assert!(most <= 192 + 2 * NEIGHBOURS, "{most} candidates");
        let solution = chain.solve();
        let choices: Vec<RangeChoice> = solution.groups.iter().map(|g| g.choice).collect();
        let again = chain_objective(&slices, &choices, weights).unwrap();
        assert!((again - solution.objective).abs() <= 1e-9 * again.max(1.0));
    }

    #[test]
    fn chains_of_huge_values_give_ranges_within_f32() {
        let groups: Vec<Vec<f32>> = vec![
            vec![f32::MAX, -f32::MAX, 0.0, 1e38],
            vec![f32::MAX, f32::MAX * 0.99],
            vec![-f32::MAX, 3e38, -3e38],
        ];
        let slices: Vec<&[f32]> = groups.iter().map(Vec::as_slice).collect();
        let solution = optimize_chain(&slices, ChainWeights::new(8, 1.0, 0.01).unwrap()).unwrap();
        assert!(solution.objective.is_finite());
        for g in &solution.groups {
            let top = g.choice.clip_max(255.0);
            assert!(g.mse.is_finite(), "{g:?}");
            assert!(
                (g.choice.offset as f32).is_finite() && (top as f32).is_finite(),
                "{g:?}"
            );
        }
    }

    #[test]
    fn range_mse_of_a_subnormal_scale_is_not_nan() {
        let choice = RangeChoice {
            scale: 5e-324,
            offset: 0.0,
        };
        assert!(range_mse(&[0.0, 1.0], choice, 15).is_finite());
        assert!(
            check_range(
                0,
                RangeChoice {
                    scale: 1e39,
                    offset: 0.0
                }
            )
            .is_err()
        );
        assert!(
            check_range(
                0,
                RangeChoice {
                    scale: 1.0,
                    offset: -1e39
                }
            )
            .is_err()
        );
        assert!(
            check_range(
                0,
                RangeChoice {
                    scale: 1.0,
                    offset: f64::NAN
                }
            )
            .is_err()
        );
    }
}
