//! Engine settings (filled from the `serve` flags; the engine has no defaults of its own beyond
//! [`EngineConfig::default`]).

use std::time::Duration;

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
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_batch_tokens: 16_384,
            max_batch_items: 64,
            max_batch_delay: Duration::from_millis(2),
            max_queue_items: 4096,
            preprocess_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            max_consecutive_failures: 3,
            max_decoding_sequences: 64,
        }
    }
}
