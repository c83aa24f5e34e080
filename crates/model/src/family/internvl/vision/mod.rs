//! InternViT, the vision tower: patch embedding, class token, absolute position embedding
//! (bicubic-interpolated when the tile grid differs from the trained grid), pre-norm blocks with
//! layer scale, exact-erf GELU.
//!
//! Tensor names mirror the checkpoint. OpenGVLab layout (`vision_model.*`):
//! `embeddings.{class_embedding, patch_embedding, position_embedding}`,
//! `encoder.layers.N.{norm1, attn.qkv, attn.q_norm, attn.k_norm, attn.proj, ls1, norm2, mlp.fc1, mlp.fc2, ls2}`.
//! HF layout (`model.vision_tower.*`): `embeddings.{cls_token, patch_embeddings.projection,
//! position_embeddings}`, `encoder.layer.N.{layernorm_before, attention.{q,k,v}_proj,
//! attention.{q,k}_norm, attention.projection_layer, lambda_1, layernorm_after, mlp.fc1, mlp.fc2, lambda_2}`.
//! q/k/v are fused into one projection at load for both layouts.

mod backward;

use std::collections::BTreeSet;

use candle_core::{Module, Result, Tensor, D};
use candle_nn::VarBuilder;

use super::config::{CheckpointLayout, VisionConfig};
use crate::nn::fused_attention;
use crate::nn::layers::NormKind;
use crate::nn::layers::{Linear, Norm};
use crate::nn::lora::{attach_by_source, attach_each, attach_stacked, AdapterRows, LoraLookup};

/// Per-layout names of the pieces that differ between the two checkpoint conventions.
struct Names {
    cls: &'static str,
    patch: &'static str,
    pos: &'static str,
    layers: &'static str,
    norm1: &'static str,
    norm2: &'static str,
    attn: &'static str,
    proj: &'static str,
    ls1: &'static str,
    ls2: &'static str,
}

const OPENGVLAB: Names = Names {
    cls: "class_embedding",
    patch: "patch_embedding",
    pos: "position_embedding",
    layers: "layers",
    norm1: "norm1",
    norm2: "norm2",
    attn: "attn",
    proj: "proj",
    ls1: "ls1",
    ls2: "ls2",
};

const HUGGING_FACE: Names = Names {
    cls: "cls_token",
    patch: "patch_embeddings.projection",
    pos: "position_embeddings",
    layers: "layer",
    norm1: "layernorm_before",
    norm2: "layernorm_after",
    attn: "attention",
    proj: "projection_layer",
    ls1: "lambda_1",
    ls2: "lambda_2",
};

struct Attention {
    qkv: Linear,
    /// The checkpoint tensors `qkv` stacks, with their rows (one fused tensor in the
    /// OpenGVLab layout; q, k and v in the HF layout), for attaching adapters.
    qkv_pieces: Vec<(String, usize)>,
    q_norm: Option<Norm>,
    k_norm: Option<Norm>,
    proj: Linear,
    num_heads: usize,
}

