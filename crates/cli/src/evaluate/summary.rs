//! End-of-run statistics of a batch evaluation.

use std::time::Duration;

/// Counts and the distribution of `p_yes` over the rows of the output (with `--resume`, the
/// whole file: rows carried over from earlier runs too), and what this run itself did.
#[derive(Debug, Default)]
pub struct Summary {
    /// Scored rows in the output.
    pub scored: u64,
    /// Failed rows in the output (bad row, bad image, limits...).
    pub failed: u64,
    /// Rows skipped because `--resume` found them scored in the output.
    pub skipped: u64,
    /// Rows this run scored.
    pub scored_now: u64,
    /// Rows that failed in this run.
    pub failed_now: u64,
    /// Whether the run was stopped by Ctrl-C before its last row.
    pub interrupted: bool,
    p_yes: Vec<f64>,
}

impl Summary {
    /// Records one row scored by this run.
    pub fn record(&mut self, p_yes: f64) {
        self.scored += 1;
        self.scored_now += 1;
        self.p_yes.push(p_yes);
    }

    /// Records one row that failed in this run.
    pub fn record_failure(&mut self) {
        self.failed += 1;
        self.failed_now += 1;
    }

    /// Replaces the output's counts with those of the whole file (after a resumed run).
    pub fn set_file(&mut self, p_yes: Vec<f64>, failed: u64) {
        self.scored = p_yes.len() as u64;
        self.failed = failed;
        self.p_yes = p_yes;
    }

    /// Mean of `p_yes`, if anything was scored.
    pub fn mean(&self) -> Option<f64> {
        (!self.p_yes.is_empty()).then(|| self.p_yes.iter().sum::<f64>() / self.p_yes.len() as f64)
    }

    /// The `q`-quantile (nearest rank) of `p_yes`.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let mut v = self.p_yes.clone();
        v.sort_by(f64::total_cmp);
        let idx = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len().max(1)) - 1;
        v.get(idx).copied()
    }

    /// The summary as one JSON object (printed to stderr at the end of a run).
    /// `items_per_second` counts the rows this run scored, not the skipped ones.
    pub fn to_json(&self, elapsed: Duration) -> serde_json::Value {
        let rate = self.scored_now as f64 / elapsed.as_secs_f64().max(1e-9);
        serde_json::json!({
            "summary": {
                "rows": self.scored + self.failed,
                "scored": self.scored,
                "failed": self.failed,
                "skipped": self.skipped,
                "p_yes_mean": self.mean(),
                "p_yes_p10": self.quantile(0.10),
                "p_yes_p50": self.quantile(0.50),
                "p_yes_p90": self.quantile(0.90),
                "this_run": { "scored": self.scored_now, "failed": self.failed_now },
                "interrupted": self.interrupted,
                "seconds": elapsed.as_secs_f64(),
                "items_per_second": rate,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_mean() {
        let mut s = Summary::default();
        for p in [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0] {
            s.record(p);
        }
        s.record_failure();
        assert_eq!(s.quantile(0.5), Some(0.5));
        assert_eq!(s.quantile(0.9), Some(0.9));
        assert!((s.mean().unwrap() - 0.55).abs() < 1e-12);
        assert_eq!(s.to_json(Duration::from_secs(1))["summary"]["rows"], 11);
        assert_eq!(Summary::default().quantile(0.5), None);
    }

    #[test]
    fn a_resumed_summary_describes_the_file_and_rates_only_this_run() {
        let mut s = Summary::default();
        s.record(0.5);
        s.skipped = 3;
        s.set_file(vec![0.1, 0.2, 0.3, 0.5], 1);
        let j = &s.to_json(Duration::from_secs(2))["summary"];
        assert_eq!(
            (&j["rows"], &j["scored"], &j["failed"]),
            (&5.into(), &4.into(), &1.into())
        );
        assert_eq!(j["this_run"]["scored"], 1);
        assert_eq!(j["items_per_second"], 0.5);
    }
}
