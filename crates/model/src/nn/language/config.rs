//! Decoder configuration shared by every family: Qwen2 / Qwen2.5 and InternLM2 / InternLM2.5,
//! read from the language model's section of `config.json` (`text_config`, `llm_config`).

use serde_json::Value;

use crate::error::{Error, Result};

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

pub(crate) fn parse_qwen2(
    t: &Value,
    section: &str,
    tie_default: Option<bool>,
) -> Result<TextConfig> {
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
pub(crate) fn parse_internlm2(t: &Value, section: &str) -> Result<TextConfig> {
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

/// A required integer field, named in the error by its full path.
pub(crate) fn req_usize(v: &Value, name: &str) -> Result<usize> {
    let key = name.rsplit('.').next().unwrap_or(name);
    v[key]
        .as_u64()
        .map(|x| x as usize)
        .ok_or_else(|| Error::Checkpoint(format!("config.json: missing or non-integer {name}")))
}

/// Accepts a missing activation or the expected one.
pub(crate) fn check_activation(found: Option<&str>, expected: &str, name: &str) -> Result<()> {
    match found {
        None => Ok(()),
        Some(a) if a == expected => Ok(()),
        Some(a) => Err(Error::Checkpoint(format!(
            "{name} {a:?} is not supported (expected {expected:?})"
        ))),
    }
}
