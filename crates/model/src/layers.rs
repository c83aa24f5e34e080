//! Small building blocks shared by the vision tower and the language model.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

use crate::config::NormKind;

/// LayerNorm (weight + bias) or RMSNorm (weight), computed in f32 whatever the weights' dtype.
#[derive(Debug, Clone)]
pub struct Norm {
    weight: Tensor,
    bias: Option<Tensor>,
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
        Ok(Norm {
            weight,
            bias,
            eps: eps as f32,
        })
    }
}

impl Module for Norm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dtype = xs.dtype();
        let xs32 = xs.to_dtype(DType::F32)?;
        let w = self.weight.to_dtype(DType::F32)?;
        let out = match &self.bias {
            Some(b) => candle_nn::ops::layer_norm(&xs32, &w, &b.to_dtype(DType::F32)?, self.eps)?,
            None => candle_nn::ops::rms_norm(&xs32, &w, self.eps)?,
        };
        out.to_dtype(dtype)
    }
}

/// A linear layer `y = x W^T (+ b)` that accepts inputs of any rank.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
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
        Ok(Linear { weight, bias })
    }

    /// Builds a layer from tensors already loaded (e.g. fused q/k/v).
    pub fn from_parts(weight: Tensor, bias: Option<Tensor>) -> Self {
        Linear { weight, bias }
    }

    /// The (out, in) weight.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dims = xs.dims();
        let in_dim = dims[dims.len() - 1];
        let rows = xs.elem_count() / in_dim.max(1);
        let flat = xs.reshape((rows, in_dim))?;
        let mut out = flat.matmul(&self.weight.t()?)?;
        if let Some(b) = &self.bias {
            out = out.broadcast_add(b)?;
        }
        let mut shape = dims.to_vec();
        let last = shape.len() - 1;
        shape[last] = self.weight.dim(0)?;
        out.reshape(shape)
    }
}

/// Numerically stable `log(sum(exp(x)))` over the last dimension, in f32.
pub fn logsumexp_last(xs: &Tensor) -> Result<Tensor> {
    let xs = xs.to_dtype(DType::F32)?;
    let max = xs.max_keepdim(D::Minus1)?;
    let sum = xs.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?;
    sum.log()?.add(&max)?.squeeze(D::Minus1)
}
