// Gradients of conv2d (conv.cu), each an implicit GEMM per group g on the 64×64 SIMT tile core
// of tile.cuh (f32 FFMA, 4×4 micro-tile a thread, k-step 16), for every dtype: f16/bf16
// operands are widened to f32 as they land in shared memory, so all math and accumulation is
// f32. cig = c_in/groups, cog = c_out/groups, khw = kh·kw, dY the upstream gradient (NCHW).
//
//   conv2d_input_grad_T(dy, w, dx, Conv2dArgs a)
//     dX[img, g·cig + ci, iy, ix] = Σ_(co, ky, kx) W[g·cog + co, ci, ky, kx] · dY[img, g·cog + co, oy, ox]
//     over the taps with oy·sh = iy + ph − ky·dh and ox·sw = ix + pw − kx·dw (integer, inside the
//     output). GEMM: M = cig rows (ci), N = n·h·w columns (img, iy, ix), K = cog·khw (co, ky, kx);
//     the A tile gathers W transposed, the B tile gathers dY, neither materialised. Every dX
//     element is one dot product: no atomics, deterministic.
//     Launch: block 256, grid (⌈n·h·w / 64⌉, ⌈cig / 64⌉, groups).
//
//   conv2d_weight_grad_T(dy, x, partial, dw, Conv2dArgs a, u32 splits, u32 k_split)
//     dW[g·cog + co, ci, ky, kx] = Σ_(img, oy, ox) dY[img, g·cog + co, oy, ox] · x[img, g·cig + ci,
//     oy·sh − ph + ky·dh, ox·sw − pw + kx·dw] (0 in the padding). GEMM: M = cog rows, N = cig·khw
//     columns (ci, ky, kx), K = n·h_out·w_out (img, oy, ox). The reduction over K is split into
//     `splits` consecutive ranges of k_split (a multiple of 16): split s of tile (m, n) of group g
//     is block (n, m, s·groups + g). With one split the block writes dW (T) itself; with more it
//     writes its f32 partial sum to partial[s][c_out·cig·khw] and
//   conv2d_weight_grad_reduce_T(partial, dw, u32 len, u32 splits)
//     sums the splits in order, dw[i] = Σ_s partial[s·len + i] (grid-stride). No atomics: the
//     result is the same on every run. The launcher picks splits so that about two blocks an SM
//     run when the tiles alone are too few (a 64→64 3×3 conv has 9 tiles, and K = 200k at batch
//     64 on 56×56).
//
// Roofline (ResNet-50 stage 3, 256→256 3×3 on 14×14, batch 64): each gradient is 2·M·N·K =
// 2·256·2304·12544 = 14.8 GFLOP against ~11 MB of compulsory f32 traffic (x or dX 12.8 MB,
// dY 12.8 MB, W 2.4 MB): ~500 FLOP/byte, compute bound. Floor on H100 SXM: 0.22 ms at the
// f32 SIMT peak (67 TFLOP/s), 15 µs on f16 tensor cores (990 TFLOP/s), which these SIMT
// kernels leave for later. The gathers re-read their sources about khw times, from L1/L2.
// Depthwise convs (cog = cig = 1) use 1/64 of each tile's rows and are memory bound anyway.
#include "tile.cuh"

