//! Fused (flash-style) scaled dot-product attention that never materialises the
//! `(seq_q, seq_k)` score matrix of a head.
//!
//! [`attention`] takes `(batch, heads, seq, head_dim)` tensors and runs one pass of online
//! softmax over blocks of keys per query row: a running maximum, a running denominator and an
//! f32 output accumulator that is rescaled whenever the maximum grows. Storage may be f32, bf16
//! or f16; every product, sum and exponential is computed in f32.
//!
//! - CPU: blocks of [`CPU_QUERY_TILE`] query rows against blocks of [`CPU_KEY_BLOCK`] keys,
//!   parallel over (batch x head x query tile) with rayon. The only scratch is a
//!   `(query tile, key block)` score block per task plus an f32 copy of K (transposed) and V, i.e.
//!   `O(seq * head_dim)`, never `O(seq^2)`.
//! - CUDA (feature `cuda`): `kernels/fused_attention.cu`, compiled to PTX by `build.rs` and loaded
//!   through candle's custom-kernel cache. One thread block per (query tile, head, batch), K/V
//!   tiles in shared memory; bf16 / f16 run on tensor cores (WMMA 16x16x16, f32 accumulation),
//!   f32 on the CUDA cores. Head dims up to [`CUDA_MAX_HEAD_DIM`] (zero-padded to 8, 16, 32, 64
//!   or 128 inside the kernels); [`supports`] says whether a call will run, so callers can fall
//!   back to [`naive_attention`]. `kernels/emulate.sh` runs the kernel source on the CPU.
//!
//! Causal masking uses the bottom-right alignment of flash-attention: query row `i` sees key `j`
//! when `j <= i + seq_k - seq_q` (for `seq_q == seq_k` the usual lower triangle). A row that
//! sees no key at all yields zeros.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Tensor, D};

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
#[cfg(test)]
mod tests;

/// Query rows handled together by one CPU task (they share each loaded key block).
pub const CPU_QUERY_TILE: usize = 16;
/// Keys per online-softmax step on the CPU.
pub const CPU_KEY_BLOCK: usize = 64;
/// Largest head dim the CUDA kernel is instantiated for.
pub const CUDA_MAX_HEAD_DIM: usize = 128;

/// Fused attention `softmax(q k^T * scale [+ causal mask]) v` over `(batch, heads, seq, head_dim)`.
///
/// `q` is `(b, h, seq_q, d)`, `k` and `v` are `(b, h, seq_k, d)`, all of the same dtype (f32, bf16
/// or f16) and on the same device; non-contiguous inputs are made contiguous first. Returns
/// `(b, h, seq_q, d)` in the input dtype. On CUDA this errors for head dims above
/// [`CUDA_MAX_HEAD_DIM`]: check [`supports`] first.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, causal: bool) -> Result<Tensor> {
    let (b, h, tq, d) = q.dims4()?;
    let (bk, hk, tk, dk) = k.dims4()?;
    if (bk, hk, dk) != (b, h, d) || v.dims() != k.dims() {
        candle_core::bail!(
            "fused attention: q {:?}, k {:?}, v {:?} do not match (expected q (b, h, tq, d), k = v (b, h, tk, d))",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    if q.dtype() != k.dtype() || q.dtype() != v.dtype() {
        candle_core::bail!(
            "fused attention: dtypes differ: q {:?}, k {:?}, v {:?}",
            q.dtype(),
            k.dtype(),
            v.dtype()
        );
    }
    if b * h * tq * d == 0 {
        return Tensor::zeros((b, h, tq, d), q.dtype(), q.device());
    }
    let op = FusedAttention {
        scale: scale as f32,
        causal,
        batch: b,
        heads: h,
        seq_q: tq,
        seq_k: tk,
        head_dim: d,
    };
    q.contiguous()?
        .apply_op3_no_bwd(&k.contiguous()?, &v.contiguous()?, &op)
}

/// Whether [`attention`] runs for this device, dtype and head dim (CPU: any head dim; CUDA: head
/// dims up to [`CUDA_MAX_HEAD_DIM`]; both: f32, bf16, f16).
pub fn supports(device: &Device, dtype: DType, head_dim: usize) -> bool {
    let dtype_ok = matches!(dtype, DType::F32 | DType::BF16 | DType::F16);
    match device {
        Device::Cpu => dtype_ok,
        Device::Cuda(_) => {
            dtype_ok && cfg!(feature = "cuda") && (1..=CUDA_MAX_HEAD_DIM).contains(&head_dim)
        }
        _ => false,
    }
}

/// Environment switch for A/B measurements: `REWARDDANCE_FUSED_ATTENTION=0` (or `off`, `false`)
/// makes [`enabled`] false, so callers such as the vision tower take the matmul path instead.
pub const DISABLE_ENV: &str = "REWARDDANCE_FUSED_ATTENTION";

/// Whether callers should use the fused op (read once from [`DISABLE_ENV`]; on by default).
pub fn enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| {
        !matches!(
            std::env::var(DISABLE_ENV).ok().as_deref().map(str::trim),
            Some("0" | "off" | "false" | "OFF" | "FALSE")
        )
    })
}

/// The reference semantics: `softmax(q k^T * scale [+ causal mask]) v` with the full score matrix
/// materialised (matmul, softmax, matmul), same shapes and causal convention as [`attention`].
pub fn naive_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    causal: bool,
) -> Result<Tensor> {
    let mut scores = (q.matmul(&k.t()?)? * scale)?;
    if causal {
        let (tq, tk) = (q.dim(D::Minus2)?, k.dim(D::Minus2)?);
        let offset = tk as i64 - tq as i64;
        let mask: Vec<f32> = (0..tq as i64)
            .flat_map(|i| {
                (0..tk as i64).map(move |j| {
                    if j <= i + offset {
                        0.0
                    } else {
                        f32::NEG_INFINITY
                    }
                })
            })
            .collect();
        let mask = Tensor::from_vec(mask, (tq, tk), q.device())?.to_dtype(scores.dtype())?;
        scores = scores.broadcast_add(&mask)?;
    }
    let probs = crate::nn::layers::softmax_last_dim(&scores)?;
    probs.matmul(v)
}

/// The custom op: shapes are checked by [`attention`] before it is applied.
struct FusedAttention {
    scale: f32,
    causal: bool,
    batch: usize,
    heads: usize,
    seq_q: usize,
    seq_k: usize,
    head_dim: usize,
}

impl FusedAttention {
    fn out_shape(&self) -> Shape {
        Shape::from((self.batch, self.heads, self.seq_q, self.head_dim))
    }
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) => {
                CpuStorage::F32(self.cpu(q, l1, k, l2, v, l3)?)
            }
            (CpuStorage::BF16(q), CpuStorage::BF16(k), CpuStorage::BF16(v)) => {
                CpuStorage::BF16(self.cpu(q, l1, k, l2, v, l3)?)
            }
            (CpuStorage::F16(q), CpuStorage::F16(k), CpuStorage::F16(v)) => {
                CpuStorage::F16(self.cpu(q, l1, k, l2, v, l3)?)
            }
            _ => candle_core::bail!(
                "fused attention: unsupported dtype {:?} (f32, bf16, f16)",
                s1.dtype()
            ),
        };
        Ok((out, self.out_shape()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::forward(self, s1, l1, s2, l2, s3, l3)
    }
}
