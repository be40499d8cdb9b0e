// 2-D convolution (cross-correlation, as PyTorch) as an implicit GEMM, per group g:
//   Y[co][col] = bias[co] + Σ_kk W[co][kk] · X[kk][col]
// with M = c_out/groups rows (output channels of the group), N = n·h_out·w_out
// columns (image, oy, ox) and K = (c_in/groups)·kh·kw, kk = (ci, ky, kx).
// x is NCHW, w is (c_out, c_in/groups, kh, kw), so a group's W is a contiguous
// row-major M×K matrix; X[kk][col] = x[img, g·cig + ci, oy·sh − ph + ky·dh,
// ox·sw − pw + kx·dw] (zero outside the image) is never materialised: the B tile
// is gathered from x while it is loaded (im2col in the load). y is NCHW.
//
// Launch: block 256 (8 warps), grid (⌈N/64⌉, ⌈M/64⌉, groups); a block owns a
// 64×64 tile of Y for one group.
//
// Per block, the 64 columns' (image base, oy·sh − ph, ox·sw − pw, output base)
// are decoded once into shared memory; per k-tile each thread decodes only its
// own kk (one k row of the tile), so the gather costs two divisions a tile, not
// two an element.
// The math is the 64×64 tile core of tile.cuh, the one gemm.cu runs, with
// A = W and B = the gathered X (neither transposed); this file supplies the loads
// and the epilogue (bias, NCHW scatter).
// f16/bf16: tensor cores, mma.sync m16n8k16 (f32 accumulate); warps 2×4, 32×16
//   each. The W tile ([64 m][32 k]) comes in by cp.async when K % 8 == 0 and
//   aligned, else by guarded element loads; the X tile ([32 k][64 n]) is
//   gathered into registers one tile ahead and stored after the mma of the
//   current tile, so its global latency hides behind the math. ldmatrix (.trans
//   for X) feeds the mma; rows padded by 16 bytes against bank conflicts.
// f32: SIMT FFMA, 4×4 micro-tile per thread, k-step 16, the same gather and
//   register staging (tf32 would miss the 1e-4 tolerance).
//
// Roofline (SD-like 3×3, 320→320 channels, 64×64 map, batch 2): 2·M·N·K =
// 2·320·8192·2880 = 15 GFLOP against ~12 MB of compulsory traffic (x, w, y in
// f16): ~1200 FLOP/byte, compute bound; floor 15 µs on H100 tensor cores
// (990 TFLOP/s), 0.23 ms in f32 SIMT (67 TFLOP/s). The gather re-reads x about
// kh·kw times, mostly from L1/L2; the 64×64 tile and the scalar gather keep this
// kernel well below the tensor peak. Depthwise (M = 1) wastes 63/64 of each
// tile's math and is memory bound anyway.
#include "tile.cuh"

