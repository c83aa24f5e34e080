//! Small building blocks shared by the vision tower and the language model.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

use crate::nn::lora::{AdapterRows, LoraUpdate};

/// Normalisation layer kind (InternViT uses either; the decoders use RMSNorm).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormKind {
    /// LayerNorm with weight and bias (InternViT-300M).
    LayerNorm,
    /// RMSNorm with weight only (InternViT-6B).
    RmsNorm,
}

/// LayerNorm (weight + bias) or RMSNorm (weight), normalised in f32 whatever the weights' dtype.
///
/// In half precision the output is rounded where the reference models round it. LayerNorm is
/// `torch.nn.functional.layer_norm`, whose bf16/f16 kernels compute in f32 and round once.
/// RMSNorm is written out in the models' code (transformers' `Qwen2RMSNorm` /
/// `InternVLVisionRMSNorm`, OpenGVLab's `InternLM2RMSNorm` / `InternRMSNorm`):
/// `weight * (x.float() * rsqrt(mean(x^2) + eps)).to(input_dtype)`, so the normalised value
/// is rounded to the input dtype first and then multiplied by the weight in that dtype.
#[derive(Debug, Clone)]
pub struct Norm {
    weight: Tensor,
    bias: Option<Tensor>,
    /// f32 ones of the norm's width: RMSNorm's unweighted normalisation (half precision).
    ones: Tensor,
    eps: f32,
}

impl Norm {
    /// Loads `{vb}.weight` (and `{vb}.bias` for LayerNorm) of width `dim`.
    pub fn load(kind: NormKind, dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get(dim, "weight")?;
        let bias = match kind {
            NormKind::LayerNorm => Some(vb.get(dim, "bias")?),
            NormKind::RmsNorm => None,
        };
        let ones = Tensor::ones(dim, DType::F32, weight.device())?;
        Ok(Norm {
            weight,
            bias,
            ones,
            eps: eps as f32,
        })
    }

    /// A norm from its tensors: LayerNorm when `bias` is given, RMSNorm otherwise.
    pub fn from_parts(weight: Tensor, bias: Option<Tensor>, eps: f64) -> Result<Self> {
        let ones = Tensor::ones(weight.dims1()?, DType::F32, weight.device())?;
        Ok(Norm {
            weight,
            bias,
            ones,
            eps: eps as f32,
        })
    }

    /// The scale.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The shift (LayerNorm only).
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Epsilon added to the variance.
    pub fn eps(&self) -> f32 {
        self.eps
    }

    /// LayerNorm (with a bias) rather than RMSNorm.
    pub fn is_layer_norm(&self) -> bool {
        self.bias.is_some()
    }
}

impl Module for Norm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dtype = xs.dtype();
        let xs32 = xs.to_dtype(DType::F32)?;
        match &self.bias {
            Some(b) => {
                let w = self.weight.to_dtype(DType::F32)?;
                candle_nn::ops::layer_norm(&xs32, &w, &b.to_dtype(DType::F32)?, self.eps)?
                    .to_dtype(dtype)
            }
            None if dtype == DType::F32 => {
                candle_nn::ops::rms_norm(&xs32, &self.weight.to_dtype(DType::F32)?, self.eps)
            }
            None => candle_nn::ops::rms_norm(&xs32, &self.ones, self.eps)?
                .to_dtype(dtype)?
                .broadcast_mul(&self.weight.to_dtype(dtype)?),
        }
    }
}

/// A linear layer `y = x W^T (+ b)` that accepts inputs of any rank, with optional unmerged
/// LoRA updates per adapter slot ([`crate::nn::lora`]).
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    /// Where the weight was read from, for attaching adapters by checkpoint tensor name.
    source: Option<WeightSource>,
    /// The update of each adapter slot (`None`: the slot leaves this layer alone).
    lora: Vec<Option<LoraUpdate>>,
}

/// The checkpoint tensor a linear layer's weight is, or a block of the rows of one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightSource {
    /// The checkpoint tensor name (`….q_proj.weight`).
    pub tensor: String,
    /// When the layer is part of a fused weight: which of its rows.
    pub rows: Option<RowBlock>,
}

/// Rows of a fused weight viewed as `(groups, slots, width, in)`: slots `start..start + len`
/// of every group (InternLM2's `wqkv`: per KV group, its query heads, key and value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowBlock {
    /// Groups (KV heads).
    pub groups: usize,
    /// Slots per group.
    pub slots: usize,
    /// Rows per slot (head dim).
    pub width: usize,
    /// First slot taken.
    pub start: usize,
    /// Slots taken.
    pub len: usize,
}

impl RowBlock {
    /// The block's rows of `t` `(groups * slots * width, cols)`, as `(groups * len * width, cols)`.
    pub fn take(&self, t: &Tensor) -> Result<Tensor> {
        let cols = t.dim(1)?;
        t.reshape((self.groups, self.slots, self.width, cols))?
            .narrow(1, self.start, self.len)?
            .contiguous()?
            .reshape((self.groups * self.len * self.width, cols))
    }
}

impl Linear {
    /// Loads `{vb}.weight` of shape (out, in) and, when `bias`, `{vb}.bias`.
    pub fn load(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias {
            Some(vb.get(out_dim, "bias")?)
        } else {
            None
        };
        let source = Some(WeightSource {
            tensor: format!("{}.weight", vb.prefix()),
            rows: None,
        });
        Ok(Linear {
            weight,
            bias,
            source,
            lora: Vec::new(),
        })
    }

    /// Builds a layer from tensors already loaded (e.g. fused q/k/v), read from `source`.
    pub fn from_parts(weight: Tensor, bias: Option<Tensor>, source: Option<WeightSource>) -> Self {
        Linear {
            weight,
            bias,
            source,
            lora: Vec::new(),
        }
    }

