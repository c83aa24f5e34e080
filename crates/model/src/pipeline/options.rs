//! How a model is loaded and which per-item limits it enforces.

use std::path::PathBuf;

use candle_core::{DType, Device};

use crate::image::DecodeLimits;
use crate::text::chat_template::TemplateChoice;
use crate::text::prompt::AnswerTokens;

/// How to load a model and which per-item limits to enforce.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Where to run.
    pub device: Device,
    /// Weight/activation dtype; `None` picks f32 on CPU (candle widens bf16 there anyway) and
    /// bf16 on CUDA.
    pub dtype: Option<DType>,
    /// Answer tokens (each must be a single token).
    pub answers: AnswerTokens,
    /// Largest accepted image, in pixels.
    pub max_image_pixels: u64,
    /// Most tiles (all images and frames together) one item may use.
    pub max_tiles_per_item: usize,
    /// Longest accepted prompt in tokens; `None` means the model's context length.
    pub max_tokens_per_item: Option<usize>,
    /// Tiles per vision-tower call (bounds activation memory).
    pub vision_batch_tiles: usize,
    /// Bytes of projected image features kept for reuse across batches; 0 disables the cache
    /// (repeats inside one batch are still encoded once).
    pub feature_cache_bytes: usize,
    /// Encode each distinct image once per batch and use the feature cache. `false` encodes
    /// every occurrence (only useful to measure what reuse saves).
    pub reuse_images: bool,
    /// Items of a batch that share at least this many leading tokens (system prompt,
    /// instruction, reference image) compute them once; `usize::MAX` disables prefix reuse.
    pub prefix_reuse_min_tokens: usize,
    /// Which chat template builds prompts (default: what the checkpoint's own code uses).
    pub template: TemplateChoice,
    /// A LoRA adapter directory (peft's format) merged into the weights at load.
    pub adapter: Option<PathBuf>,
}

impl LoadOptions {
    /// Default [`Self::max_tiles_per_item`].
    pub const DEFAULT_MAX_TILES_PER_ITEM: usize = 64;
    /// Default [`Self::vision_batch_tiles`].
    pub const DEFAULT_VISION_BATCH_TILES: usize = 32;
    /// Default [`Self::feature_cache_bytes`], in MiB.
    pub const DEFAULT_FEATURE_CACHE_MIB: usize = 256;
    /// Default [`Self::prefix_reuse_min_tokens`].
    pub const DEFAULT_PREFIX_REUSE_MIN_TOKENS: usize = 32;

    /// The dtype when none is asked for: f32 on CPU (candle widens bf16 there anyway), bf16
    /// elsewhere. The one place this rule lives.
    pub fn default_dtype(device: &Device) -> DType {
        if device.is_cpu() {
            DType::F32
        } else {
            DType::BF16
        }
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: Device::Cpu,
            dtype: None,
            answers: AnswerTokens::default(),
            max_image_pixels: DecodeLimits::DEFAULT_MAX_PIXELS,
            max_tiles_per_item: Self::DEFAULT_MAX_TILES_PER_ITEM,
            max_tokens_per_item: None,
            vision_batch_tiles: Self::DEFAULT_VISION_BATCH_TILES,
            feature_cache_bytes: Self::DEFAULT_FEATURE_CACHE_MIB << 20,
            prefix_reuse_min_tokens: Self::DEFAULT_PREFIX_REUSE_MIN_TOKENS,
            reuse_images: true,
            template: TemplateChoice::Auto,
            adapter: None,
        }
    }
}
