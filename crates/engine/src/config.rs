//! Engine settings (filled from the `serve` flags; the engine has no defaults of its own beyond
//! [`EngineConfig::default`]).

use std::time::Duration;

use rewarddance_model::pipeline::memory::BatchBudget;

/// Batching, queueing and worker settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Token budget of one batch (the sum of the items' prompt lengths). An item larger than
    /// the budget still runs, alone.
    pub max_batch_tokens: usize,
    /// Most items in one batch.
    pub max_batch_items: usize,
    /// How long an idle worker may wait for a batch to fill once the first item is queued
    /// (zero: cut at once).
    pub max_batch_delay: Duration,
    /// Most items held at once (preprocessing, queued or computing); past it, submissions are
    /// refused with [`SubmitError::QueueFull`](crate::SubmitError::QueueFull).
    pub max_queue_items: usize,
    /// Threads decoding and tiling images.
    pub preprocess_threads: usize,
    /// Consecutive failed batches after which a device is reported unhealthy.
    pub max_consecutive_failures: u32,
    /// Most rationales one device decodes at once; at the limit it takes no new batch until
    /// one finishes (bounds key/value-cache memory).
    pub max_decoding_sequences: usize,
    /// Most image tiles in one gradient batch (`ScoreGrad` items); a gradient item with more is
    /// refused (`too_many_tiles`), since the start-up memory check sized gradients for it.
    pub max_gradient_tiles: usize,
}

impl EngineConfig {
    /// Default [`Self::max_batch_tokens`] (the memory estimate's default budget).
    pub const DEFAULT_MAX_BATCH_TOKENS: usize = BatchBudget::DEFAULT_TOKENS;
    /// Default [`Self::max_batch_items`] (the memory estimate's default budget).
    pub const DEFAULT_MAX_BATCH_ITEMS: usize = BatchBudget::DEFAULT_SEQUENCES;
    /// Default [`Self::max_batch_delay`], in milliseconds.
    pub const DEFAULT_MAX_BATCH_DELAY_MS: u64 = 2;
    /// Default [`Self::max_queue_items`].
    pub const DEFAULT_MAX_QUEUE_ITEMS: usize = 4096;
    /// Default [`Self::max_consecutive_failures`].
    pub const DEFAULT_MAX_CONSECUTIVE_FAILURES: u32 = 3;
    /// Default [`Self::max_gradient_tiles`].
    pub const DEFAULT_MAX_GRADIENT_TILES: usize = 16;
    /// Default [`Self::max_decoding_sequences`].
    pub const DEFAULT_MAX_DECODING_SEQUENCES: usize = 64;
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_batch_tokens: Self::DEFAULT_MAX_BATCH_TOKENS,
            max_batch_items: Self::DEFAULT_MAX_BATCH_ITEMS,
            max_batch_delay: Duration::from_millis(Self::DEFAULT_MAX_BATCH_DELAY_MS),
            max_queue_items: Self::DEFAULT_MAX_QUEUE_ITEMS,
            preprocess_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            max_consecutive_failures: Self::DEFAULT_MAX_CONSECUTIVE_FAILURES,
            max_decoding_sequences: Self::DEFAULT_MAX_DECODING_SEQUENCES,
            max_gradient_tiles: Self::DEFAULT_MAX_GRADIENT_TILES,
        }
    }
}
