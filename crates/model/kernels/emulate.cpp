// Host emulation of fused_attention.cu, for machines without a GPU: compiles the kernel source
// itself with g++ (CUDA headers stripped, types and intrinsics shimmed below), one OS thread per
// CUDA thread (barriers for __syncthreads, a per-warp exchange for __shfl_xor_sync), blocks one
// after another, and compares f32 / bf16 results against naive attention in double.
// Run: bash crates/model/kernels/emulate.sh (about a minute on 2 cores). f16 is not emulated.
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <thread>
#include <vector>
#include <algorithm>
#include <type_traits>
using std::max;
using std::min;

struct dim3 { unsigned x = 1, y = 1, z = 1; };
thread_local dim3 threadIdx, blockIdx;
dim3 gridDim;
struct float4 { float x, y, z, w; };
struct __half { uint16_t b; };
struct __nv_bfloat16 { uint16_t b; };
inline float __half2float(__half) { return 0.f; }  // f16 not emulated
inline __half __float2half_rn(float) { return {0}; }
inline float __bfloat162float(__nv_bfloat16 h) { uint32_t u = (uint32_t)h.b << 16; float f; memcpy(&f, &u, 4); return f; }
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t u; memcpy(&u, &f, 4); u += 0x7fff + ((u >> 16) & 1); return {(uint16_t)(u >> 16)};
}

std::barrier<> *block_barrier;
std::barrier<> *warp_barriers[8];
float warp_buf[8][32];
inline void __syncthreads() { block_barrier->arrive_and_wait(); }
inline float __shfl_xor_sync(unsigned, float v, int o) {
    int lane = threadIdx.x % 32, w = threadIdx.x / 32;
    warp_buf[w][lane] = v;
    warp_barriers[w]->arrive_and_wait();
    float r = warp_buf[w][lane ^ o];
    warp_barriers[w]->arrive_and_wait();
    return r;
}
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__
#define __launch_bounds__(x)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

inline void __syncwarp() { warp_barriers[threadIdx.x / 32]->arrive_and_wait(); }
inline bool __any_sync(unsigned, bool pred) {
    int lane = threadIdx.x % 32, w = threadIdx.x / 32;
    warp_buf[w][lane] = pred ? 1.f : 0.f;
    warp_barriers[w]->arrive_and_wait();
    bool any = false;
    for (int i = 0; i < 32; ++i) any = any || warp_buf[w][i] != 0.f;
    warp_barriers[w]->arrive_and_wait();
    return any;
}

inline float elem_f32(float x) { return x; }
inline float elem_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
inline float elem_f32(__half x) { return __half2float(x); }

// WMMA 16x16x16: every lane holds the whole logical matrix and executes each collective
// operation redundantly (identical values), which is what the warp computes together.
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
    float a[16][16];
};
template <typename Use, typename T, typename L>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, L> &f, const T *p, unsigned ldm) {
    for (int i = 0; i < 16; ++i)
        for (int j = 0; j < 16; ++j)
            f.a[i][j] = elem_f32(std::is_same<L, row_major>::value ? p[i * ldm + j] : p[j * ldm + i]);
}
inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float> &f, const float *p, unsigned ldm,
                             layout_t l) {
    for (int i = 0; i < 16; ++i)
        for (int j = 0; j < 16; ++j) f.a[i][j] = l == mem_row_major ? p[i * ldm + j] : p[j * ldm + i];
}
inline void store_matrix_sync(float *p, const fragment<accumulator, 16, 16, 16, float> &f, unsigned ldm,
                              layout_t l) {
    for (int i = 0; i < 16; ++i)
        for (int j = 0; j < 16; ++j) (l == mem_row_major ? p[i * ldm + j] : p[j * ldm + i]) = f.a[i][j];
}
template <typename Use, typename T, typename L>
void fill_fragment(fragment<Use, 16, 16, 16, T, L> &f, float v) {
    for (auto &r : f.a)
        for (auto &x : r) x = v;
}
template <typename T, typename LA, typename LB>
void mma_sync(fragment<accumulator, 16, 16, 16, float> &d, const fragment<matrix_a, 16, 16, 16, T, LA> &a,
              const fragment<matrix_b, 16, 16, 16, T, LB> &b,
              const fragment<accumulator, 16, 16, 16, float> &c) {
    fragment<accumulator, 16, 16, 16, float> r;
    for (int i = 0; i < 16; ++i)
        for (int j = 0; j < 16; ++j) {
            float acc = c.a[i][j];
            for (int kk = 0; kk < 16; ++kk) acc += a.a[i][kk] * b.a[kk][j];
            r.a[i][j] = acc;
        }
    d = r;
}
}  // namespace wmma
}  // namespace nvcuda