namespace {

// One output column: x offset of (img, first channel of the group), the input
// row / column of the window's top-left tap (may be negative), y offset of
// (img, channel 0, oy, ox). Columns past N get an iy0 that no tap can reach.
struct alignas(16) ColInfo { u32 xb; int iy0; int ix0; u32 yb; };
constexpr int COL_OUT = -0x40000000;


// The GEMM view of one group, shared by both paths.
struct ConvGeom {
    u32 cig, cog, M, N, K, khw, hw, hwo;
    __device__ __forceinline__ explicit ConvGeom(const Conv2dArgs& p) {
        cig = p.c_in / p.groups;
        cog = p.c_out / p.groups;
        M = cog;
        hwo = p.h_out * p.w_out;
        N = p.n * hwo;
        khw = p.kh * p.kw;
        K = cig * khw;
        hw = p.h * p.w;
    }
};

// Threads 0..63 decode the block's 64 columns; the caller syncs before use.
__device__ __forceinline__ void decode_cols(ColInfo* cols, const Conv2dArgs& p, const ConvGeom& G, u32 bn, u32 g,
                                            int tid) {
    if (tid < 64) {
        const u32 col = bn + tid;
        ColInfo ci{0u, COL_OUT, COL_OUT, 0u};
        if (col < G.N) {
            const u32 img = col / G.hwo, pix = col - img * G.hwo;
            const u32 oy = pix / p.w_out, ox = pix - oy * p.w_out;
            ci.xb = (img * p.c_in + g * G.cig) * G.hw;
            ci.iy0 = (int)(oy * p.stride_h) - (int)p.pad_h;
            ci.ix0 = (int)(ox * p.stride_w) - (int)p.pad_w;
            ci.yb = img * p.c_out * G.hwo + pix;
        }
        cols[tid] = ci;
    }
}

// A tap kk of the filter window: channel offset into x and the (dy, dx) shift.
struct Tap {
    bool ok;
    u32 coff;
    int dy, dx;
};
__device__ __forceinline__ Tap decode_tap(u32 kk, const Conv2dArgs& p, const ConvGeom& G) {
    Tap t;
    t.ok = kk < G.K;
    const u32 ci = t.ok ? kk / G.khw : 0u;
    const u32 r = t.ok ? kk - ci * G.khw : 0u;
    const u32 ky = r / p.kw, kx = r - ky * p.kw;
    t.coff = ci * G.hw;
    t.dy = (int)(ky * p.dil_h);
    t.dx = (int)(kx * p.dil_w);
    return t;
}

template <typename T> __device__ __forceinline__ T zero() {
    T v;
    v.bits = 0;
    return v;
}
template <> __device__ __forceinline__ float zero<float>() { return 0.f; }

// x element for (tap, column), 0 where the tap falls in the padding.
template <typename T>
__device__ __forceinline__ T gather(const T* __restrict__ x, const Conv2dArgs& p, const Tap& t, const ColInfo& c) {
    const int iy = c.iy0 + t.dy, ix = c.ix0 + t.dx;
    T v = zero<T>();
    if (t.ok && (u32)iy < p.h && (u32)ix < p.w) v = x[c.xb + t.coff + (u32)iy * p.w + (u32)ix];
    return v;
}

// ---- f16 / bf16: tensor cores -------------------------------------------------------

// W is gemm's A stored [m][k], X its B stored [k][n]: neither transposed.
constexpr int TC_SMEM = 2 * TC_STAGE_A<false> + 2 * TC_STAGE_B<false>;   // two stages (19 KB)

template <typename T>
__device__ __forceinline__ void conv_tc(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
                                        T* __restrict__ y, const Conv2dArgs& p, unsigned short* smem,
                                        ColInfo* cols) {
    const ConvGeom G(p);
    const int tid = threadIdx.x;
    const u32 g = blockIdx.z, bm = blockIdx.y * 64u, bn = blockIdx.x * 64u;
    const unsigned short* Wg = reinterpret_cast<const unsigned short*>(w) + (size_t)g * G.cog * G.K;
    const bool vecA = (G.K % 8u == 0) && aligned16(Wg);
    unsigned short* sA = smem;
    unsigned short* sB = smem + 2 * TC_STAGE_A<false>;

    decode_cols(cols, p, G, bn, g, tid);
    __syncthreads();

    // Gather role: k row kr of the tile, columns cl + 8j (8 threads cover a row,
    // so a warp's loads touch 4 runs of 8 consecutive columns). The W tile goes
    // by cp.async, the X tile through registers, stored by land after the math.
    const int kr = tid >> 3, cl = tid & 7;
    T xv[8];
    auto issue = [&](int st, u32 k0) {
        load_tile16<64, 32>(sA + st * TC_STAGE_A<false>, Wg, G.K, bm, k0, G.M, G.K, vecA, tid);
        cp_async_commit();
        const Tap t = decode_tap(k0 + kr, p, G);
#pragma unroll
        for (int j = 0; j < 8; ++j) xv[j] = gather(x, p, t, cols[cl + 8 * j]);
    };
    auto land = [&](int st) {
        unsigned short* d = sB + st * TC_STAGE_B<false> + kr * LD_MC + cl;
#pragma unroll
        for (int j = 0; j < 8; ++j) d[8 * j] = xv[j].bits;
    };

    issue(0, 0u);
    land(0);
    float acc[2][2][4];
    tc_mainloop<T, false, false>(acc, sA, sB, G.K / TC_BK + (G.K % TC_BK != 0), issue, land);

    tc_for_each_pair(acc, [&](int r, int c, float a0, float a1) {
        const u32 co = bm + r;
        if (co >= G.M) return;
        const u32 ch = g * G.cog + co;
        const float bv = p.has_bias ? to_f32(bias[ch]) : 0.f;
        const float v[2] = {a0, a1};
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const int cc = c + e;
            if (bn + cc >= G.N) continue;
            y[cols[cc].yb + ch * G.hwo] = from_f32<T>(v[e] + bv);
        }
    });
}

