//! The decoder's backward for one sequence: the gradient of the answer logits at its last
//! position with respect to its input embeddings (text and spliced image features).
//!
//! The forward keeps each layer's input only ([`GradTape`]); the backward recomputes one
//! layer at a time from its input (activation checkpointing) and applies the layer's
//! vector-Jacobian products ([`crate::nn::grad`]), so the peak is one layer's activations
//! plus every layer's `(tokens, hidden)` input. The output head is applied to the last row
//! only and its backward reads just the two answer rows of the head: no vocabulary-sized
//! gradient, no weight gradient.
//!
//! A sequence may continue a constant prefix given as its keys and values ([`KvCache`], e.g.
//! the system prompt and a pairwise reference image, computed once for every item that
//! shares it): the forward and the backward then run over the suffix only, its queries
//! attending to the prefix's keys, and the gradient reaching the prefix's keys and values is
//! dropped (the prefix is a constant of the objective).

use candle_core::{Module, Result, Tensor};

use super::attention::attend;
use super::{BatchContext, KvCache, LanguageModel, Layer};
use crate::nn::grad;

/// What the backward of one sequence needs from its forward.
pub struct GradTape<'a> {
    /// The constant prefix the sequence continues, if any.
    prefix: Option<&'a KvCache>,
    ctx: BatchContext,
    /// The input of each layer, then the output of the last one.
    inputs: Vec<Tensor>,
}

impl LanguageModel {
    /// The keys and values of a constant prefix `(tokens, hidden)` that sequences given to
    /// [`Self::forward_for_grad`] continue.
    pub fn prefix_cache(&self, embeds: &Tensor, adapter: Option<usize>) -> Result<KvCache> {
        let mut packing = super::Packing::sequences(&[embeds.dim(0)?]);
        packing.adapters = vec![adapter];
        let (_, mut caches) = self.prefill_with_cache(embeds, &packing)?;
        caches
            .pop()
            .ok_or_else(|| candle_core::Error::Msg("the prefill returned no cache".into()))
    }

    /// The forward of one sequence `(tokens, hidden)`, continuing `prefix` when given, keeping
    /// each layer's input; returns the final-normed hidden state of its last token,
    /// `(1, hidden)`, and the tape.
    /// The sequence runs with adapter slot `adapter` (the prefix's must be the same).
    pub fn forward_for_grad<'a>(
        &self,
        embeds: &Tensor,
        prefix: Option<&'a KvCache>,
        adapter: Option<usize>,
    ) -> Result<(Tensor, GradTape<'a>)> {
        let offset = prefix.map_or(0, KvCache::len);
        let ctx = self.continuation_context(offset, embeds.dim(0)?, adapter)?;
        let mut inputs = Vec::with_capacity(self.layers.len() + 1);
        let mut xs = embeds.clone();
        for (l, layer) in self.layers.iter().enumerate() {
            let before = prefix.map(|p| p.filled(l)).transpose()?;
            let next = layer.forward_continuing(&xs, &ctx, before.as_ref())?;
            inputs.push(xs);
            xs = next;
        }
        let last = xs.narrow(0, xs.dim(0)? - 1, 1)?;
        inputs.push(xs);
        let hidden = self.norm.forward(&last)?;
        Ok((
            hidden,
            GradTape {
                prefix,
                ctx,
                inputs,
            },
        ))
    }

    /// The gradient with respect to the input embeddings `(tokens, hidden)` of the sequence
    /// taped by [`Self::forward_for_grad`], given the gradients of the objective with respect
    /// to the logits of the `ids` answer tokens at its last position (`d_logits[i]` for
    /// `ids[i]`).
    pub fn backward_from_logits(
        &self,
        tape: &GradTape<'_>,
        ids: &[u32],
        d_logits: &[f32],
    ) -> Result<Tensor> {
        // hidden · headᵀ at the answer rows only: d hidden = Σ d_logit[i] · head[ids[i]].
        let rows = self
            .lm_head
            .index_select(&Tensor::new(ids, &self.device)?, 0)?;
        let d = Tensor::new(d_logits, &self.device)?
            .to_dtype(rows.dtype())?
            .unsqueeze(0)?;
        let d_hidden = d.matmul(&rows)?;
        let last_out = tape
            .inputs
            .last()
            .ok_or_else(|| candle_core::Error::Msg("the tape holds no layer output".into()))?;
        let t = last_out.dim(0)?;
        let d_last = grad::norm(&self.norm, &last_out.narrow(0, t - 1, 1)?, &d_hidden)?;
        let mut dy = Tensor::cat(
            &[
                &Tensor::zeros((t - 1, d_last.dim(1)?), d_last.dtype(), &self.device)?,
                &d_last,
            ],
            0,
        )?;
        for (l, (layer, x)) in self.layers.iter().zip(&tape.inputs).enumerate().rev() {
            let before = tape.prefix.map(|p| p.filled(l)).transpose()?;
            dy = layer.backward(x, &dy, &tape.ctx, before.as_ref())?;
        }
        Ok(dy)
    }
}

/// One layer's attention operands for a sequence, recomputed from its input.
struct AttentionOperands {
    /// Rotated queries, (heads, t, d).
    q: Tensor,
    /// Rotated keys and values, (kv_heads, prefix + t, d): the prefix's first.
    k: Tensor,
    v: Tensor,
}

