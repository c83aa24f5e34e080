//! Device workers: one OS thread per device, pulling batches from the batcher, running one
//! packed forward pass each and answering every item. A failing batch (model error or panic)
//! fails only its own items; after a panic the worker loop is re-entered fresh (a restart;
//! model weights are immutable, so nothing needs rebuilding), and a device that keeps failing
//! is reported as failing to the batcher, which turns health NOT_SERVING.
//!
//! Items that asked for a rationale join the worker's [`DecodeSet`] after their prefill; the
//! worker then alternates between at most one new prefill batch and one decode step (see the
//! crate docs, *Decoding*).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Instant;

use rewarddance_model::{PreparedItem, RationaleOptions, ScoreItem};
use tokio::sync::mpsc;

use crate::backend::Backend;
use crate::batcher::{Batch, BatcherMsg, WorkerStatus};
use crate::decoding::{DecodeSet, Decoding, StepOutcome};
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
    max_decoding_sequences: usize,
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
                max_decoding_sequences: max_decoding_sequences.max(1),
                decoding: DecodeSet::default(),
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
    max_decoding_sequences: usize,
    decoding: DecodeSet,
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
        // Whether the batcher holds a `Ready` from this worker that it has not answered yet.
        let mut asked = false;
        let mut batcher_gone = false;
        loop {
            if !asked && !batcher_gone && self.decoding.len() < self.max_decoding_sequences {
                let ready = BatcherMsg::Ready {
                    worker: self.index,
                    tx: tx.clone(),
                };
                asked = self.to_batcher.send(ready).is_ok();
                batcher_gone = !asked;
            }
            let batch = if self.decoding.is_empty() {
                if batcher_gone {
                    return;
                }
                match rx.recv() {
                    Ok(batch) => Some(batch),
                    Err(_) => return,
                }
            } else {
                // Decoding: take a waiting prefill batch first, but never wait for one.
                rx.try_recv().ok()
            };
            if let Some(batch) = batch {
                asked = false;
                let outcome = self.run_batch(batch);
                self.record(outcome);
            }
            if !self.decoding.is_empty() {
                match self.decoding.step(self.backend.as_ref(), &self.device) {
                    StepOutcome::Ok => {}
                    StepOutcome::Failed { panicked } => self.record(if panicked {
                        Outcome::Panicked
                    } else {
                        Outcome::Failed
                    }),
                }
            }
        }
    }

    /// Tracks consecutive failures of batches and decode steps; reports health changes.
    fn record(&mut self, outcome: Outcome) {
        match outcome {
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

    /// Scores one batch and answers each of its items, except those that asked for a
    /// rationale: they join the decode set with their score.
    fn run_batch(&mut self, batch: Batch) -> Outcome {
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
        let options: Vec<Option<RationaleOptions>> = jobs.iter().map(|p| p.job.rationale).collect();
        let start = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| {
            if options.iter().all(Option::is_none) {
                // The fast path: trainers want the number only.
                let scores = self.backend.score_prepared(&refs)?;
                Ok((scores, Vec::new()))
            } else {
                self.backend.prefill_for_rationales(&refs, &options)
            }
        }));
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
            Ok(Ok((scores, generations))) if scores.len() == n => {
                let mut generations = generations.into_iter();
                let started = Instant::now();
                for (p, score) in jobs.into_iter().zip(scores) {
                    let mut job = p.job;
                    job.timing.inference = elapsed;
                    job.timing.batch_items = n;
                    job.timing.batch_tokens = tokens;
                    match generations.next().flatten() {
                        Some(generation) => self.decoding.join(Decoding {
                            generation,
                            job,
                            score,
                            started,
                        }),
                        None => job.succeed(score, None),
                    }
                }
                tracing::debug!(elapsed_ms = elapsed.as_secs_f64() * 1e3, "batch scored");
                return Outcome::Ok;
            }
            Ok(Ok((scores, _))) => (
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
