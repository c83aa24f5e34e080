//! Vision-to-language connector: pixel shuffle (InternVL `ps_version = "v2"`) followed by the
//! `mlp1` projector (LayerNorm, Linear, exact GELU, Linear).
//!
//! Names: OpenGVLab `mlp1.{0,1,3}`; HF `model.multi_modal_projector.{layer_norm, linear_1, linear_2}`.

use std::collections::BTreeSet;

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::CheckpointLayout;
use crate::nn::grad;
use crate::nn::layers::NormKind;
use crate::nn::layers::{Linear, Norm};
use crate::nn::lora::{attach_each, AdapterRows, LoraLookup};

/// PyTorch's `nn.LayerNorm` default epsilon, which both reference implementations use here.
const PROJECTOR_NORM_EPS: f64 = 1e-5;

/// Pixel shuffle + `mlp1`.
pub struct Projector {
    norm: Norm,
    linear_1: Linear,
    linear_2: Linear,
    factor: usize,
}

impl Projector {
    /// Loads the projector from `vision_width * factor^2` to `text_width`, with
    /// `factor = 1 / downsample_ratio`.
    pub fn load(
        layout: CheckpointLayout,
        vision_width: usize,
        text_width: usize,
        factor: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let in_dim = vision_width * factor * factor;
        let (norm, l1, l2) = match layout {
            CheckpointLayout::OpenGvLab => ("0", "1", "3"),
            CheckpointLayout::HuggingFace => ("layer_norm", "linear_1", "linear_2"),
        };
        Ok(Projector {
            norm: Norm::load(NormKind::LayerNorm, in_dim, PROJECTOR_NORM_EPS, vb.pp(norm))?,
            linear_1: Linear::load(in_dim, text_width, true, vb.pp(l1))?,
            linear_2: Linear::load(text_width, text_width, true, vb.pp(l2))?,
            factor,
        })
    }

    /// Image-context tokens per tile for a `grid` x `grid` patch grid.
    pub fn tokens_per_tile(&self, grid: usize) -> usize {
        (grid / self.factor) * (grid / self.factor)
    }

    /// Attaches an adapter's LoRA of the two linear layers as slot `slot`; returns the
    /// checkpoint tensor names used.
    pub fn attach_adapter(
        &mut self,
        slot: usize,
        parts: &LoraLookup<'_>,
    ) -> Result<BTreeSet<String>> {
        attach_each([&mut self.linear_1, &mut self.linear_2], slot, parts)
    }

    /// Vision features (tiles, grid*grid, C) -> language embeddings (tiles, tokens_per_tile, H),
    /// with `adapter` ([`AdapterRows::Base`] or [`AdapterRows::All`]).
    pub fn forward(&self, features: &Tensor, grid: usize, adapter: &AdapterRows) -> Result<Tensor> {
        let shuffled = pixel_shuffle(features, grid, self.factor)?;
        let xs = self
            .linear_1
            .forward_rows(&self.norm.forward(&shuffled)?, adapter)?
            .gelu_erf()?;
        self.linear_2.forward_rows(&xs, adapter)
    }
}

impl Projector {
    /// The gradient with respect to the vision features `(n, grid², width)` for the gradient
    /// `dy` of [`Self::forward`]'s output at `features` with `adapter`.
    pub fn backward(
        &self,
        features: &Tensor,
        grid: usize,
        adapter: &AdapterRows,
        dy: &Tensor,
    ) -> Result<Tensor> {
        let shuffled = pixel_shuffle(features, grid, self.factor)?;
        let h = self
            .linear_1
            .forward_rows(&self.norm.forward(&shuffled)?, adapter)?;
        let d_h = grad::gelu_erf(&h, &grad::linear_rows(&self.linear_2, dy, adapter)?)?;
        let d_normed = grad::linear_rows(&self.linear_1, &d_h, adapter)?;
        let d_shuffled = grad::norm(&self.norm, &shuffled, &d_normed)?;
        pixel_unshuffle(&d_shuffled, grid, self.factor)
    }
}

/// The inverse of [`pixel_shuffle`] (a permutation, so also its backward): `(n, (g/r)², c·r²)`
/// back to `(n, g², c)`.
pub fn pixel_unshuffle(xs: &Tensor, g: usize, r: usize) -> Result<Tensor> {
    let (n, _, crr) = xs.dims3()?;
    let c = crr / (r * r);
    xs.reshape((n, g / r, g / r, c * r * r))?
        .permute((0, 2, 1, 3))?
        .contiguous()?
        .reshape((n, g / r, g, c * r))?
        .permute((0, 2, 1, 3))?
        .contiguous()?
        .reshape((n, g * g, c))
}

/// InternVL's pixel shuffle (v2) with scale `1/r`, on (n, g*g, c) features laid out row-major
/// over a g x g grid; returns (n, (g/r)^2, c*r^2). Mirrors the reference's view/permute sequence.
pub fn pixel_shuffle(xs: &Tensor, g: usize, r: usize) -> Result<Tensor> {
    let (n, _, c) = xs.dims3()?;
    let xs = xs
        .reshape((n, g, g / r, c * r))?
        .permute((0, 2, 1, 3))?
        .contiguous()?
        .reshape((n, g / r, g / r, c * r * r))?
        .permute((0, 2, 1, 3))?
        .contiguous()?;
    xs.reshape((n, (g / r) * (g / r), c * r * r))
}