impl Layer {
    /// The attention operands of input `x` (t, hidden) continuing `prefix`'s keys and values.
    fn attention_operands(
        &self,
        x: &Tensor,
        ctx: &BatchContext,
        prefix: Option<&(Tensor, Tensor)>,
    ) -> Result<AttentionOperands> {
        let attn = &self.attn;
        let (t, d) = (x.dim(0)?, attn.head_dim);
        let n1 = self.attn_norm.forward(x)?;
        let to_heads = |y: Tensor, n: usize| -> Result<Tensor> {
            y.reshape((t, n, d))?
                .transpose(0, 1)?
                .unsqueeze(0)?
                .contiguous()
        };
        let rows = &ctx.adapters;
        let q = to_heads(attn.q.forward_rows(&n1, rows)?, attn.heads)?;
        let k = to_heads(attn.k.forward_rows(&n1, rows)?, attn.kv_heads)?;
        let v = to_heads(attn.v.forward_rows(&n1, rows)?, attn.kv_heads)?;
        let q = candle_nn::rotary_emb::rope(&q, &ctx.cos, &ctx.sin)?.squeeze(0)?;
        let k = candle_nn::rotary_emb::rope(&k, &ctx.cos, &ctx.sin)?.squeeze(0)?;
        let v = v.squeeze(0)?;
        let (k, v) = match prefix {
            Some((pk, pv)) => (Tensor::cat(&[pk, &k], 1)?, Tensor::cat(&[pv, &v], 1)?),
            None => (k, v),
        };
        Ok(AttentionOperands { q, k, v })
    }

    /// `x + attn(norm(x))` for a sequence continuing `prefix` (the attention half), and the
    /// operands it used.
    fn attention_residual(
        &self,
        x: &Tensor,
        ctx: &BatchContext,
        prefix: Option<&(Tensor, Tensor)>,
    ) -> Result<(Tensor, AttentionOperands)> {
        let ops = self.attention_operands(x, ctx, prefix)?;
        let (t, keys) = (x.dim(0)?, ops.k.dim(1)?);
        let heads_out = attend(&ops.q, &ops.k, &ops.v, ctx.masks.get(t, keys)?)?;
        let attn = &self.attn;
        let a = attn.o.forward_rows(
            &heads_out
                .transpose(0, 1)?
                .reshape((t, attn.heads * attn.head_dim))?,
            &ctx.adapters,
        )?;
        Ok(((x + a)?, ops))
    }

    /// The layer's forward for one sequence continuing `prefix`.
    fn forward_continuing(
        &self,
        x: &Tensor,
        ctx: &BatchContext,
        prefix: Option<&(Tensor, Tensor)>,
    ) -> Result<Tensor> {
        self.mlp_residual(&self.attention_residual(x, ctx, prefix)?.0, &ctx.adapters)
    }

    /// `dx` for `dy`, recomputing this layer's forward from `x` (one sequence continuing
    /// `prefix`; the gradient of the prefix's keys and values is dropped).
    fn backward(
        &self,
        x: &Tensor,
        dy: &Tensor,
        ctx: &BatchContext,
        prefix: Option<&(Tensor, Tensor)>,
    ) -> Result<Tensor> {
        let attn = &self.attn;
        let (t, d) = (x.dim(0)?, attn.head_dim);
        let (h1, AttentionOperands { q, k, v }) = self.attention_residual(x, ctx, prefix)?;

        // MLP half.
        let rows = &ctx.adapters;
        let n2 = self.mlp_norm.forward(&h1)?;
        let g = self.gate.forward_rows(&n2, rows)?;
        let u = self.up.forward_rows(&n2, rows)?;
        let dm = grad::linear_rows(&self.down, dy, rows)?;
        let dg = grad::silu(&g, &(&dm * &u)?)?;
        let du = (&dm * candle_nn::ops::silu(&g)?)?;
        let dn2 =
            (grad::linear_rows(&self.gate, &dg, rows)? + grad::linear_rows(&self.up, &du, rows)?)?;
        let dh1 = (dy + grad::norm(&self.mlp_norm, &h1, &dn2)?)?;

        // Attention half backward.
        let d_heads_out = grad::linear_rows(&attn.o, &dh1, rows)?
            .reshape((t, attn.heads, d))?
            .transpose(0, 1)?
            .contiguous()?;
        let keys = k.dim(1)?;
        let mask = ctx.masks.get(t, keys)?;
        let scale = (d as f64).powf(-0.5);
        let (dq, dk, dv) = grad::attention(&q, &k, &v, Some(mask), scale, &d_heads_out)?;
        // The sequence's own keys and values are the last `t`.
        let (dk, dv) = (dk.narrow(1, keys - t, t)?, dv.narrow(1, keys - t, t)?);
        let unrope = |g: Tensor| -> Result<Tensor> {
            grad::rope(&g.unsqueeze(0)?, &ctx.cos, &ctx.sin)?.squeeze(0)
        };
        let (dq, dk) = (unrope(dq)?, unrope(dk)?);
        let flat = |g: Tensor, n: usize| -> Result<Tensor> {
            g.transpose(0, 1)?.contiguous()?.reshape((t, n * d))
        };
        let dn1 = (grad::linear_rows(&attn.q, &flat(dq, attn.heads)?, rows)?
            + grad::linear_rows(&attn.k, &flat(dk, attn.kv_heads)?, rows)?)?;
        let dn1 = (dn1 + grad::linear_rows(&attn.v, &flat(dv, attn.kv_heads)?, rows)?)?;
        dh1 + grad::norm(&self.attn_norm, x, &dn1)?
    }
}
