//! What the engine answers for an item: its score, or why there is none, with the outputs
//! its task produced and where its time went. Plain data: every other module may use it.

use std::time::Duration;

use rewarddance_model::{Score, StopReason};

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
    /// `reason` label of [`ITEM_FAILURES_TOTAL`](crate::metrics::ITEM_FAILURES_TOTAL).
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

impl RationaleEnd {
    /// Why a generation ended itself, from the stop reason of its last decode step.
    pub fn from_model(stop: StopReason) -> Self {
        match stop {
            StopReason::EndOfTurn => RationaleEnd::EndOfTurn,
            // A decode step never reports `Stopped` (the caller's stop, which the engine
            // records itself as `Deadline`); were it to, it reads as the end of the budget.
            StopReason::MaxTokens | StopReason::Stopped => RationaleEnd::MaxTokens,
        }
    }

    /// The model's stop reason for a generation the engine ends this way: the one place the
    /// two enums meet (the server maps [`RationaleEnd`] to the wire in one place too).
    pub fn to_model(self) -> StopReason {
        match self {
            RationaleEnd::EndOfTurn => StopReason::EndOfTurn,
            RationaleEnd::MaxTokens => StopReason::MaxTokens,
            RationaleEnd::Deadline | RationaleEnd::Failed => StopReason::Stopped,
        }
    }
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

/// The answer for one item. Every task yields a score; a task's own outputs sit next to it
/// (the rationale of [`Task::Rationale`](crate::Task::Rationale), the gradients of
/// [`Task::Gradient`](crate::Task::Gradient)).
#[derive(Debug, Clone)]
pub struct ItemResult {
    /// The score, or why there is none.
    pub outcome: Result<Score, ItemError>,
    /// The rationale, when the item asked for one and was scored.
    pub rationale: Option<RationaleOutput>,
    /// The objective's value and gradients, when the item asked for them and was scored.
    pub gradient: Option<std::sync::Arc<rewarddance_model::pipeline::gradient::ScoreGradient>>,
    /// Timings.
    pub timing: Timing,
}

impl ItemResult {
    /// A result without a score.
    pub fn failed(error: ItemError) -> Self {
        ItemResult {
            outcome: Err(error),
            rationale: None,
            gradient: None,
            timing: Timing::default(),
        }
    }
}