// ---- f32: SIMT ----------------------------------------------------------------------

__device__ __forceinline__ void conv_simt(const float* __restrict__ x, const float* __restrict__ w,
                                          const float* __restrict__ bias, float* __restrict__ y, const Conv2dArgs& p,
                                          float* smem, ColInfo* cols) {
    const ConvGeom G(p);
    const int tid = threadIdx.x;
    const u32 g = blockIdx.z, bm = blockIdx.y * 64u, bn = blockIdx.x * 64u;
    const float* Wg = w + (size_t)g * G.cog * G.K;
    const bool vecA = (G.K % 4u == 0) && aligned16(Wg);
    float* sA = smem;                 // sA[kk][i] = W(bm+i, k0+kk)
    float* sB = smem + 2 * FP_TILE;   // sB[kk][j] = X(k0+kk, bn+j)

    decode_cols(cols, p, G, bn, g, tid);
    __syncthreads();

    // W: row ar (m), 4 consecutive k at ac, transposed into sA. X: k row kr,
    // columns cl + 16j.
    const int ar = tid >> 2, ac = (tid & 3) * 4;
    const int kr = tid >> 4, cl = tid & 15;
    float ra[4], xv[4];
    auto issue = [&](u32 k0) {
        load4(ra, Wg, G.K, bm + ar, k0 + ac, G.M, G.K, vecA);
        const Tap t = decode_tap(k0 + kr, p, G);
#pragma unroll
        for (int j = 0; j < 4; ++j) xv[j] = gather(x, p, t, cols[cl + 16 * j]);
    };
    auto land = [&](int st) {
        float* dA = sA + st * FP_TILE;
        float* dB = sB + st * FP_TILE + kr * FP_LD + cl;
#pragma unroll
        for (int j = 0; j < 4; ++j) dA[(ac + j) * FP_LD + ar] = ra[j];
#pragma unroll
        for (int j = 0; j < 4; ++j) dB[16 * j] = xv[j];
    };

    issue(0u);
    land(0);
    float acc[4][4];
    simt_mainloop(acc, sA, sB, G.K / FP_BK + (G.K % FP_BK != 0), issue, land);

#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const u32 co = bm + simt_row0() + i;
        if (co >= G.M) continue;
        const u32 ch = g * G.cog + co;
        const float bv = p.has_bias ? bias[ch] : 0.f;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int cc = simt_col0() + j;
            if (bn + cc < G.N) y[cols[cc].yb + ch * G.hwo] = acc[i][j] + bv;
        }
    }
}

} // namespace

extern "C" __global__ void __launch_bounds__(256) conv2d_f32(const float* __restrict__ x, const float* __restrict__ w,
                                                             const float* __restrict__ bias, float* __restrict__ y,
                                                             Conv2dArgs a) {
    __shared__ alignas(16) float smem[FP_SMEM];
    __shared__ alignas(16) ColInfo cols[64];
    conv_simt(x, w, bias, y, a, smem, cols);
}

#define FOIL_CONV_TC(NAME, T)                                                                                  \
    extern "C" __global__ void __launch_bounds__(256)                                                          \
        NAME(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias, T* __restrict__ y,  \
             Conv2dArgs a) {                                                                                   \
        __shared__ alignas(16) unsigned short smem[TC_SMEM];                                                   \
        __shared__ alignas(16) ColInfo cols[64];                                                               \
        conv_tc<T>(x, w, bias, y, a, smem, cols);                                                              \
    }

FOIL_CONV_TC(conv2d_f16, f16)
FOIL_CONV_TC(conv2d_bf16, bf16)