    /// The (out, in) weight.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Where the weight came from, when known.
    pub fn source(&self) -> Option<&WeightSource> {
        self.source.as_ref()
    }

    /// Sets adapter slot `slot`'s update of this layer (`B` already restricted to the
    /// layer's rows of a fused weight).
    pub fn attach(&mut self, slot: usize, update: LoraUpdate) {
        if self.lora.len() <= slot {
            self.lora.resize(slot + 1, None);
        }
        self.lora[slot] = Some(update);
    }

    /// The update of `slot`, if it has one.
    pub fn update(&self, slot: usize) -> Option<&LoraUpdate> {
        self.lora.get(slot).and_then(Option::as_ref)
    }

    /// `x W^T (+ b)` plus each row's adapter update, for `x` `(rows, in)` (any leading
    /// dimensions with [`AdapterRows::Base`] or [`AdapterRows::All`]).
    pub fn forward_rows(&self, x: &Tensor, rows: &AdapterRows) -> Result<Tensor> {
        let y = self.forward(x)?;
        if self.lora.is_empty() {
            return Ok(y);
        }
        rows.add(x, y, |s| self.update(s), false)
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dims = xs.dims();
        let in_dim = dims[dims.len() - 1];
        let rows = xs.elem_count() / in_dim.max(1);
        let flat = xs.reshape((rows, in_dim))?;
        let dtype = xs.dtype();
        let out = match &self.bias {
            // One rounding of `x W^T + b` to the storage dtype, like PyTorch's `addmm` (its bias
            // is the GEMM's C operand): candle's CPU half-precision matmul widens both operands
            // to f32 and narrows its output anyway, so widening here costs no extra conversion
            // and keeps the bias add in f32. On CUDA the bf16 GEMM (f32 accumulation, bf16
            // output) is kept: widening there would trade tensor-core GEMMs for f32 ones.
            Some(b) if xs.device().is_cpu() && matches!(dtype, DType::BF16 | DType::F16) => flat
                .to_dtype(DType::F32)?
                .matmul(&self.weight.to_dtype(DType::F32)?.t()?)?
                .broadcast_add(&b.to_dtype(DType::F32)?)?
                .to_dtype(dtype)?,
            Some(b) => flat.matmul(&self.weight.t()?)?.broadcast_add(b)?,
            None => flat.matmul(&self.weight.t()?)?,
        };
        let mut shape = dims.to_vec();
        let last = shape.len() - 1;
        shape[last] = self.weight.dim(0)?;
        out.reshape(shape)
    }
}

/// Softmax over the last dimension with an f32 sum, returned in the input's dtype.
///
/// transformers upcasts attention scores to f32 for the softmax (`softmax(..., dtype=float32)` in
/// Qwen2's and Llama's eager attention) and PyTorch's bf16 softmax kernels accumulate in f32 anyway.
/// candle's CPU softmax sums the exponentials in the storage dtype (`vec_reduce_sum` in bf16), which
/// loses every term below 2^-9 of the running sum over a few hundred keys; so on the CPU a half
/// precision input is widened first. candle's CUDA kernel already accumulates in f32
/// (`SOFTMAX_OP(__nv_bfloat16, float, softmax_bf16)` in candle-kernels' `reduce.cu`): there the
/// input is used as it is, with no extra pass over the score matrix.
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    let dtype = xs.dtype();
    if xs.device().is_cpu() && matches!(dtype, DType::BF16 | DType::F16) {
        candle_nn::ops::softmax_last_dim(&xs.to_dtype(DType::F32)?)?.to_dtype(dtype)
    } else {
        candle_nn::ops::softmax_last_dim(xs)
    }
}

/// Numerically stable `log(sum(exp(x)))` over the last dimension, in f32.
pub fn logsumexp_last(xs: &Tensor) -> Result<Tensor> {
    let xs = xs.to_dtype(DType::F32)?;
    let max = xs.max_keepdim(D::Minus1)?;
    let sum = xs.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?;
    sum.log()?.add(&max)?.squeeze(D::Minus1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// 2048 equal bf16 scores: each probability is 1/2048. Summed in bf16 the running sum stops
    /// at 256 (256 + 1 rounds back to 256), which candle's CPU softmax returns as 1/256.
    #[test]
    fn bf16_softmax_sums_in_f32() -> Result<()> {
        let xs = Tensor::zeros((1, 2048), DType::BF16, &Device::Cpu)?;
        let p = softmax_last_dim(&xs)?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
        assert!(p[0].iter().all(|&v| v == 1.0 / 2048.0), "{}", p[0][0]);
        Ok(())
    }

    /// RMSNorm in bf16 rounds the normalised value before the weight, as the models' code does.
    /// x = [1, 2], weight 3.1 (bf16 3.09375): PyTorch's `weight * normed.to(bfloat16)` gives
    /// [1.9609375, 3.921875]; f32 products rounded once would give [1.953125, 3.90625].
    #[test]
    fn bf16_rms_norm_rounds_like_the_reference() -> Result<()> {
        let vb = candle_nn::VarBuilder::zeros(DType::BF16, &Device::Cpu);
        let mut norm = Norm::load(NormKind::RmsNorm, 2, 0.0, vb)?;
        norm.weight = Tensor::new(&[3.1f32, 3.1], &Device::Cpu)?.to_dtype(DType::BF16)?;
        let x = Tensor::new(&[[1f32, 2.0]], &Device::Cpu)?.to_dtype(DType::BF16)?;
        let got = norm.forward(&x)?.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        assert_eq!(got[0], [1.9609375, 3.921875]);
        Ok(())
    }
}
