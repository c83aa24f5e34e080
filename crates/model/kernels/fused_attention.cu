// Fused (flash-style) attention for rewarddance-model (`src/fused_attention.rs`).
//
// out = softmax(q k^T * scale [+ causal mask]) v over contiguous (batch, heads, seq, head_dim)
// tensors, without materialising the (seq_q, seq_k) score matrix: online softmax over tiles of
// BC keys, f32 accumulation, f32 / f16 / bf16 storage.
//
// Layout of the work:
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
