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
use half::{bf16, f16};
use rayon::prelude::*;

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
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
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

    /// The contiguous slice a layout covers (inputs are made contiguous by [`attention`]).
    fn contiguous<'a, T>(data: &'a [T], layout: &Layout, what: &str) -> Result<&'a [T]> {
        match layout.contiguous_offsets() {
            Some((start, end)) => Ok(&data[start..end]),
            None => candle_core::bail!("fused attention: {what} must be contiguous"),
        }
    }

    fn cpu<T: Element>(
        &self,
        q: &[T],
        lq: &Layout,
        k: &[T],
        lk: &Layout,
        v: &[T],
        lv: &Layout,
    ) -> Result<Vec<T>> {
        let q = Self::contiguous(q, lq, "q")?;
        let k = Self::contiguous(k, lk, "k")?;
        let v = Self::contiguous(v, lv, "v")?;
        let (tq, tk, d) = (self.seq_q, self.seq_k, self.head_dim);
        let bh = self.batch * self.heads;
        // f32 copies of K (transposed to (d, tk) per head, so a score block is a sum of
        // contiguous axpys) and V: O(seq * d) per head, converted once for all query tiles.
        let mut kt = vec![0f32; bh * d * tk];
        kt.par_chunks_mut(d * tk)
            .zip(k.par_chunks(tk * d))
            .for_each(|(dst, src)| {
                for (j, row) in src.chunks_exact(d).enumerate() {
                    for (x, val) in row.iter().enumerate() {
                        dst[x * tk + j] = val.to_f32();
                    }
                }
            });
        let vf: Vec<f32> = v.par_iter().map(|x| x.to_f32()).collect();
        let mut out = vec![T::from_f32(0.0); bh * tq * d];
        out.par_chunks_mut(tq * d)
            .enumerate()
            .for_each(|(head, out_head)| {
                let q_head = &q[head * tq * d..(head + 1) * tq * d];
                let kt_head = &kt[head * d * tk..(head + 1) * d * tk];
                let v_head = &vf[head * tk * d..(head + 1) * tk * d];
                out_head
                    .par_chunks_mut(CPU_QUERY_TILE * d)
                    .enumerate()
                    .for_each(|(tile, out_tile)| {
                        let row0 = tile * CPU_QUERY_TILE;
                        let rows = out_tile.len() / d;
                        let q_tile = &q_head[row0 * d..(row0 + rows) * d];
                        let mut qf: Vec<f32> = q_tile.iter().map(|x| x.to_f32()).collect();
                        let mut acc = vec![0f32; rows * d];
                        let tile = Tile {
                            row0,
                            rows,
                            seq_q: tq,
                            seq_k: tk,
                            d,
                            scale: self.scale,
                            causal: self.causal,
                        };
                        tile.run(&mut qf, kt_head, v_head, &mut acc);
                        for (o, a) in out_tile.iter_mut().zip(acc.iter()) {
                            *o = T::from_f32(*a);
                        }
                    });
            });
        Ok(out)
    }
}

/// Storage types the CPU path reads and writes (computation is always f32).
trait Element: Copy + Send + Sync {
    fn to_f32(self) -> f32;
    fn from_f32(x: f32) -> Self;
}

impl Element for f32 {
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(x: f32) -> Self {
        x
    }
}

impl Element for bf16 {
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
}

impl Element for f16 {
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
}

/// One CPU task: `rows` query rows starting at `row0` of one head against all its keys.
struct Tile {
    row0: usize,
    rows: usize,
    seq_q: usize,
    seq_k: usize,
    d: usize,
    scale: f32,
    causal: bool,
}

