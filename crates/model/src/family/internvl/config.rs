//! Checkpoint configuration: both InternVL layouts parsed into one [`ModelConfig`].
//!
//! - Hugging Face layout (`InternVLForConditionalGeneration`, the `-hf` checkpoints):
//!   `vision_config` + `text_config`, tiling settings in `preprocessor_config.json`.
//! - OpenGVLab's original layout (`InternVLChatModel`): `vision_config` + `llm_config`,
//!   `select_layer`, `downsample_ratio`, `ps_version`, tiling settings in `config.json`.

use serde_json::Value;

use super::tiling::TilingConfig;
use crate::error::{Error, Result};
use crate::nn::language::config::{
    check_activation, parse_internlm2, parse_qwen2, req_usize, TextArch, TextConfig,
};
use crate::nn::layers::NormKind;

/// The architectures (`config.json`'s `architectures[0]`) of the two layouts: Hugging Face's
/// native class, then OpenGVLab's remote-code class.
pub const ARCHITECTURES: [&str; 2] = ["InternVLForConditionalGeneration", "InternVLChatModel"];

/// Whether `config.json`'s architecture or model type is InternVL's.
pub fn recognises(arch: &str, model_type: &str) -> bool {
    ARCHITECTURES.contains(&arch) || matches!(model_type, "internvl" | "internvl_chat")
}

/// Which tensor naming / config convention a checkpoint uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum CheckpointLayout {
    /// `InternVLForConditionalGeneration` (transformers' native InternVL).
    HuggingFace,
    /// `InternVLChatModel` (OpenGVLab's remote-code checkpoints).
    OpenGvLab,
}

/// InternViT hyper-parameters.
#[derive(Debug, Clone)]
pub struct VisionConfig {
    /// Embedding width.
    pub hidden_size: usize,
    /// Number of encoder blocks.
    pub num_layers: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Side of the square image the position embeddings were trained for.
    pub image_size: usize,
    /// Side of a square patch.
    pub patch_size: usize,
    /// Whether q/k/v projections carry a bias.
    pub qkv_bias: bool,
    /// RMSNorm over the full width on q and k (InternViT-6B).
    pub qk_norm: bool,
    /// Block normalisation kind.
    pub norm: NormKind,
    /// Block normalisation epsilon.
    pub norm_eps: f64,
    /// HF layout with `use_mean_pooling = false`: a final LayerNorm on the last hidden state.
    pub final_layernorm: bool,
}

/// Everything needed to build the model and its preprocessing, whatever the layout.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// Checkpoint layout.
    pub layout: CheckpointLayout,
    /// Vision tower.
    pub vision: VisionConfig,
    /// Language model.
    pub text: TextConfig,
    /// Pixel-shuffle ratio (0.5: 2x2 patches become one token).
    pub downsample_ratio: f64,
    /// Index into the vision tower's hidden states (-1: last block).
    pub feature_layer: i64,
    /// Image tiling (tile side is the model's input size).
    pub tiling: TilingConfig,
    /// `image_token_id` from the HF config, checked against the tokenizer.
    pub image_token_id: Option<u32>,
    /// OpenGVLab layout: `template`, the conversation template `chat()` renders prompts with.
    pub template: Option<String>,
    /// OpenGVLab layout: `system_message`, overriding the template's own when set. A JSON `null`
    /// (some fine-tunes save one) counts as unset: the template's message, what InternVL's training
    /// code used (OpenGVLab's `chat()` would format Python's `None` into the prompt as "None").
    pub system_message: Option<String>,
    /// OpenGVLab layout: LoRA wrapped inside the checkpoint by InternVL's fine-tuning
    /// (`use_llm_lora`, `use_backbone_lora`), merged at load.
    pub wrapped_lora: WrappedLoraRanks,
}

/// The ranks of the LoRA that InternVL's `wrap_llm_lora` / `wrap_backbone_lora` put inside a
/// checkpoint (`config.json` `use_llm_lora` / `use_backbone_lora`; 0: none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WrappedLoraRanks {
    /// `use_llm_lora`: the language model's rank.
    pub llm: usize,
    /// `use_backbone_lora`: the vision model's rank.
    pub backbone: usize,
}

