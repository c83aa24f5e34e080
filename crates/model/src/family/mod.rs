//! Model families: what differs between vision-language backbones, behind one seam.
//!
//! The shared pipeline ([`crate::pipeline`]) needs three things from a family, and nothing else:
//! - **configuration** ([`FamilyConfig`]): parsed from `config.json` before anything is loaded,
//!   it gives the decoder's [`TextConfig`] (the decoder itself is shared, [`crate::nn::language`]),
//!   the prompt settings (image markers, default chat template), the image geometry, and the
//!   image side's share of parameters and activation memory;
//! - **weights**: where the image side and the decoder live in the checkpoint
//!   ([`FamilyConfig::load`]);
//! - **images** ([`ImageEncoder`]): decoding is shared ([`crate::image`]); tiling, normalisation
//!   and the vision encoder with its projector are the family's.
//!
//! Adding a family is a new folder next to [`internvl`] with those three parts, a variant of
//! [`FamilyConfig`], and its architectures in [`FamilyConfig::parse`].

pub mod internvl;

use std::collections::BTreeSet;
use std::sync::Arc;

use candle_core::Tensor;
use candle_nn::VarBuilder;

use crate::error::{Error, Result};
use crate::image::{DecodeLimits, ImageInput, PreparedImage};
use crate::nn::language::config::TextConfig;
use crate::nn::lora::LoraLookup;
use crate::text::prompt::PromptSettings;
use internvl::config::ModelConfig;

/// A family's image side, loaded on a device: preprocessing and the vision encoder.
pub trait ImageEncoder: Send + Sync {
    /// Decodes and tiles one image (`frame`: a video frame) under `limits`. Called
    /// concurrently from preprocessing threads.
    fn prepare_image(
        &self,
        input: &ImageInput,
        frame: bool,
        limits: &DecodeLimits,
    ) -> Result<Arc<PreparedImage>>;

    /// Projected features of `(tiles, 3, S, S)` pixels, `(tiles * tokens_per_tile, hidden)`,
    /// computing at most `chunk` tiles at once, with the unmerged adapter `slot` (`None`: the
    /// weights as loaded).
    fn encode_tiles(&self, pixels: &Tensor, chunk: usize, slot: Option<usize>) -> Result<Tensor>;

    /// The gradient with respect to `(tiles, 3, S, S)` pixels, given the gradient `d_rows`
    /// `(tiles * tokens_per_tile, hidden)` with respect to [`Self::encode_tiles`]'s output
    /// with `slot`. Recomputes what it needs; never forms weight gradients.
    fn encode_tiles_backward(
        &self,
        pixels: &Tensor,
        d_rows: &Tensor,
        slot: Option<usize>,
    ) -> Result<Tensor>;

    /// Attaches an adapter's LoRA of the encoder's linear layers as slot `slot`: `parts(name)`
    /// gives the `(lora_A, lora_B, scale)` of the checkpoint tensor `name`. Returns the names
    /// used (empty: the adapter leaves the image side alone, so its features are the base's).
    fn attach_adapter(
        &mut self,
        slot: usize,
        parts: &LoraLookup<'_>,
    ) -> candle_core::Result<BTreeSet<String>>;
}

/// A check run once a model has loaded from [`FamilyConfig::weights`].
pub type WeightCheck = Box<dyn FnOnce() -> Result<()>>;

/// A checkpoint's configuration, by family.
#[derive(Debug, Clone)]
pub enum FamilyConfig {
    /// InternVL 1.5 to 3.5, both checkpoint layouts.
    InternVl(ModelConfig),
}

/// What [`FamilyConfig::load`] returns: the image side and where the decoder's weights are.
pub struct LoadedFamily {
    /// Preprocessing and vision encoder.
    pub images: Box<dyn ImageEncoder>,
    /// The decoder's weights (`embed_tokens`, `layers.N`, `norm`).
    pub text_weights: VarBuilder<'static>,
    /// The output head's weights (`lm_head` or `output`).
    pub head_weights: VarBuilder<'static>,
}

impl From<ModelConfig> for FamilyConfig {
    fn from(config: ModelConfig) -> Self {
        FamilyConfig::InternVl(config)
    }
}

