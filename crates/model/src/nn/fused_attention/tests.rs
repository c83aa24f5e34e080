//! The fused op against the matmul + softmax reference.

use super::cpu::exp;
use super::*;
use candle_core::Device;

fn random(shape: (usize, usize, usize, usize), seed: u64) -> Result<Tensor> {
    // Deterministic xorshift values in [-2, 2): no RNG state shared between tests.
    let n = shape.0 * shape.1 * shape.2 * shape.3;
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let data: Vec<f32> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    (a.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()
}

/// Fused vs naive in f32 (tight) and bf16 / f16 storage (vs the f32 naive result on the
/// same rounded inputs: only the output rounding differs).
fn check(b: usize, h: usize, tq: usize, tk: usize, d: usize, causal: bool) -> Result<()> {
    let seed = (b * 1_000_003 + h * 10_007 + tq * 101 + tk * 7 + d) as u64;
    let q = random((b, h, tq, d), seed)?;
    let k = random((b, h, tk, d), seed + 1)?;
    let v = random((b, h, tk, d), seed + 2)?;
    let scale = (d as f64).powf(-0.5);
    let want = naive_attention(&q, &k, &v, scale, causal)?;
    let got = attention(&q, &k, &v, scale, causal)?;
    assert_eq!(got.dims(), &[b, h, tq, d]);
    let err = max_abs_diff(&got, &want)?;
    assert!(
        err < 1e-5,
        "f32 b{b} h{h} tq{tq} tk{tk} d{d} causal {causal}: max |diff| {err}"
    );
    for (dtype, tol) in [(DType::BF16, 1e-2), (DType::F16, 2e-3)] {
        let (qh, kh, vh) = (q.to_dtype(dtype)?, k.to_dtype(dtype)?, v.to_dtype(dtype)?);
        let want = naive_attention(
            &qh.to_dtype(DType::F32)?,
            &kh.to_dtype(DType::F32)?,
            &vh.to_dtype(DType::F32)?,
            scale,
            causal,
        )?;
        let got = attention(&qh, &kh, &vh, scale, causal)?;
        assert_eq!(got.dtype(), dtype);
        let err = max_abs_diff(&got, &want)?;
        assert!(
            err < tol,
            "{dtype:?} b{b} h{h} tq{tq} tk{tk} d{d} causal {causal}: max |diff| {err}"
        );
    }
    Ok(())
}

#[test]
fn matches_naive_non_causal() -> Result<()> {
    for &t in &[1, 7, 65, 1025] {
        for &d in &[64, 128, 40, 8] {
            check(2, 3, t, t, d, false)?;
        }
    }
    Ok(())
}

#[test]
fn matches_naive_causal() -> Result<()> {
    for &t in &[1, 7, 65, 1025] {
        for &d in &[64, 128, 40, 8] {
            check(2, 3, t, t, d, true)?;
        }
    }
    Ok(())
}

#[test]
fn matches_naive_with_more_keys_than_queries() -> Result<()> {
    // Bottom-right causal alignment (a suffix of queries attending to a longer context).
    for &causal in &[false, true] {
        check(1, 2, 5, 70, 16, causal)?;
        check(1, 2, 17, 129, 40, causal)?;
    }
    Ok(())
}

#[test]
fn rows_without_visible_keys_are_zero() -> Result<()> {
    // Causal with seq_q > seq_k: the first rows see no key.
    let q = random((1, 1, 6, 8), 1)?;
    let k = random((1, 1, 3, 8), 2)?;
    let v = random((1, 1, 3, 8), 3)?;
    let out = attention(&q, &k, &v, 0.5, true)?;
    let first = out.narrow(2, 0, 3)?.abs()?.flatten_all()?.max(0)?;
    assert_eq!(first.to_scalar::<f32>()?, 0.0);
    let want = naive_attention(&q, &k, &v, 0.5, true)?.narrow(2, 3, 3)?;
    assert!(max_abs_diff(&out.narrow(2, 3, 3)?, &want)? < 1e-5);
    Ok(())
}

#[test]
fn non_contiguous_inputs_and_bad_shapes() -> Result<()> {
    // (b, t, h, d) transposed to (b, h, t, d) without a copy.
    let q = random((2, 9, 3, 16), 4)?.transpose(1, 2)?;
    let k = random((2, 9, 3, 16), 5)?.transpose(1, 2)?;
    let v = random((2, 9, 3, 16), 6)?.transpose(1, 2)?;
    let want = naive_attention(
        &q.contiguous()?,
        &k.contiguous()?,
        &v.contiguous()?,
        0.25,
        false,
    )?;
    let got = attention(&q, &k, &v, 0.25, false)?;
    assert!(max_abs_diff(&got, &want)? < 1e-5);
    let short = random((2, 3, 9, 8), 7)?;
    assert!(attention(&q, &short, &v, 0.25, false).is_err());
    assert!(attention(&q, &k, &v.to_dtype(DType::BF16)?, 0.25, false).is_err());
    Ok(())
}

#[test]
fn polynomial_exp_is_accurate() {
    let mut worst = 0f64;
    for i in 0..=870_000 {
        let x = -(i as f32) * 1e-4;
        let want = (x as f64).exp();
        let rel = ((exp(x) as f64 - want) / want).abs();
        worst = worst.max(rel);
    }
    assert!(worst < 3e-7, "max relative error {worst}");
    assert_eq!(exp(f32::NEG_INFINITY), 0.0);
    assert_eq!(exp(-100.0), 0.0);
    assert_eq!(exp(0.0), 1.0);
}

#[test]
fn supports_reports_cpu_and_dtypes() {
    assert!(supports(&Device::Cpu, DType::F32, 40));
    assert!(supports(&Device::Cpu, DType::BF16, 256));
    assert!(!supports(&Device::Cpu, DType::F64, 64));
}