impl ModelConfig {
    /// Parses `config.json` (and, for the HF layout, the optional `preprocessor_config.json`).
    pub fn parse(config_json: &str, preprocessor_json: Option<&str>) -> Result<Self> {
        let root: Value = serde_json::from_str(config_json)
            .map_err(|e| Error::Checkpoint(format!("config.json is not valid JSON: {e}")))?;
        let arch = root["architectures"][0].as_str().unwrap_or("");
        let model_type = root["model_type"].as_str().unwrap_or("");
        if arch == ARCHITECTURES[1] || model_type == "internvl_chat" {
            Self::parse_opengvlab(&root)
        } else if arch == ARCHITECTURES[0] || model_type == "internvl" {
            let pre = match preprocessor_json {
                Some(text) => Some(serde_json::from_str::<Value>(text).map_err(|e| {
                    Error::Checkpoint(format!("preprocessor_config.json is not valid JSON: {e}"))
                })?),
                None => None,
            };
            Self::parse_hf(&root, pre.as_ref())
        } else {
            Err(Error::Checkpoint(format!(
                "config.json: unsupported architecture {arch:?} (model_type {model_type:?}); \
                 expected InternVLForConditionalGeneration or InternVLChatModel"
            )))
        }
    }

    /// Image-context tokens one tile turns into.
    pub fn tokens_per_tile(&self) -> usize {
        let grid = self.tiling.image_size as usize / self.vision.patch_size;
        let side = (grid as f64 * self.downsample_ratio).round() as usize;
        side * side
    }

    fn parse_hf(root: &Value, pre: Option<&Value>) -> Result<Self> {
        let v = &root["vision_config"];
        let t = &root["text_config"];
        let text_type = t["model_type"].as_str().unwrap_or("qwen2");
        if text_type != "qwen2" {
            return Err(unsupported_llm(text_type));
        }
        let vision = parse_vision(v, CheckpointLayout::HuggingFace)?;
        check_activation(
            root["projector_hidden_act"].as_str(),
            "gelu",
            "projector_hidden_act",
        )?;
        let text = parse_qwen2(t, "text_config", root["tie_word_embeddings"].as_bool())?;
        let feature_layer = match &root["vision_feature_layer"] {
            Value::Null => -1,
            v => v.as_i64().ok_or_else(|| {
                Error::Checkpoint(
                    "vision_feature_layer: only a single layer index is supported".into(),
                )
            })?,
        };
        if let Some(s) = root["vision_feature_select_strategy"].as_str() {
            if s != "default" {
                return Err(Error::Checkpoint(format!(
                    "vision_feature_select_strategy {s:?} is not supported (only \"default\")"
                )));
            }
        }
        let mut tiling = TilingConfig {
            image_size: vision.image_size as u32,
            ..TilingConfig::default()
        };
        if let Some(p) = pre {
            if let Some(s) = p["size"]["height"].as_u64() {
                tiling.image_size = s as u32;
            }
            if let Some(n) = p["min_patches"].as_u64() {
                tiling.min_tiles = n as usize;
            }
            if let Some(n) = p["max_patches"].as_u64() {
                tiling.max_tiles = n as usize;
            }
            // `crop_to_patches` is deliberately not read: `InternVLProcessor` (what
            // `apply_chat_template` and every `-hf` model card use) passes its own default,
            // `images_kwargs.crop_to_patches = True`, to the image processor on each call, and
            // call kwargs win over the saved `preprocessor_config.json` (transformers'
            // `ProcessorMixin._merge_kwargs`). The conversion script saves `false` there.
            read_triplet(&p["image_mean"], &mut tiling.mean);
            read_triplet(&p["image_std"], &mut tiling.std);
        }
        let cfg = ModelConfig {
            layout: CheckpointLayout::HuggingFace,
            vision,
            text,
            downsample_ratio: root["downsample_ratio"].as_f64().unwrap_or(0.5),
            feature_layer,
            tiling,
            image_token_id: root["image_token_id"].as_u64().map(|x| x as u32),
            template: None,
            system_message: None,
            wrapped_lora: WrappedLoraRanks::default(),
        };
        cfg.validate()
    }

