// Elementwise kernels: activations, scaling, clamping, GEGLU, broadcast binary arithmetic, dtype casts.
//
//   unary_T(x, y, n, op)             y[i] = act(x[i]); op 0 silu x·σ(x), 1 gelu 0.5x(1+erf(x/√2)),
//                                    2 gelu_tanh 0.5x(1+tanh(√(2/π)(x+0.044715x³))),
//                                    3 quick_gelu x·σ(1.702x), 4 relu max(x, 0) (NaN -> 0, as Rust's max)
//   scale_T(x, y, n, factor)         y[i] = x[i]·factor
//   clamp_T(x, y, n, lo, hi)         y[i] = min(max(x[i], lo), hi), NaN stays NaN (PyTorch's clamp)
//   geglu_T(x, y, rows, d)           y[r, j] = x[r, j]·gelu(x[r, d + j]) over x (rows, 2d), y (rows, d)
//   binary_T(a, b, y, n, op, args)   y[i] = a[oa(i)] op b[ob(i)], op 0 add, 1 sub, 2 mul, 3 div; i decomposes
//                                    row-major into args.dims, oa/ob = Σ idx[d]·{lhs,rhs}_strides[d]
//   cast_S_D(x, y, n)                y[i] = D(x[i]), S ≠ D in {f32, f16, bf16, u32}; u32 -> float rounds to
//                                    nearest via f32; float -> u32 is Rust `as` (trunc, saturate, NaN -> 0)
// T = f32 | f16 | bf16; all arithmetic in f32, loads and stores through to_f32 / from_f32<T>.
//
// Launch: grid-stride, 256 threads a block, at most 32 blocks an SM (correct for any grid).
//
// Roofline: memory-bound. Bytes an element = read + write: unary/scale/clamp 2·sizeof(T) (8 B f32, 4 B
// f16/bf16), binary and geglu (an output) 3·sizeof(T) (a broadcast operand is mostly L1/L2 hits), cast
// sizeof(S)+sizeof(D).
// The target is HBM bandwidth, ~3.3 TB/s on H100 SXM: ~410 G elem/s for f32 unary, ~825 G for f16.
// Each thread moves 16 B an access (one 512 B warp transaction) when the pointers are 16 B aligned,
// which whole cudarc allocations are; the tail and misaligned pointers fall back to coalesced scalar
// accesses. The accurate expf/erff/tanhf (~10-30 instructions) fit the ~40 FP32 ops an element an SM
// can afford at f16 bandwidth; the f32 tolerance (1e-6) rules out the __expf-style approximations.

#include "common.cuh"

// N elements of T moved as one aligned vector access (N·sizeof(T) ≤ 16 bytes).
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
    T v[N];
};


// ---- conversions -------------------------------------------------------------------------

// u32 -> f32 rounds to nearest even (cvt.rn.f32.u32), as Rust's `as f32`.
__device__ __forceinline__ float load_f32(u32 x) { return (float)x; }
__device__ __forceinline__ float load_f32(float x) { return x; }
__device__ __forceinline__ float load_f32(f16 x) { return to_f32(x); }
__device__ __forceinline__ float load_f32(bf16 x) { return to_f32(x); }

template <typename D>
__device__ __forceinline__ D store_f32(float x) { return from_f32<D>(x); }
// Rust `f as u32`: NaN and anything ≤ 0 give 0, ≥ 2^32 gives u32::MAX, the rest truncate.
// Spelled out instead of relying on cvt.rzi's saturation: an out-of-range C++ cast is UB.
template <>
__device__ __forceinline__ u32 store_f32<u32>(float x) {
    if (!(x > 0.0f)) return 0u;
    if (x >= 4294967296.0f) return 0xffffffffu;
    return (u32)x;
}

// ---- the grid-stride map -------------------------------------------------------------------

