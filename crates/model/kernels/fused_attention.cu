// Fused (flash-style) attention for rewarddance-model (`src/fused_attention.rs`).
//
// out = softmax(q k^T * scale [+ causal mask]) v over contiguous (batch, heads, seq, head_dim)
// tensors, without materialising the (seq_q, seq_k) score matrix: online softmax over tiles of
// BC keys, f32 accumulation, f32 / f16 / bf16 storage.
//
// Two kernels: `fused_attention_{f32,f16,bf16}_dD` on the CUDA cores (below) and, for f16 / bf16,
// `fused_attention_tc_{f16,bf16}_dD` on tensor cores (WMMA, further down; what the Rust side
// launches for those dtypes).
//
// Layout of the work (CUDA-core kernel):
// - one thread block per (query tile, head, batch): grid (ceil(seq_q / ROWS), heads, batch);
// - THREADS threads; each query row is owned by G = D / DPT consecutive threads of a warp, each
//   holding DPT of the row's (zero-padded) D dims of q and of the output accumulator in registers;
//   a thread owns the float4 chunks c * G + g (c < DPT / 4) of its row, so the threads of a group
//   read consecutive 16-byte chunks of a shared-memory row (no bank conflicts);
// - K and V tiles (BC keys x D dims, converted to f32, zero-padded) are staged in shared memory
//   and shared by all ROWS rows of the block;
// - partial dot products are summed across the G threads of a row with warp shuffles, so every
//   thread of the group holds the full score and runs the same online-softmax update.
//
// The runtime head dim d may be anything up to the instantiated D (dims >= d are zero). exp is
// exp2 with log2(e) folded into `scale_log2` by the caller. Causal masking is bottom-right aligned
// (query row i sees key j when j <= i + seq_k - seq_q); a row that sees no key yields zeros.
//
// emulate.sh runs this file on the CPU (one OS thread per CUDA thread) against naive attention.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#include <math.h>
#include <stdint.h>

#define THREADS 256
#define BC 32

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}