impl FamilyConfig {
    /// Parses `config.json` (and `preprocessor_config.json` when the family reads one),
    /// picking the family from its architecture.
    pub fn parse(config_json: &str, preprocessor_json: Option<&str>) -> Result<Self> {
        let root: serde_json::Value = serde_json::from_str(config_json)
            .map_err(|e| Error::Checkpoint(format!("config.json is not valid JSON: {e}")))?;
        let arch = root["architectures"][0].as_str().unwrap_or("");
        let model_type = root["model_type"].as_str().unwrap_or("");
        if internvl::config::recognises(arch, model_type) {
            return Ok(ModelConfig::parse(config_json, preprocessor_json)?.into());
        }
        Err(Error::Checkpoint(format!(
            "config.json: unsupported architecture {arch:?} (model_type {model_type:?}); \
             expected {}",
            internvl::config::ARCHITECTURES.join(" or ")
        )))
    }

    /// Family name (`internvl`).
    pub fn name(&self) -> &'static str {
        match self {
            FamilyConfig::InternVl(_) => "internvl",
        }
    }

    /// Checkpoint layout inside the family (`huggingface`, `opengvlab`).
    pub fn layout(&self) -> String {
        match self {
            FamilyConfig::InternVl(c) => format!("{:?}", c.layout).to_lowercase(),
        }
    }

    /// The decoder's configuration.
    pub fn text(&self) -> &TextConfig {
        match self {
            FamilyConfig::InternVl(c) => &c.text,
        }
    }

    /// Image markers and template defaults for the prompt builder.
    pub fn prompt_settings(&self) -> PromptSettings {
        match self {
            FamilyConfig::InternVl(c) => internvl::prompt_settings(c),
        }
    }

    /// The image-context token id `config.json` states, checked against the tokenizer's.
    pub fn image_token_id(&self) -> Option<u32> {
        match self {
            FamilyConfig::InternVl(c) => c.image_token_id,
        }
    }

    /// Side of one square input tile, in pixels.
    pub fn tile_size(&self) -> u32 {
        match self {
            FamilyConfig::InternVl(c) => c.tiling.image_size,
        }
    }

    /// Language-model tokens one tile becomes.
    pub fn tokens_per_tile(&self) -> usize {
        match self {
            FamilyConfig::InternVl(c) => c.tokens_per_tile(),
        }
    }

    /// Parameters of the image side the loader keeps (vision encoder and projector).
    pub fn image_parameters(&self) -> u64 {
        match self {
            FamilyConfig::InternVl(c) => internvl::memory::image_parameters(c),
        }
    }

    /// Peak bytes of the image side for one forward over `tiles` tiles (`bytes`: per element).
    pub fn image_activation_bytes(&self, tiles: usize, bytes: u64) -> u64 {
        match self {
            FamilyConfig::InternVl(c) => internvl::memory::image_activation_bytes(c, tiles, bytes),
        }
    }

    /// Peak bytes of the image side of one gradient item over `tiles` tiles.
    pub fn image_gradient_bytes(&self, tiles: usize, bytes: u64) -> u64 {
        match self {
            FamilyConfig::InternVl(c) => internvl::memory::image_gradient_bytes(c, tiles, bytes),
        }
    }

    /// Matmul FLOPs of the image side for one tile, `2 x params x tokens` (what
    /// `rewarddance bench-model` reports MFU from).
    pub fn image_flops_per_tile(&self) -> f64 {
        match self {
            FamilyConfig::InternVl(c) => internvl::memory::image_flops_per_tile(c),
        }
    }

    /// The checkpoint's weights as the family's loader reads them: `vb` itself, or a view
    /// that merges what the checkpoint holds in another form (InternVL's wrapped LoRA), with a
    /// check to run once the model has loaded.
    pub fn weights(&self, vb: VarBuilder<'static>) -> (VarBuilder<'static>, Option<WeightCheck>) {
        match self {
            FamilyConfig::InternVl(c) if c.wrapped_lora != Default::default() => {
                let (dtype, device) = (vb.dtype(), vb.device().clone());
                let (weights, check) = internvl::wrapped_lora::merged(vb, c.wrapped_lora);
                let vb = VarBuilder::from_backend(Box::new(weights), dtype, device);
                (vb, Some(Box::new(move || check.check())))
            }
            FamilyConfig::InternVl(_) => (vb, None),
        }
    }

    /// The checkpoint's name of the tensor a LoRA adapter calls `name` (module path and
    /// parameter, in the trained model's naming), if `has` says the checkpoint holds it.
    pub fn adapter_tensor_name(&self, name: &str, has: &dyn Fn(&str) -> bool) -> Option<String> {
        match self {
            FamilyConfig::InternVl(_) => internvl::adapter_tensor_name(name, has),
        }
    }

    /// Loads the image side from `vb` (the checkpoint's root) and finds the decoder's weights.
    pub fn load(&self, vb: VarBuilder<'static>) -> candle_core::Result<LoadedFamily> {
        match self {
            FamilyConfig::InternVl(c) => internvl::load(c, vb),
        }
    }
}
