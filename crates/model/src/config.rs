//! Checkpoint configuration: both InternVL layouts parsed into one [`ModelConfig`].
//!
//! - Hugging Face layout (`InternVLForConditionalGeneration`, the `-hf` checkpoints):
//!   `vision_config` + `text_config`, tiling settings in `preprocessor_config.json`.
//! - OpenGVLab's original layout (`InternVLChatModel`): `vision_config` + `llm_config`,
//!   `select_layer`, `downsample_ratio`, `ps_version`, tiling settings in `config.json`.

use serde_json::Value;

use crate::error::{Error, Result};
use crate::image::TilingConfig;

/// Which tensor naming / config convention a checkpoint uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Layout {
    /// `InternVLForConditionalGeneration` (transformers' native InternVL).
    HuggingFace,
    /// `InternVLChatModel` (OpenGVLab's remote-code checkpoints).
    OpenGvLab,
}

/// Normalisation layer used in the vision tower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormKind {
    /// LayerNorm with weight and bias (InternViT-300M).
    LayerNorm,
    /// RMSNorm with weight only (InternViT-6B).
    RmsNorm,
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

/// Language-model family: same decoder math, different tensor names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum TextArch {
    /// Qwen2 / Qwen2.5 (`Qwen2ForCausalLM`): separate q/k/v with bias, `lm_head`.
    Qwen2,
    /// InternLM2 / InternLM2.5 (`InternLM2ForCausalLM`): fused `wqkv`, `output` head.
    InternLm2,
}

/// Rotary position-embedding scaling (`rope_scaling` in the language model's config).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Positions divided by `factor` (`{"type": "linear"}`).
    Linear {
        /// Divisor of the positions.
        factor: f64,
    },
    /// Dynamic NTK (`{"type": "dynamic"}`, InternLM2 and Qwen2): for a sequence of `len` tokens
    /// longer than `original_max_position_embeddings`, the rotary base becomes
    /// `base * (factor * len / max - (factor - 1)) ^ (d / (d - 2))`; shorter sequences are
    /// unchanged. `len` is each sequence's own length, so a score never depends on its batch or
    /// on earlier requests (transformers takes the batch's longest sequence and keeps a grown
    /// base until a sequence shorter than `max` arrives; a fresh model scoring one item at a time
    /// gives the same numbers as this).
    Dynamic {
        /// Scaling factor.
        factor: f64,
        /// The config's `max_position_embeddings` (the trained length).
        original_max_position_embeddings: usize,
    },
}

/// Decoder (Qwen2 or InternLM2) hyper-parameters.
#[derive(Debug, Clone)]
pub struct TextConfig {
    /// Model family (tensor names).
    pub arch: TextArch,
    /// Residual width.
    pub hidden_size: usize,
    /// Decoder blocks.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (GQA when fewer than query heads).
    pub num_kv_heads: usize,
    /// Per-head width.
    pub head_dim: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Rows of the embedding / output head.
    pub vocab_size: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Rotary base.
    pub rope_theta: f64,
    /// Rotary scaling.
    pub rope_scaling: RopeScaling,
    /// Longest sequence the model supports: the config's `max_position_embeddings`, times the
    /// factor when rotary scaling extends the context.
    pub max_position_embeddings: usize,
    /// Whether the q/k/v (and, for InternLM2, output) projections carry a bias.
    pub attention_bias: bool,
    /// Whether the output head reuses the input embedding when the checkpoint has no head.
    pub tie_word_embeddings: bool,
}

/// Everything needed to build the model and its preprocessing, whatever the layout.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// Checkpoint layout.
    pub layout: Layout,
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
    /// OpenGVLab layout: `system_message`, overriding the template's own when set.
    pub system_message: Option<String>,
}

