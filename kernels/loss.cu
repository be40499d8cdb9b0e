// The softmax backward, and cross-entropy with label smoothing ε and its backward.
//
//   softmax_backward_T(y, g, dx, rows, cols, log)   from the output y of softmax (log = 0) or
//       log-softmax (log = 1) over the last axis: dx = y·(g - Σ g·y), or g - exp(y)·Σ g
//   cross_entropy_T(z, labels, loss, rows, classes, smoothing)   per row of (rows, classes) logits,
//       with u32 labels and an f32 loss (rows,): with zs = z - max and lse = log Σ exp(zs),
//       loss = lse - (1-ε)·zs[label] - ε·Σ zs / classes  (= (1-ε)·(-log p_label) + ε·mean(-log p))
//   cross_entropy_backward_T(z, labels, grad_rows, dz, rows, classes, smoothing)   f32 grad_rows (rows,):
//       dz = grad_rows[r]·(exp(zs - lse) - ε/classes - (1-ε)·[j == label]), the CPU's order of operations
// A label ≥ classes is never used as an index: its row's loss, or every dz of its row, is NaN (the
// CPU reports the label as an error instead; the host does not read labels back to check).
// T = f32 | f16 | bf16 for y, g, dx, z, dz; arithmetic in f32, exp and log as expf and logf.
//
// Launch: block 256 (8 warps), one block a row, grid-stride over rows (grid.x = rows).
// Roofline: memory-bound. softmax_backward reads y and g twice (the second time mostly from L1/L2,
// the block just streamed the row) and writes dx: ~5·sizeof(T) an element against HBM bandwidth
// (~3.3 TB/s on H100 SXM). Cross-entropy rows are short (classes), read two or three times from
// L1 after the first; the loss writes 4 bytes a row.

#include "common.cuh"

#define FOIL_BLOCK 256
#define FOIL_WARPS (FOIL_BLOCK / 32)

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
    T v[N];
};

__device__ __forceinline__ float nan_f32() { return __uint_as_float(0x7fc00000u); }

// Block-wide sum and max, returned to every thread. One barrier each: a caller passes buffers so
// that another barrier separates every reuse of one from its last reads.
__device__ __forceinline__ float block_sum(float v, float* smem) {
    v = warp_sum(v);
    if ((threadIdx.x & 31) == 0) smem[threadIdx.x >> 5] = v;
    __syncthreads();
    v = smem[0];
#pragma unroll
    for (int w = 1; w < FOIL_WARPS; ++w) v += smem[w];
    return v;
}

__device__ __forceinline__ float block_max(float v, float* smem) {
    v = warp_max(v);
    if ((threadIdx.x & 31) == 0) smem[threadIdx.x >> 5] = v;
    __syncthreads();
    v = smem[0];
#pragma unroll
    for (int w = 1; w < FOIL_WARPS; ++w) v = fmaxf(v, smem[w]);
    return v;
}

template <typename T, bool LOG>
__device__ __forceinline__ void softmax_backward_impl(const T* __restrict__ y, const T* __restrict__ g,
                                                      T* __restrict__ dx, u32 rows, u32 cols) {
    constexpr int N = 16 / sizeof(T);
    __shared__ float sm[2][FOIL_WARPS];
    const u32 tid = threadIdx.x;
    u32 parity = 0;
    for (size_t row = blockIdx.x; row < rows; row += gridDim.x, parity ^= 1) {
        const T* __restrict__ yr = y + row * cols;
        const T* __restrict__ gr = g + row * cols;
        T* __restrict__ dxr = dx + row * cols;
        const u32 packs = aligned16(yr) && aligned16(gr) && aligned16(dxr) ? cols / N : 0;
        const Pack<T, N>* __restrict__ yv = reinterpret_cast<const Pack<T, N>*>(yr);
        const Pack<T, N>* __restrict__ gv = reinterpret_cast<const Pack<T, N>*>(gr);
        Pack<T, N>* __restrict__ dxv = reinterpret_cast<Pack<T, N>*>(dxr);
        // Σ g·y (softmax) or Σ g (log-softmax).
        auto term = [](float yk, float gk) { return LOG ? gk : gk * yk; };
        float s = 0.0f;
#pragma unroll 2
        for (u32 p = tid; p < packs; p += FOIL_BLOCK) {
            const Pack<T, N> yp = yv[p], gp = gv[p];
#pragma unroll
            for (int k = 0; k < N; ++k) s += term(to_f32(yp.v[k]), to_f32(gp.v[k]));
        }
        for (u32 j = packs * N + tid; j < cols; j += FOIL_BLOCK) s += term(to_f32(yr[j]), to_f32(gr[j]));
        s = block_sum(s, sm[parity]);
        auto grad = [s](float yk, float gk) { return LOG ? gk - expf(yk) * s : yk * (gk - s); };
#pragma unroll 2
        for (u32 p = tid; p < packs; p += FOIL_BLOCK) {
            const Pack<T, N> yp = yv[p], gp = gv[p];
            Pack<T, N> o;
#pragma unroll
            for (int k = 0; k < N; ++k) o.v[k] = from_f32<T>(grad(to_f32(yp.v[k]), to_f32(gp.v[k])));
            dxv[p] = o;
        }
        for (u32 j = packs * N + tid; j < cols; j += FOIL_BLOCK) dxr[j] = from_f32<T>(grad(to_f32(yr[j]), to_f32(gr[j])));
    }
}

