//! InternViT's backward: the gradient with respect to the pixels of the tiles, given the
//! gradient with respect to the tower's output features. Each block is recomputed from its
//! saved input (activation checkpointing) and tiles go one at a time, so the peak is one
//! block's activations of one tile (its score matrices included).

use candle_core::{Module, Result, Tensor, D};

use super::{Attention, Block, VisionTower};
use crate::nn::grad;
use crate::nn::lora::AdapterRows;

impl VisionTower {
    /// `d pixels` `(n, 3, S, S)` for `d_features` `(n, grid², width)`, the gradient with respect
    /// to [`VisionTower::forward`]'s output at `pixels` with `adapter`.
    pub fn backward(
        &self,
        pixels: &Tensor,
        adapter: &AdapterRows,
        d_features: &Tensor,
    ) -> Result<Tensor> {
        self.backward_with(pixels, adapter, |i, _| d_features.narrow(0, i, 1))
    }

    /// `d pixels` `(n, 3, S, S)`, tile by tile: `d_features_of(i, features)` gives the gradient
    /// with respect to tile `i`'s output features `(1, grid², width)` (e.g. a projector's
    /// backward, which needs those features), so each tile's forward runs once for both.
    pub fn backward_with(
        &self,
        pixels: &Tensor,
        adapter: &AdapterRows,
        d_features_of: impl Fn(usize, &Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let n = pixels.dim(0)?;
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let tile = pixels.narrow(0, i, 1)?;
            out.push(self.backward_tile(&tile, adapter, |features| d_features_of(i, features))?);
        }
        Tensor::cat(&out, 0)
    }

    fn backward_tile(
        &self,
        pixels: &Tensor,
        adapter: &AdapterRows,
        d_features_of: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let (_, _, s, _) = pixels.dims4()?;
        let (p, g) = (self.patch_size, s / self.patch_size);
        let c = self.patch.weight().dim(0)?;
        let mut inputs = Vec::with_capacity(self.blocks.len() + 1);
        let mut xs = self.embed(pixels)?;
        for block in &self.blocks {
            let next = block.forward(&xs, adapter)?;
            inputs.push(xs);
            xs = next;
        }
        let out = match &self.final_norm {
            Some(norm) => norm.forward(&xs)?,
            None => xs.clone(),
        };
        let d_features = d_features_of(&out.narrow(1, 1, g * g)?)?;
        // The output drops the class token.
        let mut dy = Tensor::cat(
            &[
                &Tensor::zeros((1, 1, c), d_features.dtype(), d_features.device())?,
                &d_features,
            ],
            1,
        )?;
        if let Some(norm) = &self.final_norm {
            dy = grad::norm(norm, &xs, &dy)?;
        }
        for (block, x) in self.blocks.iter().zip(&inputs).rev() {
            dy = block.backward(x, adapter, &dy)?;
        }
        // Class token and position embeddings are constants; the patch embedding is a linear
        // map of the patches, which are a permutation of the pixels.
        let d_patches = grad::linear(&self.patch, &dy.narrow(1, 1, g * g)?.reshape((g * g, c))?)?;
        d_patches
            .reshape((1, g, g, 3, p, p))?
            .permute((0, 3, 1, 4, 2, 5))?
            .reshape((1, 3, s, s))
    }
}

impl Block {
    /// `dx` for `dy`, recomputing the block from `x` `(1, tokens, width)`.
    fn backward(&self, x: &Tensor, adapter: &AdapterRows, dy: &Tensor) -> Result<Tensor> {
        let n1 = self.norm1.forward(x)?;
        let x1 = (x + self.attn.forward(&n1, adapter)?.broadcast_mul(&self.ls1)?)?;
        let n2 = self.norm2.forward(&x1)?;
        let h = self.fc1.forward_rows(&n2, adapter)?;
        let d_gelu = grad::linear_rows(&self.fc2, &dy.broadcast_mul(&self.ls2)?, adapter)?;
        let d_n2 = grad::linear_rows(&self.fc1, &grad::gelu_erf(&h, &d_gelu)?, adapter)?;
        let dx1 = (dy + grad::norm(&self.norm2, &x1, &d_n2)?)?;
        let d_n1 = self
            .attn
            .backward(&n1, adapter, &dx1.broadcast_mul(&self.ls1)?)?;
        dx1 + grad::norm(&self.norm1, x, &d_n1)?
    }
}

impl Attention {
    /// `dx` for `dy`, recomputing the attention from `xs` `(1, tokens, width)`.
    fn backward(&self, xs: &Tensor, adapter: &AdapterRows, dy: &Tensor) -> Result<Tensor> {
        let (_, t, c) = xs.dims3()?;
        let (h, d) = (self.num_heads, c / self.num_heads);
        let qkv = self.qkv.forward_rows(xs, adapter)?;
        let q_in = qkv.narrow(D::Minus1, 0, c)?.contiguous()?;
        let k_in = qkv.narrow(D::Minus1, c, c)?.contiguous()?;
        let v = qkv.narrow(D::Minus1, 2 * c, c)?;
        let (q, k) = match (&self.q_norm, &self.k_norm) {
            (Some(qn), Some(kn)) => (qn.forward(&q_in)?, kn.forward(&k_in)?),
            _ => (q_in.clone(), k_in.clone()),
        };
        let heads =
            |x: &Tensor| -> Result<Tensor> { x.reshape((t, h, d))?.transpose(0, 1)?.contiguous() };
        let merge =
            |x: Tensor| -> Result<Tensor> { x.transpose(0, 1)?.contiguous()?.reshape((1, t, c)) };
        let d_out = heads(&grad::linear_rows(&self.proj, dy, adapter)?)?;
        let scale = (d as f64).powf(-0.5);
        let (dq, dk, dv) =
            grad::attention(&heads(&q)?, &heads(&k)?, &heads(&v)?, None, scale, &d_out)?;
        let (mut dq, mut dk, dv) = (merge(dq)?, merge(dk)?, merge(dv)?);
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            dq = grad::norm(qn, &q_in, &dq)?;
            dk = grad::norm(kn, &k_in, &dk)?;
        }
        grad::linear_rows(
            &self.qkv,
            &Tensor::cat(&[&dq, &dk, &dv], D::Minus1)?,
            adapter,
        )
    }
}
