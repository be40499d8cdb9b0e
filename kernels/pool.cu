// Max pooling over square windows (PyTorch's max_pool2d: dilation 1, floor mode, padding that
// counts as -inf, a NaN in the window wins).
//
//   max_pool2d_T(x, y, planes, h, w, kernel, stride, padding, h_out, w_out)
//       y[p, oy, ox] = max over x[p, oy·stride − padding + i, ox·stride − padding + j],
//       0 ≤ i, j < kernel, taken only inside the input; T = float, f16, bf16.
//   The launcher keeps padding ≤ kernel / 2, so every window holds at least one input.
//
// Launch: one thread an output element, grid-stride, 256 threads a block, at most 32 blocks an SM;
// correct for any grid.
//
// Roofline: kernel² comparisons an output and no other arithmetic, so pure bandwidth. Consecutive
// threads take consecutive outputs of a row, so a warp's loads of one window row are `stride`-strided
// over a contiguous span (coalesced); overlapping windows re-read their shared rows and columns from
// L1/L2, so DRAM traffic is about one read of the input and one write of the output:
// sizeof(T)·(planes·h·w + planes·h_out·w_out) bytes. The target is HBM bandwidth, ~3.3 TB/s on H100
// SXM (ResNet's 3×3 stride 2 pool of a 64×112×112 map moves 4.0 MB in f32 an image: ~1.2 µs).
// The max is exact in any dtype (the result is one of the inputs), so it is taken in f32.

#include "common.cuh"

template <typename T>
__device__ __forceinline__ void max_pool2d_impl(const T* __restrict__ x, T* __restrict__ y, u32 planes, u32 h,
                                                u32 w, u32 kernel, u32 stride, u32 padding, u32 h_out,
                                                u32 w_out) {
    const size_t n = (size_t)planes * h_out * w_out;  // < 2^32: the launcher checks the output's length
    FOIL_GRID_STRIDE(i, n) {
        const u32 idx = (u32)i;
        const u32 ox = idx % w_out, row = idx / w_out;
        const u32 oy = row % h_out, p = row / h_out;
        // The window clipped to the input, in unsigned arithmetic: [start, end).
        const u32 ys = oy * stride > padding ? oy * stride - padding : 0;
        const u32 ye = min(oy * stride + kernel, h + padding) - padding;
        const u32 xs = ox * stride > padding ? ox * stride - padding : 0;
        const u32 xe = min(ox * stride + kernel, w + padding) - padding;
        const T* plane = x + (size_t)p * h * w;
        float m = -__int_as_float(0x7f800000);  // -inf
        for (u32 yy = ys; yy < ye; ++yy) {
            const T* r = plane + (size_t)yy * w;
            for (u32 xx = xs; xx < xe; ++xx) {
                const float v = to_f32(r[xx]);
                if (v > m || v != v) m = v;
            }
        }
        y[i] = from_f32<T>(m);
    }
}

#define FOIL_MAX_POOL2D(SUFFIX, T)                                                                       \
    extern "C" __global__ void max_pool2d_##SUFFIX(const T* x, T* y, u32 planes, u32 h, u32 w, u32 kernel, \
                                                   u32 stride, u32 padding, u32 h_out, u32 w_out) {      \
        max_pool2d_impl<T>(x, y, planes, h, w, kernel, stride, padding, h_out, w_out);                   \
    }

FOIL_MAX_POOL2D(f32, float)
FOIL_MAX_POOL2D(f16, f16)
FOIL_MAX_POOL2D(bf16, bf16)
