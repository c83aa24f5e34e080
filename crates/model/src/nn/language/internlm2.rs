//! InternLM2 / InternLM2.5 tensor names (OpenGVLab's and InternLM's `modeling_internlm2.py`):
//! `tok_embeddings`, `layers.N.{attention_norm, attention.wqkv, attention.wo, ffn_norm,
//! feed_forward.{w1,w3,w2}}`, `norm`, and the untied head `output` next to `model`.
//!
//! `wqkv` fuses q/k/v per KV group: its rows are laid out as
//! (kv_heads, q_per_kv + 2, head_dim) — the group's query heads, then its key head, then its
//! value head. It is split here into q/k/v projections whose head order (query head
//! `kv * q_per_kv + j` uses K/V head `kv`) is the one the shared decoder's GQA expects.
//! `w1` is the gate, `w3` the up and `w2` the down projection (never a bias); `wqkv` and `wo`
//! carry a bias when `config.bias` is true.

use candle_core::Result;
use candle_nn::VarBuilder;

use super::config::TextConfig;
use super::{Attention, DecoderWeights, Layer};
use crate::nn::layers::NormKind;
use crate::nn::layers::{Linear, Norm, RowBlock, WeightSource};

pub(super) fn load(cfg: &TextConfig, vb: VarBuilder, head: VarBuilder) -> Result<DecoderWeights> {
    let (hidden, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
    let embed_tokens = vb.get((cfg.vocab_size, hidden), "tok_embeddings.weight")?;
    let layers = (0..cfg.num_layers)
        .map(|i| layer(cfg, vb.pp("layers").pp(i)))
        .collect::<Result<Vec<_>>>()?;
    let norm = Norm::load(NormKind::RmsNorm, hidden, eps, vb.pp("norm"))?;
    let lm_head = output_head(&head).get((cfg.vocab_size, hidden), "weight")?;
    Ok(DecoderWeights {
        embed_tokens,
        layers,
        norm,
        lm_head,
    })
}

/// The caller passes the Qwen2-style `…lm_head` prefix; InternLM2 keeps its head in `…output`.
fn output_head<'a>(head: &VarBuilder<'a>) -> VarBuilder<'a> {
    if head.contains_tensor("weight") {
        return head.clone();
    }
    let prefix = head.prefix();
    match prefix.strip_suffix("lm_head") {
        Some(parent) => head.set_prefix(format!("{parent}output")),
        None => head.clone(),
    }
}

fn layer(cfg: &TextConfig, vb: VarBuilder) -> Result<Layer> {
    let (h, i, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.rms_norm_eps);
    let (heads, d, kv) = (cfg.num_heads, cfg.head_dim, cfg.num_kv_heads);
    let group = heads / kv;
    let bias = cfg.attention_bias;
    let a = vb.pp("attention");
    let wqkv = a.pp("wqkv");
    let rows = (heads + 2 * kv) * d;
    let w = wqkv
        .get((rows, h), "weight")?
        .reshape((kv, group + 2, d, h))?;
    let b = if bias {
        Some(wqkv.get(rows, "bias")?.reshape((kv, group + 2, d))?)
    } else {
        None
    };
    // Slots [0, group) of each KV group are its query heads, `group` its key, `group + 1` its value.
    let split = |start: usize, n: usize| -> Result<Linear> {
        let weight = w
            .narrow(1, start, n)?
            .contiguous()?
            .reshape((kv * n * d, h))?;
        let bias = match &b {
            Some(b) => Some(b.narrow(1, start, n)?.contiguous()?.reshape(kv * n * d)?),
            None => None,
        };
        let source = WeightSource {
            tensor: format!("{}.weight", wqkv.prefix()),
            rows: Some(RowBlock {
                groups: kv,
                slots: group + 2,
                width: d,
                start,
                len: n,
            }),
        };
        Ok(Linear::from_parts(weight, bias, Some(source)))
    };
    let (q, k, v): (Linear, Linear, Linear) =
        (split(0, group)?, split(group, 1)?, split(group + 1, 1)?);
    Ok(Layer {
        attn_norm: Norm::load(NormKind::RmsNorm, h, eps, vb.pp("attention_norm"))?,
        attn: Attention {
            q,
            k,
            v,
            o: Linear::load(heads * d, h, bias, a.pp("wo"))?,
            heads,
            kv_heads: kv,
            head_dim: d,
        },
        mlp_norm: Norm::load(NormKind::RmsNorm, h, eps, vb.pp("ffn_norm"))?,
        // The MLP never has a bias (`InternLM2MLP`), whatever `config.bias` says.
        gate: Linear::load(h, i, false, vb.pp("feed_forward.w1"))?,
        up: Linear::load(h, i, false, vb.pp("feed_forward.w3"))?,
        down: Linear::load(i, h, false, vb.pp("feed_forward.w2"))?,
    })
}
