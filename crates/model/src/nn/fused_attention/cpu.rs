//! The CPU forward: online softmax over key blocks, query tiles in parallel with rayon,
//! FMA / AVX2 / AVX-512 picked at run time, f32 arithmetic whatever the storage.

use candle_core::{Layout, Result};
use half::{bf16, f16};
use rayon::prelude::*;

use super::{FusedAttention, CPU_KEY_BLOCK, CPU_QUERY_TILE};

impl FusedAttention {
    /// The contiguous slice a layout covers (inputs are made contiguous by `attention`).
    fn contiguous<'a, T>(data: &'a [T], layout: &Layout, what: &str) -> Result<&'a [T]> {
        match layout.contiguous_offsets() {
            Some((start, end)) => Ok(&data[start..end]),
            None => candle_core::bail!("fused attention: {what} must be contiguous"),
        }
    }

    pub(super) fn cpu<T: Element>(
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
pub(super) trait Element: Copy + Send + Sync {
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
pub(super) fn exp(x: f32) -> f32 {
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