// y[i] = f(x[i]) for i < n. 16-byte packs while both pointers allow (the wider of S and D sets the
// pack length), then a scalar tail; both loops are coalesced.
template <typename S, typename D, typename F>
__device__ __forceinline__ void map(const S* __restrict__ x, D* __restrict__ y, u32 n, F f) {
    constexpr int N = 16 / (sizeof(S) > sizeof(D) ? sizeof(S) : sizeof(D));
    const size_t start = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    size_t done = 0;
    if (aligned16(x) && aligned16(y)) {
        const size_t packs = n / N;
        const Pack<S, N>* __restrict__ xv = reinterpret_cast<const Pack<S, N>*>(x);
        Pack<D, N>* __restrict__ yv = reinterpret_cast<Pack<D, N>*>(y);
        for (size_t i = start; i < packs; i += stride) {
            const Pack<S, N> a = xv[i];
            Pack<D, N> b;
#pragma unroll
            for (int k = 0; k < N; ++k) b.v[k] = f(a.v[k]);
            yv[i] = b;
        }
        done = packs * N;
    }
    for (size_t i = done + start; i < n; i += stride) y[i] = f(x[i]);
}

// ---- activations -------------------------------------------------------------------------

struct Silu {
    __device__ float operator()(float x) const { return x / (1.0f + expf(-x)); }
};
struct Gelu {
    // 0.5·(1 + erf(x/√2)) = 0.5·erfc(-x/√2): no cancellation for negative x.
    __device__ float operator()(float x) const { return 0.5f * x * erfcf(-x * 0.70710678118654752f); }
};
struct GeluTanh {
    // 0.5·(1 + tanh(u)) = σ(2u), which has no cancellation for negative x; 0.7978846f is the CPU
    // reference's f32 constant for √(2/π).
    __device__ float operator()(float x) const {
        return x / (1.0f + expf(-2.0f * 0.7978846f * (x + 0.044715f * x * x * x)));
    }
};
struct QuickGelu {
    __device__ float operator()(float x) const { return x / (1.0f + expf(-1.702f * x)); }
};
struct Relu {
    __device__ float operator()(float x) const { return fmaxf(x, 0.0f); }
};
struct Clamp {
    float lo, hi;
    // fmaxf and fminf return the other operand for a NaN one, so NaN is passed through first.
    __device__ float operator()(float x) const { return x != x ? x : fminf(fmaxf(x, lo), hi); }
};
struct Scale {
    float factor;
    __device__ float operator()(float x) const { return x * factor; }
};

// Lifts an f32 function to storage type T.
template <typename T, typename F>
struct OnT {
    F f;
    __device__ T operator()(T v) const { return from_f32<T>(f(to_f32(v))); }
};

template <typename T, typename F>
__device__ __forceinline__ void map_f32(const T* __restrict__ x, T* __restrict__ y, u32 n, F f) {
    map(x, y, n, OnT<T, F>{f});
}

// The op is uniform, so dispatch once outside the loop rather than switching per element.
template <typename T>
__device__ __forceinline__ void unary_impl(const T* __restrict__ x, T* __restrict__ y, u32 n, int op) {
    switch (op) {
        case 0: map_f32(x, y, n, Silu{}); break;
        case 1: map_f32(x, y, n, Gelu{}); break;
        case 2: map_f32(x, y, n, GeluTanh{}); break;
        case 3: map_f32(x, y, n, QuickGelu{}); break;
        default: map_f32(x, y, n, Relu{}); break;
    }
}

// ---- GEGLU ---------------------------------------------------------------------------------

