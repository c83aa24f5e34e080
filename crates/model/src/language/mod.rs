//! Qwen2 decoder over a *packed* batch: the sequences of a batch are concatenated into one
//! (tokens, hidden) matrix with per-token positions; attention is causal and never crosses a
//! sequence boundary; GQA groups query heads over their shared K/V head without repeating K/V.
//! The output head is applied only at each sequence's last position.
//!
//! Names mirror the checkpoint: `embed_tokens`, `layers.N.{input_layernorm,
//! self_attn.{q,k,v,o}_proj, post_attention_layernorm, mlp.{gate,up,down}_proj}`, `norm`,
//! and `lm_head` (or the tied `embed_tokens`).

use std::collections::HashMap;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::config::{NormKind, TextConfig};
use crate::layers::{Linear, Norm};

/// Token layout of a packed batch.
#[derive(Debug, Clone)]
pub struct Packing {
    /// Length of each sequence, in order.
    pub seq_lens: Vec<usize>,
}

impl Packing {
    /// Total tokens.
    pub fn total(&self) -> usize {
        self.seq_lens.iter().sum()
    }

    /// Index of each sequence's last token in the packed order.
    pub fn last_positions(&self) -> Vec<u32> {
        let mut end = 0usize;
        self.seq_lens
            .iter()
            .map(|l| {
                end += l;
                (end - 1) as u32
            })
            .collect()
    }

    /// Position id of every token (0..len for each sequence).
    pub fn positions(&self) -> Vec<u32> {
        self.seq_lens.iter().flat_map(|&l| 0..l as u32).collect()
    }
}

/// Per-batch tensors shared by every layer: rotary tables and causal masks.
struct BatchContext {
    cos: Tensor,
    sin: Tensor,
    masks: HashMap<usize, Tensor>,
}

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(cfg: &TextConfig, vb: VarBuilder) -> Result<Self> {
        let (h, d, kv) = (cfg.num_heads, cfg.head_dim, cfg.num_kv_heads);
        Ok(Attention {
            q: Linear::load(cfg.hidden_size, h * d, true, vb.pp("q_proj"))?,
            k: Linear::load(cfg.hidden_size, kv * d, true, vb.pp("k_proj"))?,
            v: Linear::load(cfg.hidden_size, kv * d, true, vb.pp("v_proj"))?,
            o: Linear::load(h * d, cfg.hidden_size, false, vb.pp("o_proj"))?,
            heads: h,
            kv_heads: kv,
            head_dim: d,
        })
    }

    fn forward(&self, xs: &Tensor, packing: &Packing, ctx: &BatchContext) -> Result<Tensor> {
        let t = xs.dim(0)?;
        let d = self.head_dim;
        // (T, heads*d) -> (1, heads, T, d), the layout candle's rope kernel expects.
        let to_heads = |x: Tensor, n: usize| -> Result<Tensor> {
            x.reshape((t, n, d))?
                .transpose(0, 1)?
                .unsqueeze(0)?
                .contiguous()
        };
        let q = to_heads(self.q.forward(xs)?, self.heads)?;
        let k = to_heads(self.k.forward(xs)?, self.kv_heads)?;
        let v = to_heads(self.v.forward(xs)?, self.kv_heads)?;
        let q = candle_nn::rotary_emb::rope(&q, &ctx.cos, &ctx.sin)?;
        let k = candle_nn::rotary_emb::rope(&k, &ctx.cos, &ctx.sin)?;
        let (q, k, v) = (q.squeeze(0)?, k.squeeze(0)?, v.squeeze(0)?);

        let group = self.heads / self.kv_heads;
        let scale = (d as f64).powf(-0.5);
        let mut outputs = Vec::with_capacity(packing.seq_lens.len());
        let mut start = 0;
        for &len in &packing.seq_lens {
            // Query heads h = kv*group + j share K/V head kv: view them as (kv, group*len, d).
            let qs =
                q.narrow(1, start, len)?
                    .contiguous()?
                    .reshape((self.kv_heads, group * len, d))?;
            let ks = k.narrow(1, start, len)?.contiguous()?;
            let vs = v.narrow(1, start, len)?.contiguous()?;
            let scores =
                (qs.matmul(&ks.t()?)? * scale)?.reshape((self.kv_heads, group, len, len))?;
            let mask = ctx.masks.get(&len).ok_or_else(|| {
                candle_core::Error::Msg(format!("no causal mask for length {len}"))
            })?;
            let probs = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(mask)?)?;
            let out = probs
                .reshape((self.kv_heads, group * len, len))?
                .matmul(&vs)?
                .reshape((self.heads, len, d))?;
            outputs.push(out);
            start += len;
        }
        let out = Tensor::cat(&outputs, 1)?
            .transpose(0, 1)?
            .reshape((t, self.heads * d))?;
        self.o.forward(&out)
    }
}

