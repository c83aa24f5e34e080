//! What a loaded model is, in terms that do not depend on its family: what the server's `Info`
//! reports, what admission checks before queueing, and what the reuse metrics read.

use candle_core::{DType, Device};

use crate::item::Mode;
use crate::text::prompt::{AnswerTokens, Instructions};

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
    /// The named rewards it serves, in declaration order (the first is the default).
    pub rewards: Vec<RewardInfo>,
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

/// What an adapter changes, as `Info` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterSummary {
    /// The directory it was read from.
    pub source: String,
    /// The default rank `r`.
    pub rank: usize,
    /// The default `lora_alpha`.
    pub alpha: f64,
    /// Whether the scale is `alpha / sqrt(r)`.
    pub rslora: bool,
    /// The LoRA modules, by the names the adapter gives them (without peft's prefix).
    pub modules: Vec<String>,
    /// Checkpoint tensors replaced whole (`modules_to_save`, trained biases).
    pub replaced: Vec<String>,
    /// Checkpoint tensors it changes that the model never reads (filled in at load).
    pub unread: Vec<String>,
}

/// What `Info` says of a reward.
#[derive(Debug, Clone, PartialEq)]
pub struct RewardInfo {
    /// Its name.
    pub name: String,
    /// Its adapter, if any.
    pub adapter: Option<AdapterSummary>,
    /// Whether the adapter is merged into the weights (the only adapter of the model) rather
    /// than applied per row.
    pub merged: bool,
    /// Its answer tokens.
    pub answers: AnswerTokens,
    /// Their token ids.
    pub answer_ids: (u32, u32),
    /// Its instructions (unset: the defaults).
    pub instructions: Instructions,
    /// Its default mode.
    pub mode: Option<Mode>,
}
