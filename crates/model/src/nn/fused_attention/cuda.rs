//! The CUDA launch: everything GPU-specific lives here (compiled with the `cuda` feature only).
use super::{FusedAttention, CUDA_MAX_HEAD_DIM};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use candle_core::cuda_backend::{Map3, WrapErr};
use candle_core::{CudaDevice, CudaStorage, DType, Layout, Result, Shape, WithDType};

/// PTX of `kernels/fused_attention.cu`, compiled by `build.rs`.
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/fused_attention.ptx"));
/// Threads per block of the f32 kernel; must match `THREADS` in the kernel.
const THREADS: usize = 256;
/// Threads per block of the tensor-core kernel (`TC_WARPS * 32` in the kernel).
const TC_THREADS: usize = 128;
/// Query rows per block of the tensor-core kernel (`16 * TC_WARPS`).
const TC_ROWS: usize = 64;

/// The kernel's head-dim instantiation for a runtime head dim (zero-padded up to it).
fn padded_head_dim(d: usize) -> Option<usize> {
    [8, 16, 32, 64, CUDA_MAX_HEAD_DIM]
        .into_iter()
        .find(|&p| d <= p)
}

/// The contiguous part of a device buffer a layout covers.
fn contiguous<'a, T>(s: &'a CudaSlice<T>, l: &Layout, what: &str) -> Result<CudaView<'a, T>> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(s.slice(start..end)),
        None => candle_core::bail!("fused attention: {what} must be contiguous"),
    }
}

impl Map3 for FusedAttention {
    fn f<T: DeviceRepr + WithDType + ValidAsZeroBits>(
        &self,
        q: &CudaSlice<T>,
        lq: &Layout,
        k: &CudaSlice<T>,
        lk: &Layout,
        v: &CudaSlice<T>,
        lv: &Layout,
        dev: &CudaDevice,
    ) -> Result<CudaSlice<T>> {
        let (q, k, v) = (
            contiguous(q, lq, "q")?,
            contiguous(k, lk, "k")?,
            contiguous(v, lv, "v")?,
        );
        let d = self.head_dim;
        let Some(padded) = padded_head_dim(d) else {
            candle_core::bail!(
                "fused attention: head dim {d} above the CUDA kernel's {CUDA_MAX_HEAD_DIM}"
            );
        };
        // bf16 / f16: tensor-core kernel (head dim padded to a multiple of 16, 64 query rows
        // per block of 4 warps); f32: CUDA-core kernel (threads per row = padded / min(16,
        // padded), THREADS / that rows per block).
        let (name, rows_per_block, threads) = match T::DTYPE {
            DType::F32 => (
                format!("fused_attention_f32_d{padded}"),
                THREADS / (padded / padded.min(16)),
                THREADS,
            ),
            DType::BF16 | DType::F16 => (
                format!(
                    "fused_attention_tc_{}_d{}",
                    if T::DTYPE == DType::BF16 {
                        "bf16"
                    } else {
                        "f16"
                    },
                    padded.max(16)
                ),
                TC_ROWS,
                TC_THREADS,
            ),
            other => candle_core::bail!("fused attention: unsupported dtype {other:?}"),
        };
        let func = dev.get_or_load_custom_func(&name, "rewarddance_fused_attention", PTX)?;
        let el = self.batch * self.heads * self.seq_q * d;
        // SAFETY: every element is written by the kernel.
        let out = unsafe { dev.alloc::<T>(el)? };
        let cfg = LaunchConfig {
            grid_dim: (
                self.seq_q.div_ceil(rows_per_block) as u32,
                self.heads as u32,
                self.batch as u32,
            ),
            block_dim: (threads as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // exp(x) = exp2(x * log2(e)): the kernel folds log2(e) into the scale.
        let scale_log2 = self.scale * std::f32::consts::LOG2_E;
        let mut builder = func.builder();
        builder.arg(&q);
        builder.arg(&k);
        builder.arg(&v);
        builder.arg(&out);
        candle_core::builder_arg!(
            builder,
            self.seq_q as i32,
            self.seq_k as i32,
            d as i32,
            scale_log2,
            self.causal as i32
        );
        // SAFETY: arguments match the kernel's signature; buffers hold the sizes it reads.
        unsafe { builder.launch(cfg) }.w()?;
        Ok(out)
    }
}

pub(super) fn forward(
    op: &FusedAttention,
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    s3: &CudaStorage,
    l3: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let dev = s1.device();
    let slice = op.map(&s1.slice, l1, &s2.slice, l2, &s3.slice, l3, dev)?;
    Ok((
        CudaStorage {
            slice,
            device: dev.clone(),
        },
        op.out_shape(),
    ))
}
