//! GPU memory a configuration needs: weights (from the config's shapes) plus the activations of
//! one forward at a batch budget, plus a fixed runtime overhead. The server calls [`check_fits`]
//! at start-up so a configuration that cannot fit is refused with a clear message instead of
//! failing with an out-of-memory error on the first large batch.
//!
//! Assumptions (an upper-bound style estimate of this crate's forward, not a measurement):
//! - weights: every tensor the loader keeps (vision blocks up to the feature layer, projector,
//!   decoder, output head; a tied head is shared), at the load dtype;
//! - image activations: the family's (InternVL: [`crate::family::internvl::memory`]);
//! - language activations: the packed (tokens, hidden) stream with its residual, norm and
//!   attention output, q/k/v, three MLP-width tensors, rotary tables, plus the per-sequence
//!   scores/softmax of the longest sequence (attention runs sequence by sequence) and its causal
//!   mask, and f32 logits for every sequence;
//! - overhead: 1 GiB for the CUDA context, cuBLAS workspaces and allocator slack, plus 10% of the
//!   activations for fragmentation;
//! - adapters ([`unmerged_adapter_bytes`]): a merged adapter costs nothing; each unmerged one
//!   holds its LoRA factors (at most their file's size, f32) next to the base weights. Their
//!   activations (rows x rank per layer) are below the estimate's rounding.

use candle_core::DType;

use crate::error::{Error, Result};
use crate::family::FamilyConfig;
use crate::nn::language::config::TextConfig;

const GIB: f64 = (1u64 << 30) as f64;
/// CUDA context, cuBLAS workspaces, allocator slack.
pub const RUNTIME_OVERHEAD_BYTES: u64 = 1 << 30;

/// Bytes the unmerged adapters of `specs` hold on the device: each distinct adapter's
/// `adapter_model.safetensors` size (its LoRA factors in f32, an upper bound at any dtype),
/// or 0 when one adapter serves every reward (it is merged into the weights).
pub fn unmerged_adapter_bytes(specs: &[crate::pipeline::rewards::RewardSpec]) -> u64 {
    let first = specs.first().and_then(|s| s.adapter.as_ref());
    if first.is_some() && specs.iter().all(|s| s.adapter.as_ref() == first) {
        return 0;
    }
    let mut dirs: Vec<&std::path::Path> =
        specs.iter().filter_map(|s| s.adapter.as_deref()).collect();
    dirs.sort();
    dirs.dedup();
    dirs.iter()
        .filter_map(|d| std::fs::metadata(d.join("adapter_model.safetensors")).ok())
        .map(|m| m.len())
        .sum()
}

/// The most one forward pass is allowed to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchBudget {
    /// Packed language-model tokens per forward (all sequences together).
    pub tokens: usize,
    /// Image tiles per forward (all images of all items).
    pub tiles: usize,
    /// Longest single sequence, in tokens.
    pub max_sequence_tokens: usize,
    /// Sequences (items) per forward.
    pub sequences: usize,
}

impl BatchBudget {
    /// Default packed tokens per forward (the server's `--max-batch-tokens`).
    pub const DEFAULT_TOKENS: usize = 16_384;
    /// Default items per forward (the server's `--max-batch-items`).
    pub const DEFAULT_SEQUENCES: usize = 64;
}

impl Default for BatchBudget {
    /// 64 items, 64 tiles (e.g. 64 one-tile images, or 32 pairwise items), 16k packed tokens,
    /// sequences up to 8k tokens (a pairwise item with two 13-tile images is ~6.8k).
    fn default() -> Self {
        BatchBudget {
            tokens: Self::DEFAULT_TOKENS,
            tiles: 64,
            max_sequence_tokens: 8_192,
            sequences: Self::DEFAULT_SEQUENCES,
        }
    }
}

/// Estimated device memory, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// Parameters the model keeps.
    pub parameters: u64,
    /// Weights at the load dtype.
    pub weights: u64,
    /// Peak activations of the vision tower at the budget.
    pub vision_activations: u64,
    /// Peak activations of the language model at the budget.
    pub language_activations: u64,
    /// Runtime overhead (context, workspaces, fragmentation).
    pub overhead: u64,
}

impl MemoryEstimate {
    /// Everything together.
    pub fn total(&self) -> u64 {
        self.weights + self.activations() + self.overhead
    }

    /// The larger of the two towers' peaks (they do not run at the same time).
    pub fn activations(&self) -> u64 {
        self.vision_activations.max(self.language_activations)
    }
}

impl std::fmt::Display for MemoryEstimate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.1} GiB = weights {:.1} GiB ({:.2}B parameters) + activations {:.1} GiB \
             (vision {:.1}, language {:.1}) + overhead {:.1} GiB",
            self.total() as f64 / GIB,
            self.weights as f64 / GIB,
            self.parameters as f64 / 1e9,
            self.activations() as f64 / GIB,
            self.vision_activations as f64 / GIB,
            self.language_activations as f64 / GIB,
            self.overhead as f64 / GIB,
        )
    }
}

/// Parameters the loader keeps for `config`: the family's image side plus the decoder and its
/// output head (a tied head is shared).
pub fn parameter_count(config: &FamilyConfig) -> u64 {
    config.image_parameters() + language_parameters(config.text())
}

/// Parameters of the decoder and its output head.
fn language_parameters(t: &TextConfig) -> u64 {
    let (h, m, d) = (
        t.hidden_size as u64,
        t.intermediate_size as u64,
        t.head_dim as u64,
    );
    let (heads, kv) = (t.num_heads as u64, t.num_kv_heads as u64);
    let qkv = h * (heads + 2 * kv) * d
        + if t.attention_bias {
            (heads + 2 * kv) * d
        } else {
            0
        };
    let layer = 2 * h + qkv + heads * d * h + 3 * h * m;
    let embed = t.vocab_size as u64 * h;
    let head = if t.tie_word_embeddings { 0 } else { embed };
    embed + t.num_layers as u64 * layer + h + head
}