template <typename T, int D>
__device__ __forceinline__ void fused_attention(const T *__restrict__ q, const T *__restrict__ k,
                                                const T *__restrict__ v, T *__restrict__ out,
                                                const int seq_q, const int seq_k, const int d,
                                                const float scale_log2, const int causal) {
    constexpr int DPT = D < 16 ? D : 16;  // dims per thread
    constexpr int G = D / DPT;            // threads per query row (1..8, divides 32)
    constexpr int ROWS = THREADS / G;     // query rows per block
    constexpr int C4 = DPT / 4;           // float4 chunks per thread
    constexpr int D4 = D / 4;             // float4 chunks per row
    static_assert(DPT % 4 == 0, "head dim instantiation must be a multiple of 4");
    static_assert(32 % G == 0, "a row's threads must lie in one warp");

    __shared__ float4 ks[BC][D4];
    __shared__ float4 vs[BC][D4];

    const int tid = threadIdx.x;
    const int g = tid % G;
    const int row = blockIdx.x * ROWS + tid / G;
    const size_t head = (size_t)blockIdx.z * gridDim.y + blockIdx.y;
    const T *qh = q + head * (size_t)seq_q * d;
    const T *kh = k + head * (size_t)seq_k * d;
    const T *vh = v + head * (size_t)seq_k * d;
    T *oh = out + head * (size_t)seq_q * d;

    float qr[DPT];
    float acc[DPT];
#pragma unroll
    for (int c = 0; c < C4; ++c) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int x = (c * G + g) * 4 + e;
            qr[c * 4 + e] = (row < seq_q && x < d) ? to_f32(qh[(size_t)row * d + x]) * scale_log2 : 0.f;
            acc[c * 4 + e] = 0.f;
        }
    }
    float m = -INFINITY;  // running max (log2 domain)
    float l = 0.f;        // running denominator

    const int offset = seq_k - seq_q;
    int key_end = seq_k;
    if (causal) {
        const int last_row = min(seq_q, (int)(blockIdx.x + 1) * ROWS) - 1;
        key_end = max(0, min(seq_k, last_row + offset + 1));
    }

    for (int k0 = 0; k0 < key_end; k0 += BC) {
        __syncthreads();  // previous tile fully consumed
        float *ksf = reinterpret_cast<float *>(ks);
        float *vsf = reinterpret_cast<float *>(vs);
        for (int e = tid; e < BC * D; e += THREADS) {
            const int j = e / D;
            const int x = e % D;
            const int kj = k0 + j;
            float kv = 0.f, vv = 0.f;
            if (kj < seq_k && x < d) {
                kv = to_f32(kh[(size_t)kj * d + x]);
                vv = to_f32(vh[(size_t)kj * d + x]);
            }
            ksf[e] = kv;
            vsf[e] = vv;
        }
        __syncthreads();

        float s[BC];
        float tile_max = -INFINITY;
#pragma unroll
        for (int j = 0; j < BC; ++j) {
            float p = 0.f;
#pragma unroll
            for (int c = 0; c < C4; ++c) {
                const float4 kk = ks[j][c * G + g];
                p += qr[c * 4 + 0] * kk.x + qr[c * 4 + 1] * kk.y + qr[c * 4 + 2] * kk.z +
                     qr[c * 4 + 3] * kk.w;
            }
#pragma unroll
            for (int o = G / 2; o > 0; o >>= 1) p += __shfl_xor_sync(0xffffffffu, p, o);
            const int kj = k0 + j;
            const bool visible = kj < seq_k && (!causal || kj <= row + offset);
            s[j] = visible ? p : -INFINITY;
            tile_max = fmaxf(tile_max, s[j]);
        }
        const float m_new = fmaxf(m, tile_max);
        if (m_new == -INFINITY) continue;  // nothing visible yet for this row
        const float correction = exp2f(m - m_new);  // 0 on the first visible tile
        m = m_new;
        l *= correction;
#pragma unroll
        for (int i = 0; i < DPT; ++i) acc[i] *= correction;
#pragma unroll
        for (int j = 0; j < BC; ++j) {
            const float p = exp2f(s[j] - m_new);
            l += p;
#pragma unroll
            for (int c = 0; c < C4; ++c) {
                const float4 vv = vs[j][c * G + g];
                acc[c * 4 + 0] += p * vv.x;
                acc[c * 4 + 1] += p * vv.y;
                acc[c * 4 + 2] += p * vv.z;
                acc[c * 4 + 3] += p * vv.w;
            }
        }
    }

    if (row < seq_q) {
        const float inv = l > 0.f ? 1.f / l : 0.f;
#pragma unroll
        for (int c = 0; c < C4; ++c) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int x = (c * G + g) * 4 + e;
                if (x < d) oh[(size_t)row * d + x] = from_f32<T>(acc[c * 4 + e] * inv);
            }
        }
    }
}

#define INSTANTIATE(TNAME, T, D)                                                                \
    extern "C" __global__ void __launch_bounds__(THREADS)                                       \
        fused_attention_##TNAME##_d##D(const T *q, const T *k, const T *v, T *out,              \
                                       const int seq_q, const int seq_k, const int d,           \
                                       const float scale_log2, const int causal) {              \
        fused_attention<T, D>(q, k, v, out, seq_q, seq_k, d, scale_log2, causal);               \
    }

#define INSTANTIATE_DIMS(TNAME, T) \
    INSTANTIATE(TNAME, T, 8)       \
    INSTANTIATE(TNAME, T, 16)      \
    INSTANTIATE(TNAME, T, 32)      \
    INSTANTIATE(TNAME, T, 64)      \
    INSTANTIATE(TNAME, T, 128)

INSTANTIATE_DIMS(f32, float)
INSTANTIATE_DIMS(f16, __half)
INSTANTIATE_DIMS(bf16, __nv_bfloat16)

// ---------------------------------------------------------------------------------------------
// Tensor-core variant for bf16 / f16 storage (WMMA 16x16x16, f32 accumulation), same semantics.
// One block of TC_WARPS warps per (query tile of 16 * TC_WARPS rows, head, batch); each warp owns
// 16 query rows: Q fragments and the output accumulators stay in registers, S = Q K^T goes
// through shared memory for the online softmax (2 lanes per row), P is written back as T for
// O += P V. Rescaling the accumulators (whose element layout WMMA leaves unspecified) is done by
// a round trip through shared memory, only when a row's maximum grew. D is a multiple of 16.
#define TC_WARPS 4
#define TC_BC 32

