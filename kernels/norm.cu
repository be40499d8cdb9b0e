// Layer norm and group norm: normalise a contiguous run by its mean and biased variance.
//
//   layer_norm_T(x, w, b, y, rows, cols, eps)         each row of (rows, cols):
//       y = (x - mean)·rstd·w[j] + b[j],  rstd = 1/sqrt(var + eps)
//   group_norm_T(x, w, b, y, n, c, spatial, groups, eps)  NCHW; image ni, group g is the contiguous run
//       of channels g·c/groups .. (g+1)·c/groups, each of `spatial` elements:
//       y = x·(rstd·w[ch]) + (b[ch] - mean·rstd·w[ch])   (the CPU's formula, per channel ch)
// T = f32 | f16 | bf16; statistics in f32.
//
// Launch: block 256 (8 warps), one block a row (layer norm, grid.x = rows) or a (image, group)
// (group norm, grid.x = n·groups); both loop grid-stride over their items, so any grid works.
//
// Roofline: memory-bound. Stats pass reads the run once, the write pass reads it again and writes
// it: 3·sizeof(T) an element, the second read mostly L1/L2 hits (the block streamed the run just
// before; SD's largest group, 320/32 channels × 64×64 = 40960 elements, is 80-160 KB). The target is
// HBM bandwidth, ~3.3 TB/s on H100 SXM. Nothing is staged in shared memory, so group size is
// unbounded. (With the ABI's one block a group, a small n·groups leaves SMs idle: SD at batch 2 has
// 64 groups on 132 SMs.)
//
// Statistics: one pass of Chan/Welford merges in f32 (norm_stats.cuh), identical in every thread.

#include "common.cuh"

#define FOIL_BLOCK 256
#define FOIL_WARPS (FOIL_BLOCK / 32)
// At least 4 blocks (32 warps) an SM: a bare __launch_bounds__(256) makes ptxas squeeze to 32
// registers for 8 blocks and spill; 4 blocks with 4 unrolled 16 B loads a thread in flight already
// cover HBM latency, and group norm's few blocks want the loads in flight more than occupancy.
#define FOIL_LAUNCH __launch_bounds__(FOIL_BLOCK, 4)

#include "norm_stats.cuh"

template <typename T>
__device__ __forceinline__ void layer_norm_impl(const T* __restrict__ x, const T* __restrict__ w,
                                                const T* __restrict__ b, T* __restrict__ y, u32 rows, u32 cols,
                                                float eps) {
    constexpr int N = 16 / sizeof(T);
    __shared__ Stats smem[2][FOIL_WARPS];
    const u32 tid = threadIdx.x;
    u32 parity = 0;
    for (size_t row = blockIdx.x; row < rows; row += gridDim.x, parity ^= 1) {  // 64-bit: no wrap
        const T* __restrict__ xr = x + (size_t)row * cols;
        T* __restrict__ yr = y + (size_t)row * cols;
        float mean, rstd;
        run_stats(xr, cols, eps, smem[parity], mean, rstd);

        // The CPU's expression order: ((v - mean)·rstd)·w + b.
        u32 done = 0;
        if (aligned16(xr) && aligned16(yr) && aligned16(w) && aligned16(b)) {
            const u32 packs = cols / N;
            const Pack<T, N>* __restrict__ xv = reinterpret_cast<const Pack<T, N>*>(xr);
            const Pack<T, N>* __restrict__ wv = reinterpret_cast<const Pack<T, N>*>(w);
            const Pack<T, N>* __restrict__ bv = reinterpret_cast<const Pack<T, N>*>(b);
            Pack<T, N>* __restrict__ yv = reinterpret_cast<Pack<T, N>*>(yr);
#pragma unroll 2
            for (u32 p = tid; p < packs; p += FOIL_BLOCK) {
                const Pack<T, N> xp = xv[p], wp = wv[p], bp = bv[p];
                Pack<T, N> o;
#pragma unroll
                for (int k = 0; k < N; ++k)
                    o.v[k] = from_f32<T>((to_f32(xp.v[k]) - mean) * rstd * to_f32(wp.v[k]) + to_f32(bp.v[k]));
                yv[p] = o;
            }
            done = packs * N;
        }
        for (u32 j = done + tid; j < cols; j += FOIL_BLOCK)
            yr[j] = from_f32<T>((to_f32(xr[j]) - mean) * rstd * to_f32(w[j]) + to_f32(b[j]));
    }
}

