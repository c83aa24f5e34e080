//! Vector-Jacobian products of the layers, for the gradient of a reward with respect to the
//! input pixels (`ScoreGrad`).
//!
//! Why not candle's autograd: its fused `layer_norm`, `rms_norm`, `softmax_last_dim` and
//! `rope` ops have no backward (the gradient silently stops there), its matmul backward also
//! computes the gradient of every frozen weight (weight-sized buffers for nothing), and it
//! keeps the whole graph alive. Here every backward takes the layer's input and the gradient of
//! its output and returns the gradient of its input only; callers recompute a layer's forward
//! from its saved input (activation checkpointing), so the peak is one layer's activations.
//!
//! All functions work in the dtype of their inputs; gradients of weights are never formed.

use candle_core::{DType, Result, Tensor, D};

use super::layers::{Linear, Norm};
use super::lora::AdapterRows;

/// `dx = dy · W` for `y = x · Wᵀ + b` (any leading dimensions).
pub fn linear(layer: &Linear, dy: &Tensor) -> Result<Tensor> {
    let w = layer.weight();
    let (out_dim, in_dim) = w.dims2()?;
    let dims = dy.dims();
    let rows = dy.elem_count() / out_dim.max(1);
    let dx = dy.reshape((rows, out_dim))?.matmul(w)?;
    let mut shape = dims.to_vec();
    let last = shape.len() - 1;
    shape[last] = in_dim;
    dx.reshape(shape)
}

/// [`linear`] for a layer with unmerged adapter updates, each row of `dy` with its
/// adapter ([`Linear::forward_rows`]): `dx = dy · W + s · (dy B) A` on an adapted row.
pub fn linear_rows(layer: &Linear, dy: &Tensor, rows: &AdapterRows) -> Result<Tensor> {
    let dx = linear(layer, dy)?;
    rows.add(dy, dx, |s| layer.update(s), true)
}

/// The backward of [`Norm`] over the last dimension (LayerNorm with a bias, RMSNorm without),
/// computed in f32 as the forward is.
pub fn norm(layer: &Norm, x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let dyw = dy
        .to_dtype(DType::F32)?
        .broadcast_mul(&layer.weight().to_dtype(DType::F32)?)?;
    let dim = x.dim(D::Minus1)? as f64;
    let eps = f64::from(layer.eps());
    let dx = if layer.is_layer_norm() {
        // x̂ = (x - μ) σ⁻¹: dx = σ⁻¹ (dŷ - mean(dŷ) - x̂ · mean(dŷ · x̂)).
        let mean = (x.sum_keepdim(D::Minus1)? / dim)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = (centred.sqr()?.sum_keepdim(D::Minus1)? / dim)?;
        let inv = (var + eps)?.sqrt()?.recip()?;
        let xhat = centred.broadcast_mul(&inv)?;
        let mean_dy = (dyw.sum_keepdim(D::Minus1)? / dim)?;
        let mean_dyx = ((&dyw * &xhat)?.sum_keepdim(D::Minus1)? / dim)?;
        dyw.broadcast_sub(&mean_dy)?
            .sub(&xhat.broadcast_mul(&mean_dyx)?)?
            .broadcast_mul(&inv)?
    } else {
        // r = (mean(x²) + ε)^-½: dx = r · dŷ - x · r³ · mean(dŷ · x).
        let inv = ((x.sqr()?.sum_keepdim(D::Minus1)? / dim)? + eps)?
            .sqrt()?
            .recip()?;
        let mean_dyx = ((&dyw * &x)?.sum_keepdim(D::Minus1)? / dim)?;
        let r3 = inv.powf(3.0)?;
        dyw.broadcast_mul(&inv)?
            .sub(&x.broadcast_mul(&r3.mul(&mean_dyx)?)?)?
    };
    dx.to_dtype(dtype)
}

/// The backward of the exact (erf) GELU: `dy · (Φ(x) + x · φ(x))`.
pub fn gelu_erf(x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let cdf = ((x.affine(std::f64::consts::FRAC_1_SQRT_2, 0.0)?.erf()? + 1.0)? * 0.5)?;
    let pdf = (x.sqr()?.affine(-0.5, 0.0)?.exp()?
        * (0.5 * std::f64::consts::FRAC_2_SQRT_PI * std::f64::consts::FRAC_1_SQRT_2))?;
    let d = (cdf + (x * pdf)?)?;
    (dy.to_dtype(DType::F32)? * d)?.to_dtype(dtype)
}

/// The backward of SiLU, `x · σ(x)`: `dy · σ(x) · (1 + x · (1 - σ(x)))`.
pub fn silu(x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let s = candle_nn::ops::sigmoid(&x)?;
    let d = (&s * ((x * (1.0 - &s)?)? + 1.0)?)?;
    (dy.to_dtype(DType::F32)? * d)?.to_dtype(dtype)
}

/// The backward of candle's non-interleaved `rope(x, cos, sin)`: a rotation by each position's
/// angle, whose transpose rotates back (`sin` negated).
pub fn rope(dy: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    candle_nn::rotary_emb::rope(&dy.contiguous()?, cos, &sin.neg()?)
}

/// The backward of softmax attention `softmax(q kᵀ · scale + mask) v` for one sequence:
/// `q` `(heads, tq, d)`, `k` and `v` `(kv_heads, tk, d)` with `heads` a multiple of `kv_heads`
/// (grouped-query attention: query head `h` reads key/value head `h / (heads / kv_heads)`),
/// `mask` `(tq, tk)` additive or none, `dout` `(heads, tq, d)`. Returns `(dq, dk, dv)` in the
/// shapes of `q`, `k`, `v`. Scores and softmax are computed in f32.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
    dout: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let dtype = q.dtype();
    let (heads, tq, d) = q.dims3()?;
    let kv_heads = k.dim(0)?;
    let group = heads / kv_heads;
    let f32s = |t: &Tensor| t.to_dtype(DType::F32);
    // (kv_heads, group, t, d) views of the queries and their gradients.
    let q = f32s(q)?.reshape((kv_heads, group * tq, d))?;
    let dout = f32s(dout)?.reshape((kv_heads, group * tq, d))?;
    let (k, v) = (f32s(k)?, f32s(v)?);
    let mut scores = (q.matmul(&k.t()?)? * scale)?;
    if let Some(mask) = mask {
        let mask = f32s(mask)?.repeat((group, 1))?;
        scores = scores.broadcast_add(&mask)?;
    }
    let p = candle_nn::ops::softmax_last_dim(&scores)?;
    let dv = p.t()?.matmul(&dout)?;
    let dp = dout.matmul(&v.t()?)?;
    let ds = (&p * dp.broadcast_sub(&(&dp * &p)?.sum_keepdim(D::Minus1)?)?)?;
    let dq = (ds.matmul(&k)? * scale)?.reshape((heads, tq, d))?;
    let dk = (ds.t()?.matmul(&q)? * scale)?;
    Ok((
        dq.to_dtype(dtype)?,
        dk.to_dtype(dtype)?,
        dv.to_dtype(dtype)?,
    ))
}

#[cfg(test)]
#[path = "grad_tests.rs"]
mod tests;
