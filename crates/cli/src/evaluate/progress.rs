//! The progress bar of a batch evaluation (on a terminal only): position over all manifest rows,
//! and a rate and ETA over the rows this run scores, so that rows `--resume` skips in a burst
//! neither inflate the rate nor shrink the ETA.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// Progress of one run.
pub struct Progress {
    bar: indicatif::ProgressBar,
    started: Instant,
    /// Rows this run will score or fail (manifest rows minus those `--resume` skips).
    to_do: u64,
    done: u64,
    failed: u64,
}

impl Progress {
    /// A bar over `total` rows of which `to_skip` will be skipped; hidden with `quiet` or when
    /// stderr is not a terminal.
    pub fn new(total: u64, to_skip: u64, quiet: bool) -> Progress {
        let bar = if quiet || !std::io::stderr().is_terminal() {
            indicatif::ProgressBar::hidden()
        } else {
            let bar = indicatif::ProgressBar::new(total);
            if let Ok(style) =
                indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} rows  {msg}")
            {
                bar.set_style(style);
            }
            bar
        };
        let progress = Progress {
            bar,
            started: Instant::now(),
            to_do: total.saturating_sub(to_skip),
            done: 0,
            failed: 0,
        };
        progress.refresh();
        progress
    }

    /// Rows skipped by `--resume`.
    pub fn skipped(&mut self, n: u64) {
        self.bar.inc(n);
    }

    /// Rows answered by this run, `failed` of them failures.
    pub fn answered(&mut self, n: u64, failed: u64) {
        self.done += n;
        self.failed += failed;
        self.bar.inc(n);
        self.refresh();
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }

    fn refresh(&self) {
        self.bar.set_message(status(
            self.done,
            self.failed,
            self.to_do.saturating_sub(self.done),
            self.started.elapsed(),
        ));
    }
}

/// `"12.5 rows/s  3 failed  elapsed 1m05s  ETA 2m40s"`: the rate and ETA count only rows this run
/// answered (`done`), `remaining` the rows it has still to answer.
pub fn status(done: u64, failed: u64, remaining: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
    let rate_text = match rate {
        r if done == 0 || r <= 0.0 => "-".to_string(),
        r if r >= 100.0 => format!("{r:.0}"),
        r if r >= 10.0 => format!("{r:.1}"),
        r => format!("{r:.2}"),
    };
    let eta = if remaining == 0 {
        "0s".to_string()
    } else if done == 0 {
        "-".to_string()
    } else {
        clock(Duration::from_secs_f64(remaining as f64 / rate))
    };
    format!(
        "{rate_text} rows/s  {failed} failed  elapsed {}  ETA {eta}",
        clock(elapsed)
    )
}

/// `42s`, `3m05s`, `2h07m` (whole seconds, leading unit without padding).
fn clock(d: Duration) -> String {
    let s = d.as_secs_f64().round() as u64;
    match s {
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_counts_this_runs_rows_and_rounds_to_three_figures() {
        // 900 rows skipped in a burst do not enter: 30 answered in 4 s is 7.5 rows/s.
        let s = status(30, 2, 70, Duration::from_secs(4));
        assert_eq!(s, "7.50 rows/s  2 failed  elapsed 4s  ETA 9s");
        assert_eq!(
            status(1234, 0, 100_000, Duration::from_millis(9_871)),
            "125 rows/s  0 failed  elapsed 10s  ETA 13m20s"
        );
        assert_eq!(
            status(50, 0, 2_000_000, Duration::from_secs(3)),
            "16.7 rows/s  0 failed  elapsed 3s  ETA 33h20m"
        );
        assert_eq!(
            status(0, 0, 10, Duration::ZERO),
            "- rows/s  0 failed  elapsed 0s  ETA -"
        );
    }
}