// y[r, j] = h·gelu(g) with h = x[r, j], g = x[r, d + j]: the projection is read once and only the
// product written. When d is a multiple of the pack length, a pack of outputs lies in one row and both
// of its input packs are aligned too; otherwise one element at a time. Indices stay below the input's
// length, which the launcher keeps under 2^32.
template <typename T>
__device__ __forceinline__ void geglu_impl(const T* __restrict__ x, T* __restrict__ y, u32 rows, u32 d) {
    constexpr int N = 16 / sizeof(T);
    const size_t start = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    const Gelu gelu;
    if (d % N == 0 && aligned16(x) && aligned16(y)) {
        const u32 dp = d / N;
        const u32 packs = rows * dp;
        const Pack<T, N>* __restrict__ xv = reinterpret_cast<const Pack<T, N>*>(x);
        Pack<T, N>* __restrict__ yv = reinterpret_cast<Pack<T, N>*>(y);
        for (size_t i = start; i < packs; i += stride) {
            const u32 r = (u32)i / dp;
            const u32 at = (u32)i + r * dp;  // r·2dp + j with j = i − r·dp
            const Pack<T, N> h = xv[at], g = xv[at + dp];
            Pack<T, N> out;
#pragma unroll
            for (int k = 0; k < N; ++k) out.v[k] = from_f32<T>(to_f32(h.v[k]) * gelu(to_f32(g.v[k])));
            yv[i] = out;
        }
        return;
    }
    const u32 n = rows * d;
    for (size_t i = start; i < n; i += stride) {
        const u32 at = (u32)i + ((u32)i / d) * d;
        y[i] = from_f32<T>(to_f32(x[at]) * gelu(to_f32(x[at + d])));
    }
}

// ---- binary with broadcasting --------------------------------------------------------------

struct Add {
    __device__ float operator()(float a, float b) const { return a + b; }
};
struct Sub {
    __device__ float operator()(float a, float b) const { return a - b; }
};
struct Mul {
    __device__ float operator()(float a, float b) const { return a * b; }
};
struct Div {
    __device__ float operator()(float a, float b) const { return a / b; }
};

// Rank-1 layouts (the host collapses contiguous runs, so equal shapes and scalar operands land here):
// an operand either walks with i (stride 1, SA/SB true) or is one broadcast value (stride 0).
template <typename T, bool SA, bool SB, typename Op>
__device__ __forceinline__ void binary_flat(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ y,
                                            u32 n, Op op) {
    constexpr int N = 16 / sizeof(T);
    const size_t start = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    const float a0 = SA ? 0.0f : to_f32(a[0]);
    const float b0 = SB ? 0.0f : to_f32(b[0]);
    size_t done = 0;
    if (aligned16(y) && (!SA || aligned16(a)) && (!SB || aligned16(b))) {
        const size_t packs = n / N;
        for (size_t i = start; i < packs; i += stride) {
            Pack<T, N> pa, pb, out;
            if constexpr (SA) pa = reinterpret_cast<const Pack<T, N>*>(a)[i];
            if constexpr (SB) pb = reinterpret_cast<const Pack<T, N>*>(b)[i];
#pragma unroll
            for (int k = 0; k < N; ++k) {
                const float va = SA ? to_f32(pa.v[k]) : a0;
                const float vb = SB ? to_f32(pb.v[k]) : b0;
                out.v[k] = from_f32<T>(op(va, vb));
            }
            reinterpret_cast<Pack<T, N>*>(y)[i] = out;
        }
        done = packs * N;
    }
    for (size_t i = done + start; i < n; i += stride) {
        const float va = SA ? to_f32(a[i]) : a0;
        const float vb = SB ? to_f32(b[i]) : b0;
        y[i] = from_f32<T>(op(va, vb));
    }
}

// Any layout: decompose i over the dims. Offsets stay in u32: each is below its operand's length,
// which the launcher keeps under 2^32, and so is every partial sum idx[d]·stride[d].
// The loop over FOIL_MAX_DIMS is unrolled so args is indexed by constants (no local-memory copy);
// dimension 0 needs no division because i < n.
template <typename T, typename Op>
__device__ __forceinline__ void binary_strided(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ y,
                                               u32 n, Op op, const BroadcastArgs& args) {
    const u32 rank = args.rank;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        u32 rem = (u32)i, oa = 0, ob = 0;
#pragma unroll
        for (int d = FOIL_MAX_DIMS - 1; d > 0; --d) {
            if ((u32)d < rank) {
                const u32 q = rem / args.dims[d];
                const u32 idx = rem - q * args.dims[d];
                oa += idx * args.lhs_strides[d];
                ob += idx * args.rhs_strides[d];
                rem = q;
            }
        }
        oa += rem * args.lhs_strides[0];
        ob += rem * args.rhs_strides[0];
        y[i] = from_f32<T>(op(to_f32(a[oa]), to_f32(b[ob])));
    }
}

