//! The decoder-only language model over a *packed* batch: the sequences of a batch are
//! concatenated into one (tokens, hidden) matrix with per-token positions; attention is causal
//! and never crosses a sequence boundary; GQA groups query heads over their shared K/V head
//! without repeating K/V. The output head is applied only at each sequence's last position.
//!
//! Qwen2 and InternLM2 are the same math (pre-norm RMSNorm blocks, rotary attention with GQA,
//! SiLU-gated MLP, final RMSNorm, output head); they differ in tensor names, fused q/k/v, q/k/v
//! bias and rotary scaling. One decoder here, one weight loader per family:
//! `qwen2` (`embed_tokens`, `self_attn.{q,k,v,o}_proj`, `mlp.{gate,up,down}_proj`, `lm_head`)
//! and `internlm2` (`tok_embeddings`, fused `attention.wqkv`, `attention.wo`,
//! `feed_forward.w{1,2,3}`, `output`).

mod attention;
mod backward;
pub mod config;
mod decode;
mod internlm2;
mod qwen2;

use std::collections::BTreeSet;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::nn::layers::{Linear, Norm};
pub use crate::nn::lora::LoraLookup;
use crate::nn::lora::{attach_each, AdapterRows};
use attention::{packed_attention, Masks};
pub use backward::GradTape;
use config::{RopeScaling, TextArch, TextConfig};
pub use decode::KvCache;

/// One run of tokens in the packed batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Tokens in this segment.
    pub len: usize,
    /// Position id of its first token (a suffix continues after its prefix).
    pub position_offset: usize,
    /// Index of the shared-prefix segment whose keys/values this segment also attends to.
    pub context: Option<usize>,
}

impl Segment {
    /// The packed row where each of `segments` starts (a prefix sum of their lengths).
    pub fn starts(segments: &[Segment]) -> Vec<usize> {
        segments
            .iter()
            .scan(0, |acc, s| {
                let start = *acc;
                *acc += s.len;
                Some(start)
            })
            .collect()
    }
}

/// Token layout of a packed batch: segments (whole sequences, shared prefixes, and suffixes
/// that continue a prefix) and the packed rows whose hidden states are returned.
#[derive(Debug, Clone)]
pub struct Packing {
    /// Segments in packed order.
    pub segments: Vec<Segment>,
    /// Packed index of each output row (each item's last token), in item order.
    pub outputs: Vec<usize>,
    /// The adapter slot of each segment (empty: every segment uses the base weights).
    pub adapters: Vec<Option<usize>>,
}

impl Packing {
    /// Plain packing of independent sequences of the given lengths.
    pub fn sequences(lens: &[usize]) -> Self {
        let mut end = 0;
        Packing {
            segments: lens
                .iter()
                .map(|&len| Segment {
                    len,
                    position_offset: 0,
                    context: None,
                })
                .collect(),
            outputs: lens
                .iter()
                .map(|l| {
                    end += l;
                    end - 1
                })
                .collect(),
            adapters: Vec::new(),
        }
    }

    /// The adapter slot of segment `i`.
    pub fn adapter(&self, i: usize) -> Option<usize> {
        self.adapters.get(i).copied().flatten()
    }

    /// Total packed tokens.
    pub fn total(&self) -> usize {
        self.segments.iter().map(|s| s.len).sum()
    }

    /// Position id of every packed token.
    pub fn positions(&self) -> Vec<u32> {
        self.segments
            .iter()
            .flat_map(|s| (s.position_offset..s.position_offset + s.len).map(|p| p as u32))
            .collect()
    }
}

/// Per-batch tensors shared by every layer: rotary tables, attention masks, and which rows
/// use which adapter.
struct BatchContext {
    cos: Tensor,
    sin: Tensor,
    masks: Masks,
    adapters: AdapterRows,
}

/// Self-attention with separate q/k/v projections (fused checkpoints are split at load).
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
    /// Attention over the packed batch; pushes this layer's rotated (K, V), each
    /// (kv_heads, T, d), to `kv_out` when given (prefill for decoding).
    fn forward(
        &self,
        xs: &Tensor,
        packing: &Packing,
        ctx: &BatchContext,
        kv_out: Option<&mut Vec<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let t = xs.dim(0)?;
        let d = self.head_dim;
        // (T, heads*d) -> (1, heads, T, d), the layout candle's rope kernel expects.
        let to_heads = |x: Tensor, n: usize| -> Result<Tensor> {
            x.reshape((t, n, d))?
                .transpose(0, 1)?
                .unsqueeze(0)?
                .contiguous()
        };
        let rows = &ctx.adapters;
        let q = to_heads(self.q.forward_rows(xs, rows)?, self.heads)?;
        let k = to_heads(self.k.forward_rows(xs, rows)?, self.kv_heads)?;
        let v = to_heads(self.v.forward_rows(xs, rows)?, self.kv_heads)?;
        let q = candle_nn::rotary_emb::rope(&q, &ctx.cos, &ctx.sin)?;
        let k = candle_nn::rotary_emb::rope(&k, &ctx.cos, &ctx.sin)?;
        let (q, k, v) = (q.squeeze(0)?, k.squeeze(0)?, v.squeeze(0)?);

        let out = packed_attention(&q, &k, &v, &packing.segments, &ctx.masks)?
            .transpose(0, 1)?
            .reshape((t, self.heads * d))?;
        if let Some(kv) = kv_out {
            kv.push((k, v));
        }
        self.o.forward_rows(&out, rows)
    }
}

