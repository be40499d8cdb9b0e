// Pooling over square windows and adaptive bins, and the gradient of each, over (planes, h, w)
// -> (planes, h_out, w_out); T = float, f16, bf16, arithmetic in f32. Window o along an axis
// covers input positions o·stride − padding .. + kernel, clipped to the input; the launcher keeps
// padding ≤ kernel / 2, so every window holds at least one input.
//
//   max_pool2d_T(x, y, planes, h, w, kernel, stride, padding, h_out, w_out)
//       y[p, oy, ox] = the window's max (PyTorch's max_pool2d: dilation 1, floor mode, padding
//       counts as -inf, a NaN in the window wins).
//   max_pool2d_backward_T(x, dy, dx, planes, h, w, kernel, stride, padding, h_out, w_out)
//       dx[p, iy, ix] = Σ dy[p, oy, ox] over the windows whose maximum is (iy, ix): the forward's
//       rule found again (the first maximum in row-major window order, the last NaN if any),
//       no stored indices.
//   avg_pool2d_T(x, y, planes, h, w, kernel, stride, padding, h_out, w_out)
//       y = the window's sum / kernel² (PyTorch's avg_pool2d, count_include_pad, floor mode).
//   avg_pool2d_backward_T(dy, dx, planes, h, w, kernel, stride, padding, h_out, w_out)
//       dx[p, iy, ix] = Σ dy[p, oy, ox] / kernel² over the windows that cover (iy, ix).
//   adaptive_avg_pool2d_T(x, y, planes, h, w, h_out, w_out)
//       y[p, i, j] = mean of x[p, floor(i·h/h_out) .. ceil((i+1)·h/h_out), columns likewise].
//   adaptive_avg_pool2d_backward_T(dy, dx, planes, h, w, h_out, w_out)
//       dx[p, iy, ix] = Σ dy[p, i, j] / |bin (i, j)| over the bins that hold (iy, ix).
//
// Launch: one thread an output element (the forwards) or an input element (the gradients):
// a gradient is a gather, each element summing in f32, in row-major output order, the windows
// that reach it, so no atomics and the same bits on every run (and as the CPU's, in f32).
// Grid-stride, 256 threads a block, at most 32 blocks an SM; correct for any grid.
//
// Roofline: a few comparisons or adds an element and nothing else, so pure bandwidth.
// Consecutive threads take consecutive elements of a row, so a warp's loads of one window row
// are `stride`-strided over a contiguous span (coalesced); overlapping windows re-read their
// shared rows and columns from L1/L2, so DRAM traffic is about one read of each input and one
// write of the output: sizeof(T)·(planes·h·w + planes·h_out·w_out) bytes, plus planes·h·w for
// the max gradient's second input. The target is HBM bandwidth, ~3.3 TB/s on H100 SXM (ResNet's
// 3×3 stride 2 pool of a 64×112×112 map moves 4.0 MB in f32 an image: ~1.2 µs; its gradient
// 7.2 MB: ~2.2 µs). The max gradient recomputes each covering window's argmax: for 3×3/2 an
// input element reads up to 4 windows of 9, ~36 cached loads, still far under the FLOP roof.
// The max is exact in any dtype (the result is one of the inputs).

#include "common.cuh"

