// The optimizers' fused updates over flat f32 buffers (every parameter of a model concatenated,
// llm.c style: one launch a step however many tensors the model has), and the sum of squares the
// global gradient norm comes from.
//
//   adamw_step_f32(p, g, m, v, n, a)   in place, PyTorch's AdamW (AdamWStep in contract.rs):
//     g ← g·a.grad_scale; p ← p·(1 − lr·wd); m ← m + (1 − β1)(g − m); v ← v·β2 + (1 − β2)·g²;
//     p ← p − (lr / bias_correction1) · m / (√v / bias_correction2_sqrt + eps)
//   sgd_step_f32(p, g, b, n, a)        in place, PyTorch's SGD with dampening 0 (SgdStep):
//     g ← g·a.grad_scale (+ wd·p when wd ≠ 0); with a buffer (a.has_momentum): b ← g on the first
//     step, else b ← b·momentum + g; then g ← g + momentum·b (nesterov) or g ← b; p ← p − lr·g.
//     b is neither read nor written without a.has_momentum.
//   sum_squares_T(x, partials, n)      partials[block] = Σ x² over the block's grid-stride share;
//     the launcher sums the partials with reduce_f32, so the result is deterministic for a grid.
// T = f32 | f16 | bf16 for sum_squares; the updates are f32 only (master weights, moments and
// flattened gradients are f32 whatever the compute dtype). All arithmetic in f32; the updates use
// explicit __f*_rn operations in the CPU reference's order (src/device/cpu/optim.rs), no
// contraction into fma, so the two backends agree bit for bit.
//
// Launch: block 256. The updates are grid-stride (at most 32 blocks an SM, correct for any grid);
// sum_squares gets min(⌈n / 2048⌉, 8 blocks an SM), one partial a block.
//
// Roofline: memory-bound, ~15 flops a parameter against 28 bytes. Bytes a parameter a step:
//   adamw_step  read p, g, m, v (16 B), write p, m, v (12 B): 28 B
//   sgd_step    20 B with momentum (p, g, b read; p, b written), 12 B without
//   sum_squares 4 B (the flat f32 gradient)
// so AdamW runs at ~120 G parameters/s on an H100's ~3.35 TB/s (25 M parameters, ResNet-50 size:
// ~0.2 ms). Around it a step also flattens the gradients (sizeof(T) read + 4 B written, and a
// cast when they are not f32): ~40 B a parameter end to end, against the 28 B floor of an update
// that keeps f32 master weights and two moments. 16-byte packs when every pointer is 16-byte
// aligned (whole cudarc allocations are), else coalesced scalar accesses.

#include "common.cuh"

#define FOIL_BLOCK 256

// N elements of T moved as one aligned vector access (N·sizeof(T) = 16 bytes).
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
    T v[N];
};
typedef Pack<float, 4> F4;

// ---- AdamW ---------------------------------------------------------------------------------------

struct AdamWScalars {
    float decay, step_size, rate1, rate2;
};

__device__ __forceinline__ void adamw_element(const AdamWArgs& a, const AdamWScalars& s, float& p, float g, float& m,
                                              float& v) {
    g = __fmul_rn(g, a.grad_scale);
    const float decayed = __fmul_rn(p, s.decay);
    m = __fadd_rn(m, __fmul_rn(s.rate1, __fsub_rn(g, m)));
    v = __fadd_rn(__fmul_rn(v, a.beta2), __fmul_rn(s.rate2, __fmul_rn(g, g)));
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), a.bias_correction2_sqrt), a.eps);
    p = __fsub_rn(decayed, __fmul_rn(s.step_size, __fdiv_rn(m, denom)));
}

extern "C" __global__ void __launch_bounds__(FOIL_BLOCK)
    adamw_step_f32(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m, float* __restrict__ v,
                   u32 n, AdamWArgs a) {
    const AdamWScalars s = {__fsub_rn(1.0f, __fmul_rn(a.lr, a.weight_decay)), __fdiv_rn(a.lr, a.bias_correction1),
                            __fsub_rn(1.0f, a.beta1), __fsub_rn(1.0f, a.beta2)};
    const size_t start = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    size_t done = 0;
    if (aligned16(p) && aligned16(g) && aligned16(m) && aligned16(v)) {
        const size_t packs = n / 4;
        for (size_t i = start; i < packs; i += stride) {
            F4 pp = reinterpret_cast<const F4*>(p)[i], pm = reinterpret_cast<const F4*>(m)[i],
               pv = reinterpret_cast<const F4*>(v)[i];
            const F4 pg = reinterpret_cast<const F4*>(g)[i];
#pragma unroll
            for (int k = 0; k < 4; ++k) adamw_element(a, s, pp.v[k], pg.v[k], pm.v[k], pv.v[k]);
            reinterpret_cast<F4*>(p)[i] = pp;
            reinterpret_cast<F4*>(m)[i] = pm;
            reinterpret_cast<F4*>(v)[i] = pv;
        }
        done = packs * 4;
    }
    for (size_t i = done + start; i < n; i += stride) {
        float pi = p[i], mi = m[i], vi = v[i];
        adamw_element(a, s, pi, g[i], mi, vi);
        p[i] = pi;
        m[i] = mi;
        v[i] = vi;
    }
}