template <typename T, int D>
__device__ __forceinline__ void fused_attention_tc(const T *__restrict__ q, const T *__restrict__ k,
                                                   const T *__restrict__ v, T *__restrict__ out,
                                                   const int seq_q, const int seq_k, const int d,
                                                   const float scale_log2, const int causal) {
    using namespace nvcuda;
    constexpr int BR = 16 * TC_WARPS;  // query rows per block
    constexpr int DF = D / 16;         // fragments along the head dim
    constexpr int KF = TC_BC / 16;     // fragments along a key tile
    static_assert(D % 16 == 0, "tensor-core head dims are multiples of 16");
    static_assert(2 * TC_BC >= BR, "Q staging reuses the K/V tiles");

    // K tile then V tile, TC_BC x D each (row-major); before the key loop: the Q tile, BR x D.
    __shared__ __align__(32) T kv[2 * TC_BC * D];
    __shared__ __align__(32) float ss[TC_WARPS][16 * TC_BC];  // scores; scratch for O rescale
    __shared__ __align__(32) T ps[TC_WARPS][16 * TC_BC];      // probabilities

    const int tid = threadIdx.x;
    const int warp = tid / 32;
    const int lane = tid % 32;
    const int q0 = blockIdx.x * BR;
    const size_t head = (size_t)blockIdx.z * gridDim.y + blockIdx.y;
    const T *qh = q + head * (size_t)seq_q * d;
    const T *kh = k + head * (size_t)seq_k * d;
    const T *vh = v + head * (size_t)seq_k * d;
    T *oh = out + head * (size_t)seq_q * d;
    const T zero = from_f32<T>(0.f);

    for (int e = tid; e < BR * D; e += TC_WARPS * 32) {
        const int r = e / D, x = e % D, row = q0 + r;
        kv[e] = (row < seq_q && x < d) ? qh[(size_t)row * d + x] : zero;
    }
    __syncthreads();
    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> qf[DF];
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> of[DF];
#pragma unroll
    for (int f = 0; f < DF; ++f) {
        wmma::load_matrix_sync(qf[f], kv + warp * 16 * D + f * 16, D);
        wmma::fill_fragment(of[f], 0.f);
    }

    // Softmax bookkeeping: lane handles row r (of the warp's 16) and half h of a key tile.
    const int r = lane / 2, h = lane % 2;
    const int row = q0 + warp * 16 + r;
    float m = -INFINITY, l = 0.f;
    const int offset = seq_k - seq_q;
    int key_end = seq_k;
    if (causal) {
        const int last_row = min(seq_q, q0 + BR) - 1;
        key_end = max(0, min(seq_k, last_row + offset + 1));
    }
    float *sw = ss[warp];
    T *pw = ps[warp];

    for (int k0 = 0; k0 < key_end; k0 += TC_BC) {
        __syncthreads();  // Q staging / previous tiles consumed
        for (int e = tid; e < TC_BC * D; e += TC_WARPS * 32) {
            const int j = e / D, x = e % D, kj = k0 + j;
            const bool ok = kj < seq_k && x < d;
            kv[e] = ok ? kh[(size_t)kj * d + x] : zero;
            kv[TC_BC * D + e] = ok ? vh[(size_t)kj * d + x] : zero;
        }
        __syncthreads();

        // S = Q K^T (K^T read as a column-major view of the K tile).
#pragma unroll
        for (int n = 0; n < KF; ++n) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> sf;
            wmma::fill_fragment(sf, 0.f);
#pragma unroll
            for (int f = 0; f < DF; ++f) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> kf;
                wmma::load_matrix_sync(kf, kv + n * 16 * D + f * 16, D);
                wmma::mma_sync(sf, qf[f], kf, sf);
            }
            wmma::store_matrix_sync(sw + n * 16, sf, TC_BC, wmma::mem_row_major);
        }
        __syncwarp();

        // Online softmax for (row r, half h) of the tile; the two lanes of a row combine.
        float *srow = sw + r * TC_BC + h * (TC_BC / 2);
        float tile_max = -INFINITY;
