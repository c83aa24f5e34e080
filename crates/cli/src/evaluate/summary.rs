//! End-of-run statistics of a batch evaluation.

use std::time::Duration;

/// Counts and the distribution of `p_yes` over scored rows.
#[derive(Debug, Default)]
pub struct Summary {
    /// Rows scored.
    pub scored: u64,
    /// Rows that failed (bad row, bad image, limits...).
    pub failed: u64,
    /// Rows skipped because `--resume` found them in the output.
    pub skipped: u64,
    p_yes: Vec<f64>,
}

impl Summary {
    /// Records one scored row.
    pub fn record(&mut self, p_yes: f64) {
        self.scored += 1;
        self.p_yes.push(p_yes);
    }

    /// Records one failed row.
    pub fn record_failure(&mut self) {
        self.failed += 1;
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
    pub fn to_json(&self, elapsed: Duration) -> serde_json::Value {
        let rate = self.scored as f64 / elapsed.as_secs_f64().max(1e-9);
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
}