impl ModelConfig {
    /// Parses `config.json` (and, for the HF layout, the optional `preprocessor_config.json`).
    pub fn parse(config_json: &str, preprocessor_json: Option<&str>) -> Result<Self> {
        let root: Value = serde_json::from_str(config_json)
            .map_err(|e| Error::Checkpoint(format!("config.json is not valid JSON: {e}")))?;
        let arch = root["architectures"][0].as_str().unwrap_or("");
        let model_type = root["model_type"].as_str().unwrap_or("");
        if arch == "InternVLChatModel" || model_type == "internvl_chat" {
            Self::parse_opengvlab(&root)
        } else if arch == "InternVLForConditionalGeneration" || model_type == "internvl" {
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
        let vision = parse_vision(v, Layout::HuggingFace)?;
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
            layout: Layout::HuggingFace,
            vision,
            text,
            downsample_ratio: root["downsample_ratio"].as_f64().unwrap_or(0.5),
            feature_layer,
            tiling,
            image_token_id: root["image_token_id"].as_u64().map(|x| x as u32),
            template: None,
            system_message: None,
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
        let vision = parse_vision(v, Layout::OpenGvLab)?;
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
            layout: Layout::OpenGvLab,
            vision,
            text,
            downsample_ratio: root["downsample_ratio"].as_f64().unwrap_or(0.5),
            feature_layer: root["select_layer"].as_i64().unwrap_or(-1),
            tiling,
            image_token_id: None,
            template: root["template"].as_str().map(String::from),
            system_message: root["system_message"].as_str().map(String::from),
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
fn parse_vision(v: &Value, layout: Layout) -> Result<VisionConfig> {
    check_activation(v["hidden_act"].as_str(), "gelu", "vision_config.hidden_act")?;
    let (qkv_bias, qk_norm, final_layernorm) = match layout {
        Layout::HuggingFace => (
            v["attention_bias"].as_bool().unwrap_or(false),
            v["use_qk_norm"].as_bool().unwrap_or(false),
            !v["use_mean_pooling"].as_bool().unwrap_or(true),
        ),
        Layout::OpenGvLab => (
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

/// The fields every decoder config spells the same way (Qwen2 and InternLM2), with the
/// activation check both share.
struct DecoderShape {
    hidden_size: usize,
    num_layers: usize,
    num_heads: usize,
    num_kv_heads: usize,
    intermediate_size: usize,
    vocab_size: usize,
    rms_norm_eps: f64,
}

impl DecoderShape {
    fn parse(t: &Value, section: &str) -> Result<Self> {
        let num_heads = req_usize(t, &format!("{section}.num_attention_heads"))?;
        check_activation(
            t["hidden_act"].as_str(),
            "silu",
            &format!("{section}.hidden_act"),
        )?;
        Ok(DecoderShape {
            hidden_size: req_usize(t, &format!("{section}.hidden_size"))?,
            num_layers: req_usize(t, &format!("{section}.num_hidden_layers"))?,
            num_heads,
            num_kv_heads: t["num_key_value_heads"]
                .as_u64()
                .map(|x| x as usize)
                .unwrap_or(num_heads),
            intermediate_size: req_usize(t, &format!("{section}.intermediate_size"))?,
            vocab_size: req_usize(t, &format!("{section}.vocab_size"))?,
            rms_norm_eps: t["rms_norm_eps"].as_f64().unwrap_or(1e-6),
        })
    }
}

fn parse_qwen2(t: &Value, section: &str, tie_default: Option<bool>) -> Result<TextConfig> {
    let shape = DecoderShape::parse(t, section)?;
    let rope_params = &t["rope_parameters"];
    let rope_theta = t["rope_theta"]
        .as_f64()
        .or(rope_params["rope_theta"].as_f64())
        .unwrap_or(10_000.0);
    let max_pos = t["max_position_embeddings"].as_u64().unwrap_or(32_768) as usize;
    let (rope_scaling, context) = parse_rope_scaling(t, section, max_pos)?;
    if t["use_sliding_window"].as_bool() == Some(true) {
        return Err(Error::Checkpoint(format!(
            "{section}.use_sliding_window is not supported"
        )));
    }
    Ok(TextConfig {
        head_dim: t["head_dim"]
            .as_u64()
            .map(|x| x as usize)
            .unwrap_or(shape.hidden_size / shape.num_heads.max(1)),
        hidden_size: shape.hidden_size,
        num_layers: shape.num_layers,
        num_heads: shape.num_heads,
        num_kv_heads: shape.num_kv_heads,
        intermediate_size: shape.intermediate_size,
        vocab_size: shape.vocab_size,
        rms_norm_eps: shape.rms_norm_eps,
        rope_theta,
        rope_scaling,
        max_position_embeddings: context,
        attention_bias: true,
        tie_word_embeddings: t["tie_word_embeddings"]
            .as_bool()
            .or(tie_default)
            .unwrap_or(false),
        arch: TextArch::Qwen2,
    })
}

/// `InternLM2Config` (OpenGVLab's `configuration_internlm2.py`): head_dim = hidden / heads,
/// `bias` on `wqkv`/`wo`, `rope_scaling` `{"type": "dynamic" | "linear", "factor": f}`.
fn parse_internlm2(t: &Value, section: &str) -> Result<TextConfig> {
    let shape = DecoderShape::parse(t, section)?;
    let (hidden_size, num_heads) = (shape.hidden_size, shape.num_heads);
    if num_heads == 0 || !hidden_size.is_multiple_of(num_heads) {
        return Err(Error::Checkpoint(format!(
            "{section}.hidden_size {hidden_size} is not divisible by num_attention_heads {num_heads}"
        )));
    }
    let max_pos = t["max_position_embeddings"].as_u64().unwrap_or(2048) as usize;
    let (rope_scaling, context) = parse_rope_scaling(t, section, max_pos)?;
    Ok(TextConfig {
        arch: TextArch::InternLm2,
        head_dim: hidden_size / num_heads,
        hidden_size,
        num_layers: shape.num_layers,
        num_heads,
        num_kv_heads: shape.num_kv_heads,
        intermediate_size: shape.intermediate_size,
        vocab_size: shape.vocab_size,
        rms_norm_eps: shape.rms_norm_eps,
        rope_theta: t["rope_theta"].as_f64().unwrap_or(10_000.0),
        rope_scaling,
        max_position_embeddings: context,
        attention_bias: t["bias"].as_bool().unwrap_or(true),
        tie_word_embeddings: false,
    })
}

/// `rope_scaling` (`type` or `rope_type`) or transformers 5's `rope_parameters`, for both
/// decoders: `dynamic` (NTK: InternLM2's `InternLM2DynamicNTKScalingRotaryEmbedding` and
/// transformers' `_compute_dynamic_ntk_parameters`, the same rule) and `linear`; plain RoPE for
/// none / `default`. Returns the scaling and the accepted context (`max_pos * factor` when scaled).
fn parse_rope_scaling(t: &Value, section: &str, max_pos: usize) -> Result<(RopeScaling, usize)> {
    let scaling = t
        .get("rope_scaling")
        .filter(|s| !s.is_null())
        .or_else(|| t.get("rope_parameters").filter(|s| !s.is_null()));
    let Some(scaling) = scaling else {
        return Ok((RopeScaling::None, max_pos));
    };
    let kind = scaling["rope_type"].as_str().or(scaling["type"].as_str());
    if matches!(kind, None | Some("default")) {
        return Ok((RopeScaling::None, max_pos));
    }
    let factor = scaling["factor"].as_f64().ok_or_else(|| {
        Error::Checkpoint(format!("{section}.rope_scaling has no numeric factor"))
    })?;
    if !(factor >= 1.0 && factor.is_finite()) {
        return Err(Error::Checkpoint(format!(
            "{section}.rope_scaling factor {factor} must be >= 1"
        )));
    }
    let context = (max_pos as f64 * factor) as usize;
    match kind {
        Some("dynamic") => Ok((
            RopeScaling::Dynamic {
                factor,
                original_max_position_embeddings: max_pos,
            },
            context,
        )),
        Some("linear") => Ok((RopeScaling::Linear { factor }, context)),
        other => Err(Error::Checkpoint(format!(
            "{section}.rope_scaling type {other:?} is not supported (supported: \"dynamic\", \"linear\")"
        ))),
    }
}

fn unsupported_llm(name: &str) -> Error {
    Error::Checkpoint(format!(
        "language model {name:?} is not supported (supported: Qwen2 / Qwen2.5 in both layouts, \
         InternLM2 / InternLM2.5 in the OpenGVLab layout)"
    ))
}

fn req_usize(v: &Value, name: &str) -> Result<usize> {
    let key = name.rsplit('.').next().unwrap_or(name);
    v[key]
        .as_u64()
        .map(|x| x as usize)
        .ok_or_else(|| Error::Checkpoint(format!("config.json: missing or non-integer {name}")))
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

fn check_activation(found: Option<&str>, expected: &str, name: &str) -> Result<()> {
    match found {
        None => Ok(()),
        Some(a) if a == expected => Ok(()),
        Some(a) => Err(Error::Checkpoint(format!(
            "{name} {a:?} is not supported (expected {expected:?})"
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
