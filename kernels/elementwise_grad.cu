// Backward passes of the elementwise activations, clamp and GEGLU (elementwise.cu's forwards):
// dx from the forward's input x and the upstream gradient g, all arithmetic in f32 (loads and
// stores through to_f32 / from_f32<T>).
//   activation_backward_T: dx = g·op'(x) (0 silu, 1 gelu (erf), 2 gelu_tanh, 3 quick_gelu,
//     4 relu with relu'(0) = 0 and dx = 0 wherever x ≤ 0, as PyTorch's threshold_backward).
//   clamp_backward_T: dx = g where lo ≤ x ≤ hi (bounds included, as PyTorch), else 0.
//   geglu_backward_T: x (rows, 2d) = [h, gate] per row, g (rows, d) -> dx (rows, 2d) =
//     [g·gelu(gate), g·h·gelu'(gate)].
//
// Launch: grid-stride, 256 threads a block, at most 32 blocks an SM (correct for any grid).
//
// Roofline: memory-bound. Bytes an element: 3·sizeof(T) (x and g read, dx written); GEGLU moves
// 5·sizeof(T) per (rows, d) element (h, gate, g read; dh, dgate written). At ~3.3 TB/s (H100 SXM):
// ~275 G elem/s for f32, ~550 G for f16. Accesses are 16-byte vectors when the pointers are 16-byte
// aligned (whole allocations are), scalar and coalesced otherwise. The erfcf/expf work (~30
// instructions an element) fits the FP32 budget at f16 bandwidth.

#include "common.cuh"

namespace {

// N elements of T moved as one aligned vector access (N·sizeof(T) = 16 bytes).
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
    T v[N];
};

__device__ __forceinline__ float sigmoid(float z) { return 1.0f / (1.0f + expf(-z)); }

// Each functor maps (x, g) to dx in f32.
struct SiluGrad {
    __device__ float operator()(float x, float g) const {
        const float s = sigmoid(x);
        return g * s * (1.0f + x * (1.0f - s));
    }
};
// Φ(x) + x·φ(x), with Φ = 0.5·erfc(−x/√2): no cancellation for negative x.
__device__ __forceinline__ float gelu_grad(float x) {
    return 0.5f * erfcf(-x * 0.70710678118654752f) + x * 0.39894228040143268f * expf(-0.5f * x * x);
}
__device__ __forceinline__ float gelu(float x) { return 0.5f * x * erfcf(-x * 0.70710678118654752f); }
struct GeluGrad {
    __device__ float operator()(float x, float g) const { return g * gelu_grad(x); }
};
// x·σ(2u), u = c·(x + 0.044715·x³), c = 0.7978846f (the forward's √(2/π)).
struct GeluTanhGrad {
    __device__ float operator()(float x, float g) const {
        const float c = 0.7978846f;
        const float s = sigmoid(2.0f * c * (x + 0.044715f * x * x * x));
        return g * (s + x * s * (1.0f - s) * 2.0f * c * (1.0f + 3.0f * 0.044715f * x * x));
    }
};
struct QuickGeluGrad {
    __device__ float operator()(float x, float g) const {
        const float s = sigmoid(1.702f * x);
        return g * (s + 1.702f * x * s * (1.0f - s));
    }
};
struct ReluGrad {
    __device__ float operator()(float x, float g) const { return x > 0.0f ? g : 0.0f; }
};
struct ClampGrad {
    float lo, hi;
    __device__ float operator()(float x, float g) const { return (lo <= x && x <= hi) ? g : 0.0f; }
};

// dx[i] = f(x[i], g[i]) for i < n: 16-byte packs while all three pointers allow, then a scalar tail.
template <typename T, typename F>
__device__ __forceinline__ void map2(const T* __restrict__ x, const T* __restrict__ g, T* __restrict__ dx, u32 n,
                                     F f) {
    constexpr int N = 16 / sizeof(T);
    const size_t start = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    size_t done = 0;
    if (aligned16(x) && aligned16(g) && aligned16(dx)) {
        const size_t packs = n / N;
        for (size_t i = start; i < packs; i += stride) {
            const Pack<T, N> a = reinterpret_cast<const Pack<T, N>*>(x)[i];
            const Pack<T, N> b = reinterpret_cast<const Pack<T, N>*>(g)[i];
            Pack<T, N> out;
#pragma unroll
            for (int k = 0; k < N; ++k) out.v[k] = from_f32<T>(f(to_f32(a.v[k]), to_f32(b.v[k])));
            reinterpret_cast<Pack<T, N>*>(dx)[i] = out;
        }
        done = packs * N;
    }
    for (size_t i = done + start; i < n; i += stride) dx[i] = from_f32<T>(f(to_f32(x[i]), to_f32(g[i])));
}

