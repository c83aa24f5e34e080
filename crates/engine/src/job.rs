//! An item's journey through the engine: the job it travels in and the result it ends with.

use std::time::{Duration, Instant};

use rewarddance_model::{PreparedItem, RationaleOptions, Score};
use tokio::sync::{mpsc, oneshot};
use tracing::Span;

use crate::engine::Slot;
use crate::metrics;

/// Why an item was not scored. The server maps each kind to one gRPC status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The item is malformed or over a limit (the model's caller errors).
    InvalidArgument,
    /// The caller's deadline passed before the item was computed.
    DeadlineExceeded,
    /// The caller went away (only recorded in metrics; nobody is left to answer).
    Cancelled,
    /// The queue was full when the item arrived.
    QueueFull,
    /// The engine is draining and takes no new items.
    ShuttingDown,
    /// A server-side failure: model error or panic on the device, or a lost item.
    Internal,
}

/// An item-level failure: a kind, a reason label and a message for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemError {
    /// The category (maps to a status code).
    pub kind: FailureKind,
    /// Stable machine-readable reason (`invalid_image`, `deadline_exceeded`, ...); also the
    /// `reason` label of [`metrics::ITEM_FAILURES_TOTAL`].
    pub reason: &'static str,
    /// Human-readable explanation.
    pub message: String,
}

impl ItemError {
    /// Builds an error of `kind` with the kind's default reason.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        let reason = match kind {
            FailureKind::InvalidArgument => "invalid_input",
            FailureKind::DeadlineExceeded => "deadline_exceeded",
            FailureKind::Cancelled => "cancelled",
            FailureKind::QueueFull => "queue_full",
            FailureKind::ShuttingDown => "shutting_down",
            FailureKind::Internal => "internal",
        };
        ItemError {
            kind,
            reason,
            message: message.into(),
        }
    }

    /// Classifies a model error: caller errors are `InvalidArgument` with a specific reason,
    /// everything else is `Internal`.
    pub fn from_model(err: &rewarddance_model::Error) -> Self {
        use rewarddance_model::Error as E;
        let reason = match err {
            E::InvalidInput(_) => "invalid_input",
            E::InvalidImage(_) => "invalid_image",
            E::ImageTooLarge { .. } => "image_too_large",
            E::TooManyTiles { .. } => "too_many_tiles",
            E::TooManyTokens { .. } => "too_many_tokens",
            _ => "internal",
        };
        let kind = if err.is_caller_error() {
            FailureKind::InvalidArgument
        } else {
            FailureKind::Internal
        };
        ItemError {
            kind,
            reason,
            message: err.to_string(),
        }
    }
}

impl std::fmt::Display for ItemError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.reason)
    }
}

/// Where one item's time went. Phases it never reached are zero.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timing {
    /// Waiting for a preprocessing thread and then for a batch slot.
    pub queue: Duration,
    /// Decode, tile, tokenise.
    pub preprocess: Duration,
    /// The forward pass of the item's batch.
    pub inference: Duration,
    /// Decoding the rationale, from the end of the prefill to the last token.
    pub decode: Duration,
    /// Admission to answer.
    pub total: Duration,
    /// Items in the item's batch.
    pub batch_items: usize,
    /// Tokens in the item's batch.
    pub batch_tokens: usize,
}

/// Why a rationale ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RationaleEnd {
    /// The model ended its turn.
    EndOfTurn,
    /// The item's `max_tokens` were generated.
    MaxTokens,
    /// The caller's deadline passed: the text is a prefix.
    Deadline,
    /// Decoding failed on the device: the text is a prefix (the score is still valid).
    Failed,
}

/// A decoded rationale.
#[derive(Debug, Clone, PartialEq)]
pub struct RationaleOutput {
    /// The text (authoritative: streamed increments add up to it).
    pub text: String,
    /// Generated token ids, the end-of-turn token excluded.
    pub token_ids: Vec<u32>,
    /// Why decoding stopped.
    pub end: RationaleEnd,
}

/// The answer for one item.
#[derive(Debug, Clone)]
pub struct ItemResult {
    /// The score, or why there is none.
    pub outcome: Result<Score, ItemError>,
    /// The rationale, when the item asked for one and was scored.
    pub rationale: Option<RationaleOutput>,
    /// Timings.
    pub timing: Timing,
}

impl ItemResult {
    /// A result without a score.
    pub fn failed(error: ItemError) -> Self {
        ItemResult {
            outcome: Err(error),
            rationale: None,
            timing: Timing::default(),
        }
    }
}

/// An admitted item on its way through the engine. Dropping it unanswered frees its queue
/// slot; the ticket then reports an internal error (or nobody is listening any more).
pub(crate) struct Job {
    /// Decode a rationale after the score.
    pub rationale: Option<RationaleOptions>,
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
    pub prepared: PreparedItem,
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
        metrics::record_item_ok(&self.timing);
        let _ = self.reply.send(ItemResult {
            outcome: Ok(score),
            rationale,
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
