// Shared device helpers for every kernel family. Self-contained on purpose: no
// CUDA header is included, so NVRTC compiles the kernels on a machine that has
// only the driver and libnvrtc (NVRTC ships no cuda_fp16.h / cuda_bf16.h).
// build.rs inlines this file into each family's source for NVRTC.
#pragma once

typedef unsigned int u32;

// 16-bit floats as storage types; arithmetic is always in f32.
struct f16 { unsigned short bits; };
struct bf16 { unsigned short bits; };

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(f16 x) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
    return f;
}
__device__ __forceinline__ float to_f32(bf16 x) { return __uint_as_float(((u32)x.bits) << 16); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ f16 from_f32<f16>(float x) {
    f16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h.bits) : "f"(x));
    return h;
}
template <> __device__ __forceinline__ bf16 from_f32<bf16>(float x) {
    bf16 h;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h.bits) : "f"(x));
    return h;
}

// Whether p may be accessed by 16-byte vector loads and stores.
__device__ __forceinline__ bool aligned16(const void* p) { return ((size_t)p & 15) == 0; }

// Grid-stride loop over n elements, 64-bit safe.
#define FOIL_GRID_STRIDE(i, n) \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (size_t)(n); i += (size_t)gridDim.x * blockDim.x)

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// The most dimensions a broadcast or strided gather takes (MAX_DIMS in Rust).
#define FOIL_MAX_DIMS 6

// Mirrors the Rust #[repr(C)] structs passed by value.
struct BroadcastArgs {
    u32 rank;
    u32 dims[FOIL_MAX_DIMS];
    u32 lhs_strides[FOIL_MAX_DIMS];
    u32 rhs_strides[FOIL_MAX_DIMS];
};
struct StridedArgs {
    u32 rank;
    u32 dims[FOIL_MAX_DIMS];
    u32 strides[FOIL_MAX_DIMS];
};
struct Conv2dArgs {
    u32 n, c_in, h, w, c_out, kh, kw, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups, h_out, w_out, has_bias;
};
struct AttentionArgs {
    u32 batch, heads, q_len, kv_len, head_dim;
    float scale;
    u32 causal, has_mask;
    u32 mask_strides[4];
};
// The coefficients of one fused scheduler step (scheduler.cu); flags are 0 or 1.
struct SchedulerStepArgs {
    float x0_x, x0_m, clip, eps_x, eps_m, out_x0, out_eps, out_x, out_noise, out_prev, guidance;
    u32 has_clip, has_guidance, has_noise, has_prev, keep_x0;
};
// One AdamW step (optim.cu): AdamWStep of src/device/contract.rs.
struct AdamWArgs {
    float lr, beta1, beta2, eps, weight_decay, bias_correction1, bias_correction2_sqrt, grad_scale;
};
// One SGD step (optim.cu): SgdStep of src/device/contract.rs; flags are 0 or 1, and has_momentum
// says whether the momentum buffer is given.
struct SgdArgs {
    float lr, momentum, weight_decay, grad_scale;
    u32 nesterov, first_step, has_momentum;
};