namespace {

// An out-of-range row or column: no tap reaches the image from here.
constexpr int FAR = -0x40000000;

struct Geom {
    u32 cig, cog, khw, depth, hw, hwo;
    __device__ __forceinline__ explicit Geom(const Conv2dArgs& p) {
        cig = p.c_in / p.groups;
        cog = p.c_out / p.groups;
        khw = p.kh * p.kw;
        depth = cig * khw;
        hw = p.h * p.w;
        hwo = p.h_out * p.w_out;
    }
};

// ---- input gradient -----------------------------------------------------------------

// One dX column (img, iy, ix): its dX offset at the group's channel 0, its dY offset at
// (img, the group's channel 0), and iy + ph, ix + pw (FAR past the last column).
struct alignas(16) PixInfo { u32 xb; u32 yb; int ty; int tx; };

template <typename T>
__device__ __forceinline__ void input_grad(const T* __restrict__ dy, const T* __restrict__ w, T* __restrict__ dx,
                                           const Conv2dArgs& p, float* smem, PixInfo* pix) {
    const Geom G(p);
    const int tid = threadIdx.x;
    const u32 g = blockIdx.z, bm = blockIdx.y * 64u, bn = blockIdx.x * 64u;
    const u32 N = p.n * G.hw, K = G.cog * G.khw;
    float* sA = smem;                 // sA[kk][i] = A(bm+i, k0+kk) = W[g·cog + co, bm+i, ky, kx]
    float* sB = smem + 2 * FP_TILE;   // sB[kk][j] = B(k0+kk, bn+j) = dY tap of column bn+j

    if (tid < 64) {
        const u32 col = bn + tid;
        PixInfo c{0u, 0u, FAR, FAR};
        if (col < N) {
            const u32 img = col / G.hw, q = col - img * G.hw;
            const u32 iy = q / p.w, ix = q - iy * p.w;
            c.xb = (img * p.c_in + g * G.cig) * G.hw + q;
            c.yb = (img * p.c_out + g * G.cog) * G.hwo;
            c.ty = (int)(iy + p.pad_h);
            c.tx = (int)(ix + p.pad_w);
        }
        pix[tid] = c;
    }
    __syncthreads();

    // A: row ar (ci), k ak..ak+3. B: k row kr, columns cl + 16j.
    const int ar = tid & 63, ak = (tid >> 6) * 4;
    const int kr = tid >> 4, cl = tid & 15;
    const T* wg = w + (size_t)g * G.cog * G.depth;
    float ra[4], rb[4];
    auto issue = [&](u32 k0) {
        const u32 ci = bm + ar;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const u32 kk = k0 + ak + j;
            const u32 co = kk / G.khw, r = kk - co * G.khw;
            ra[j] = (ci < G.cig && kk < K) ? to_f32(wg[(co * G.cig + ci) * G.khw + r]) : 0.f;
        }
        const u32 kk = k0 + kr;
        const bool ok = kk < K;
        const u32 co = ok ? kk / G.khw : 0u, r = kk - co * G.khw;
        const u32 ky = r / p.kw, kx = r - ky * p.kw;
        const u32 coff = co * G.hwo;
        const int dyk = (int)(ky * p.dil_h), dxk = (int)(kx * p.dil_w);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const PixInfo c = pix[cl + 16 * j];
            const int ty = c.ty - dyk, tx = c.tx - dxk;
            float v = 0.f;
            if (ok && ty >= 0 && tx >= 0) {
                const u32 oy = (u32)ty / p.stride_h, ox = (u32)tx / p.stride_w;
                if (oy * p.stride_h == (u32)ty && ox * p.stride_w == (u32)tx && oy < p.h_out && ox < p.w_out)
                    v = to_f32(dy[c.yb + coff + oy * p.w_out + ox]);
            }
            rb[j] = v;
        }
    };
    auto land = [&](int st) {
        float* dA = sA + st * FP_TILE + ar;
        float* dB = sB + st * FP_TILE + kr * FP_LD + cl;
#pragma unroll
        for (int j = 0; j < 4; ++j) dA[(ak + j) * FP_LD] = ra[j];
#pragma unroll
        for (int j = 0; j < 4; ++j) dB[16 * j] = rb[j];
    };

    issue(0u);
    land(0);
    float acc[4][4];
    simt_mainloop(acc, sA, sB, K / FP_BK + (K % FP_BK != 0), issue, land);

#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const u32 ci = bm + simt_row0() + i;
        if (ci >= G.cig) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int cc = simt_col0() + j;
            if (bn + cc < N) dx[pix[cc].xb + ci * G.hw] = from_f32<T>(acc[i][j]);
        }
    }
}

// ---- weight gradient ----------------------------------------------------------------

// One dW column (ci, ky, kx): x offset of channel ci in the group, the tap's (dy, dx) shift
// (FAR past the last column).
struct alignas(16) TapInfo { u32 coff; int dy; int dx; u32 pad; };

