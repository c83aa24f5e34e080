//! The decoder's backward for one sequence: the gradient of the answer logits at its last
//! position with respect to its input embeddings (text and spliced image features).
//!
//! The forward keeps each layer's input only ([`GradTape`]); the backward recomputes one
//! layer at a time from its input (activation checkpointing) and applies the layer's
//! vector-Jacobian products ([`crate::nn::grad`]), so the peak is one layer's activations
//! plus every layer's `(tokens, hidden)` input. The output head is applied to the last row
//! only and its backward reads just the two answer rows of the head: no vocabulary-sized
//! gradient, no weight gradient.

use candle_core::{Module, Result, Tensor};

use super::{BatchContext, LanguageModel, Layer, Packing};
use crate::nn::grad;

/// What the backward of one sequence needs from its forward.
pub struct GradTape {
    packing: Packing,
    ctx: BatchContext,
    /// The input of each layer, then the output of the last one.
    inputs: Vec<Tensor>,
}

impl LanguageModel {
    /// The forward of one sequence `(tokens, hidden)` keeping each layer's input; returns the
    /// final-normed hidden state of its last token, `(1, hidden)`, and the tape.
    pub fn forward_for_grad(&self, embeds: &Tensor) -> Result<(Tensor, GradTape)> {
        let packing = Packing::sequences(&[embeds.dim(0)?]);
        let ctx = self.batch_context(&packing)?;
        let mut inputs = Vec::with_capacity(self.layers.len() + 1);
        let mut xs = embeds.clone();
        for layer in &self.layers {
            let next = layer.forward(&xs, &packing, &ctx, None)?;
            inputs.push(xs);
            xs = next;
        }
        let last = xs.narrow(0, xs.dim(0)? - 1, 1)?;
        inputs.push(xs);
        let hidden = self.norm.forward(&last)?;
        Ok((
            hidden,
            GradTape {
                packing,
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
        tape: &GradTape,
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
        for (layer, x) in self.layers.iter().zip(&tape.inputs).rev() {
            dy = layer.backward(x, &dy, &tape.packing, &tape.ctx)?;
        }
        Ok(dy)
    }
}

impl Layer {
    /// `dx` for `dy`, recomputing this layer's forward from `x` (one sequence, no shared
    /// prefix).
    fn backward(
        &self,
        x: &Tensor,
        dy: &Tensor,
        packing: &Packing,
        ctx: &BatchContext,
    ) -> Result<Tensor> {
        let attn = &self.attn;
        let (t, d) = (x.dim(0)?, attn.head_dim);
        // Attention half: recompute its input and output.
        let n1 = self.attn_norm.forward(x)?;
        let to_heads = |y: Tensor, n: usize| -> Result<Tensor> {
            y.reshape((t, n, d))?
                .transpose(0, 1)?
                .unsqueeze(0)?
                .contiguous()
        };
        let q = to_heads(attn.q.forward(&n1)?, attn.heads)?;
        let k = to_heads(attn.k.forward(&n1)?, attn.kv_heads)?;
        let v = to_heads(attn.v.forward(&n1)?, attn.kv_heads)?;
        let q = candle_nn::rotary_emb::rope(&q, &ctx.cos, &ctx.sin)?.squeeze(0)?;
        let k = candle_nn::rotary_emb::rope(&k, &ctx.cos, &ctx.sin)?.squeeze(0)?;
        let v = v.squeeze(0)?;
        let heads_out =
            super::attention::packed_attention(&q, &k, &v, &packing.segments, &ctx.masks)?;
        let a = attn
            .o
            .forward(&heads_out.transpose(0, 1)?.reshape((t, attn.heads * d))?)?;
        let h1 = (x + a)?;

        // MLP half.
        let n2 = self.mlp_norm.forward(&h1)?;
        let g = self.gate.forward(&n2)?;
        let u = self.up.forward(&n2)?;
        let dm = grad::linear(&self.down, dy)?;
        let dg = grad::silu(&g, &(&dm * &u)?)?;
        let du = (&dm * candle_nn::ops::silu(&g)?)?;
        let dn2 = (grad::linear(&self.gate, &dg)? + grad::linear(&self.up, &du)?)?;
        let dh1 = (dy + grad::norm(&self.mlp_norm, &h1, &dn2)?)?;

        // Attention half backward.
        let d_heads_out = grad::linear(&attn.o, &dh1)?
            .reshape((t, attn.heads, d))?
            .transpose(0, 1)?
            .contiguous()?;
        let mask = ctx.masks.get(t, t)?;
        let scale = (d as f64).powf(-0.5);
        let (dq, dk, dv) = grad::attention(&q, &k, &v, Some(mask), scale, &d_heads_out)?;
        let unrope = |g: Tensor| -> Result<Tensor> {
            grad::rope(&g.unsqueeze(0)?, &ctx.cos, &ctx.sin)?.squeeze(0)
        };
        let (dq, dk) = (unrope(dq)?, unrope(dk)?);
        let flat = |g: Tensor, n: usize| -> Result<Tensor> {
            g.transpose(0, 1)?.contiguous()?.reshape((t, n * d))
        };
        let dn1 = (grad::linear(&attn.q, &flat(dq, attn.heads)?)?
            + grad::linear(&attn.k, &flat(dk, attn.kv_heads)?)?)?;
        let dn1 = (dn1 + grad::linear(&attn.v, &flat(dv, attn.kv_heads)?)?)?;
        dh1 + grad::norm(&self.attn_norm, x, &dn1)?
    }
}
