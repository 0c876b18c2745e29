//! Bit allocation under a size budget: one candidate (a format) per item (a tensor), the total
//! error least, the total size within the budget. This is the multiple-choice knapsack; it is
//! solved with a certificate rather than exactly:
//!
//! 1. Each item's candidates are cut to their lower convex hull in (bytes, error). The LP
//!    relaxation of the problem (what Lagrangian relaxation over the hulls gives) is solved by
//!    taking the hull's upgrades, over all items, in order of error saved per byte, until one
//!    does not fit: that upgrade taken fractionally is the LP optimum, a lower bound on the
//!    error of every choice within the budget.
//! 2. The integer choice is that greedy stopped before the fractional upgrade, then repaired:
//!    the other items' upgrades that still fit, then any candidate (on the hull or not) whose
//!    swap saves the most error per byte within what is left.
//!
//! The gap between the choice's error and the bound says how far from optimal it can be.
//!
//! When the problem is small enough (the Pareto frontier of partial sums stays under
//! [`MAX_FRONTIER`] states), it is solved exactly instead, by dynamic programming over that
//! frontier, and the bound is the optimum itself.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use thiserror::Error;

/// One way to store an item: its exact size and its error.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub bytes: u64,
    pub error: f64,
}

/// The most (size, error) states the exact solver keeps after any item; beyond it, the
/// greedy choice and its bound are the answer.
pub const MAX_FRONTIER: usize = 1 << 15;

/// The most states the exact solver keeps over all items (each 24 bytes), for the way back.
pub const MAX_STATES: usize = 1 << 22;

/// The chosen candidate of each item, with the totals and the bound.
#[derive(Debug, Clone, PartialEq)]
pub struct Allocation {
    /// Per item, the index of its chosen candidate in the list it was given.
    pub choice: Vec<usize>,
    pub bytes: u64,
    pub error: f64,
    /// No choice within the budget has a smaller total error.
    pub lower_bound: f64,
    /// Whether the choice is the optimum (found by the exact solver).
    pub exact: bool,
}

impl Allocation {
    /// How far the choice can be from the best one, relative to the bound (0 when optimal).
    pub fn relative_gap(&self) -> f64 {
        if self.lower_bound > 0.0 {
            (self.error - self.lower_bound) / self.lower_bound
        } else if self.error > 0.0 {
            f64::INFINITY
        } else {
            0.0
        }
    }
}

#[derive(Debug, Clone, PartialEq, Error)]
pub enum AllocationError {
    #[error("item {item} has no candidate")]
    NoCandidates { item: usize },

    #[error("item {item}, candidate {candidate}: error {error} is not a finite number ≥ 0")]
    BadError {
        item: usize,
        candidate: usize,
        error: f64,
    },

    #[error(
        "a budget of {budget} bytes is below the smallest mixture of the candidates \
         ({smallest} bytes); the candidates reach {smallest} to {largest} bytes"
    )]
    BudgetBelow {
        budget: u64,
        smallest: u64,
        largest: u64,
    },

    #[error(
        "a budget of {budget} bytes is above the largest mixture of the candidates \
         ({largest} bytes); the candidates reach {smallest} to {largest} bytes"
    )]
    BudgetAbove {
        budget: u64,
        smallest: u64,
        largest: u64,
    },

    #[error("the candidates' sizes add up to more than 2^64 bytes")]
    Overflow,
}

/// The smallest and the largest total size the candidates can make.
pub fn size_range(items: &[Vec<Candidate>]) -> Result<(u64, u64), AllocationError> {
    let mut smallest = 0u64;
    let mut largest = 0u64;
    for (item, candidates) in items.iter().enumerate() {
        let min = candidates.iter().map(|c| c.bytes).min();
        let max = candidates.iter().map(|c| c.bytes).max();
        let (Some(min), Some(max)) = (min, max) else {
            return Err(AllocationError::NoCandidates { item });
        };
        smallest = smallest.checked_add(min).ok_or(AllocationError::Overflow)?;
        largest = largest.checked_add(max).ok_or(AllocationError::Overflow)?;
    }
    Ok((smallest, largest))
}

/// An upgrade along an item's hull: from hull point `step` to `step + 1`.
#[derive(Debug, Clone, Copy)]
struct Upgrade {
    /// Error saved per byte spent.
    efficiency: f64,
    item: usize,
    step: usize,
}