// ---- SGD -----------------------------------------------------------------------------------------

// The new weight; b is the momentum buffer's element, used only when MOMENTUM.
template <bool MOMENTUM>
__device__ __forceinline__ float sgd_element(const SgdArgs& a, float p, float g, float& b) {
    g = __fmul_rn(g, a.grad_scale);
    // Skipped rather than multiplied by 0 when off: 0·inf would turn an infinite weight into NaN.
    if (a.weight_decay != 0.0f) g = __fadd_rn(g, __fmul_rn(a.weight_decay, p));
    float d = g;
    if (MOMENTUM) {
        b = a.first_step ? g : __fadd_rn(__fmul_rn(b, a.momentum), g);
        d = a.nesterov ? __fadd_rn(g, __fmul_rn(a.momentum, b)) : b;
    }
    return __fsub_rn(p, __fmul_rn(a.lr, d));
}

template <bool MOMENTUM>
__device__ __forceinline__ void sgd_impl(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ b,
                                         u32 n, const SgdArgs& a) {
    const size_t start = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    size_t done = 0;
    if (aligned16(p) && aligned16(g) && (!MOMENTUM || aligned16(b))) {
        const size_t packs = n / 4;
        for (size_t i = start; i < packs; i += stride) {
            F4 pp = reinterpret_cast<const F4*>(p)[i];
            const F4 pg = reinterpret_cast<const F4*>(g)[i];
            F4 pb = pg;
            if (MOMENTUM) pb = reinterpret_cast<const F4*>(b)[i];
#pragma unroll
            for (int k = 0; k < 4; ++k) pp.v[k] = sgd_element<MOMENTUM>(a, pp.v[k], pg.v[k], pb.v[k]);
            reinterpret_cast<F4*>(p)[i] = pp;
            if (MOMENTUM) reinterpret_cast<F4*>(b)[i] = pb;
        }
        done = packs * 4;
    }
    for (size_t i = done + start; i < n; i += stride) {
        float bi = MOMENTUM ? b[i] : 0.0f;
        p[i] = sgd_element<MOMENTUM>(a, p[i], g[i], bi);
        if (MOMENTUM) b[i] = bi;
    }
}

extern "C" __global__ void __launch_bounds__(FOIL_BLOCK)
    sgd_step_f32(float* p, const float* g, float* b, u32 n, SgdArgs a) {
    if (a.has_momentum) {
        sgd_impl<true>(p, g, b, n, a);
    } else {
        sgd_impl<false>(p, g, b, n, a);
    }
}

// ---- the sum of squares --------------------------------------------------------------------------

template <typename T>
__device__ __forceinline__ void sum_squares_impl(const T* __restrict__ x, float* __restrict__ partials, u32 n) {
    constexpr int N = 16 / sizeof(T);
    const size_t start = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    float acc = 0.0f;
    size_t done = 0;
    if (aligned16(x)) {
        const size_t packs = n / N;
        for (size_t i = start; i < packs; i += stride) {
            const Pack<T, N> px = reinterpret_cast<const Pack<T, N>*>(x)[i];
#pragma unroll
            for (int k = 0; k < N; ++k) {
                const float f = to_f32(px.v[k]);
                acc = fmaf(f, f, acc);
            }
        }
        done = packs * N;
    }
    for (size_t i = done + start; i < n; i += stride) {
        const float f = to_f32(x[i]);
        acc = fmaf(f, f, acc);
    }
    __shared__ float warp_sums[FOIL_BLOCK / 32];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    acc = warp_sum(acc);
    if (lane == 0) warp_sums[warp] = acc;
    __syncthreads();
    if (warp == 0) {
        acc = warp_sum(lane < FOIL_BLOCK / 32 ? warp_sums[lane] : 0.0f);
        if (lane == 0) partials[blockIdx.x] = acc;
    }
}

#define FOIL_SUM_SQUARES(T, NAME)                                                                            \
    extern "C" __global__ void __launch_bounds__(FOIL_BLOCK) NAME(const T* x, float* partials, u32 n) { \
        sum_squares_impl<T>(x, partials, n);                                                                 \
    }

FOIL_SUM_SQUARES(float, sum_squares_f32)
FOIL_SUM_SQUARES(f16, sum_squares_f16)
FOIL_SUM_SQUARES(bf16, sum_squares_bf16)
