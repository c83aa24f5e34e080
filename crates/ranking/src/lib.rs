//! Ranking N candidates from pairwise rewards: which pairs to score (the schedule), and how to
//! turn their P(yes) into a preference matrix, win counts and Bradley-Terry strengths.
//!
//! A pairwise item with reference `i` (Image 1) and candidate `j` (Image 2) yields
//! `p = P(image 2 better than image 1)`, i.e. an estimate that `j` beats `i`. With both orders
//! scored, `pref[j][i] = (p(i, j) + 1 - p(j, i)) / 2` cancels the model's position bias.
//!
//! Strengths are fitted with Hunter's MM algorithm for Bradley-Terry (Hunter 2004, "MM
//! algorithms for generalized Bradley-Terry models") on *soft* outcomes (each comparison counts
//! `pref` of a win), with a weak symmetric prior of [`BT_PRIOR`] virtual tie per compared pair so
//! that undefeated or winless candidates get finite strengths. Strengths are reported as
//! log-strengths centred to mean 0; `P(j beats i) = sigmoid(s_j - s_i)` under the model.

use rewarddance_model::SplitMix64;

/// Virtual tied comparisons added to every compared pair (regularises the fit).
pub const BT_PRIOR: f64 = 0.1;

/// Which (reference, candidate) pairs to score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// Every ordered pair (i, j), i != j: N(N-1) items, both orders of each pair.
    AllPairs,
    /// For each candidate, `k` distinct random opponents (seeded), each pair in both orders.
    RandomOpponents {
        /// Opponents per candidate (capped at N-1).
        k: usize,
        /// Seed of the deterministic opponent draw.
        seed: u64,
    },
}

/// Ordered (reference, candidate) pairs for `n` candidates under `schedule`, deduplicated and
/// sorted, so equal inputs always give equal schedules.
pub fn schedule_pairs(n: usize, schedule: Schedule) -> Vec<(usize, usize)> {
    let mut pairs = Vec::new();
    match schedule {
        Schedule::AllPairs => {
            for i in 0..n {
                for j in 0..n {
                    if i != j {
                        pairs.push((i, j));
                    }
                }
            }
        }
        Schedule::RandomOpponents { k, seed } => {
            let k = k.min(n.saturating_sub(1));
            let mut rng = SplitMix64(seed);
            for i in 0..n {
                // Partial Fisher-Yates over the other candidates.
                let mut others: Vec<usize> = (0..n).filter(|&j| j != i).collect();
                for slot in 0..k {
                    let pick = slot + (rng.next() % (others.len() - slot) as u64) as usize;
                    others.swap(slot, pick);
                    pairs.push((i, others[slot]));
                    pairs.push((others[slot], i));
                }
            }
        }
    }
    pairs.sort_unstable();
    pairs.dedup();
    pairs
}

/// The outcome of a ranking.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranking {
    /// `preference[j][i]`: estimated P(candidate j beats candidate i); `None` where the pair was
    /// not scored (or one of them failed) and on the diagonal.
    pub preference: Vec<Vec<Option<f64>>>,
    /// Pairwise wins per candidate (a win: preference > 0.5; a tie counts 0.5).
    pub wins: Vec<f64>,
    /// Bradley-Terry log-strengths (mean 0 over ranked candidates); `None` for failed candidates.
    pub strengths: Vec<Option<f64>>,
    /// Index of the best candidate (most wins, ties broken by strength), if any was ranked.
    pub best: Option<usize>,
    /// Candidate indices from best to worst by (wins, strength); failed candidates last.
    pub order: Vec<usize>,
}

/// Builds the ranking of `n` candidates from scored pairs `(reference, candidate, p_yes)`;
/// pairs whose score failed are passed as `None`, and `failed[c]` marks candidates that could
/// not be scored at all (they are left out of every comparison).
pub fn rank_pairwise(n: usize, scored: &[(usize, usize, Option<f64>)], failed: &[bool]) -> Ranking {
    // p[i][j]: P(j better than i) with i as reference.
    let mut p = vec![vec![None; n]; n];
    for &(i, j, score) in scored {
        let ok = |c: usize| c < n && !failed.get(c).copied().unwrap_or(false);
        if ok(i) && ok(j) && i != j {
            p[i][j] = score;
        }
    }
    let mut preference = vec![vec![None; n]; n];
    for i in 0..n {
        for j in 0..n {
            preference[j][i] = match (p[i][j], p[j][i]) {
                (Some(a), Some(b)) => Some((a + 1.0 - b) / 2.0),
                (Some(a), None) => Some(a),
                (None, Some(b)) => Some(1.0 - b),
                (None, None) => None,
            };
        }
    }
    let mut wins = vec![0.0; n];
    for (j, row) in preference.iter().enumerate() {
        for q in row.iter().flatten() {
            wins[j] += if *q > 0.5 {
                1.0
            } else if *q == 0.5 {
                0.5
            } else {
                0.0
            };
        }
    }
    let active: Vec<bool> = (0..n)
        .map(|c| !failed.get(c).copied().unwrap_or(false))
        .collect();
    let strengths = bradley_terry(&preference, &active);
    let key = |c: usize| {
        (
            active[c],
            wins[c],
            strengths[c].unwrap_or(f64::NEG_INFINITY),
        )
    };
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| {
        key(b)
            .partial_cmp(&key(a))
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(&b))
    });
    let best = order.first().copied().filter(|&c| active[c]);
    Ranking {
        preference,
        wins,
        strengths,
        best,
        order,
    }
}

/// Ranks candidates by pointwise P(yes): returns indices best first (failed ones last, in
/// input order).
pub fn rank_pointwise(scores: &[Option<f64>]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| match (scores[a], scores[b]) {
        (Some(x), Some(y)) => y
            .partial_cmp(&x)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(&b)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.cmp(&b),
    });
    order
}

