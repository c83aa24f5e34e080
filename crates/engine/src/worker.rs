//! Device workers: one OS thread per device, pulling batches from the batcher, running one
//! packed forward pass each and answering every item. When a batch fails (model error or
//! panic), the worker runs its probe (the warm-up item alone): if the device passes, the batch
//! is split until the items that fail alone are found ([`crate::isolation`]); they get their
//! own error and their neighbours are scored, and the device's health is untouched. Only a
//! device that fails its probe counts as failing; one that keeps failing is reported to the
//! batcher, which turns health NOT_SERVING. Model weights are immutable, so a panic needs no
//! rebuild: the worker goes on with the next batch.
//!
//! Items that asked for a rationale join the worker's [`DecodeSet`] after their prefill; the
//! worker then alternates between at most one new prefill batch and one decode step (see the
//! crate docs, *Decoding*).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Instant;

use rewarddance_model::{Candidate, ImageInput, Mode, RationaleOptions, ScoreItem};
use tokio::sync::mpsc;

use crate::backend::{Backend, Prepared, Sequence};
use crate::batcher::{Batch, BatcherMsg, WorkerStatus};
use crate::decoding::{DecodeSet, Decoding, StepOutcome};
use crate::isolation;
use crate::job::{Job, PreparedJob};
use crate::metrics;
use crate::result::{FailureKind, ItemError};
use crate::task::{Output, Task};

/// Starts worker `index` on its own thread.
pub(crate) fn spawn(
    index: usize,
    device: String,
    backend: Arc<dyn Backend>,
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
                probe_item: None,
                probes: 0,
            };
            worker.run(&probe_item());
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
    /// The warm-up item: variants of it alone tell whether the device computes.
    probe_item: Option<ScoreItem>,
    /// Probes run so far (each one's pixels differ).
    probes: u64,
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
                // Counted as a full run of failures, so the first good batch (a transient
                // start-up failure) reports the device healthy again.
                self.consecutive_failures = self.max_consecutive_failures;
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
    /// The item is kept: the warm-up is the first probe, and fresh variants of it later tell
    /// device failures from item failures.
    fn warm_up(&mut self, item: &ScoreItem) -> Result<(), String> {
        self.probe_item = Some(item.clone());
        self.probe(false).map_err(|f| f.message())
    }

    /// One forward of a probe item alone: does the device still compute? Each probe's pixels
    /// differ (so the vision tower runs rather than the feature cache answering), and a batch
    /// that wanted rationales is probed through the rationale prefill.
    fn probe(&mut self, rationale: bool) -> Result<(), BatchFailure> {
        let Some(mut item) = self.probe_item.clone() else {
            return Err(BatchFailure::Error("no probe item".into()));
        };
        self.probes += 1;
        if let Candidate::Image(ImageInput::Rgb8 { data, .. }) = &mut item.candidate {
            let shift = self.probes as u8;
            data.iter_mut().enumerate().for_each(|(i, v)| {
                *v = (i as u8).wrapping_mul(31).wrapping_add(shift);
            });
        }
        let task = if rationale {
            Task::Rationale(RationaleOptions {
                max_tokens: 1,
                ..RationaleOptions::default()
            })
        } else {
            Task::Score
        };
        let run = || -> rewarddance_model::Result<()> {
            let prepared = self.backend.prepare(&item, 0)?;
            self.backend.forward(&[&prepared], &[task]).map(drop)
        };
        catch_unwind(AssertUnwindSafe(run))
            .map_err(|panic| BatchFailure::Panic(panic_message(&*panic)))?
            .map_err(|e| BatchFailure::Error(e.to_string()))
    }

    /// One packed forward over `jobs`: per item the output of its task (its score and, for a
    /// rationale, the sequence that decodes it).
    fn forward(&self, jobs: &[PreparedJob]) -> Result<Vec<Output<Sequence>>, BatchFailure> {
        let refs: Vec<&Prepared> = jobs.iter().map(|p| &p.prepared).collect();
        let tasks: Vec<Task> = jobs.iter().map(|p| p.job.task).collect();
        let tokens: usize = refs.iter().map(|p| p.tokens()).sum();
        let start = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| self.backend.forward(&refs, &tasks)));
        metrics::record_batch(
            &self.device,
            jobs.len(),
            tokens,
            start.elapsed().as_secs_f64(),
        );
        metrics::record_reuse(&self.device, &self.backend.reuse_stats());
        let n = jobs.len();
        match result {
            Ok(Ok(outputs)) if outputs.len() == n => Ok(outputs),
            Ok(Ok(outputs)) => Err(BatchFailure::Error(format!(
                "the model returned {} scores for {n} items",
                outputs.len()
            ))),
            Ok(Err(err)) if err.is_caller_error() => {
                Err(BatchFailure::Caller(ItemError::from_model(&err)))
            }
            Ok(Err(err)) => Err(BatchFailure::Error(err.to_string())),
            Err(panic) => Err(BatchFailure::Panic(panic_message(&*panic))),
        }
    }

    /// Scores one batch and answers each of its items, except those that asked for a
    /// rationale: they join the decode set with their score. A failed batch is split to find
    /// the items that fail alone (see [`crate::isolation`]) when the device still passes its
    /// probe; only a device that fails the probe counts as a failing device.
    fn run_batch(&mut self, batch: Batch) -> Outcome {
        let cut = Instant::now();
        // Callers may have gone or expired while the batch waited for this thread.
        let jobs: Vec<PreparedJob> = batch
            .jobs
            .into_iter()
            .filter_map(|mut p| {
                p.job.timing.queue += cut.saturating_duration_since(p.enqueued);
                p.check(cut)
            })
            .collect();
        if jobs.is_empty() {
            return Outcome::Ok;
        }
        let shape = BatchShape {
            items: jobs.len(),
            tokens: jobs.iter().map(|p| p.prepared.tokens()).sum(),
            start: Instant::now(),
        };
        let span = tracing::info_span!("batch", device = %self.device, items = shape.items, tokens = shape.tokens);
        for p in &jobs {
            span.follows_from(&p.job.span);
        }
        let _entered = span.enter();
        let failure = match self.forward(&jobs) {
            Ok(results) => {
                self.answer(jobs.into_iter().zip(results.into_iter().map(Ok)), &shape);
                tracing::debug!(
                    elapsed_ms = shape.start.elapsed().as_secs_f64() * 1e3,
                    "batch scored"
                );
                return Outcome::Ok;
            }
            Err(failure) => failure,
        };
        // A lone item the model refused as the caller's error says nothing about the device.
        if shape.items == 1 && matches!(failure, BatchFailure::Caller(_)) {
            let refused = jobs.into_iter().zip(std::iter::once(Err(failure)));
            self.answer(refused, &shape);
            return Outcome::Ok;
        }
        tracing::warn!(error = %failure.message(), "batch failed; checking the device");
        {
            let rationale = jobs
                .iter()
                .any(|p| matches!(p.job.task, Task::Rationale(_)));
            if let Err(probe) = self.probe(rationale) {
                tracing::error!(error = %probe.message(), "the device fails its probe too");
                let message = format!("device failure: {}", failure.message());
                for p in jobs {
                    let mut job = p.job;
                    shape.stamp(&mut job);
                    job.fail(ItemError::new(FailureKind::Internal, message.clone()));
                }
                return match probe {
                    BatchFailure::Panic(_) => Outcome::Panicked,
                    _ => Outcome::Failed,
                };
            }
        }
        let mut retain = |half: Vec<PreparedJob>| {
            let now = Instant::now();
            half.into_iter().filter_map(|p| p.check(now)).collect()
        };
        let (results, reruns) = isolation::bisect(
            jobs,
            &mut |half: &[PreparedJob]| self.forward(half),
            &mut retain,
            failure,
        );
        let isolated = results.iter().filter(|(_, r)| r.is_err()).count();
        tracing::warn!(
            isolated,
            reruns,
            "the device is healthy: items that fail alone were answered with their own error"
        );
        metrics::record_isolated(&self.device, isolated);
        self.answer(results.into_iter(), &shape);
        Outcome::Ok
    }

    /// Answers each job with its result, per its task's output: a score is answered now, a
    /// rationale joins the decode set.
    fn answer(
        &mut self,
        results: impl Iterator<Item = (PreparedJob, Result<Output<Sequence>, BatchFailure>)>,
        shape: &BatchShape,
    ) {
        let started = Instant::now();
        for (p, result) in results {
            let mut job = p.job;
            shape.stamp(&mut job);
            match result {
                Ok(Output::Rationale(score, sequence)) => self.decoding.join(Decoding {
                    sequence,
                    job,
                    score,
                    started,
                }),
                Ok(Output::Score(score)) => job.succeed(score, None),
                Ok(Output::Gradient(gradient)) => job.succeed_with_gradient(gradient),
                Err(failure) => job.fail(failure.alone()),
            }
        }
    }
}