impl PartialEq for Upgrade {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Upgrade {}

impl PartialOrd for Upgrade {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Upgrade {
    /// Most efficient first; ties by item, then step, so the order is the same on every run.
    fn cmp(&self, other: &Self) -> Ordering {
        self.efficiency
            .total_cmp(&other.efficiency)
            .then_with(|| other.item.cmp(&self.item))
            .then_with(|| other.step.cmp(&self.step))
    }
}

/// The indices of an item's lower convex hull, by increasing size and decreasing error.
fn hull(candidates: &[Candidate]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (candidates[a], candidates[b]);
        a.bytes.cmp(&b.bytes).then(a.error.total_cmp(&b.error))
    });
    let mut hull: Vec<usize> = Vec::with_capacity(order.len());
    for i in order {
        let p = candidates[i];
        // Dominated: no smaller error than a candidate at most as large.
        if hull.last().is_some_and(|&h| candidates[h].error <= p.error) {
            continue;
        }
        // Keep the slopes increasing (less saved per byte at each step): drop the last point
        // while it lies on or above the line from the one before it to this one.
        while let [.., a, b] = hull[..] {
            let (a, b) = (candidates[a], candidates[b]);
            let left = (a.error - b.error) * (p.bytes - b.bytes) as f64;
            let right = (b.error - p.error) * (b.bytes - a.bytes) as f64;
            if left <= right {
                hull.pop();
            } else {
                break;
            }
        }
        hull.push(i);
    }
    hull
}

/// Chooses one candidate per item: the least total error within `budget` bytes, with the
/// bound described in the module's documentation.
pub fn allocate(items: &[Vec<Candidate>], budget: u64) -> Result<Allocation, AllocationError> {
    for (item, candidates) in items.iter().enumerate() {
        for (candidate, c) in candidates.iter().enumerate() {
            if !(c.error.is_finite() && c.error >= 0.0) {
                return Err(AllocationError::BadError {
                    item,
                    candidate,
                    error: c.error,
                });
            }
        }
    }
    let (smallest, largest) = size_range(items)?;
    if budget < smallest {
        return Err(AllocationError::BudgetBelow {
            budget,
            smallest,
            largest,
        });
    }
    if budget > largest {
        return Err(AllocationError::BudgetAbove {
            budget,
            smallest,
            largest,
        });
    }

    Ok(exact(items, budget).unwrap_or_else(|| greedy(items, budget, smallest)))
}

/// The greedy choice over the hulls, repaired, and the LP bound; `smallest` is the least
/// total size (at most `budget`).
fn greedy(items: &[Vec<Candidate>], budget: u64, smallest: u64) -> Allocation {
    let hulls: Vec<Vec<usize>> = items.iter().map(|c| hull(c)).collect();
    let upgrade = |item: usize, step: usize| -> Option<Upgrade> {
        let h = &hulls[item];
        let (from, to) = (items[item][*h.get(step)?], items[item][*h.get(step + 1)?]);
        Some(Upgrade {
            efficiency: (from.error - to.error) / (to.bytes - from.bytes) as f64,
            item,
            step,
        })
    };
    // Every item starts at its smallest candidate, the first point of its hull.
    let mut step = vec![0usize; items.len()];
    let mut bytes: u64 = smallest;
    let mut error: f64 = items.iter().zip(&hulls).map(|(c, h)| c[h[0]].error).sum();
    let mut queue: BinaryHeap<Upgrade> = (0..items.len()).filter_map(|i| upgrade(i, 0)).collect();
    let mut lower_bound = None;
    while let Some(u) = queue.pop() {
        let (from, to) = (
            items[u.item][hulls[u.item][u.step]],
            items[u.item][hulls[u.item][u.step + 1]],
        );
        let cost = to.bytes - from.bytes;
        if bytes + cost > budget {
            // The LP optimum takes this upgrade in part; the integer choice leaves this item
            // where it is and goes on with the others.
            lower_bound.get_or_insert(error - (budget - bytes) as f64 * u.efficiency);
            continue;
        }
        bytes += cost;
        error -= from.error - to.error;
        step[u.item] += 1;
        if let Some(next) = upgrade(u.item, u.step + 1) {
            queue.push(next);
        }
    }
    let mut choice: Vec<usize> = step.iter().zip(&hulls).map(|(&s, h)| h[s]).collect();

    // Repair: the swap (any candidate of any item) that saves the most error per byte within
    // what is left, while one saves any.
    loop {
        let left = budget - bytes;
        let mut best: Option<(f64, usize, usize)> = None;
        for (item, candidates) in items.iter().enumerate() {
            let now = candidates[choice[item]];
            for (i, c) in candidates.iter().enumerate() {
                let saved = now.error - c.error;
                if saved <= 0.0 || c.bytes > now.bytes + left {
                    continue;
                }
                let spent = c.bytes.saturating_sub(now.bytes).max(1) as f64;
                let score = saved / spent;
                if best.is_none_or(|(s, _, _)| score > s) {
                    best = Some((score, item, i));
                }
            }
        }
        let Some((_, item, i)) = best else { break };
        let (now, next) = (items[item][choice[item]], items[item][i]);
        bytes = bytes - now.bytes + next.bytes;
        choice[item] = i;
    }
    // Sum again rather than carry the running total's rounding.
    let error: f64 = choice.iter().zip(items).map(|(&i, c)| c[i].error).sum();
    Allocation {
        choice,
        bytes,
        error,
        lower_bound: lower_bound.map_or(error, |b: f64| b.min(error)),
        exact: false,
    }
}

