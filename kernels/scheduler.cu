// The fused diffusion-scheduler step: one launch per denoising step, over the latents.
//
//   scheduler_step_T(x, model, noise, prev_x0, out, x0_out, n, a)
//     m   = a.has_guidance ? u + g·(c − u) with u = model[i], c = model[n + i] : model[i]
//     x0  = a.x0_x·x + a.x0_m·m, clamped to [−a.clip, a.clip] when a.has_clip
//     eps = a.eps_x·x + a.eps_m·m
//     out = a.out_x0·x0 + a.out_eps·eps + a.out_x·x + a.out_noise·noise + a.out_prev·prev_x0
//   noise and prev_x0 are read only when a.has_noise / a.has_prev; x0_out is written only when
//   a.keep_x0. Every DDIM, DDPM, Euler, Euler-ancestral and DPM-Solver++ step is this linear
//   combination with per-step coefficients computed on the host (src/diffusion/scheduler/).
// T = f32 | f16 | bf16; all arithmetic in f32 with explicit __fmul_rn / __fmaf_rn, in the order
// the CPU reference (src/device/cpu/scheduler.rs) uses, so the two agree bit for bit in f32.
//
// Launch: grid-stride, 256 threads a block, at most 32 blocks an SM (correct for any grid).
//
// Roofline: memory-bound, ~10 flops an element. Bytes an element: sample, model output (twice
// with guidance), optional noise and previous x0 read; the new sample and optional x0 written:
// 3·sizeof(T) (DDIM) to 6·sizeof(T) (DPM-Solver++ 2M with guidance: 24 B in f32), ~140-270
// G elem/s on an H100's ~3.3 TB/s. Stable Diffusion latents are small (4·64·64 = 16 K elements
// an image), so in practice a step is one launch's latency, where unfused it was ~8 launches
// and as many round trips of the latents through memory. 16-byte packs when every pointer in
// use is 16-byte aligned (whole cudarc allocations are), else coalesced scalar accesses.

#include "common.cuh"

// N elements of T moved as one aligned vector access (N·sizeof(T) = 16 bytes).
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
    T v[N];
};

struct StepResult {
    float out, x0;
};

// One element; `u`, `c` are the model output (c only read with guidance), `noise` and `prev`
// only used when their flags are set.
__device__ __forceinline__ StepResult step_element(const SchedulerStepArgs& a, float x, float u, float c,
                                                   float noise, float prev) {
    const float m = a.has_guidance ? __fmaf_rn(a.guidance, __fsub_rn(c, u), u) : u;
    float x0 = __fmaf_rn(a.x0_x, x, __fmul_rn(a.x0_m, m));
    if (a.has_clip) x0 = fminf(fmaxf(x0, -a.clip), a.clip);
    const float eps = __fmaf_rn(a.eps_x, x, __fmul_rn(a.eps_m, m));
    float out = __fmaf_rn(a.out_eps, eps, __fmul_rn(a.out_x0, x0));
    out = __fmaf_rn(a.out_x, x, out);
    if (a.has_noise) out = __fmaf_rn(a.out_noise, noise, out);
    if (a.has_prev) out = __fmaf_rn(a.out_prev, prev, out);
    return {out, x0};
}

template <typename T>
__device__ __forceinline__ void scheduler_step_impl(const T* __restrict__ x, const T* __restrict__ model,
                                                    const T* __restrict__ noise, const T* __restrict__ prev,
                                                    T* __restrict__ out, T* __restrict__ x0_out, u32 n,
                                                    const SchedulerStepArgs& a) {
    constexpr int N = 16 / sizeof(T);
    const T* __restrict__ cond = model + n;
    const size_t start = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    size_t done = 0;
    const bool packed = aligned16(x) && aligned16(model) && aligned16(out) &&
                        (!a.has_guidance || aligned16(cond)) && (!a.has_noise || aligned16(noise)) &&
                        (!a.has_prev || aligned16(prev)) && (!a.keep_x0 || aligned16(x0_out));
    if (packed) {
        const size_t packs = n / N;
        for (size_t i = start; i < packs; i += stride) {
            const Pack<T, N> px = reinterpret_cast<const Pack<T, N>*>(x)[i];
            const Pack<T, N> pu = reinterpret_cast<const Pack<T, N>*>(model)[i];
            Pack<T, N> pc = pu, pn = px, pp = px, po, p0;
            if (a.has_guidance) pc = reinterpret_cast<const Pack<T, N>*>(cond)[i];
            if (a.has_noise) pn = reinterpret_cast<const Pack<T, N>*>(noise)[i];
            if (a.has_prev) pp = reinterpret_cast<const Pack<T, N>*>(prev)[i];
#pragma unroll
            for (int k = 0; k < N; ++k) {
                const StepResult r = step_element(a, to_f32(px.v[k]), to_f32(pu.v[k]), to_f32(pc.v[k]),
                                                  to_f32(pn.v[k]), to_f32(pp.v[k]));
                po.v[k] = from_f32<T>(r.out);
                p0.v[k] = from_f32<T>(r.x0);
            }
            reinterpret_cast<Pack<T, N>*>(out)[i] = po;
            if (a.keep_x0) reinterpret_cast<Pack<T, N>*>(x0_out)[i] = p0;
        }
        done = packs * N;
    }
    for (size_t i = done + start; i < n; i += stride) {
        const float u = to_f32(model[i]);
        const StepResult r = step_element(a, to_f32(x[i]), u, a.has_guidance ? to_f32(cond[i]) : u,
                                          a.has_noise ? to_f32(noise[i]) : 0.0f, a.has_prev ? to_f32(prev[i]) : 0.0f);
        out[i] = from_f32<T>(r.out);
        if (a.keep_x0) x0_out[i] = from_f32<T>(r.x0);
    }
}

#define FOIL_SCHEDULER_STEP(T, NAME)                                                                          \
    extern "C" __global__ void __launch_bounds__(256)                                                         \
        NAME(const T* x, const T* model, const T* noise, const T* prev, T* out, T* x0,                        \
             u32 n, SchedulerStepArgs a) {                                                                    \
        scheduler_step_impl<T>(x, model, noise, prev, out, x0, n, a);                                         \
    }

FOIL_SCHEDULER_STEP(float, scheduler_step_f32)
FOIL_SCHEDULER_STEP(f16, scheduler_step_f16)
FOIL_SCHEDULER_STEP(bf16, scheduler_step_bf16)
