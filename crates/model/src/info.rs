//! What a loaded model is, in terms that do not depend on its family: what the server's `Info`
//! reports, what admission checks before queueing, and what the reuse metrics read.

use candle_core::{DType, Device};

use crate::text::prompt::AnswerTokens;

/// Identity, limits and geometry of a loaded model.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// Checkpoint id (directory, hub id or the bundled model's id).
    pub id: String,
    /// Model family (`internvl`).
    pub family: &'static str,
    /// Checkpoint layout inside the family (`huggingface`, `opengvlab`).
    pub layout: String,
    /// Weight and activation dtype.
    pub dtype: DType,
    /// Device the weights live on.
    pub device: Device,
    /// Per-item limits enforced while preparing an item.
    pub limits: ItemLimits,
    /// Answer tokens whose probability is the reward.
    pub answers: AnswerTokens,
    /// Token ids of `answers.yes` and `answers.no`.
    pub answer_ids: (u32, u32),
    /// Side of one square image tile, in pixels.
    pub tile_size: u32,
    /// Language-model tokens one tile becomes.
    pub tokens_per_tile: u32,
}

/// Per-item limits of a loaded model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemLimits {
    /// Largest accepted image, in pixels.
    pub max_image_pixels: u64,
    /// Most tiles (all images and frames together) one item may use.
    pub max_tiles_per_item: usize,
    /// Longest accepted prompt, in tokens (at most the context length).
    pub max_tokens_per_item: usize,
}

/// Work saved by reuse since start-up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReuseStats {
    /// Vision-feature cache counters (hits include repeats inside one batch).
    pub feature_cache: CacheStats,
    /// Language-model tokens not computed thanks to shared prefixes.
    pub prefix_tokens_saved: u64,
}

/// Counters of the cache's use since start-up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Images whose features were found in the cache.
    pub hits: u64,
    /// Images that had to be encoded.
    pub misses: u64,
    /// Entries dropped to stay under the byte budget.
    pub evictions: u64,
    /// Bytes held now.
    pub bytes: u64,
    /// Entries held now.
    pub entries: u64,
}