/// Estimates the memory of `config` at `dtype` for one forward at `budget`.
pub fn estimate(config: &FamilyConfig, dtype: DType, budget: &BatchBudget) -> MemoryEstimate {
    let bytes = dtype.size_in_bytes() as u64;
    let parameters = parameter_count(config);
    let vision_activations = config.image_activation_bytes(budget.tiles, bytes);

    let t = config.text();
    let (h, m, d) = (
        t.hidden_size as u64,
        t.intermediate_size as u64,
        t.head_dim as u64,
    );
    let features = budget.tiles as u64 * config.tokens_per_tile() as u64 * h;
    let tokens = budget.tokens as u64;
    let longest = budget.max_sequence_tokens.min(budget.tokens) as u64;
    let stream =
        tokens * (4 * h + 2 * (t.num_heads as u64 + 2 * t.num_kv_heads as u64) * d + 3 * m + d);
    let attention = 2 * t.num_heads as u64 * longest * longest + longest * longest;
    let logits = budget.sequences as u64 * t.vocab_size as u64 * 4;
    let language_activations = (stream + attention) * bytes + logits + features * bytes;

    let overhead = RUNTIME_OVERHEAD_BYTES + vision_activations.max(language_activations) / 10;
    MemoryEstimate {
        parameters,
        weights: parameters * bytes,
        vision_activations,
        language_activations,
        overhead,
    }
}

/// Peak activation bytes of one gradient item (`ScoreGrad`) of `tiles` tiles and `tokens`
/// tokens at `dtype`, weights excluded: the family's image side, then the decoder holding every
/// layer's input and the input embeddings with their gradient, one recomputed layer with its
/// gradients (f32), four (tokens x tokens) matrices per head, the image features with their
/// gradients, and the last position's logits. No weight-sized gradient is ever formed.
pub fn gradient_item_bytes(
    config: &FamilyConfig,
    dtype: DType,
    tiles: usize,
    tokens: usize,
) -> u64 {
    let bytes = dtype.size_in_bytes() as u64;
    let t = config.text();
    let (h, m, d) = (
        t.hidden_size as u64,
        t.intermediate_size as u64,
        t.head_dim as u64,
    );
    let (heads, kv) = (t.num_heads as u64, t.num_kv_heads as u64);
    let n = tokens as u64;
    let saved = (t.num_layers as u64 + 3) * n * h * bytes;
    let layer = 2 * n * (6 * h + 2 * (heads + 2 * kv) * d + 3 * m) * 4;
    let attention = 4 * heads * n * n * 4;
    let features = 2 * tiles as u64 * config.tokens_per_tile() as u64 * h * bytes;
    let logits = 2 * t.vocab_size as u64 * 4;
    config.image_gradient_bytes(tiles, bytes) + saved + layer + attention + features + logits
}

/// Refuses a gradient budget that cannot fit next to the weights: one gradient item of
/// `tiles` tiles and `tokens` tokens at `dtype` (`--max-gradient-tiles`). Returns the item's
/// bytes when it fits.
pub fn check_gradient_fits(
    config: &FamilyConfig,
    dtype: DType,
    tiles: usize,
    tokens: usize,
    device_memory_bytes: u64,
) -> Result<u64> {
    let weights = parameter_count(config) * dtype.size_in_bytes() as u64;
    let item = gradient_item_bytes(config, dtype, tiles, tokens);
    let needed = weights + RUNTIME_OVERHEAD_BYTES + item;
    if needed <= device_memory_bytes {
        return Ok(item);
    }
    Err(Error::Checkpoint(format!(
        "a gradient batch does not fit on the device: the weights ({:.1} GiB in {dtype:?}) and \
         one ScoreGrad item of {tiles} tiles / {tokens} tokens ({:.1} GiB) need {:.1} GiB, the \
         device has {:.1} GiB; lower --max-gradient-tiles",
        weights as f64 / GIB,
        item as f64 / GIB,
        needed as f64 / GIB,
        device_memory_bytes as f64 / GIB
    )))
}

/// Refuses a configuration whose estimate exceeds `device_memory_bytes`, with a message that
/// says what does not fit and what to change. Returns the estimate when it fits.
pub fn check_fits(
    config: &FamilyConfig,
    dtype: DType,
    budget: &BatchBudget,
    device_memory_bytes: u64,
) -> Result<MemoryEstimate> {
    let e = estimate(config, dtype, budget);
    if e.total() <= device_memory_bytes {
        return Ok(e);
    }
    let device = device_memory_bytes as f64 / GIB;
    let advice = if e.weights + e.overhead > device_memory_bytes {
        format!(
            "the weights alone need {:.1} GiB in {dtype:?}: use a GPU with more memory{}",
            (e.weights + e.overhead) as f64 / GIB,
            if dtype == DType::F32 {
                " or load in bf16"
            } else {
                ""
            }
        )
    } else {
        format!(
            "the weights fit ({:.1} GiB) but a batch of {} tokens / {} tiles / {} items (longest \
             sequence {}) needs {:.1} GiB more: lower the batch budget",
            e.weights as f64 / GIB,
            budget.tokens,
            budget.tiles,
            budget.sequences,
            budget.max_sequence_tokens,
            e.activations() as f64 / GIB
        )
    };
    Err(Error::Checkpoint(format!(
        "this model does not fit on the device: it needs about {e}, the device has {device:.1} \
         GiB; {advice}"
    )))
}

#[cfg(test)]
#[path = "memory_tests.rs"]
mod tests;