template <typename T>
__device__ __forceinline__ void group_norm_impl(const T* __restrict__ x, const T* __restrict__ w,
                                                const T* __restrict__ b, T* __restrict__ y, u32 n, u32 c,
                                                u32 spatial, u32 groups, float eps) {
    constexpr int N = 16 / sizeof(T);
    __shared__ Stats smem[2][FOIL_WARPS];
    const u32 tid = threadIdx.x;
    const u32 cpg = c / groups;
    const u32 count = cpg * spatial;  // ≤ n·c·spatial < 2^32 (host check)
    const u32 items = n * groups;
    u32 parity = 0;
    for (size_t item = blockIdx.x; item < items; item += gridDim.x, parity ^= 1) {
        const u32 g = (u32)item % groups;
        const size_t base = (size_t)item * count;
        const T* __restrict__ xg = x + base;
        T* __restrict__ yg = y + base;
        float mean, rstd;
        run_stats(xg, count, eps, smem[parity], mean, rstd);

        const T* __restrict__ wg = w + (size_t)g * cpg;
        const T* __restrict__ bg = b + (size_t)g * cpg;
        // Per channel: y = (x - mean)·(rstd·w) + b, as the CPU computes it (folding mean into the
        // shift cancels badly when the variance is far below eps). A pack
        // lies in one channel when spatial % N == 0, so one division a pack finds its channel.
        u32 done = 0;
        if (spatial % N == 0 && aligned16(xg) && aligned16(yg)) {
            const u32 packs = count / N, spatial_packs = spatial / N;
            const Pack<T, N>* __restrict__ xv = reinterpret_cast<const Pack<T, N>*>(xg);
            Pack<T, N>* __restrict__ yv = reinterpret_cast<Pack<T, N>*>(yg);
#pragma unroll 2
            for (u32 p = tid; p < packs; p += FOIL_BLOCK) {
                const u32 ch = p / spatial_packs;
                const float wc = to_f32(wg[ch]);
                const float scale = rstd * wc, shift = to_f32(bg[ch]);
                const Pack<T, N> xp = xv[p];
                Pack<T, N> o;
#pragma unroll
                for (int k = 0; k < N; ++k) o.v[k] = from_f32<T>((to_f32(xp.v[k]) - mean) * scale + shift);
                yv[p] = o;
            }
            done = packs * N;
        }
        for (u32 j = done + tid; j < count; j += FOIL_BLOCK) {
            const u32 ch = j / spatial;
            const float wc = to_f32(wg[ch]);
            yg[j] = from_f32<T>((to_f32(xg[j]) - mean) * (rstd * wc) + to_f32(bg[ch]));
        }
    }
}

#define FOIL_NORM_ENTRIES(NAME, T)                                                                              \
    extern "C" __global__ void FOIL_LAUNCH                                                                      \
        layer_norm_##NAME(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,             \
                          T* __restrict__ y, u32 rows, u32 cols, float eps) {                                   \
        layer_norm_impl<T>(x, w, b, y, rows, cols, eps);                                                        \
    }                                                                                                           \
    extern "C" __global__ void FOIL_LAUNCH                                                                      \
        group_norm_##NAME(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,             \
                          T* __restrict__ y, u32 n, u32 c, u32 spatial, u32 groups, float eps) {                \
        group_norm_impl<T>(x, w, b, y, n, c, spatial, groups, eps);                                             \
    }

FOIL_NORM_ENTRIES(f32, float)
FOIL_NORM_ENTRIES(f16, f16)
FOIL_NORM_ENTRIES(bf16, bf16)