/// Size and start of the batch its items were answered from (for their timings).
struct BatchShape {
    items: usize,
    tokens: usize,
    start: Instant,
}

impl BatchShape {
    fn stamp(&self, job: &mut Job) {
        job.timing.inference = self.start.elapsed();
        job.timing.batch_items = self.items;
        job.timing.batch_tokens = self.tokens;
    }
}

/// Why a forward pass failed as a whole.
enum BatchFailure {
    /// The model refused an item as the caller's error.
    Caller(ItemError),
    /// A model error (or a wrong number of results).
    Error(String),
    /// A panic, with its message.
    Panic(String),
}

impl BatchFailure {
    /// For logs.
    fn message(&self) -> String {
        match self {
            BatchFailure::Caller(e) => e.to_string(),
            BatchFailure::Error(m) => m.clone(),
            BatchFailure::Panic(m) => format!("panic: {m}"),
        }
    }

    /// The answer for an item that failed alone while the device passed its probe.
    fn alone(self) -> ItemError {
        match self {
            BatchFailure::Caller(e) => e,
            BatchFailure::Error(m) => ItemError::new(
                FailureKind::Internal,
                format!("the model failed on this item: {m}"),
            ),
            BatchFailure::Panic(_) => ItemError::new(
                FailureKind::Internal,
                "the model failed unexpectedly on this item",
            ),
        }
    }
}

/// The text of a panic payload.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// The warm-up item, and the base of every probe: a tiny synthetic image.
fn probe_item() -> ScoreItem {
    ScoreItem {
        prompt: "warm-up".into(),
        candidate: Candidate::Image(ImageInput::Rgb8 {
            width: 32,
            height: 32,
            data: vec![128; 32 * 32 * 3],
        }),
        reference: None,
        instruction: None,
        mode: Mode::Pointwise,
    }
}