struct Layer {
    input_layernorm: Norm,
    self_attn: Attention,
    post_attention_layernorm: Norm,
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Layer {
    fn load(cfg: &TextConfig, vb: VarBuilder) -> Result<Self> {
        let (h, i, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.rms_norm_eps);
        Ok(Layer {
            input_layernorm: Norm::load(NormKind::RmsNorm, h, eps, vb.pp("input_layernorm"))?,
            self_attn: Attention::load(cfg, vb.pp("self_attn"))?,
            post_attention_layernorm: Norm::load(
                NormKind::RmsNorm,
                h,
                eps,
                vb.pp("post_attention_layernorm"),
            )?,
            gate_proj: Linear::load(h, i, false, vb.pp("mlp.gate_proj"))?,
            up_proj: Linear::load(h, i, false, vb.pp("mlp.up_proj"))?,
            down_proj: Linear::load(i, h, false, vb.pp("mlp.down_proj"))?,
        })
    }

    fn forward(&self, xs: &Tensor, packing: &Packing, ctx: &BatchContext) -> Result<Tensor> {
        let attn = self
            .self_attn
            .forward(&self.input_layernorm.forward(xs)?, packing, ctx)?;
        let xs = (xs + attn)?;
        let h = self.post_attention_layernorm.forward(&xs)?;
        let mlp =
            (candle_nn::ops::silu(&self.gate_proj.forward(&h)?)? * self.up_proj.forward(&h)?)?;
        xs + self.down_proj.forward(&mlp)?
    }
}

/// The Qwen2 language model with its output head.
pub struct LanguageModel {
    embed_tokens: Tensor,
    layers: Vec<Layer>,
    norm: Norm,
    lm_head: Tensor,
    inv_freq: Vec<f32>,
    device: Device,
    dtype: DType,
}

impl LanguageModel {
    /// Loads the decoder from `vb` (the `model` prefix) and the head from `head` (the `lm_head`
    /// prefix); without an `lm_head.weight`, a tied checkpoint reuses `embed_tokens`.
    pub fn load(cfg: &TextConfig, vb: VarBuilder, head: VarBuilder) -> Result<Self> {
        let embed_tokens = vb.get((cfg.vocab_size, cfg.hidden_size), "embed_tokens.weight")?;
        let layers = (0..cfg.num_layers)
            .map(|i| Layer::load(cfg, vb.pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let norm = Norm::load(
            NormKind::RmsNorm,
            cfg.hidden_size,
            cfg.rms_norm_eps,
            vb.pp("norm"),
        )?;
        let lm_head = if head.contains_tensor("weight") || !cfg.tie_word_embeddings {
            head.get((cfg.vocab_size, cfg.hidden_size), "weight")?
        } else {
            embed_tokens.clone()
        };
        // Same float32 arithmetic as transformers' default rotary embedding.
        let d = cfg.head_dim;
        let inv_freq = (0..d / 2)
            .map(|i| 1.0f32 / (cfg.rope_theta as f32).powf((2 * i) as f32 / d as f32))
            .collect();
        Ok(LanguageModel {
            device: embed_tokens.device().clone(),
            dtype: embed_tokens.dtype(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            inv_freq,
        })
    }

    /// Embeddings of `ids` (a u32 tensor of shape (T,)).
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        self.embed_tokens.index_select(ids, 0)
    }

    /// Runs the decoder over packed `embeds` (T, H) and returns the final-normed hidden state at
    /// each sequence's last token, (num_sequences, H).
    pub fn forward_last(&self, embeds: &Tensor, packing: &Packing) -> Result<Tensor> {
        let ctx = self.batch_context(packing)?;
        let mut xs = embeds.clone();
        for layer in &self.layers {
            xs = layer.forward(&xs, packing, &ctx)?;
        }
        let last = Tensor::new(packing.last_positions(), &self.device)?;
        self.norm.forward(&xs.index_select(&last, 0)?)
    }

    /// Output-head logits (rows, vocab) in f32 for final hidden states (rows, H).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        hidden.matmul(&self.lm_head.t()?)?.to_dtype(DType::F32)
    }

    fn batch_context(&self, packing: &Packing) -> Result<BatchContext> {
        let positions = packing.positions();
        let half = self.inv_freq.len();
        let mut freqs = Vec::with_capacity(positions.len() * half);
        for &p in &positions {
            freqs.extend(self.inv_freq.iter().map(|f| p as f32 * f));
        }
        let freqs = Tensor::from_vec(freqs, (positions.len(), half), &self.device)?;
        let cos = freqs.cos()?.to_dtype(self.dtype)?;
        let sin = freqs.sin()?.to_dtype(self.dtype)?;
        let mut masks = HashMap::new();
        for &len in &packing.seq_lens {
            if let std::collections::hash_map::Entry::Vacant(e) = masks.entry(len) {
                let mask: Vec<f32> = (0..len)
                    .flat_map(|i| {
                        (0..len).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 })
                    })
                    .collect();
                e.insert(Tensor::from_vec(mask, (len, len), &self.device)?.to_dtype(self.dtype)?);
            }
        }
        Ok(BatchContext { cos, sin, masks })
    }
}
