//! An admitted item on its way through the engine: the job it travels in, from preprocessing
//! through the batcher's queue to the worker that answers it.

use std::time::Instant;

use rewarddance_model::Score;
use tokio::sync::{mpsc, oneshot};
use tracing::Span;

use crate::admission::Slot;
use crate::backend::Prepared;
use crate::metrics;
use crate::result::{FailureKind, ItemError, ItemResult, RationaleOutput, Timing};
use crate::task::Task;
use rewarddance_model::pipeline::gradient::ScoreGradient;

/// An admitted item on its way through the engine. Dropping it unanswered frees its queue
/// slot; the ticket then reports an internal error (or nobody is listening any more).
pub(crate) struct Job {
    /// What to compute.
    pub task: Task,
    /// The name of the reward it is scored by (the metric label).
    pub reward: std::sync::Arc<str>,
    /// Where rationale text increments go as they are decoded (receiver may be gone).
    pub text: Option<mpsc::UnboundedSender<String>>,
    pub reply: oneshot::Sender<ItemResult>,
    pub deadline: Option<Instant>,
    pub span: Span,
    pub admitted: Instant,
    pub timing: Timing,
    /// The queue slot (and, until preprocessing takes it, the item's input).
    pub slot: Slot,
}

/// A job whose item has been prepared, waiting in the batcher's queue.
pub(crate) struct PreparedJob {
    pub job: Job,
    pub prepared: Prepared,
    pub enqueued: Instant,
}

impl Job {
    /// True when the caller stopped waiting (client cancelled or disconnected).
    pub fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }

    /// True when the deadline has passed at `now`.
    pub fn expired(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }

    /// Answers with a score (and the rationale, when one was decoded).
    pub fn succeed(mut self, score: Score, rationale: Option<RationaleOutput>) {
        self.timing.total = self.admitted.elapsed();
        metrics::record_item_ok(&self.timing, &self.reward);
        let _ = self.reply.send(ItemResult {
            outcome: Ok(score),
            rationale,
            gradient: None,
            timing: self.timing,
        });
    }

    /// Answers with a score and its gradients (a gradient task).
    pub fn succeed_with_gradient(mut self, gradient: Box<ScoreGradient>) {
        self.timing.total = self.admitted.elapsed();
        metrics::record_item_ok(&self.timing, &self.reward);
        let _ = self.reply.send(ItemResult {
            outcome: Ok(gradient.score),
            rationale: None,
            gradient: Some(std::sync::Arc::from(gradient)),
            timing: self.timing,
        });
    }

    /// Hands a piece of rationale text to the caller (if it still listens for text).
    pub fn stream_text(&self, text: &str) {
        if let Some(tx) = &self.text {
            let _ = tx.send(text.to_string());
        }
    }

    /// Answers with an error (and counts it).
    pub fn fail(mut self, error: ItemError) {
        self.timing.total = self.admitted.elapsed();
        metrics::record_item_failure(error.reason);
        let _ = self.reply.send(ItemResult {
            outcome: Err(error),
            rationale: None,
            gradient: None,
            timing: self.timing,
        });
    }

    /// Drops a job nobody waits for any more (counted as cancelled).
    pub fn discard(self) {
        metrics::record_item_failure("cancelled");
        tracing::debug!(parent: &self.span, "caller gone, item dropped");
    }

    /// Drops an abandoned job, answers an expired one, and returns the rest.
    pub fn check(self, now: Instant) -> Option<Self> {
        if self.abandoned() {
            self.discard();
            None
        } else if self.expired(now) {
            self.fail(ItemError::new(
                FailureKind::DeadlineExceeded,
                "deadline passed before the item was computed",
            ));
            None
        } else {
            Some(self)
        }
    }
}

impl PreparedJob {
    /// [`Job::check`] for a queued job, keeping its prepared item.
    pub fn check(self, now: Instant) -> Option<Self> {
        let PreparedJob {
            job,
            prepared,
            enqueued,
        } = self;
        job.check(now).map(|job| PreparedJob {
            job,
            prepared,
            enqueued,
        })
    }
}