/// A partial choice over the first items: its totals, the state it came from and its last
/// candidate.
#[derive(Debug, Clone, Copy)]
struct State {
    bytes: u64,
    error: f64,
    parent: u32,
    candidate: u32,
}

/// The optimum by dynamic programming over the Pareto frontier of partial sums (no state kept
/// that another beats in both size and error, none over the budget), or `None` when the
/// frontier grows past [`MAX_FRONTIER`].
fn exact(items: &[Vec<Candidate>], budget: u64) -> Option<Allocation> {
    // Least bytes the items after each one still need, so that no state is kept that cannot
    // be completed within the budget.
    let mut rest = vec![0u64; items.len() + 1];
    for i in (0..items.len()).rev() {
        rest[i] = rest[i + 1] + items[i].iter().map(|c| c.bytes).min()?;
    }
    let mut stages: Vec<Vec<State>> = Vec::with_capacity(items.len());
    let mut kept_in_all = 0usize;
    let start = [State {
        bytes: 0,
        error: 0.0,
        parent: 0,
        candidate: 0,
    }];
    for (i, candidates) in items.iter().enumerate() {
        let previous: &[State] = stages.last().map_or(&start[..], |s| &s[..]);
        let mut next: Vec<State> = Vec::with_capacity(previous.len() * candidates.len());
        for (p, s) in previous.iter().enumerate() {
            for (k, c) in candidates.iter().enumerate() {
                let bytes = s.bytes + c.bytes;
                if bytes + rest[i + 1] <= budget {
                    next.push(State {
                        bytes,
                        error: s.error + c.error,
                        parent: p as u32,
                        candidate: k as u32,
                    });
                }
            }
        }
        next.sort_by(|a, b| a.bytes.cmp(&b.bytes).then(a.error.total_cmp(&b.error)));
        let mut kept: Vec<State> = Vec::with_capacity(next.len().min(MAX_FRONTIER));
        for s in next {
            if kept.last().is_none_or(|k| s.error < k.error) {
                kept.push(s);
            }
        }
        kept_in_all += kept.len();
        if kept.len() > MAX_FRONTIER || kept_in_all > MAX_STATES {
            return None;
        }
        stages.push(kept);
    }
    // The least error is the last state of the final frontier (errors decrease with size).
    let last = stages.last()?;
    let mut at = last.len().checked_sub(1)?;
    let (bytes, error) = (last[at].bytes, last[at].error);
    let mut choice = vec![0usize; items.len()];
    for (i, stage) in stages.iter().enumerate().rev() {
        choice[i] = stage[at].candidate as usize;
        at = stage[at].parent as usize;
    }
    let error_sum: f64 = choice.iter().zip(items).map(|(&k, c)| c[k].error).sum();
    debug_assert!((error_sum - error).abs() <= 1e-9 * error.max(1.0));
    Some(Allocation {
        choice,
        bytes,
        error: error_sum,
        lower_bound: error_sum,
        exact: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(bytes: u64, error: f64) -> Candidate {
        Candidate { bytes, error }
    }

    /// Every choice, for small problems: the true optimum.
    fn brute_force(items: &[Vec<Candidate>], budget: u64) -> Option<f64> {
        fn go(items: &[Vec<Candidate>], budget: u64, bytes: u64, error: f64) -> Option<f64> {
            let Some((first, rest)) = items.split_first() else {
                return (bytes <= budget).then_some(error);
            };
            first
                .iter()
                .filter_map(|c| go(rest, budget, bytes + c.bytes, error + c.error))
                .min_by(f64::total_cmp)
        }
        go(items, budget, 0, 0.0)
    }

    #[test]
    fn hull_drops_dominated_and_concave_points() {
        let cands = vec![
            c(10, 100.0),
            c(20, 40.0),
            c(25, 45.0), // dominated by 20
            c(30, 35.0), // above the line from 20 to 40
            c(40, 10.0),
            c(50, 9.0),
        ];
        assert_eq!(hull(&cands), vec![0, 1, 4, 5]);
    }

    #[test]
    fn budget_outside_the_range_is_refused_with_the_range() {
        let items = vec![vec![c(10, 5.0), c(20, 1.0)], vec![c(5, 3.0), c(8, 2.0)]];
        let below = allocate(&items, 14).unwrap_err();
        assert_eq!(
            below,
            AllocationError::BudgetBelow {
                budget: 14,
                smallest: 15,
                largest: 28
            }
        );
        assert!(below.to_string().contains("15 to 28 bytes"), "{below}");
        assert!(matches!(
            allocate(&items, 29),
            Err(AllocationError::BudgetAbove { .. })
        ));
        assert_eq!(
            allocate(&[vec![c(1, 1.0)], vec![]], 10),
            Err(AllocationError::NoCandidates { item: 1 })
        );
        assert!(matches!(
            allocate(&[vec![c(1, f64::NAN)]], 1),
            Err(AllocationError::BadError { item: 0, .. })
        ));
    }

    #[test]
    fn the_ends_of_the_range_take_the_smallest_and_the_largest() {
        let items = vec![vec![c(10, 5.0), c(20, 1.0)], vec![c(8, 2.0), c(5, 3.0)]];
        let low = allocate(&items, 15).unwrap();
        assert_eq!((low.choice, low.bytes, low.error), (vec![0, 1], 15, 8.0));
        let high = allocate(&items, 28).unwrap();
        assert_eq!((high.choice, high.bytes, high.error), (vec![1, 0], 28, 3.0));
        assert_eq!(high.lower_bound, 3.0);
    }

    #[test]
    fn within_the_budget_and_above_the_bound_and_near_the_optimum() {
        // Deterministic pseudo-random problems, small enough to enumerate.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut worst_gap: f64 = 0.0;
        for _ in 0..300 {
            let n = 1 + (next() % 6) as usize;
            let items: Vec<Vec<Candidate>> = (0..n)
                .map(|_| {
                    let k = 1 + (next() % 5) as usize;
                    (0..k)
                        .map(|_| c(1 + next() % 100, (next() % 1000) as f64 / 10.0))
                        .collect()
                })
                .collect();
            let (smallest, largest) = size_range(&items).unwrap();
            let budget = smallest + next() % (largest - smallest + 1);
            let best = brute_force(&items, budget).unwrap();
            let solved = allocate(&items, budget).unwrap();
            assert!(solved.exact);
            assert!(
                (solved.error - best).abs() < 1e-9,
                "{solved:?} is not the optimum {best}"
            );
            let a = greedy(&items, budget, smallest);
            for a in [&a, &solved] {
                assert!(a.bytes <= budget, "{a:?} over {budget}");
                let bytes: u64 = a.choice.iter().zip(&items).map(|(&i, c)| c[i].bytes).sum();
                assert_eq!(bytes, a.bytes);
                let error: f64 = a.choice.iter().zip(&items).map(|(&i, c)| c[i].error).sum();
                assert!((error - a.error).abs() < 1e-9);
                assert!(a.error >= best - 1e-9, "{a:?} beats the optimum {best}");
                assert!(
                    a.lower_bound <= best + 1e-9,
                    "bound {a:?} above optimum {best}"
                );
            }
            if best > 0.0 {
                worst_gap = worst_gap.max((a.error - best) / best);
            }
        }
        // Greedy with repair on these tiny, rough problems is near, not always at, the optimum.
        assert!(worst_gap < 0.5, "worst gap to the optimum {worst_gap}");
    }

    #[test]
    fn many_items_close_the_gap() {
        // A hundred tensors on smooth convex curves: the bound is tight.
        let items: Vec<Vec<Candidate>> = (0..100)
            .map(|t| {
                let size = 1000 + 37 * t as u64;
                (2..=8)
                    .map(|bits| c(size * bits / 8, size as f64 * 4f64.powi(-(bits as i32))))
                    .collect()
            })
            .collect();
        let (smallest, largest) = size_range(&items).unwrap();
        let budget = (smallest + largest) / 2;
        let a = greedy(&items, budget, smallest);
        assert!(a.bytes <= budget);
        assert!(a.relative_gap() < 1e-2, "gap {}", a.relative_gap());
        // The exact solver does no worse.
        let best = allocate(&items, budget).unwrap();
        assert!(best.error <= a.error + 1e-9 && best.error >= a.lower_bound - 1e-9);
    }
}