template <typename T>
__device__ __forceinline__ void weight_grad(const T* __restrict__ dy, const T* __restrict__ x,
                                            float* __restrict__ partial, T* __restrict__ dw, const Conv2dArgs& p,
                                            u32 splits, u32 k_split, float* smem, TapInfo* taps) {
    const Geom G(p);
    const int tid = threadIdx.x;
    const u32 g = blockIdx.z % p.groups, split = blockIdx.z / p.groups;
    const u32 bm = blockIdx.y * 64u, bn = blockIdx.x * 64u;
    const u32 K = p.n * G.hwo;
    const u32 kbeg = split * k_split, kend = min(K, kbeg + k_split);
    float* sA = smem;                 // sA[kk][i] = dY(g·cog + bm+i, kbeg+k0+kk)
    float* sB = smem + 2 * FP_TILE;   // sB[kk][j] = x tap bn+j of output pixel kbeg+k0+kk

    if (tid < 64) {
        const u32 col = bn + tid;
        TapInfo t{0u, FAR, FAR, 0u};
        if (col < G.depth) {
            const u32 ci = col / G.khw, r = col - ci * G.khw;
            const u32 ky = r / p.kw, kx = r - ky * p.kw;
            t.coff = ci * G.hw;
            t.dy = (int)(ky * p.dil_h);
            t.dx = (int)(kx * p.dil_w);
        }
        taps[tid] = t;
    }
    __syncthreads();

    // A: row ar (co), k ak..ak+3 (4 threads cover a row's 16 consecutive pixels). B: k row kr,
    // columns cl + 16j.
    const int ar = tid >> 2, ak = (tid & 3) * 4;
    const int kr = tid >> 4, cl = tid & 15;
    float ra[4], rb[4];
    auto issue = [&](u32 k0) {
        {
            const u32 co = bm + ar;
            u32 kk = kbeg + k0 + ak;
            u32 img = kk / G.hwo, q = kk - img * G.hwo;
            const T* row = dy + (size_t)(g * G.cog + co) * G.hwo;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                ra[j] = (co < G.cog && kk < kend) ? to_f32(row[(size_t)img * p.c_out * G.hwo + q]) : 0.f;
                ++kk;
                if (++q == G.hwo) q = 0, ++img;
            }
        }
        const u32 kk = kbeg + k0 + kr;
        int iy0 = FAR, ix0 = FAR;
        u32 xb = 0;
        if (kk < kend) {
            const u32 img = kk / G.hwo, q = kk - img * G.hwo;
            const u32 oy = q / p.w_out, ox = q - oy * p.w_out;
            xb = (img * p.c_in + g * G.cig) * G.hw;
            iy0 = (int)(oy * p.stride_h) - (int)p.pad_h;
            ix0 = (int)(ox * p.stride_w) - (int)p.pad_w;
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const TapInfo t = taps[cl + 16 * j];
            const int iy = iy0 + t.dy, ix = ix0 + t.dx;
            rb[j] = ((u32)iy < p.h && (u32)ix < p.w) ? to_f32(x[xb + t.coff + (u32)iy * p.w + (u32)ix]) : 0.f;
        }
    };
    auto land = [&](int st) {
        float* dA = sA + st * FP_TILE + ar;
        float* dB = sB + st * FP_TILE + kr * FP_LD + cl;
#pragma unroll
        for (int j = 0; j < 4; ++j) dA[(ak + j) * FP_LD] = ra[j];
#pragma unroll
        for (int j = 0; j < 4; ++j) dB[16 * j] = rb[j];
    };

    issue(0u);
    land(0);
    float acc[4][4];
    const u32 len = kend > kbeg ? kend - kbeg : 0u;
    simt_mainloop(acc, sA, sB, len / FP_BK + (len % FP_BK != 0), issue, land);

    const size_t total = (size_t)p.c_out * G.depth;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const u32 co = bm + simt_row0() + i;
        if (co >= G.cog) continue;
        const size_t row = (size_t)(g * G.cog + co) * G.depth;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const u32 col = bn + simt_col0() + j;
            if (col >= G.depth) continue;
            if (splits == 1) dw[row + col] = from_f32<T>(acc[i][j]);
            else partial[split * total + row + col] = acc[i][j];
        }
    }
}

} // namespace

#define FOIL_CONV_GRAD(SUFFIX, T)                                                                                 \
    extern "C" __global__ void __launch_bounds__(256)                                                             \
        conv2d_input_grad_##SUFFIX(const T* __restrict__ dy, const T* __restrict__ w, T* __restrict__ dx,         \
                                   Conv2dArgs a) {                                                                \
        __shared__ alignas(16) float smem[FP_SMEM];                                                               \
        __shared__ PixInfo pix[64];                                                                               \
        input_grad<T>(dy, w, dx, a, smem, pix);                                                                   \
    }                                                                                                             \
    extern "C" __global__ void __launch_bounds__(256)                                                             \
        conv2d_weight_grad_##SUFFIX(const T* __restrict__ dy, const T* __restrict__ x, float* __restrict__ partial, \
                                    T* __restrict__ dw, Conv2dArgs a, u32 splits, u32 k_split) {                  \
        __shared__ alignas(16) float smem[FP_SMEM];                                                               \
        __shared__ TapInfo taps[64];                                                                              \
        weight_grad<T>(dy, x, partial, dw, a, splits, k_split, smem, taps);                                       \
    }                                                                                                             \
    extern "C" __global__ void conv2d_weight_grad_reduce_##SUFFIX(const float* __restrict__ partial,             \
                                                                  T* __restrict__ dw, u32 len, u32 splits) {      \
        FOIL_GRID_STRIDE(i, len) {                                                                                \
            float s = 0.f;                                                                                        \
            for (u32 k = 0; k < splits; ++k) s += partial[(size_t)k * len + i];                                   \
            dw[i] = from_f32<T>(s);                                                                               \
        }                                                                                                         \
    }

FOIL_CONV_GRAD(f32, float)
FOIL_CONV_GRAD(f16, f16)
FOIL_CONV_GRAD(bf16, bf16)