/// MM fit of Bradley-Terry strengths on soft outcomes `pref[j][i]` (see the module docs).
fn bradley_terry(pref: &[Vec<Option<f64>>], active: &[bool]) -> Vec<Option<f64>> {
    let n = pref.len();
    // Soft wins of each candidate and comparisons per pair, with the symmetric prior.
    // `pref` is symmetric by construction: pref[i][j] = 1 - pref[j][i].
    let mut wins = vec![0.0; n];
    let mut games = vec![vec![0.0; n]; n];
    for i in 0..n {
        for j in (i + 1)..n {
            if let (Some(q), true, true) = (pref[j][i], active[i], active[j]) {
                wins[j] += q + BT_PRIOR / 2.0;
                wins[i] += 1.0 - q + BT_PRIOR / 2.0;
                games[i][j] = 1.0 + BT_PRIOR;
                games[j][i] = 1.0 + BT_PRIOR;
            }
        }
    }
    let mut pi = vec![1.0f64; n];
    for _ in 0..10_000 {
        let mut next = pi.clone();
        let mut change = 0.0f64;
        for c in 0..n {
            let denom: f64 = (0..n)
                .filter(|&o| o != c && games[c][o] > 0.0)
                .map(|o| games[c][o] / (pi[c] + pi[o]))
                .sum();
            if active[c] && denom > 0.0 {
                next[c] = wins[c] / denom;
            }
        }
        let log_mean = mean_log(&next, active);
        for c in 0..n {
            if active[c] {
                next[c] = (next[c].ln() - log_mean).exp();
                change = change.max((next[c] / pi[c]).ln().abs());
            }
        }
        pi = next;
        if change < 1e-12 {
            break;
        }
    }
    let log_mean = mean_log(&pi, active);
    (0..n)
        .map(|c| active[c].then(|| pi[c].ln() - log_mean))
        .collect()
}

fn mean_log(pi: &[f64], active: &[bool]) -> f64 {
    let (sum, count) = pi
        .iter()
        .zip(active)
        .filter(|(_, a)| **a)
        .fold((0.0, 0usize), |(s, k), (p, _)| (s + p.ln(), k + 1));
    if count == 0 {
        0.0
    } else {
        sum / count as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pairs scored by a "model" that knows true strengths and has a position bias.
    fn synthetic(strength: &[f64], bias: f64) -> Vec<(usize, usize, Option<f64>)> {
        schedule_pairs(strength.len(), Schedule::AllPairs)
            .into_iter()
            .map(|(i, j)| {
                let p = 1.0 / (1.0 + (-(strength[j] - strength[i] + bias)).exp());
                (i, j, Some(p))
            })
            .collect()
    }

    #[test]
    fn all_pairs_covers_both_orders() {
        let pairs = schedule_pairs(4, Schedule::AllPairs);
        assert_eq!(pairs.len(), 12);
        assert!(pairs.contains(&(0, 3)) && pairs.contains(&(3, 0)));
    }

    #[test]
    fn random_opponents_are_seeded_and_symmetric() {
        let s = Schedule::RandomOpponents { k: 2, seed: 7 };
        let a = schedule_pairs(10, s);
        assert_eq!(a, schedule_pairs(10, s));
        assert_ne!(
            a,
            schedule_pairs(10, Schedule::RandomOpponents { k: 2, seed: 8 })
        );
        for &(i, j) in &a {
            assert!(i != j && a.contains(&(j, i)));
        }
        assert!(a.len() >= 20 && a.len() <= 40);
        assert_eq!(
            schedule_pairs(3, Schedule::RandomOpponents { k: 9, seed: 1 }).len(),
            6
        );
    }

    #[test]
    fn both_orders_cancel_position_bias_and_bt_recovers_order() {
        let truth = [0.0, 1.5, -0.7, 0.4];
        let r = rank_pairwise(4, &synthetic(&truth, 0.8), &[false; 4]);
        assert_eq!(r.best, Some(1));
        assert_eq!(r.order, vec![1, 3, 0, 2]);
        // True order 1 > 3 > 0 > 2.
        assert_eq!(r.wins, vec![1.0, 3.0, 0.0, 2.0]);
        // Symmetric preferences despite the bias.
        let (a, b) = (r.preference[1][0].unwrap(), r.preference[0][1].unwrap());
        assert!((a + b - 1.0).abs() < 1e-12);
        let s: Vec<f64> = r.strengths.iter().map(|x| x.unwrap()).collect();
        let mut order: Vec<usize> = (0..4).collect();
        order.sort_by(|&x, &y| s[y].partial_cmp(&s[x]).unwrap());
        assert_eq!(order, vec![1, 3, 0, 2]);
        assert!(s.iter().sum::<f64>().abs() < 1e-9);
    }

    #[test]
    fn failed_candidates_are_left_out_and_the_rest_still_rank() {
        let truth = [0.0, 1.0, 2.0];
        let mut scored = synthetic(&truth, 0.0);
        for s in scored.iter_mut().filter(|(i, j, _)| *i == 2 || *j == 2) {
            s.2 = None;
        }
        let r = rank_pairwise(3, &scored, &[false, false, true]);
        assert_eq!(r.best, Some(1));
        assert_eq!(r.strengths[2], None);
        assert!(r.preference[2].iter().all(Option::is_none));
    }

    #[test]
    fn pointwise_ranking_puts_failures_last() {
        assert_eq!(
            rank_pointwise(&[Some(0.2), None, Some(0.9), Some(0.5)]),
            vec![2, 3, 0, 1]
        );
    }
}