// The row's max and lse = log Σ exp(z - max), for every thread; with SUM_Z, also Σ (z - max). Each
// reduction has its own buffer of sm, so between a buffer's reads and its reuse in the next row
// there is always another reduction's barrier.
template <typename T, bool SUM_Z>
__device__ __forceinline__ void row_logsumexp(const T* __restrict__ zr, u32 classes, float (*sm)[FOIL_WARPS],
                                              float& max, float& lse, float& sum_z) {
    const u32 tid = threadIdx.x;
    float m = __uint_as_float(0xff800000u);  // -inf
    for (u32 j = tid; j < classes; j += FOIL_BLOCK) m = fmaxf(m, to_f32(zr[j]));
    max = block_max(m, sm[0]);
    float s = 0.0f, sz = 0.0f;
    for (u32 j = tid; j < classes; j += FOIL_BLOCK) {
        const float zs = to_f32(zr[j]) - max;
        s += expf(zs);
        if (SUM_Z) sz += zs;
    }
    lse = logf(block_sum(s, sm[1]));
    if (SUM_Z) sum_z = block_sum(sz, sm[2]);
}

template <typename T>
__device__ __forceinline__ void cross_entropy_impl(const T* __restrict__ z, const u32* __restrict__ labels,
                                                   float* __restrict__ loss, u32 rows, u32 classes, float smoothing) {
    __shared__ float sm[3][FOIL_WARPS];
    for (size_t row = blockIdx.x; row < rows; row += gridDim.x) {
        const T* __restrict__ zr = z + row * classes;
        float max, lse, sum_z;
        row_logsumexp<T, true>(zr, classes, sm, max, lse, sum_z);
        if (threadIdx.x == 0) {
            const u32 label = labels[row];
            loss[row] = label < classes ? lse - (1.0f - smoothing) * (to_f32(zr[label]) - max) -
                                              smoothing * (sum_z / (float)classes)
                                        : nan_f32();
        }
    }
}

template <typename T>
__device__ __forceinline__ void cross_entropy_backward_impl(const T* __restrict__ z, const u32* __restrict__ labels,
                                                            const float* __restrict__ grad_rows, T* __restrict__ dz,
                                                            u32 rows, u32 classes, float smoothing) {
    __shared__ float sm[3][FOIL_WARPS];
    for (size_t row = blockIdx.x; row < rows; row += gridDim.x) {
        const T* __restrict__ zr = z + row * classes;
        T* __restrict__ dzr = dz + row * classes;
        float max, lse, unused;
        row_logsumexp<T, false>(zr, classes, sm, max, lse, unused);
        const u32 label = labels[row];
        const float gr = label < classes ? grad_rows[row] : nan_f32();
        const float uniform = smoothing / (float)classes, hit = 1.0f - smoothing;
        for (u32 j = threadIdx.x; j < classes; j += FOIL_BLOCK) {
            const float p = expf(to_f32(zr[j]) - max - lse);
            dzr[j] = from_f32<T>(gr * (p - uniform - (j == label ? hit : 0.0f)));
        }
    }
}

#define FOIL_LOSS_ENTRIES(NAME, T)                                                                               \
    extern "C" __global__ void __launch_bounds__(FOIL_BLOCK)                                                     \
        softmax_backward_##NAME(const T* __restrict__ y, const T* __restrict__ g, T* __restrict__ dx, u32 rows,  \
                                u32 cols, int log) {                                                             \
        if (log)                                                                                                 \
            softmax_backward_impl<T, true>(y, g, dx, rows, cols);                                                \
        else                                                                                                     \
            softmax_backward_impl<T, false>(y, g, dx, rows, cols);                                               \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(FOIL_BLOCK)                                                     \
        cross_entropy_##NAME(const T* __restrict__ z, const u32* __restrict__ labels, float* __restrict__ loss,   \
                             u32 rows, u32 classes, float smoothing) {                                           \
        cross_entropy_impl<T>(z, labels, loss, rows, classes, smoothing);                                        \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(FOIL_BLOCK)                                                     \
        cross_entropy_backward_##NAME(const T* __restrict__ z, const u32* __restrict__ labels,                   \
                                      const float* __restrict__ grad_rows, T* __restrict__ dz, u32 rows,         \
                                      u32 classes, float smoothing) {                                            \
        cross_entropy_backward_impl<T>(z, labels, grad_rows, dz, rows, classes, smoothing);                      \
    }

FOIL_LOSS_ENTRIES(f32, float)
FOIL_LOSS_ENTRIES(f16, f16)
FOIL_LOSS_ENTRIES(bf16, bf16)