    fn parse_opengvlab(root: &Value) -> Result<Self> {
        let v = &root["vision_config"];
        let t = &root["llm_config"];
        let arch = t["architectures"][0].as_str().unwrap_or("");
        let text_type = t["model_type"].as_str().unwrap_or("");
        let text_arch = if arch == "Qwen2ForCausalLM" || text_type == "qwen2" {
            TextArch::Qwen2
        } else if arch == "InternLM2ForCausalLM" || text_type == "internlm2" {
            TextArch::InternLm2
        } else {
            return Err(unsupported_llm(if arch.is_empty() {
                text_type
            } else {
                arch
            }));
        };
        if let Some(ps) = root["ps_version"].as_str() {
            if ps != "v2" {
                return Err(Error::Checkpoint(format!(
                    "ps_version {ps:?} is not supported (only \"v2\", what every released InternVL2+ uses)"
                )));
            }
        }
        let vision = parse_vision(v, CheckpointLayout::OpenGvLab)?;
        let text = match text_arch {
            TextArch::Qwen2 => parse_qwen2(t, "llm_config", None)?,
            TextArch::InternLm2 => parse_internlm2(t, "llm_config")?,
        };
        let image_size = root["force_image_size"]
            .as_u64()
            .map(|x| x as usize)
            .unwrap_or(vision.image_size);
        let dynamic = root["dynamic_image_size"].as_bool().unwrap_or(true);
        let tiling = TilingConfig {
            image_size: image_size as u32,
            min_tiles: if dynamic {
                root["min_dynamic_patch"].as_u64().unwrap_or(1) as usize
            } else {
                1
            },
            max_tiles: if dynamic {
                root["max_dynamic_patch"].as_u64().unwrap_or(12) as usize
            } else {
                1
            },
            use_thumbnail: root["use_thumbnail"].as_bool().unwrap_or(true),
            ..TilingConfig::default()
        };
        let cfg = ModelConfig {
            layout: CheckpointLayout::OpenGvLab,
            vision,
            text,
            downsample_ratio: root["downsample_ratio"].as_f64().unwrap_or(0.5),
            feature_layer: root["select_layer"].as_i64().unwrap_or(-1),
            tiling,
            image_token_id: None,
            template: root["template"].as_str().map(String::from),
            system_message: root["system_message"].as_str().map(String::from),
            wrapped_lora: WrappedLoraRanks {
                llm: root["use_llm_lora"].as_u64().unwrap_or(0) as usize,
                backbone: root["use_backbone_lora"].as_u64().unwrap_or(0) as usize,
            },
        };
        cfg.validate()
    }

    fn validate(self) -> Result<Self> {
        let v = &self.vision;
        let t = &self.text;
        let fail = |m: String| Err(Error::Checkpoint(m));
        if v.num_heads == 0 || !v.hidden_size.is_multiple_of(v.num_heads) {
            return fail(format!(
                "vision hidden_size {} is not divisible by num_attention_heads {}",
                v.hidden_size, v.num_heads
            ));
        }
        if t.num_kv_heads == 0 || !t.num_heads.is_multiple_of(t.num_kv_heads) {
            return fail(format!(
                "text num_attention_heads {} is not a multiple of num_key_value_heads {}",
                t.num_heads, t.num_kv_heads
            ));
        }
        if !t.head_dim.is_multiple_of(2) {
            return fail(format!(
                "text head_dim {} must be even for rotary embeddings",
                t.head_dim
            ));
        }
        let tile = self.tiling.image_size as usize;
        if v.patch_size == 0 || !tile.is_multiple_of(v.patch_size) {
            return fail(format!(
                "image size {tile} is not a multiple of patch size {}",
                v.patch_size
            ));
        }
        let inv = 1.0 / self.downsample_ratio;
        let grid = tile / v.patch_size;
        if !(inv >= 1.0
            && (inv - inv.round()).abs() < 1e-9
            && grid.is_multiple_of(inv.round() as usize))
        {
            return fail(format!(
                "downsample_ratio {} must be 1/k with k dividing the {grid}x{grid} patch grid",
                self.downsample_ratio
            ));
        }
        let layers = v.num_layers as i64;
        if self.feature_layer < -(layers + 1) || self.feature_layer > layers {
            return fail(format!(
                "vision feature layer {} is outside the {} hidden states",
                self.feature_layer,
                layers + 1
            ));
        }
        if self.tiling.min_tiles == 0 || self.tiling.min_tiles > self.tiling.max_tiles {
            return fail(format!(
                "tiling: min tiles {} / max tiles {} are inconsistent",
                self.tiling.min_tiles, self.tiling.max_tiles
            ));
        }
        Ok(self)
    }
}