/// One pre-norm decoder block: `x + attn(norm(x))`, then `x + down(silu(gate(h)) * up(h))`.
struct Layer {
    attn_norm: Norm,
    attn: Attention,
    mlp_norm: Norm,
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Layer {
    fn forward(
        &self,
        xs: &Tensor,
        packing: &Packing,
        ctx: &BatchContext,
        kv_out: Option<&mut Vec<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let attn = self
            .attn
            .forward(&self.attn_norm.forward(xs)?, packing, ctx, kv_out)?;
        self.mlp_residual(&(xs + attn)?, &ctx.adapters)
    }

    /// `x + down(silu(gate(h)) * up(h))` with `h = norm(x)`, each row with its adapter.
    fn mlp_residual(&self, xs: &Tensor, rows: &AdapterRows) -> Result<Tensor> {
        let h = self.mlp_norm.forward(xs)?;
        let mlp = (candle_nn::ops::silu(&self.gate.forward_rows(&h, rows)?)?
            * self.up.forward_rows(&h, rows)?)?;
        xs + self.down.forward_rows(&mlp, rows)?
    }
}

/// What a weight loader hands to [`LanguageModel`]: the tensors in the decoder's own terms.
struct DecoderWeights {
    embed_tokens: Tensor,
    layers: Vec<Layer>,
    norm: Norm,
    lm_head: Tensor,
}

/// The language model (Qwen2 or InternLM2) with its output head.
pub struct LanguageModel {
    embed_tokens: Tensor,
    layers: Vec<Layer>,
    norm: Norm,
    lm_head: Tensor,
    rope: Rope,
    device: Device,
    dtype: DType,
}

impl LanguageModel {
    /// Loads the decoder from `vb` (the `model` prefix, e.g. `language_model.model`) and the head
    /// from `head` (the `lm_head` prefix). Qwen2: without an `lm_head.weight`, a tied checkpoint
    /// reuses `embed_tokens`. InternLM2: the head is the sibling `output` of the `lm_head` prefix
    /// (`language_model.output`), never tied.
    pub fn load(cfg: &TextConfig, vb: VarBuilder, head: VarBuilder) -> Result<Self> {
        let w = match cfg.arch {
            TextArch::Qwen2 => qwen2::load(cfg, vb, head)?,
            TextArch::InternLm2 => internlm2::load(cfg, vb, head)?,
        };
        Ok(LanguageModel {
            device: w.embed_tokens.device().clone(),
            dtype: w.embed_tokens.dtype(),
            rope: Rope::new(cfg),
            embed_tokens: w.embed_tokens,
            layers: w.layers,
            norm: w.norm,
            lm_head: w.lm_head,
        })
    }

    /// Attaches an adapter's LoRA modules to the decoder's linear layers as slot `slot`:
    /// `parts(name)` gives the `(lora_A, lora_B, scale)` of the checkpoint tensor `name`, if
    /// the adapter changes it. `B` is split the way fused weights are. Returns the names used.
    pub fn attach_adapter(
        &mut self,
        slot: usize,
        parts: &LoraLookup<'_>,
    ) -> Result<BTreeSet<String>> {
        let mut used = BTreeSet::new();
        for layer in &mut self.layers {
            let attn = &mut layer.attn;
            let linears = [
                &mut attn.q,
                &mut attn.k,
                &mut attn.v,
                &mut attn.o,
                &mut layer.gate,
                &mut layer.up,
                &mut layer.down,
            ];
            used.extend(attach_each(linears, slot, parts)?);
        }
        Ok(used)
    }

    /// Embeddings of `ids` (a u32 tensor of shape (T,)).
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        self.embed_tokens.index_select(ids, 0)
    }

    /// Runs the decoder over packed `embeds` (T, H) and returns the final-normed hidden state of
    /// each output row (each item's last token), (outputs, H).
    pub fn forward_last(&self, embeds: &Tensor, packing: &Packing) -> Result<Tensor> {
        self.forward_packed(embeds, packing, None)
    }

    /// [`Self::forward_last`], optionally collecting every layer's packed (K, V).
    fn forward_packed(
        &self,
        embeds: &Tensor,
        packing: &Packing,
        mut kv_out: Option<&mut Vec<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let ctx = self.batch_context(packing)?;
        let mut xs = embeds.clone();
        for layer in &self.layers {
            xs = layer.forward(&xs, packing, &ctx, kv_out.as_deref_mut())?;
        }
        let rows: Vec<u32> = packing.outputs.iter().map(|&r| r as u32).collect();
        let last = Tensor::new(rows, &self.device)?;
        self.norm.forward(&xs.index_select(&last, 0)?)
    }

