//! Each backward against candle's own autograd over a composition of basic ops (which do have
//! backward rules), checked first to compute the same forward as our layer.

use candle_core::{Device, Module, Tensor, Var, D};

use super::*;
use crate::nn::layers::NormKind;

fn randn(shape: &[usize], seed: u64) -> Tensor {
    // Deterministic values without depending on candle's RNG.
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let data: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

/// dx of `(f(x) · dy).sum()` by candle's autograd.
fn oracle(x: &Tensor, dy: &Tensor, f: impl Fn(&Tensor) -> candle_core::Result<Tensor>) -> Tensor {
    let var = Var::from_tensor(x).unwrap();
    let loss = (f(var.as_tensor()).unwrap() * dy)
        .unwrap()
        .sum_all()
        .unwrap();
    loss.backward()
        .unwrap()
        .get(var.as_tensor())
        .unwrap()
        .clone()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

fn assert_close(ours: &Tensor, theirs: &Tensor, what: &str) {
    let scale: f32 = theirs
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap();
    let diff = max_diff(ours, theirs);
    assert!(
        diff <= 1e-5 * scale.max(1.0),
        "{what}: max diff {diff} (scale {scale})"
    );
}

fn norm(kind: NormKind, dim: usize) -> Norm {
    let weight = (randn(&[dim], 1) + 1.0).unwrap();
    let bias = matches!(kind, NormKind::LayerNorm).then(|| randn(&[dim], 2));
    Norm::from_parts(weight, bias, 1e-6).unwrap()
}

#[test]
fn norm_backward_matches_autograd() {
    for kind in [NormKind::LayerNorm, NormKind::RmsNorm] {
        let layer = norm(kind, 24);
        let (x, dy) = (randn(&[5, 24], 3), randn(&[5, 24], 4));
        let composed = |x: &Tensor| -> candle_core::Result<Tensor> {
            let dim = x.dim(D::Minus1)? as f64;
            let y = match kind {
                NormKind::LayerNorm => {
                    let c = x.broadcast_sub(&(x.sum_keepdim(D::Minus1)? / dim)?)?;
                    let var = (c.sqr()?.sum_keepdim(D::Minus1)? / dim)?;
                    c.broadcast_div(&(var + 1e-6)?.sqrt()?)?
                }
                NormKind::RmsNorm => {
                    let ms = (x.sqr()?.sum_keepdim(D::Minus1)? / dim)?;
                    x.broadcast_div(&(ms + 1e-6)?.sqrt()?)?
                }
            };
            let y = y.broadcast_mul(layer.weight())?;
            match layer.bias() {
                Some(b) => y.broadcast_add(b),
                None => Ok(y),
            }
        };
        assert_close(
            &layer.forward(&x).unwrap(),
            &composed(&x).unwrap(),
            "norm forward",
        );
        assert_close(
            &super::norm(&layer, &x, &dy).unwrap(),
            &oracle(&x, &dy, composed),
            "norm",
        );
    }
}

#[test]
fn linear_gelu_silu_backwards_match_autograd() {
    let layer = Linear::from_parts(randn(&[7, 4], 5), Some(randn(&[7], 6)), None);
    let (x, dy) = (randn(&[3, 2, 4], 7), randn(&[3, 2, 7], 8));
    assert_close(
        &linear(&layer, &dy).unwrap(),
        &oracle(&x, &dy, |x| layer.forward(x)),
        "linear",
    );
    let (x, dy) = (
        randn(&[6, 9], 9).affine(3.0, 0.0).unwrap(),
        randn(&[6, 9], 10),
    );
    assert_close(
        &gelu_erf(&x, &dy).unwrap(),
        &oracle(&x, &dy, |x| x.gelu_erf()),
        "gelu",
    );
    assert_close(
        &silu(&x, &dy).unwrap(),
        &oracle(&x, &dy, |x| x.silu()),
        "silu",
    );
}

#[test]
fn rope_backward_matches_autograd() {
    let (t, d) = (6, 8);
    let angles = randn(&[t, d / 2], 11).affine(3.0, 0.0).unwrap();
    let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
    let (x, dy) = (randn(&[1, 2, t, d], 12), randn(&[1, 2, t, d], 13));
    let ours = super::rope(&dy, &cos, &sin).unwrap();
    let theirs = oracle(&x, &dy, |x| candle_nn::rotary_emb::rope_slow(x, &cos, &sin));
    assert_close(&ours, &theirs, "rope");
}

#[test]
fn attention_backward_matches_autograd_with_gqa_and_causal_masks() {
    let (heads, kv_heads, t, d) = (4, 2, 5, 3);
    let q = randn(&[heads, t, d], 14);
    let k = randn(&[kv_heads, t, d], 15);
    let v = randn(&[kv_heads, t, d], 16);
    let dout = randn(&[heads, t, d], 17);
    let causal: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    let causal = Tensor::from_vec(causal, (t, t), &Device::Cpu).unwrap();
    for mask in [None, Some(&causal)] {
        let scale = 0.7;
        // Query head h reads key/value head h / 2.
        let reference = |q: &Tensor, k: &Tensor, v: &Tensor| -> candle_core::Result<Tensor> {
            let k = Tensor::cat(
                &[
                    &k.narrow(0, 0, 1)?.repeat((2, 1, 1))?,
                    &k.narrow(0, 1, 1)?.repeat((2, 1, 1))?,
                ],
                0,
            )?;
            let v = Tensor::cat(
                &[
                    &v.narrow(0, 0, 1)?.repeat((2, 1, 1))?,
                    &v.narrow(0, 1, 1)?.repeat((2, 1, 1))?,
                ],
                0,
            )?;
            let mut s = (q.matmul(&k.t()?)? * scale)?;
            if let Some(m) = mask {
                s = s.broadcast_add(m)?;
            }
            let e = s.broadcast_sub(&s.max_keepdim(D::Minus1)?)?.exp()?;
            e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?.matmul(&v)
        };
        let (dq, dk, dv) = super::attention(&q, &k, &v, mask, scale, &dout).unwrap();
        assert_close(&dq, &oracle(&q, &dout, |q| reference(q, &k, &v)), "dq");
        assert_close(&dk, &oracle(&k, &dout, |k| reference(&q, k, &v)), "dk");
        assert_close(&dv, &oracle(&v, &dout, |v| reference(&q, &k, v)), "dv");
    }
}