/// InternViT's `vision_config`; the two layouts name the bias, QK-norm and final-norm switches
/// differently (HF: `attention_bias`, `use_qk_norm`, `use_mean_pooling`; OpenGVLab: `qkv_bias`,
/// `qk_normalization`, no final norm).
fn parse_vision(v: &Value, layout: CheckpointLayout) -> Result<VisionConfig> {
    check_activation(v["hidden_act"].as_str(), "gelu", "vision_config.hidden_act")?;
    let (qkv_bias, qk_norm, final_layernorm) = match layout {
        CheckpointLayout::HuggingFace => (
            v["attention_bias"].as_bool().unwrap_or(false),
            v["use_qk_norm"].as_bool().unwrap_or(false),
            !v["use_mean_pooling"].as_bool().unwrap_or(true),
        ),
        CheckpointLayout::OpenGvLab => (
            v["qkv_bias"].as_bool().unwrap_or(true),
            v["qk_normalization"].as_bool().unwrap_or(false),
            false,
        ),
    };
    Ok(VisionConfig {
        hidden_size: req_usize(v, "vision_config.hidden_size")?,
        num_layers: req_usize(v, "vision_config.num_hidden_layers")?,
        num_heads: req_usize(v, "vision_config.num_attention_heads")?,
        intermediate_size: req_usize(v, "vision_config.intermediate_size")?,
        image_size: side(&v["image_size"]).unwrap_or(448),
        patch_size: side(&v["patch_size"]).unwrap_or(14),
        qkv_bias,
        qk_norm,
        norm: norm_kind(v["norm_type"].as_str())?,
        norm_eps: v["layer_norm_eps"].as_f64().unwrap_or(1e-6),
        final_layernorm,
    })
}

fn unsupported_llm(name: &str) -> Error {
    Error::Checkpoint(format!(
        "language model {name:?} is not supported (supported: Qwen2 / Qwen2.5 in both layouts, \
         InternLM2 / InternLM2.5 in the OpenGVLab layout)"
    ))
}

/// `448` or `[448, 448]`; non-square values are rejected by returning `None`.
fn side(v: &Value) -> Option<usize> {
    match v {
        Value::Number(n) => n.as_u64().map(|x| x as usize),
        Value::Array(a) if a.len() == 2 && a[0] == a[1] => a[0].as_u64().map(|x| x as usize),
        _ => None,
    }
}

fn norm_kind(s: Option<&str>) -> Result<NormKind> {
    match s {
        None | Some("layer_norm") => Ok(NormKind::LayerNorm),
        Some("rms_norm") => Ok(NormKind::RmsNorm),
        Some(other) => Err(Error::Checkpoint(format!(
            "unknown vision norm_type {other:?}"
        ))),
    }
}

fn read_triplet(v: &Value, out: &mut [f32; 3]) {
    if let Some(a) = v.as_array().filter(|a| a.len() == 3) {
        for (o, x) in out.iter_mut().zip(a) {
            if let Some(x) = x.as_f64() {
                *o = x as f32;
            }
        }
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