impl Tile {
    /// Online softmax over key blocks; on return `acc` holds the normalised output rows.
    /// `q` (rows, d) is scaled in place; `kt` is (d, seq_k); `v` is (seq_k, d).
    fn run(&self, q: &mut [f32], kt: &[f32], v: &[f32], acc: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the CPU supports the features `run_avx512` is compiled for.
                unsafe { self.run_avx512(q, kt, v, acc) };
                return;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the CPU supports the features `run_avx2` is compiled for.
                unsafe { self.run_avx2(q, kt, v, acc) };
                return;
            }
        }
        self.run_generic::<Plain>(q, kt, v, acc);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn run_avx512(&self, q: &mut [f32], kt: &[f32], v: &[f32], acc: &mut [f32]) {
        self.run_generic::<Fused>(q, kt, v, acc)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2(&self, q: &mut [f32], kt: &[f32], v: &[f32], acc: &mut [f32]) {
        self.run_generic::<Fused>(q, kt, v, acc)
    }

    /// The kernel, inlined into each feature-specific entry point so that the fixed-size loops
    /// below vectorise for that instruction set.
    #[inline(always)]
    fn run_generic<M: MulAdd>(&self, q: &mut [f32], kt: &[f32], v: &[f32], acc: &mut [f32]) {
        let (rows, d, tk) = (self.rows, self.d, self.seq_k);
        for x in q.iter_mut() {
            *x *= self.scale;
        }
        let mut max = [f32::NEG_INFINITY; CPU_QUERY_TILE];
        let mut sum = [0f32; CPU_QUERY_TILE];
        // Keys any row of this tile may see (causal: up to the last row's diagonal).
        let offset = tk as i64 - self.seq_q as i64;
        let key_end = if self.causal {
            ((self.row0 + rows) as i64 + offset).clamp(0, tk as i64) as usize
        } else {
            tk
        };
        for k0 in (0..key_end).step_by(CPU_KEY_BLOCK) {
            let bk = CPU_KEY_BLOCK.min(key_end - k0);
            for r in 0..rows {
                let q_row = &q[r * d..(r + 1) * d];
                // Scores s[j] = sum_x q[x] * kt[x][k0 + j]: contiguous axpys over j, kept in
                // registers for a full block.
                let mut s = [0f32; CPU_KEY_BLOCK];
                if bk == CPU_KEY_BLOCK {
                    for (x, &qx) in q_row.iter().enumerate() {
                        let k_row = &kt[x * tk + k0..x * tk + k0 + CPU_KEY_BLOCK];
                        for (sj, &kj) in s.iter_mut().zip(k_row) {
                            *sj = M::mul_add(qx, kj, *sj);
                        }
                    }
                } else {
                    for (x, &qx) in q_row.iter().enumerate() {
                        let k_row = &kt[x * tk + k0..x * tk + k0 + bk];
                        for (sj, &kj) in s.iter_mut().zip(k_row) {
                            *sj = M::mul_add(qx, kj, *sj);
                        }
                    }
                }
                let s = &mut s[..bk];
                if self.causal {
                    // Keys j > row + offset are masked.
                    let last = (self.row0 + r) as i64 + offset - k0 as i64;
                    let visible = (last + 1).clamp(0, bk as i64) as usize;
                    s[visible..].fill(f32::NEG_INFINITY);
                }
                let block_max = s.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                let new_max = max[r].max(block_max);
                if new_max == f32::NEG_INFINITY {
                    continue; // nothing visible yet for this row
                }
                let correction = exp(max[r] - new_max);
                max[r] = new_max;
                let acc_row = &mut acc[r * d..(r + 1) * d];
                if correction != 1.0 {
                    sum[r] *= correction;
                    for a in acc_row.iter_mut() {
                        *a *= correction;
                    }
                }
                let mut block_sum = 0f32;
                for x in s.iter_mut() {
                    *x = exp(*x - new_max);
                }
                for &p in s.iter() {
                    block_sum += p;
                }
                sum[r] += block_sum;
                accumulate_pv::<M>(s, &v[k0 * d..(k0 + bk) * d], acc_row);
            }
        }
        for r in 0..rows {
            let inv = if sum[r] > 0.0 { 1.0 / sum[r] } else { 0.0 };
            for a in acc[r * d..(r + 1) * d].iter_mut() {
                *a *= inv;
            }
        }
    }
}

/// Dims of the output row held in registers while a key block is accumulated.
const PV_CHUNK: usize = 32;

/// `acc[x] += sum_j p[j] * v[j][x]`, with `v` the block's rows (len(p), d): chunks of
/// [`PV_CHUNK`] output dims stay in registers across the keys of the block.
#[inline(always)]
fn accumulate_pv<M: MulAdd>(p: &[f32], v: &[f32], acc: &mut [f32]) {
    let d = acc.len();
    let full = d / PV_CHUNK * PV_CHUNK;
    for c0 in (0..full).step_by(PV_CHUNK) {
        let mut reg = [0f32; PV_CHUNK];
        reg.copy_from_slice(&acc[c0..c0 + PV_CHUNK]);
        for (j, &pj) in p.iter().enumerate() {
            let v_chunk = &v[j * d + c0..j * d + c0 + PV_CHUNK];
            for (a, &vx) in reg.iter_mut().zip(v_chunk) {
                *a = M::mul_add(pj, vx, *a);
            }
        }
        acc[c0..c0 + PV_CHUNK].copy_from_slice(&reg);
    }
    if full < d {
        for (j, &pj) in p.iter().enumerate() {
            let v_rest = &v[j * d + full..(j + 1) * d];
            for (a, &vx) in acc[full..].iter_mut().zip(v_rest) {
                *a = M::mul_add(pj, vx, *a);
            }
        }
    }
}

/// `a * b + c`, fused where the entry point's instruction set has FMA (a libm call otherwise).
trait MulAdd {
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
}

/// Separate multiply and add (no FMA unit assumed).
struct Plain;

impl MulAdd for Plain {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// One fused multiply-add instruction (entry points compiled with `fma`).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct Fused;

impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

/// `e^x` for `x <= 0` (arguments are `score - running max`), branch-free so loops over it
/// vectorise: Cephes' `expf` polynomial after reducing by powers of two (max relative error
/// about 2e-7). Returns 0 below -87 (and for -inf, i.e. masked keys).
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.max(-87.0);
    let t = xc * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // 2^n from the integer in t's mantissa (n in [-126, 0] after the clamp).
    let n_int = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let pow2 = f32::from_bits(((n_int + 127) << 23) as u32);
    if x < -87.0 {
        0.0
    } else {
        y * pow2
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

/// The CUDA launch: everything GPU-specific lives here.
#[cfg(feature = "cuda")]
mod cuda {
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
}

#[cfg(test)]
mod tests {
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
}