#include "kernel_body.cu"

template <typename T, typename K>
void launch(K kernel, int D, bool tc, int B, int H, int tq, int tk, int d, const std::vector<T> &q,
            const std::vector<T> &k, const std::vector<T> &v, std::vector<T> &out, float scale,
            int causal) {
    int G = D / std::min(D, 16);
    const int threads = tc ? TC_WARPS * 32 : THREADS;
    const int rows = tc ? 16 * TC_WARPS : THREADS / G;
    gridDim = {(unsigned)((tq + rows - 1) / rows), (unsigned)H, (unsigned)B};
    for (unsigned bz = 0; bz < gridDim.z; ++bz)
        for (unsigned by = 0; by < gridDim.y; ++by)
            for (unsigned bx = 0; bx < gridDim.x; ++bx) {
                std::barrier<> bb(threads);
                block_barrier = &bb;
                for (int w = 0; w < threads / 32; ++w) warp_barriers[w] = new std::barrier<>(32);
                std::vector<std::thread> ts;
                for (int t = 0; t < threads; ++t)
                    ts.emplace_back([&, t] {
                        threadIdx = {(unsigned)t, 1, 1};
                        blockIdx = {bx, by, bz};
                        kernel(q.data(), k.data(), v.data(), out.data(), tq, tk, d,
                               scale * 1.4426950408889634f, causal);
                    });
                for (auto &t : ts) t.join();
                for (int w = 0; w < threads / 32; ++w) delete warp_barriers[w];
            }
}