// The op is uniform, so dispatch once outside the loop rather than per element.
template <typename T>
__device__ __forceinline__ void activation_backward_impl(const T* __restrict__ x, const T* __restrict__ g,
                                                         T* __restrict__ dx, u32 n, int op) {
    switch (op) {
        case 0: map2(x, g, dx, n, SiluGrad{}); break;
        case 1: map2(x, g, dx, n, GeluGrad{}); break;
        case 2: map2(x, g, dx, n, GeluTanhGrad{}); break;
        case 3: map2(x, g, dx, n, QuickGeluGrad{}); break;
        default: map2(x, g, dx, n, ReluGrad{}); break;
    }
}

// One (row, j) a step: reads h = x[r, j], gate = x[r, d + j] and g[r, j], writes dx[r, j] and
// dx[r, d + j]. When d is a multiple of the pack length every pack lies in one row and is
// aligned; otherwise one element at a time. Indices stay below 2·rows·d, which the launcher keeps
// under 2^32.
template <typename T>
__device__ __forceinline__ void geglu_backward_impl(const T* __restrict__ x, const T* __restrict__ g,
                                                    T* __restrict__ dx, u32 rows, u32 d) {
    constexpr int N = 16 / sizeof(T);
    const size_t start = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    if (d % N == 0 && aligned16(x) && aligned16(g) && aligned16(dx)) {
        const u32 dp = d / N;
        const u32 packs = rows * dp;
        const Pack<T, N>* __restrict__ xv = reinterpret_cast<const Pack<T, N>*>(x);
        const Pack<T, N>* __restrict__ gv = reinterpret_cast<const Pack<T, N>*>(g);
        Pack<T, N>* __restrict__ dv = reinterpret_cast<Pack<T, N>*>(dx);
        for (size_t i = start; i < packs; i += stride) {
            const u32 at = (u32)i + ((u32)i / dp) * dp;   // r·2dp + j with j = i − r·dp
            const Pack<T, N> h = xv[at], gate = xv[at + dp], up = gv[i];
            Pack<T, N> dh, dgate;
#pragma unroll
            for (int k = 0; k < N; ++k) {
                const float hv = to_f32(h.v[k]), gt = to_f32(gate.v[k]), u = to_f32(up.v[k]);
                dh.v[k] = from_f32<T>(u * gelu(gt));
                dgate.v[k] = from_f32<T>(u * hv * gelu_grad(gt));
            }
            dv[at] = dh;
            dv[at + dp] = dgate;
        }
        return;
    }
    const u32 n = rows * d;
    for (size_t i = start; i < n; i += stride) {
        const u32 at = (u32)i + ((u32)i / d) * d;
        const float hv = to_f32(x[at]), gt = to_f32(x[at + d]), u = to_f32(g[i]);
        dx[at] = from_f32<T>(u * gelu(gt));
        dx[at + d] = from_f32<T>(u * hv * gelu_grad(gt));
    }
}

} // namespace

#define FOIL_ELEMENTWISE_GRAD(NAME, T)                                                                         \
    extern "C" __global__ void __launch_bounds__(256) activation_backward_##NAME(                              \
        const T* __restrict__ x, const T* __restrict__ g, T* __restrict__ dx, u32 n, int op) {                 \
        activation_backward_impl<T>(x, g, dx, n, op);                                                          \
    }                                                                                                          \
    extern "C" __global__ void __launch_bounds__(256) clamp_backward_##NAME(                                   \
        const T* __restrict__ x, const T* __restrict__ g, T* __restrict__ dx, u32 n, float lo, float hi) {     \
        map2(x, g, dx, n, ClampGrad{lo, hi});                                                                  \
    }                                                                                                          \
    extern "C" __global__ void __launch_bounds__(256) geglu_backward_##NAME(                                   \
        const T* __restrict__ x, const T* __restrict__ g, T* __restrict__ dx, u32 rows, u32 d) {               \
        geglu_backward_impl<T>(x, g, dx, rows, d);                                                             \
    }

FOIL_ELEMENTWISE_GRAD(f32, float)
FOIL_ELEMENTWISE_GRAD(f16, f16)
FOIL_ELEMENTWISE_GRAD(bf16, bf16)