#pragma unroll
        for (int c = 0; c < TC_BC / 2; ++c) {
            const int kj = k0 + h * (TC_BC / 2) + c;
            const bool visible = kj < seq_k && (!causal || kj <= row + offset);
            const float s = visible ? srow[c] * scale_log2 : -INFINITY;
            srow[c] = s;
            tile_max = fmaxf(tile_max, s);
        }
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
        const float m_new = fmaxf(m, tile_max);
        float correction = 1.f;
        float psum = 0.f;
        T *prow = pw + r * TC_BC + h * (TC_BC / 2);
#pragma unroll
        for (int c = 0; c < TC_BC / 2; ++c) {
            const float s = srow[c];
            const float p = s == -INFINITY ? 0.f : exp2f(s - m_new);
            prow[c] = from_f32<T>(p);
            psum += p;
        }
        psum += __shfl_xor_sync(0xffffffffu, psum, 1);
        if (m_new != -INFINITY) {
            correction = exp2f(m - m_new);  // 0 on the first visible tile, 1 if unchanged
            l = l * correction + psum;
            m = m_new;
        }
        __syncwarp();

        if (__any_sync(0xffffffffu, correction != 1.f)) {
            // O *= correction per row, through the (now free) score scratch.
#pragma unroll
            for (int f = 0; f < DF; ++f) {
                wmma::store_matrix_sync(sw, of[f], 16, wmma::mem_row_major);
                __syncwarp();
#pragma unroll
                for (int c = 0; c < 8; ++c) sw[r * 16 + h * 8 + c] *= correction;
                __syncwarp();
                wmma::load_matrix_sync(of[f], sw, 16, wmma::mem_row_major);
                __syncwarp();
            }
        }

        // O += P V.
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> pf[KF];
#pragma unroll
        for (int kk = 0; kk < KF; ++kk) wmma::load_matrix_sync(pf[kk], pw + kk * 16, TC_BC);
#pragma unroll
        for (int n = 0; n < DF; ++n) {
#pragma unroll
            for (int kk = 0; kk < KF; ++kk) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> vf;
                wmma::load_matrix_sync(vf, kv + TC_BC * D + kk * 16 * D + n * 16, D);
                wmma::mma_sync(of[n], pf[kk], vf, of[n]);
            }
        }
        __syncwarp();
    }

    const float inv = l > 0.f ? 1.f / l : 0.f;
#pragma unroll
    for (int f = 0; f < DF; ++f) {
        wmma::store_matrix_sync(sw, of[f], 16, wmma::mem_row_major);
        __syncwarp();
        if (row < seq_q) {
#pragma unroll
            for (int c = 0; c < 8; ++c) {
                const int x = f * 16 + h * 8 + c;
                if (x < d) oh[(size_t)row * d + x] = from_f32<T>(sw[r * 16 + h * 8 + c] * inv);
            }
        }
        __syncwarp();
    }
}

#define INSTANTIATE_TC(TNAME, T, D)                                                              \
    extern "C" __global__ void __launch_bounds__(TC_WARPS * 32)                                  \
        fused_attention_tc_##TNAME##_d##D(const T *q, const T *k, const T *v, T *out,            \
                                          const int seq_q, const int seq_k, const int d,         \
                                          const float scale_log2, const int causal) {            \
        fused_attention_tc<T, D>(q, k, v, out, seq_q, seq_k, d, scale_log2, causal);             \
    }

#define INSTANTIATE_TC_DIMS(TNAME, T) \
    INSTANTIATE_TC(TNAME, T, 16)      \
    INSTANTIATE_TC(TNAME, T, 32)      \
    INSTANTIATE_TC(TNAME, T, 64)      \
    INSTANTIATE_TC(TNAME, T, 128)

INSTANTIATE_TC_DIMS(f16, __half)
INSTANTIATE_TC_DIMS(bf16, __nv_bfloat16)
