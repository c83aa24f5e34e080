//! Device workers: one OS thread per device, pulling batches from the batcher, running one
//! packed forward pass each and answering every item. A failing batch (model error or panic)
//! fails only its own items; after a panic the worker loop is re-entered fresh (a restart;
//! model weights are immutable, so nothing needs rebuilding), and a device that keeps failing
//! is reported as failing to the batcher, which turns health NOT_SERVING.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Instant;

use rewarddance_model::{PreparedItem, ScoreItem};
use tokio::sync::mpsc;

use crate::backend::Backend;
use crate::batcher::{Batch, BatcherMsg, WorkerStatus};
use crate::job::{FailureKind, ItemError};
use crate::metrics;

/// Starts worker `index` on its own thread.
pub(crate) fn spawn(
    index: usize,
    device: String,
    backend: Arc<dyn Backend>,
    warmup: ScoreItem,
    to_batcher: mpsc::UnboundedSender<BatcherMsg>,
    max_consecutive_failures: u32,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(format!("rd-worker-{device}"))
        .spawn(move || {
            let worker = Worker {
                index,
                device,
                backend,
                to_batcher,
                max_consecutive_failures: max_consecutive_failures.max(1),
                consecutive_failures: 0,
            };
            worker.run(&warmup);
        })?;
    Ok(())
}

struct Worker {
    index: usize,
    device: String,
    backend: Arc<dyn Backend>,
    to_batcher: mpsc::UnboundedSender<BatcherMsg>,
    max_consecutive_failures: u32,
    consecutive_failures: u32,
}

/// How one batch went.
enum Outcome {
    Ok,
    Failed,
    Panicked,
}

impl Worker {
    fn run(mut self, warmup: &ScoreItem) {
        let status = match self.warm_up(warmup) {
            Ok(()) => WorkerStatus::Healthy,
            Err(why) => {
                tracing::error!(device = %self.device, %why, "warm-up forward failed");
                WorkerStatus::Failing(format!("warm-up failed: {why}"))
            }
        };
        metrics::set_worker_healthy(&self.device, status == WorkerStatus::Healthy);
        self.report(status);
        let (tx, rx) = std_mpsc::channel::<Batch>();
        loop {
            let ready = BatcherMsg::Ready {
                worker: self.index,
                tx: tx.clone(),
            };
            if self.to_batcher.send(ready).is_err() {
                return;
            }
            let Ok(batch) = rx.recv() else { return };
            match self.run_batch(batch) {
                Outcome::Ok => {
                    if self.consecutive_failures >= self.max_consecutive_failures {
                        tracing::info!(device = %self.device, "device recovered");
                        metrics::set_worker_healthy(&self.device, true);
                        self.report(WorkerStatus::Healthy);
                    }
                    self.consecutive_failures = 0;
                }
                outcome => {
                    let panicked = matches!(outcome, Outcome::Panicked);
                    metrics::record_worker_failure(&self.device, panicked);
                    if panicked {
                        tracing::warn!(device = %self.device, "worker restarted after a panic");
                    }
                    self.consecutive_failures += 1;
                    if self.consecutive_failures == self.max_consecutive_failures {
                        tracing::error!(
                            device = %self.device,
                            failures = self.consecutive_failures,
                            "device keeps failing; reporting NOT_SERVING"
                        );
                        metrics::set_worker_healthy(&self.device, false);
                        self.report(WorkerStatus::Failing(format!(
                            "{} consecutive batches failed",
                            self.consecutive_failures
                        )));
                    }
                }
            }
        }
    }

    fn report(&self, status: WorkerStatus) {
        let _ = self.to_batcher.send(BatcherMsg::Status {
            worker: self.index,
            status,
        });
    }

    /// One forward on a synthetic item, so the first real batch does not pay for lazy setup.
    fn warm_up(&self, item: &ScoreItem) -> Result<(), String> {
        let run = || -> Result<(), String> {
            let prepared = self.backend.prepare(item).map_err(|e| e.to_string())?;
            self.backend
                .score_prepared(&[&prepared])
                .map_err(|e| e.to_string())?;
            Ok(())
        };
        catch_unwind(AssertUnwindSafe(run)).unwrap_or_else(|_| Err("panicked".into()))
    }

    /// Scores one batch and answers each of its items.
    fn run_batch(&self, batch: Batch) -> Outcome {
        let cut = Instant::now();
        // Callers may have gone or expired while the batch waited for this thread.
        let mut jobs = Vec::with_capacity(batch.jobs.len());
        for mut p in batch.jobs {
            p.job.timing.queue += cut.saturating_duration_since(p.enqueued);
            if let Some(job) = p.job.check(cut) {
                p.job = job;
                jobs.push(p);
            }
        }
        if jobs.is_empty() {
            return Outcome::Ok;
        }
        let tokens: usize = jobs.iter().map(|p| p.prepared.num_tokens()).sum();
        let span = tracing::info_span!("batch", device = %self.device, items = jobs.len(), tokens);
        for p in &jobs {
            span.follows_from(&p.job.span);
        }
        let _entered = span.enter();
        let refs: Vec<&PreparedItem> = jobs.iter().map(|p| &p.prepared).collect();
        let start = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| self.backend.score_prepared(&refs)));
        let elapsed = start.elapsed();
        metrics::record_batch(&self.device, jobs.len(), tokens, elapsed.as_secs_f64());
        let model = self.backend.model();
        metrics::record_reuse(
            &self.device,
            &model.feature_cache_stats(),
            model.prefix_tokens_saved(),
        );
        let n = jobs.len();
        let (outcome, failure) = match result {
            Ok(Ok(scores)) if scores.len() == n => {
                for (p, score) in jobs.into_iter().zip(scores) {
                    let mut job = p.job;
                    job.timing.inference = elapsed;
                    job.timing.batch_items = n;
                    job.timing.batch_tokens = tokens;
                    job.succeed(score);
                }
                tracing::debug!(elapsed_ms = elapsed.as_secs_f64() * 1e3, "batch scored");
                return Outcome::Ok;
            }
            Ok(Ok(scores)) => (
                Outcome::Failed,
                format!("the model returned {} scores for {n} items", scores.len()),
            ),
            Ok(Err(err)) => {
                tracing::error!(error = %err, "batch failed");
                (Outcome::Failed, format!("model failure: {err}"))
            }
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                tracing::error!(panic = %what, "batch panicked");
                (
                    Outcome::Panicked,
                    "the device worker failed on this batch".into(),
                )
            }
        };
        for p in jobs {
            let mut job = p.job;
            job.timing.inference = elapsed;
            job.timing.batch_items = n;
            job.timing.batch_tokens = tokens;
            job.fail(ItemError::new(FailureKind::Internal, failure.clone()));
        }
        outcome
    }
}