namespace {

// Window o along an axis of `size`, clipped to the input: [s, e).
__device__ __forceinline__ void window(u32 o, u32 size, u32 kernel, u32 stride, u32 padding, u32& s, u32& e) {
    s = o * stride > padding ? o * stride - padding : 0;
    e = min(o * stride + kernel, size + padding) - padding;
}

// Windows along an axis of `out` that contain input position i: [lo, hi). Window o holds i when
// o·stride − padding ≤ i < o·stride − padding + kernel.
__device__ __forceinline__ void covering(u32 i, u32 out, u32 kernel, u32 stride, u32 padding, u32& lo, u32& hi) {
    const u32 ip = i + padding;
    lo = ip >= kernel ? (ip - kernel) / stride + 1 : 0;
    hi = min(ip / stride + 1, out);
}

// PyTorch's adaptive bin i of `out` over `size`: [floor(i·size/out), ceil((i+1)·size/out)).
__device__ __forceinline__ void bin(u32 i, u32 size, u32 out, u32& s, u32& e) {
    s = (u32)((unsigned long long)i * size / out);
    e = (u32)(((unsigned long long)(i + 1) * size + out - 1) / out);
}

// The bins of `out` over `size` that contain input position i: [lo, hi), from
// floor(i·out/size) to ceil((i+1)·out/size).
__device__ __forceinline__ void bins_holding(u32 i, u32 size, u32 out, u32& lo, u32& hi) {
    lo = (u32)((unsigned long long)i * out / size);
    hi = min((u32)(((unsigned long long)(i + 1) * out + size - 1) / size), out);
}

template <typename T>
__device__ __forceinline__ void max_pool2d_impl(const T* __restrict__ x, T* __restrict__ y, u32 planes, u32 h,
                                                u32 w, u32 kernel, u32 stride, u32 padding, u32 h_out,
                                                u32 w_out) {
    const size_t n = (size_t)planes * h_out * w_out;  // < 2^32: the launcher checks the output's length
    FOIL_GRID_STRIDE(i, n) {
        const u32 idx = (u32)i;
        const u32 ox = idx % w_out, row = idx / w_out;
        const u32 oy = row % h_out, p = row / h_out;
        u32 ys, ye, xs, xe;
        window(oy, h, kernel, stride, padding, ys, ye);
        window(ox, w, kernel, stride, padding, xs, xe);
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

template <typename T>
__device__ __forceinline__ void max_pool2d_backward_impl(const T* __restrict__ x, const T* __restrict__ dy,
                                                         T* __restrict__ dx, u32 planes, u32 h, u32 w, u32 kernel,
                                                         u32 stride, u32 padding, u32 h_out, u32 w_out) {
    const size_t n = (size_t)planes * h * w;  // < 2^32: the launcher checks the tensor's length
    FOIL_GRID_STRIDE(i, n) {
        const u32 idx = (u32)i;
        const u32 ix = idx % w, row = idx / w;
        const u32 iy = row % h, p = row / h;
        const T* plane = x + (size_t)p * h * w;
        const T* g = dy + (size_t)p * h_out * w_out;
        const u32 me = iy * w + ix;
        u32 oy0, oy1, ox0, ox1;
        covering(iy, h_out, kernel, stride, padding, oy0, oy1);
        covering(ix, w_out, kernel, stride, padding, ox0, ox1);
        float sum = 0.f;
        for (u32 oy = oy0; oy < oy1; ++oy) {
            u32 ys, ye;
            window(oy, h, kernel, stride, padding, ys, ye);
            for (u32 ox = ox0; ox < ox1; ++ox) {
                u32 xs, xe;
                window(ox, w, kernel, stride, padding, xs, xe);
                u32 at = ys * w + xs;
                float m = -__int_as_float(0x7f800000);  // -inf
                for (u32 yy = ys; yy < ye; ++yy) {
                    for (u32 xx = xs; xx < xe; ++xx) {
                        const float v = to_f32(plane[yy * w + xx]);
                        if (v > m || v != v) m = v, at = yy * w + xx;
                    }
                }
                if (at == me) sum += to_f32(g[oy * w_out + ox]);
            }
        }
        dx[i] = from_f32<T>(sum);
    }
}

template <typename T>
__device__ __forceinline__ void avg_pool2d_impl(const T* __restrict__ x, T* __restrict__ y, u32 planes, u32 h, u32 w,
                                                u32 kernel, u32 stride, u32 padding, u32 h_out, u32 w_out) {
    const size_t n = (size_t)planes * h_out * w_out;
    const float area = (float)(kernel * kernel);
    FOIL_GRID_STRIDE(i, n) {
        const u32 idx = (u32)i;
        const u32 ox = idx % w_out, row = idx / w_out;
        const u32 oy = row % h_out, p = row / h_out;
        u32 ys, ye, xs, xe;
        window(oy, h, kernel, stride, padding, ys, ye);
        window(ox, w, kernel, stride, padding, xs, xe);
        const T* plane = x + (size_t)p * h * w;
        float s = 0.f;
        for (u32 yy = ys; yy < ye; ++yy)
            for (u32 xx = xs; xx < xe; ++xx) s += to_f32(plane[yy * w + xx]);
        y[i] = from_f32<T>(s / area);
    }
}

template <typename T>
__device__ __forceinline__ void avg_pool2d_backward_impl(const T* __restrict__ dy, T* __restrict__ dx, u32 planes,
                                                         u32 h, u32 w, u32 kernel, u32 stride, u32 padding, u32 h_out,
                                                         u32 w_out) {
    const size_t n = (size_t)planes * h * w;
    const float area = (float)(kernel * kernel);
    FOIL_GRID_STRIDE(i, n) {
        const u32 idx = (u32)i;
        const u32 ix = idx % w, row = idx / w;
        const u32 iy = row % h, p = row / h;
        const T* g = dy + (size_t)p * h_out * w_out;
        u32 oy0, oy1, ox0, ox1;
        covering(iy, h_out, kernel, stride, padding, oy0, oy1);
        covering(ix, w_out, kernel, stride, padding, ox0, ox1);
        float s = 0.f;
        for (u32 oy = oy0; oy < oy1; ++oy)
            for (u32 ox = ox0; ox < ox1; ++ox) s += to_f32(g[oy * w_out + ox]) / area;
        dx[i] = from_f32<T>(s);
    }
}

template <typename T>
__device__ __forceinline__ void adaptive_avg_pool2d_impl(const T* __restrict__ x, T* __restrict__ y, u32 planes,
                                                         u32 h, u32 w, u32 h_out, u32 w_out) {
    const size_t n = (size_t)planes * h_out * w_out;
    FOIL_GRID_STRIDE(i, n) {
        const u32 idx = (u32)i;
        const u32 ox = idx % w_out, row = idx / w_out;
        const u32 oy = row % h_out, p = row / h_out;
        u32 ys, ye, xs, xe;
        bin(oy, h, h_out, ys, ye);
        bin(ox, w, w_out, xs, xe);
        const T* plane = x + (size_t)p * h * w;
        float s = 0.f;
        for (u32 yy = ys; yy < ye; ++yy)
            for (u32 xx = xs; xx < xe; ++xx) s += to_f32(plane[yy * w + xx]);
        y[i] = from_f32<T>(s / (float)((ye - ys) * (xe - xs)));
    }
}

template <typename T>
__device__ __forceinline__ void adaptive_avg_pool2d_backward_impl(const T* __restrict__ dy, T* __restrict__ dx,
                                                                  u32 planes, u32 h, u32 w, u32 h_out, u32 w_out) {
    const size_t n = (size_t)planes * h * w;
    FOIL_GRID_STRIDE(i, n) {
        const u32 idx = (u32)i;
        const u32 ix = idx % w, row = idx / w;
        const u32 iy = row % h, p = row / h;
        const T* g = dy + (size_t)p * h_out * w_out;
        u32 oy0, oy1, ox0, ox1;
        bins_holding(iy, h, h_out, oy0, oy1);
        bins_holding(ix, w, w_out, ox0, ox1);
        float s = 0.f;
        for (u32 oy = oy0; oy < oy1; ++oy) {
            u32 ys, ye;
            bin(oy, h, h_out, ys, ye);
            for (u32 ox = ox0; ox < ox1; ++ox) {
                u32 xs, xe;
                bin(ox, w, w_out, xs, xe);
                s += to_f32(g[oy * w_out + ox]) / (float)((ye - ys) * (xe - xs));
            }
        }
        dx[i] = from_f32<T>(s);
    }
}

} // namespace

#define FOIL_POOL(SUFFIX, T)                                                                                       \
    extern "C" __global__ void max_pool2d_##SUFFIX(const T* x, T* y, u32 planes, u32 h, u32 w, u32 kernel,         \
                                                   u32 stride, u32 padding, u32 h_out, u32 w_out) {                \
        max_pool2d_impl<T>(x, y, planes, h, w, kernel, stride, padding, h_out, w_out);                             \
    }                                                                                                              \
    extern "C" __global__ void max_pool2d_backward_##SUFFIX(const T* x, const T* dy, T* dx, u32 planes, u32 h,     \
                                                            u32 w, u32 kernel, u32 stride, u32 padding, u32 h_out, \
                                                            u32 w_out) {                                           \
        max_pool2d_backward_impl<T>(x, dy, dx, planes, h, w, kernel, stride, padding, h_out, w_out);               \
    }                                                                                                              \
    extern "C" __global__ void avg_pool2d_##SUFFIX(const T* x, T* y, u32 planes, u32 h, u32 w, u32 kernel,         \
                                                   u32 stride, u32 padding, u32 h_out, u32 w_out) {                \
        avg_pool2d_impl<T>(x, y, planes, h, w, kernel, stride, padding, h_out, w_out);                             \
    }                                                                                                              \
    extern "C" __global__ void avg_pool2d_backward_##SUFFIX(const T* dy, T* dx, u32 planes, u32 h, u32 w,          \
                                                            u32 kernel, u32 stride, u32 padding, u32 h_out,        \
                                                            u32 w_out) {                                           \
        avg_pool2d_backward_impl<T>(dy, dx, planes, h, w, kernel, stride, padding, h_out, w_out);                  \
    }                                                                                                              \
    extern "C" __global__ void adaptive_avg_pool2d_##SUFFIX(const T* x, T* y, u32 planes, u32 h, u32 w, u32 h_out, \
                                                            u32 w_out) {                                           \
        adaptive_avg_pool2d_impl<T>(x, y, planes, h, w, h_out, w_out);                                             \
    }                                                                                                              \
    extern "C" __global__ void adaptive_avg_pool2d_backward_##SUFFIX(const T* dy, T* dx, u32 planes, u32 h, u32 w, \
                                                                     u32 h_out, u32 w_out) {                       \
        adaptive_avg_pool2d_backward_impl<T>(dy, dx, planes, h, w, h_out, w_out);                                  \
    }

FOIL_POOL(f32, float)
FOIL_POOL(f16, f16)
FOIL_POOL(bf16, bf16)
