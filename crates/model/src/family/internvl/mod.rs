//! InternVL (OpenGVLab): InternViT, pixel shuffle and the `mlp1` projector in front of a Qwen2
//! or InternLM2 decoder, in both checkpoint layouts (OpenGVLab's `InternVLChatModel` and
//! transformers' `InternVLForConditionalGeneration`, the `-hf` checkpoints).
//!
//! - [`config`]: both layouts' `config.json` parsed into one [`ModelConfig`]
//! - [`tiling`]: dynamic tiling (`dynamic_preprocess`) and normalisation (`build_transform`)
//! - [`vision`] + [`projector`]: InternViT-300M / 6B, pixel shuffle, `mlp1`
//! - [`memory`]: the image side's parameters and activations
//! - [`presets`]: the published sizes' configs, for benchmarks
//! - `weights`: where each part lives in each layout's checkpoint

pub mod config;
pub mod float_tiling;
pub mod memory;
pub mod presets;
pub mod projector;
mod pyorder;
pub mod tiling;
pub mod vision;
mod weights;
pub mod wrapped_lora;

pub(crate) use weights::adapter_tensor_name;

use std::collections::BTreeSet;
use std::sync::Arc;

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::{ImageEncoder, LoadedFamily};
use crate::error::Result;
use crate::image::{DecodeLimits, ImageInput, PreparedImage};
use crate::nn::lora::{AdapterRows, LoraLookup};
use crate::text::chat_template::DefaultTemplate;
use crate::text::prompt::{ImageTokens, PromptSettings};
use config::{CheckpointLayout, ModelConfig};
use projector::Projector;
use tiling::TilingConfig;
use vision::VisionTower;

/// InternVL's image markers: `<img>` + one `<IMG_CONTEXT>` per feature row + `</img>`.
pub const IMAGE_TOKENS: ImageTokens = ImageTokens {
    placeholder: "<image>",
    start: "<img>",
    context: "<IMG_CONTEXT>",
    end: "</img>",
};

/// Prompt settings of an InternVL checkpoint: OpenGVLab's `chat()` renders its
/// `config.template` conversation; the `-hf` processor renders the checkpoint's Jinja template.
pub fn prompt_settings(config: &ModelConfig) -> PromptSettings {
    PromptSettings {
        image_tokens: IMAGE_TOKENS,
        default_template: match config.layout {
            CheckpointLayout::OpenGvLab => DefaultTemplate::Conversation,
            CheckpointLayout::HuggingFace => DefaultTemplate::Jinja,
        },
        config_template: config.template.clone(),
        config_system_message: config.system_message.clone(),
    }
}

/// Loads InternViT and the projector, and finds the decoder, in `vb` (the checkpoint's root).
pub fn load(config: &ModelConfig, vb: VarBuilder<'static>) -> candle_core::Result<LoadedFamily> {
    let parts = weights::locate(config.layout, &vb);
    let vision = VisionTower::load(
        &config.vision,
        config.layout,
        config.tiling.image_size as usize,
        config.feature_layer,
        parts.vision,
    )?;
    let factor = (1.0 / config.downsample_ratio).round() as usize;
    let projector = Projector::load(
        config.layout,
        config.vision.hidden_size,
        config.text.hidden_size,
        factor,
        parts.projector,
    )?;
    Ok(LoadedFamily {
        images: Box::new(InternVlImages {
            tiling: config.tiling,
            vision,
            projector,
        }),
        text_weights: parts.text,
        head_weights: parts.head,
    })
}

/// InternVL's image side on a device.
struct InternVlImages {
    tiling: TilingConfig,
    vision: VisionTower,
    projector: Projector,
}

impl ImageEncoder for InternVlImages {
    fn prepare_image(
        &self,
        input: &ImageInput,
        frame: bool,
        limits: &DecodeLimits,
    ) -> Result<Arc<PreparedImage>> {
        tiling::prepare_image(input, frame, &self.tiling, limits)
    }

    fn encode_tiles(&self, pixels: &Tensor, chunk: usize, slot: Option<usize>) -> Result<Tensor> {
        let adapter = AdapterRows::of_slot(slot);
        let n = pixels.dim(0)?;
        let chunk = chunk.max(1);
        let mut parts = Vec::with_capacity(n.div_ceil(chunk));
        let mut start = 0;
        while start < n {
            let len = chunk.min(n - start);
            let feats = self
                .vision
                .forward(&pixels.narrow(0, start, len)?, &adapter)?;
            parts.push(
                self.projector
                    .forward(&feats, self.vision.grid(), &adapter)?,
            );
            start += len;
        }
        let all = Tensor::cat(&parts, 0)?;
        let (t, k, h) = all.dims3()?;
        Ok(all.reshape((t * k, h))?)
    }

    fn encode_tiles_backward(
        &self,
        pixels: &Tensor,
        d_rows: &Tensor,
        slot: Option<usize>,
    ) -> Result<Tensor> {
        let adapter = AdapterRows::of_slot(slot);
        let grid = self.vision.grid();
        let rows = self.projector.tokens_per_tile(grid);
        Ok(self.vision.backward_with(pixels, &adapter, |i, features| {
            let d_proj = d_rows.narrow(0, i * rows, rows)?.unsqueeze(0)?;
            self.projector.backward(features, grid, &adapter, &d_proj)
        })?)
    }

    fn attach_adapter(
        &mut self,
        slot: usize,
        parts: &LoraLookup<'_>,
    ) -> candle_core::Result<BTreeSet<String>> {
        let mut used = self.vision.attach_adapter(slot, parts)?;
        used.extend(self.projector.attach_adapter(slot, parts)?);
        Ok(used)
    }
}