double to_d(float x) { return x; }
double to_d(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> T from_d(double x);
template <> float from_d<float>(double x) { return (float)x; }
template <> __nv_bfloat16 from_d<__nv_bfloat16>(double x) { return __float2bfloat16_rn((float)x); }

template <typename T, typename K>
int check(K kernel, int D, bool tc, int B, int H, int tq, int tk, int d, int causal, double tol) {
    std::mt19937 rng(tq * 131 + tk * 7 + d + causal);
    std::uniform_real_distribution<float> u(-2.f, 2.f);
    std::vector<T> q(B * H * tq * d), k(B * H * tk * d), v(B * H * tk * d), out(B * H * tq * d, from_d<T>(12345.0));
    for (auto &x : q) x = from_d<T>(u(rng));
    for (auto &x : k) x = from_d<T>(u(rng));
    for (auto &x : v) x = from_d<T>(u(rng));
    float scale = 1.f / std::sqrt((float)d);
    launch<T>(kernel, D, tc, B, H, tq, tk, d, q, k, v, out, scale, causal);
    double worst = 0;
    int off = tk - tq;
    for (int bh = 0; bh < B * H; ++bh)
        for (int i = 0; i < tq; ++i) {
            std::vector<double> s(tk);
            double m = -INFINITY;
            for (int j = 0; j < tk; ++j) {
                double acc = 0;
                for (int x = 0; x < d; ++x) acc += to_d(q[(bh * tq + i) * d + x]) * to_d(k[(bh * tk + j) * d + x]);
                s[j] = (causal && j > i + off) ? -INFINITY : acc * scale;
                m = std::max(m, s[j]);
            }
            double l = 0;
            for (int j = 0; j < tk; ++j) { s[j] = m == -INFINITY ? 0 : std::exp(s[j] - m); l += s[j]; }
            for (int x = 0; x < d; ++x) {
                double o = 0;
                for (int j = 0; j < tk; ++j) o += s[j] * to_d(v[(bh * tk + j) * d + x]);
                o = l > 0 ? o / l : 0;
                worst = std::max(worst, std::fabs(o - to_d(out[(bh * tq + i) * d + x])));
            }
        }
    bool ok = worst < tol;
    printf("%s %s D%-3d B%d H%d tq%-4d tk%-4d d%-3d causal %d: max |diff| %.3g\n", ok ? "ok  " : "FAIL", tc ? "tc  " : "simt", D, B, H, tq, tk, d, causal, worst);
    return ok ? 0 : 1;
}

int main() {
    int fails = 0;
    for (int causal = 0; causal < 2; ++causal) {
        fails += check<float>(fused_attention_f32_d8, 8, false, 2, 2, 7, 7, 8, causal, 1e-5);
        fails += check<float>(fused_attention_f32_d16, 16, false, 1, 3, 65, 65, 16, causal, 1e-5);
        fails += check<float>(fused_attention_f32_d16, 16, false, 1, 1, 300, 300, 12, causal, 1e-5);
        fails += check<float>(fused_attention_f32_d32, 32, false, 1, 2, 33, 33, 32, causal, 1e-5);
        fails += check<float>(fused_attention_f32_d64, 64, false, 2, 2, 65, 65, 64, causal, 1e-5);
        fails += check<float>(fused_attention_f32_d64, 64, false, 1, 1, 130, 130, 40, causal, 1e-5);
        fails += check<float>(fused_attention_f32_d128, 128, false, 1, 2, 70, 70, 128, causal, 1e-5);
        fails += check<float>(fused_attention_f32_d64, 64, false, 1, 2, 5, 70, 64, causal, 1e-5);
        fails += check<float>(fused_attention_f32_d64, 64, false, 1, 1, 80, 17, 64, causal, 1e-5);
        fails += check<float>(fused_attention_f32_d64, 64, false, 1, 1, 1025, 1025, 64, causal, 1e-5);
        fails += check<__nv_bfloat16>(fused_attention_bf16_d64, 64, false, 1, 2, 65, 65, 64, causal, 2e-2);
        fails += check<__nv_bfloat16>(fused_attention_bf16_d128, 128, false, 1, 1, 100, 100, 128, causal, 2e-2);
        // Tensor-core kernels (bf16; P is rounded to bf16 before P V, hence the looser bound).
        fails += check<__nv_bfloat16>(fused_attention_tc_bf16_d16, 16, true, 2, 2, 7, 7, 8, causal, 3e-2);
        fails += check<__nv_bfloat16>(fused_attention_tc_bf16_d16, 16, true, 1, 3, 65, 65, 16, causal, 3e-2);
        fails += check<__nv_bfloat16>(fused_attention_tc_bf16_d32, 32, true, 1, 2, 33, 33, 32, causal, 3e-2);
        fails += check<__nv_bfloat16>(fused_attention_tc_bf16_d64, 64, true, 2, 2, 65, 65, 64, causal, 3e-2);
        fails += check<__nv_bfloat16>(fused_attention_tc_bf16_d64, 64, true, 1, 1, 130, 130, 40, causal, 3e-2);
        fails += check<__nv_bfloat16>(fused_attention_tc_bf16_d128, 128, true, 1, 2, 70, 70, 128, causal, 3e-2);
        fails += check<__nv_bfloat16>(fused_attention_tc_bf16_d64, 64, true, 1, 2, 5, 70, 64, causal, 3e-2);
        fails += check<__nv_bfloat16>(fused_attention_tc_bf16_d64, 64, true, 1, 1, 80, 17, 64, causal, 3e-2);
        fails += check<__nv_bfloat16>(fused_attention_tc_bf16_d64, 64, true, 1, 1, 300, 300, 64, causal, 3e-2);
    }
    printf(fails ? "%d FAILED\n" : "all ok\n", fails);
    return fails != 0;
}