    /// Output-head logits (rows, vocab) in f32 for final hidden states (rows, H).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        hidden.matmul(&self.lm_head.t()?)?.to_dtype(DType::F32)
    }

    /// Whether rotary angles at a position depend on the whole sequence's length (dynamic NTK
    /// past the trained length): then a prefix cannot be shared with a sequence of this length.
    pub fn rope_depends_on_length(&self, len: usize) -> bool {
        matches!(self.rope.scaling, RopeScaling::Dynamic { original_max_position_embeddings: max, .. } if len > max)
    }

    fn batch_context(&self, packing: &Packing) -> Result<BatchContext> {
        let (cos, sin) = self.rope_tables(&packing.segments)?;
        let masks = Masks::for_segments(&packing.segments, self.dtype, &self.device)?;
        let lens: Vec<usize> = packing.segments.iter().map(|s| s.len).collect();
        let slots: Vec<Option<usize>> = (0..lens.len()).map(|i| packing.adapter(i)).collect();
        let adapters = AdapterRows::of_runs(&lens, &slots, &self.device)?;
        Ok(BatchContext {
            cos,
            sin,
            masks,
            adapters,
        })
    }

    /// The context of one sequence of `len` tokens continuing a `prefix` of tokens whose keys
    /// and values are given (positions `prefix..prefix + len`, every prefix key visible).
    fn continuation_context(
        &self,
        prefix: usize,
        len: usize,
        adapter: Option<usize>,
    ) -> Result<BatchContext> {
        let (cos, sin) = self.rope_tables(&[Segment {
            len,
            position_offset: prefix,
            context: None,
        }])?;
        let masks = Masks::continuing(len, prefix, self.dtype, &self.device)?;
        let adapters = AdapterRows::of_runs(&[len], &[adapter], &self.device)?;
        Ok(BatchContext {
            cos,
            sin,
            masks,
            adapters,
        })
    }

    /// Rotary `(cos, sin)` tables, `(tokens, head_dim / 2)`, of every token of `segments`.
    fn rope_tables(&self, segments: &[Segment]) -> Result<(Tensor, Tensor)> {
        let half = self.rope.half();
        let total: usize = segments.iter().map(|s| s.len).sum();
        let mut freqs = Vec::with_capacity(total * half);
        for seg in segments {
            self.rope
                .push_freqs(seg.position_offset, seg.len, &mut freqs);
        }
        let freqs = Tensor::from_vec(freqs, (total, half), &self.device)?;
        Ok((
            freqs.cos()?.to_dtype(self.dtype)?,
            freqs.sin()?.to_dtype(self.dtype)?,
        ))
    }
}

/// Rotary angles, with the checkpoint's scaling. Everything is computed per sequence, so a
/// score never depends on what else is in the batch.
struct Rope {
    base: f64,
    head_dim: usize,
    inv_freq: Vec<f32>,
    scaling: RopeScaling,
}

impl Rope {
    fn new(cfg: &TextConfig) -> Self {
        Rope {
            base: cfg.rope_theta,
            head_dim: cfg.head_dim,
            inv_freq: inv_freq(cfg.rope_theta, cfg.head_dim),
            scaling: cfg.rope_scaling,
        }
    }

    fn half(&self) -> usize {
        self.head_dim / 2
    }

    /// Appends the (len, head_dim / 2) angles of positions `offset..offset + len` of a sequence
    /// that ends there (a suffix continues its prefix's positions).
    fn push_freqs(&self, offset: usize, len: usize, out: &mut Vec<f32>) {
        let positions = offset..offset + len;
        let len = offset + len;
        match self.scaling {
            RopeScaling::None => push_angles(&self.inv_freq, positions, 1.0, out),
            // InternLM2 / Llama linear scaling: positions divided by the factor (in f32).
            RopeScaling::Linear { factor } => {
                push_angles(&self.inv_freq, positions, factor as f32, out)
            }
            // Dynamic NTK (InternLM2 `InternLM2DynamicNTKScalingRotaryEmbedding`): the base
            // grows with the sequence length, but only once it exceeds the trained length.
            RopeScaling::Dynamic {
                factor,
                original_max_position_embeddings: max,
            } if len > max => {
                let d = self.head_dim as f64;
                let base = self.base
                    * (factor * len as f64 / max as f64 - (factor - 1.0)).powf(d / (d - 2.0));
                push_angles(&inv_freq(base, self.head_dim), positions, 1.0, out)
            }
            RopeScaling::Dynamic { .. } => push_angles(&self.inv_freq, positions, 1.0, out),
        }
    }
}

/// `1 / base^(2i/d)` in the same float32 arithmetic as the PyTorch references.
fn inv_freq(base: f64, d: usize) -> Vec<f32> {
    (0..d / 2)
        .map(|i| 1.0f32 / (base as f32).powf((2 * i) as f32 / d as f32))
        .collect()
}

fn push_angles(
    inv_freq: &[f32],
    positions: std::ops::Range<usize>,
    divisor: f32,
    out: &mut Vec<f32>,
) {
    for p in positions {
        let t = if divisor == 1.0 {
            p as f32
        } else {
            p as f32 / divisor
        };
        out.extend(inv_freq.iter().map(|f| t * f));
    }
}