template <typename T, typename Op>
__device__ __forceinline__ void binary_op(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ y,
                                          u32 n, const BroadcastArgs& args) {
    Op op;
    if (args.rank == 1) {
        const u32 sa = args.lhs_strides[0], sb = args.rhs_strides[0];
        if (sa == 1 && sb == 1) return binary_flat<T, true, true>(a, b, y, n, op);
        if (sa == 1 && sb == 0) return binary_flat<T, true, false>(a, b, y, n, op);
        if (sa == 0 && sb == 1) return binary_flat<T, false, true>(a, b, y, n, op);
    }
    binary_strided<T>(a, b, y, n, op, args);
}

template <typename T>
__device__ __forceinline__ void binary_impl(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ y,
                                            u32 n, int op, const BroadcastArgs& args) {
    switch (op) {
        case 0: binary_op<T, Add>(a, b, y, n, args); break;
        case 1: binary_op<T, Sub>(a, b, y, n, args); break;
        case 2: binary_op<T, Mul>(a, b, y, n, args); break;
        default: binary_op<T, Div>(a, b, y, n, args); break;
    }
}

// ---- casts ---------------------------------------------------------------------------------

template <typename S, typename D>
struct CastOp {
    __device__ D operator()(S v) const { return store_f32<D>(load_f32(v)); }
};

// ---- entry points --------------------------------------------------------------------------

#define FOIL_FLOAT_ENTRIES(NAME, T)                                                                              \
    extern "C" __global__ void __launch_bounds__(256)                                                            \
        unary_##NAME(const T* __restrict__ x, T* __restrict__ y, u32 n, int op) {                                \
        unary_impl<T>(x, y, n, op);                                                                              \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(256)                                                            \
        scale_##NAME(const T* __restrict__ x, T* __restrict__ y, u32 n, float factor) {                          \
        map_f32(x, y, n, Scale{factor});                                                                         \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(256)                                                            \
        clamp_##NAME(const T* __restrict__ x, T* __restrict__ y, u32 n, float lo, float hi) {                    \
        map_f32(x, y, n, Clamp{lo, hi});                                                                         \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(256)                                                            \
        geglu_##NAME(const T* __restrict__ x, T* __restrict__ y, u32 rows, u32 d) {                              \
        geglu_impl<T>(x, y, rows, d);                                                                            \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(256) binary_##NAME(                                             \
        const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ y, u32 n, int op, BroadcastArgs args) { \
        binary_impl<T>(a, b, y, n, op, args);                                                                    \
    }

FOIL_FLOAT_ENTRIES(f32, float)
FOIL_FLOAT_ENTRIES(f16, f16)
FOIL_FLOAT_ENTRIES(bf16, bf16)

#define FOIL_CAST(SN, S, DN, D)                                                                                 \
    extern "C" __global__ void __launch_bounds__(256)                                                           \
        cast_##SN##_##DN(const S* __restrict__ x, D* __restrict__ y, u32 n) {                                   \
        map(x, y, n, CastOp<S, D>{});                                                                           \
    }

FOIL_CAST(f32, float, f16, f16)
FOIL_CAST(f32, float, bf16, bf16)
FOIL_CAST(f32, float, u32, u32)
FOIL_CAST(f16, f16, f32, float)
FOIL_CAST(f16, f16, bf16, bf16)
FOIL_CAST(f16, f16, u32, u32)
FOIL_CAST(bf16, bf16, f32, float)
FOIL_CAST(bf16, bf16, f16, f16)
FOIL_CAST(bf16, bf16, u32, u32)
FOIL_CAST(u32, u32, f32, float)
FOIL_CAST(u32, u32, f16, f16)
FOIL_CAST(u32, u32, bf16, bf16)