impl Attention {
    fn load(
        cfg: &VisionConfig,
        layout: CheckpointLayout,
        names: &Names,
        vb: VarBuilder,
    ) -> Result<Self> {
        let c = cfg.hidden_size;
        let (qkv, qkv_pieces) = match layout {
            CheckpointLayout::OpenGvLab => {
                let qkv = Linear::load(c, 3 * c, cfg.qkv_bias, vb.pp("qkv"))?;
                let pieces = qkv.source().map(|s| (s.tensor.clone(), 3 * c));
                (qkv, pieces.into_iter().collect())
            }
            CheckpointLayout::HuggingFace => {
                let parts = ["q_proj", "k_proj", "v_proj"]
                    .iter()
                    .map(|n| Linear::load(c, c, cfg.qkv_bias, vb.pp(n)))
                    .collect::<Result<Vec<_>>>()?;
                let w = Tensor::cat(&parts.iter().map(|p| p.weight()).collect::<Vec<_>>(), 0)?;
                let b = if cfg.qkv_bias {
                    let bs: Vec<&Tensor> = parts.iter().filter_map(|p| p.bias()).collect();
                    Some(Tensor::cat(&bs, 0)?)
                } else {
                    None
                };
                let pieces = parts
                    .iter()
                    .filter_map(|p| p.source())
                    .map(|s| (s.tensor.clone(), c))
                    .collect();
                (Linear::from_parts(w, b, None), pieces)
            }
        };
        // QK-norm is RMSNorm over the full embedding width in both layouts.
        let (q_norm, k_norm) = if cfg.qk_norm {
            (
                Some(Norm::load(
                    NormKind::RmsNorm,
                    c,
                    cfg.norm_eps,
                    vb.pp("q_norm"),
                )?),
                Some(Norm::load(
                    NormKind::RmsNorm,
                    c,
                    cfg.norm_eps,
                    vb.pp("k_norm"),
                )?),
            )
        } else {
            (None, None)
        };
        let proj = Linear::load(c, c, true, vb.pp(names.proj))?;
        Ok(Attention {
            qkv,
            qkv_pieces,
            q_norm,
            k_norm,
            proj,
            num_heads: cfg.num_heads,
        })
    }

    fn forward(&self, xs: &Tensor, adapter: &AdapterRows) -> Result<Tensor> {
        let (b, t, c) = xs.dims3()?;
        let d = c / self.num_heads;
        let qkv = self.qkv.forward_rows(xs, adapter)?;
        let mut q = qkv.narrow(D::Minus1, 0, c)?;
        let mut k = qkv.narrow(D::Minus1, c, c)?;
        let v = qkv.narrow(D::Minus1, 2 * c, c)?;
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            q = qn.forward(&q.contiguous()?)?;
            k = kn.forward(&k.contiguous()?)?;
        }
        let heads = |x: Tensor| -> Result<Tensor> {
            x.reshape((b, t, self.num_heads, d))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = (heads(q)?, heads(k)?, heads(v)?);
        let scale = (d as f64).powf(-0.5);
        // Fused (flash-style) attention: no (t, t) score matrix per head. Falls back to
        // matmul + softmax where the fused op does not run (e.g. CUDA head dims above 128) or is
        // switched off (`REWARDDANCE_FUSED_ATTENTION=0`, for A/B measurements).
        let out =
            if fused_attention::enabled() && fused_attention::supports(q.device(), q.dtype(), d) {
                fused_attention::attention(&q, &k, &v, scale, false)?
            } else {
                fused_attention::naive_attention(&q, &k, &v, scale, false)?
            };
        let out = out.transpose(1, 2)?.reshape((b, t, c))?;
        self.proj.forward_rows(&out, adapter)
    }

    /// Attaches `slot`'s updates of q/k/v and the output projection; returns the names used.
    fn attach_adapter(&mut self, slot: usize, parts: &LoraLookup<'_>) -> Result<Vec<String>> {
        let mut used = attach_stacked(&mut self.qkv, slot, &self.qkv_pieces, parts)?;
        used.extend(attach_by_source(&mut self.proj, slot, parts)?);
        Ok(used)
    }
}

struct Block {
    norm1: Norm,
    attn: Attention,
    ls1: Tensor,
    norm2: Norm,
    fc1: Linear,
    fc2: Linear,
    ls2: Tensor,
}

impl Block {
    fn load(
        cfg: &VisionConfig,
        layout: CheckpointLayout,
        names: &Names,
        vb: VarBuilder,
    ) -> Result<Self> {
        let c = cfg.hidden_size;
        Ok(Block {
            norm1: Norm::load(cfg.norm, c, cfg.norm_eps, vb.pp(names.norm1))?,
            attn: Attention::load(cfg, layout, names, vb.pp(names.attn))?,
            ls1: vb.get(c, names.ls1)?,
            norm2: Norm::load(cfg.norm, c, cfg.norm_eps, vb.pp(names.norm2))?,
            fc1: Linear::load(c, cfg.intermediate_size, true, vb.pp("mlp.fc1"))?,
            fc2: Linear::load(cfg.intermediate_size, c, true, vb.pp("mlp.fc2"))?,
            ls2: vb.get(c, names.ls2)?,
        })
    }

