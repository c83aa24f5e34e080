//! Qwen2 / Qwen2.5 tensor names: `embed_tokens`, `layers.N.{input_layernorm,
//! self_attn.{q,k,v,o}_proj, post_attention_layernorm, mlp.{gate,up,down}_proj}`, `norm`, and
//! `lm_head` (or the tied `embed_tokens`). q/k/v carry a bias, `o_proj` does not.

use candle_core::Result;
use candle_nn::VarBuilder;

use super::config::TextConfig;
use super::{Attention, DecoderWeights, Layer};
use crate::nn::layers::NormKind;
use crate::nn::layers::{Linear, Norm};

pub(super) fn load(cfg: &TextConfig, vb: VarBuilder, head: VarBuilder) -> Result<DecoderWeights> {
    let (hidden, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
    let embed_tokens = vb.get((cfg.vocab_size, hidden), "embed_tokens.weight")?;
    let layers = (0..cfg.num_layers)
        .map(|i| layer(cfg, vb.pp("layers").pp(i)))
        .collect::<Result<Vec<_>>>()?;
    let norm = Norm::load(NormKind::RmsNorm, hidden, eps, vb.pp("norm"))?;
    let lm_head = if head.contains_tensor("weight") || !cfg.tie_word_embeddings {
        head.get((cfg.vocab_size, hidden), "weight")?
    } else {
        embed_tokens.clone()
    };
    Ok(DecoderWeights {
        embed_tokens,
        layers,
        norm,
        lm_head,
    })
}

fn layer(cfg: &TextConfig, vb: VarBuilder) -> Result<Layer> {
    let (h, i, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.rms_norm_eps);
    let (heads, d, kv) = (cfg.num_heads, cfg.head_dim, cfg.num_kv_heads);
    let bias = cfg.attention_bias;
    let a = vb.pp("self_attn");
    Ok(Layer {
        attn_norm: Norm::load(NormKind::RmsNorm, h, eps, vb.pp("input_layernorm"))?,
        attn: Attention {
            q: Linear::load(h, heads * d, bias, a.pp("q_proj"))?,
            k: Linear::load(h, kv * d, bias, a.pp("k_proj"))?,
            v: Linear::load(h, kv * d, bias, a.pp("v_proj"))?,
            o: Linear::load(heads * d, h, false, a.pp("o_proj"))?,
            heads,
            kv_heads: kv,
            head_dim: d,
        },
        mlp_norm: Norm::load(NormKind::RmsNorm, h, eps, vb.pp("post_attention_layernorm"))?,
        gate: Linear::load(h, i, false, vb.pp("mlp.gate_proj"))?,
        up: Linear::load(h, i, false, vb.pp("mlp.up_proj"))?,
        down: Linear::load(i, h, false, vb.pp("mlp.down_proj"))?,
    })
}