    fn forward(&self, xs: &Tensor, adapter: &AdapterRows) -> Result<Tensor> {
        let attn = self.attn.forward(&self.norm1.forward(xs)?, adapter)?;
        let xs = (xs + attn.broadcast_mul(&self.ls1)?)?;
        let h = self
            .fc1
            .forward_rows(&self.norm2.forward(&xs)?, adapter)?
            .gelu_erf()?;
        let mlp = self.fc2.forward_rows(&h, adapter)?;
        xs + mlp.broadcast_mul(&self.ls2)?
    }
}

/// The InternViT encoder, truncated at the feature layer the projector reads.
pub struct VisionTower {
    /// The patch convolution as a linear map over flattened (3, p, p) patches.
    patch: Linear,
    cls: Tensor,
    pos: Tensor,
    blocks: Vec<Block>,
    final_norm: Option<Norm>,
    patch_size: usize,
    grid: usize,
}

impl VisionTower {
    /// Loads the tower for tiles of `tile_size` pixels, keeping the blocks up to `feature_layer`
    /// (index into the hidden states: 0 = embeddings, -1 = last block).
    pub fn load(
        cfg: &VisionConfig,
        layout: CheckpointLayout,
        tile_size: usize,
        feature_layer: i64,
        vb: VarBuilder,
    ) -> Result<Self> {
        let names = match layout {
            CheckpointLayout::OpenGvLab => &OPENGVLAB,
            CheckpointLayout::HuggingFace => &HUGGING_FACE,
        };
        let c = cfg.hidden_size;
        let p = cfg.patch_size;
        let emb = vb.pp("embeddings");
        let patch = emb.pp(names.patch);
        let patch_weight = patch.get((c, 3, p, p), "weight")?.reshape((c, 3 * p * p))?;
        let patch_bias = patch.get(c, "bias")?;
        let cls = emb.get((1, 1, c), names.cls)?;
        let trained_grid = cfg.image_size / p;
        let pos = emb.get((1, trained_grid * trained_grid + 1, c), names.pos)?;
        let grid = tile_size / p;
        let pos = interpolate_position_embedding(&pos, trained_grid, grid)?;

        let hidden_states = cfg.num_layers as i64 + 1;
        let keep = if feature_layer < 0 {
            hidden_states + feature_layer
        } else {
            feature_layer
        } as usize;
        let enc = vb.pp("encoder").pp(names.layers);
        let blocks = (0..keep)
            .map(|i| Block::load(cfg, layout, names, enc.pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let final_norm = if cfg.final_layernorm && keep == cfg.num_layers {
            Some(Norm::load(
                NormKind::LayerNorm,
                c,
                cfg.norm_eps,
                vb.pp("layernorm"),
            )?)
        } else {
            None
        };
        Ok(VisionTower {
            patch: Linear::from_parts(patch_weight, Some(patch_bias), None),
            cls,
            pos,
            blocks,
            final_norm,
            patch_size: p,
            grid,
        })
    }

    /// Side of the patch grid of one tile.
    pub fn grid(&self) -> usize {
        self.grid
    }

    /// Attaches an adapter's LoRA of the blocks' linear layers as slot `slot`; returns the
    /// checkpoint tensor names used. (The patch embedding is a convolution: never adapted.)
    pub fn attach_adapter(
        &mut self,
        slot: usize,
        parts: &LoraLookup<'_>,
    ) -> Result<BTreeSet<String>> {
        let mut used = BTreeSet::new();
        for block in &mut self.blocks {
            used.extend(block.attn.attach_adapter(slot, parts)?);
            used.extend(attach_each([&mut block.fc1, &mut block.fc2], slot, parts)?);
        }
        Ok(used)
    }

    /// `pixels` (tiles, 3, S, S) -> features (tiles, grid*grid, C) with the class token
    /// dropped, every tile with `adapter` ([`AdapterRows::Base`] or [`AdapterRows::All`]).
    pub fn forward(&self, pixels: &Tensor, adapter: &AdapterRows) -> Result<Tensor> {
        let g = pixels.dim(2)? / self.patch_size;
        let mut xs = self.embed(pixels)?;
        for block in &self.blocks {
            xs = block.forward(&xs, adapter)?;
        }
        if let Some(norm) = &self.final_norm {
            xs = norm.forward(&xs)?;
        }
        xs.narrow(1, 1, g * g)
    }

    /// Patch embeddings of `(n, 3, S, S)` pixels with the class token and position embeddings:
    /// the input of the first block, `(n, 1 + grid², width)`.
    fn embed(&self, pixels: &Tensor) -> Result<Tensor> {
        let (n, _, s, _) = pixels.dims4()?;
        let (p, g) = (self.patch_size, s / self.patch_size);
        // Conv2d with stride == kernel is a matmul over non-overlapping patches.
        let patches = pixels
            .reshape((n, 3, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((n * g * g, 3 * p * p))?;
        let c = self.patch.weight().dim(0)?;
        let emb = self.patch.forward(&patches)?.reshape((n, g * g, c))?;
        let cls = self.cls.broadcast_as((n, 1, c))?;
        Tensor::cat(&[&cls, &emb], 1)?.broadcast_add(&self.pos)
    }
}

/// Resizes the patch part of a (1, 1 + g0*g0, C) position embedding to a g x g grid with
/// PyTorch's `interpolate(mode="bicubic", align_corners=False)` (cubic A = -0.75, edge clamp).
/// The class-token row is kept. Identity when `g == g0`.
pub fn interpolate_position_embedding(pos: &Tensor, g0: usize, g: usize) -> Result<Tensor> {
    if g == g0 {
        return Ok(pos.clone());
    }
    let device = pos.device().clone();
    let dtype = pos.dtype();
    let c = pos.dim(2)?;
    let host = pos
        .to_dtype(candle_core::DType::F32)?
        .squeeze(0)?
        .to_vec2::<f32>()?;
    let src = &host[1..];
    let taps = |out: usize, inp: usize| -> Vec<([usize; 4], [f32; 4])> {
        let scale = inp as f32 / out as f32;
        (0..out)
            .map(|o| {
                let real = scale * (o as f32 + 0.5) - 0.5;
                let i = real.floor();
                let t = real - i;
                let clamp = |k: i64| k.clamp(0, inp as i64 - 1) as usize;
                let i = i as i64;
                (
                    [clamp(i - 1), clamp(i), clamp(i + 1), clamp(i + 2)],
                    cubic_weights(t),
                )
            })
            .collect()
    };
    let (ty, tx) = (taps(g, g0), taps(g, g0));
    let mut out = vec![host[0].clone()];
    for (ys, wy) in &ty {
        for (xs, wx) in &tx {
            let mut row = vec![0f32; c];
            for (a, &yi) in ys.iter().enumerate() {
                // Separable like PyTorch: interpolate along x first, then y.
                let mut line = vec![0f32; c];
                for (b, &xi) in xs.iter().enumerate() {
                    let s = &src[yi * g0 + xi];
                    for (l, v) in line.iter_mut().zip(s) {
                        *l += wx[b] * v;
                    }
                }
                for (r, l) in row.iter_mut().zip(&line) {
                    *r += wy[a] * l;
                }
            }
            out.push(row);
        }
    }
    let flat: Vec<f32> = out.into_iter().flatten().collect();
    Tensor::from_vec(flat, (1, 1 + g * g, c), &device)?.to_dtype(dtype)
}

/// Keys's cubic convolution weights with A = -0.75 (PyTorch's bicubic) for offset `t` in [0, 1).
fn cubic_weights(t: f32) -> [f32; 4] {
    const A: f32 = -0.75;
    let near = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
}
