// Batched matrix multiply: C[z] = op(A[z]) · op(B[z]) for z = blockIdx.z, row-major.
// A is m×k (stored k×m when trans_a), B is k×n (stored n×k when trans_b); the
// operands of batch z start at z·a_batch_stride / z·b_batch_stride elements (a
// stride of 0 shares one operand), C is contiguous with batch stride m·n.
//
// Launch: block 256 (8 warps), grid (⌈n/64⌉, ⌈m/64⌉, batch); each block owns one
// 64×64 tile of C and walks k in steps of 32 (f16/bf16) or 16 (f32).
//
// The k loops are the 64×64 tile core of tile.cuh (shared with conv.cu); this
// file supplies the operand loads and the epilogue.
// f16/bf16: tensor cores, mma.sync m16n8k16 with f32 accumulators. Warps are 2×4
//   over the tile, each owns 32×16 (2×2 mma tiles). The shared tiles keep the
//   global layout of each operand (rows of 16-byte chunks along the contiguous
//   dimension), so one cp.async per thread per operand fills a stage and
//   ldmatrix (.trans where the operand is stored the other way round) builds
//   the fragments for all four trans_a/trans_b cases. Two stages: the copy of
//   tile t+1 overlaps the mma of tile t. Rows are padded by 16 bytes, which
//   makes the 8 rows an ldmatrix phase reads hit distinct banks. A chunk that
//   is past an edge, or whose source is not 16-byte aligned (leading dimension
//   not a multiple of 8, odd batch stride), is loaded element by element with
//   zero fill instead, so any m, n, k ≥ 1 is correct.
// f32: SIMT FFMA (tf32 mma would miss the 1e-4 f32 tolerance). Each thread owns
//   a 4×4 micro-tile; both tiles sit k-major in shared memory so a thread reads
//   4 A and 4 B values as two float4 per k. Global loads go through registers
//   (float4 when aligned) one tile ahead of the math: two shared stages, one
//   barrier per k-step.
//
// Roofline (one 4096³ product): 2·m·n·k = 137 GFLOP against (mk + kn + mn)·size
// = 100 MB (f16) of compulsory traffic, i.e. ~1400 FLOP/byte, far above the
// H100 ridge (990 TFLOP/s / 3.3 TB/s ≈ 300): compute bound, floor 0.14 ms on
// tensor cores, 2.0 ms in f32 SIMT (67 TFLOP/s). The 64×64 tile (fixed by the
// ABI) re-reads each operand ⌈n/64⌉ or ⌈m/64⌉ times, served mostly from L2; its
// per-warp 32×16 mma tile keeps this kernel well under the tensor peak (the
// benchmark reports the ratio to cuBLAS at each shape).
#include "tile.cuh"

namespace {

// ---- f16 / bf16: tensor cores -------------------------------------------------------

// A and B stages are sized for either layout, so the four trans instantiations
// share one shared-memory declaration.
constexpr int TC_TILE = TC_TILE_KC;
static_assert(TC_TILE >= TC_TILE_MC, "stage too small");
constexpr int TC_SMEM = 4 * TC_TILE;     // 2 operands × 2 stages (20 KB)

template <typename T, bool TA, bool TB>
__device__ __forceinline__ void gemm_tc(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ c, u32 m,
                                        u32 n, u32 k, u32 sa, u32 sb, unsigned short* smem) {
    const int tid = threadIdx.x;
    const u32 bm = blockIdx.y * 64u, bn = blockIdx.x * 64u;
    const unsigned short* A = reinterpret_cast<const unsigned short*>(a) + (size_t)blockIdx.z * sa;
    const unsigned short* B = reinterpret_cast<const unsigned short*>(b) + (size_t)blockIdx.z * sb;
    T* C = c + (size_t)blockIdx.z * ((size_t)m * n);
    // cp.async needs every 16-byte chunk aligned: leading dimension % 8 and the base.
    const bool vecA = ((TA ? m : k) % 8u == 0) && aligned16(A);
    const bool vecB = ((TB ? k : n) % 8u == 0) && aligned16(B);
    unsigned short* sA = smem;
    unsigned short* sB = smem + 2 * TC_TILE;

    // Stage loads keep the global layout: [k][m] when trans_a, else [m][k]; [n][k]
    // when trans_b, else [k][n]. cp.async lands them, nothing is left to store.
    auto issue = [&](int st, u32 k0) {
        if (TA) load_tile16<32, 64>(sA + st * TC_STAGE_A<TA>, A, m, k0, bm, k, m, vecA, tid);
        else load_tile16<64, 32>(sA + st * TC_STAGE_A<TA>, A, k, bm, k0, m, k, vecA, tid);
        if (TB) load_tile16<64, 32>(sB + st * TC_STAGE_B<TB>, B, k, bn, k0, n, k, vecB, tid);
        else load_tile16<32, 64>(sB + st * TC_STAGE_B<TB>, B, n, k0, bn, k, n, vecB, tid);
        cp_async_commit();
    };

    const u32 kt_n = k / TC_BK + (k % TC_BK != 0);
    if (kt_n > 0) issue(0, 0u);    // k = 0 loads nothing and writes zeros
    float acc[2][2][4];
    tc_mainloop<T, TA, TB>(acc, sA, sB, kt_n, issue, [](int) {});

    const bool pair = (n % 2u == 0) && ((size_t)C & 3) == 0;   // (row·n + even col) even: 4-byte stores
    tc_for_each_pair(acc, [&](int r, int cc, float a0, float a1) {
        const u32 row = bm + r, col = bn + cc;
        if (row >= m || col >= n) return;
        const T v0 = from_f32<T>(a0), v1 = from_f32<T>(a1);
        T* dst = C + ((size_t)row * n + col);
        if (pair) {
            *reinterpret_cast<u32*>(dst) = (u32)v0.bits | ((u32)v1.bits << 16);
        } else {
            dst[0] = v0;
            if (col + 1 < n) dst[1] = v1;
        }
    });
}

template <typename T>
__device__ __forceinline__ void gemm_tc_dispatch(const T* a, const T* b, T* c, u32 m, u32 n, u32 k, int ta, int tb,
                                                 u32 sa, u32 sb, unsigned short* smem) {
    if (ta) {
        if (tb) gemm_tc<T, true, true>(a, b, c, m, n, k, sa, sb, smem);
        else gemm_tc<T, true, false>(a, b, c, m, n, k, sa, sb, smem);
    } else {
        if (tb) gemm_tc<T, false, true>(a, b, c, m, n, k, sa, sb, smem);
        else gemm_tc<T, false, false>(a, b, c, m, n, k, sa, sb, smem);
    }
}

// ---- f32: SIMT ----------------------------------------------------------------------

template <bool TA, bool TB>
__device__ __forceinline__ void gemm_simt(const float* __restrict__ a, const float* __restrict__ b,
                                          float* __restrict__ c, u32 m, u32 n, u32 k, u32 sa, u32 sb, float* smem) {
    const int tid = threadIdx.x;
    const u32 bm = blockIdx.y * 64u, bn = blockIdx.x * 64u;
    const float* A = a + (size_t)blockIdx.z * sa;
    const float* B = b + (size_t)blockIdx.z * sb;
    float* C = c + (size_t)blockIdx.z * ((size_t)m * n);
    const bool vecA = ((TA ? m : k) % 4u == 0) && aligned16(A);
    const bool vecB = ((TB ? k : n) % 4u == 0) && aligned16(B);
    float* sA = smem;                     // [2][BK][FP_LD]: sA[kk][i] = A(bm+i, k0+kk)
    float* sB = smem + 2 * FP_TILE;       //                 sB[kk][j] = B(k0+kk, bn+j)

    // Per-thread load coordinates: 64×16 (or 16×64) floats = one float4 per thread.
    // Operands stored with k contiguous are read along k and transposed into smem.
    const int ar = TA ? (tid >> 4) : (tid >> 2), ac = TA ? (tid & 15) * 4 : (tid & 3) * 4;
    const int br = TB ? (tid >> 2) : (tid >> 4), bc = TB ? (tid & 3) * 4 : (tid & 15) * 4;
    float ra[4], rb[4];
    auto issue = [&](u32 k0) {
        if (TA) load4(ra, A, m, k0 + ar, bm + ac, k, m, vecA);
        else load4(ra, A, k, bm + ar, k0 + ac, m, k, vecA);
        if (TB) load4(rb, B, k, bn + br, k0 + bc, n, k, vecB);
        else load4(rb, B, n, k0 + br, bn + bc, k, n, vecB);
    };
    auto land = [&](int st) {
        float* dA = sA + st * FP_TILE;
        float* dB = sB + st * FP_TILE;
        if (TA) *reinterpret_cast<F4*>(dA + ar * FP_LD + ac) = F4{ra[0], ra[1], ra[2], ra[3]};
        else {
#pragma unroll
            for (int j = 0; j < 4; ++j) dA[(ac + j) * FP_LD + ar] = ra[j];
        }
        if (TB) {
#pragma unroll
            for (int j = 0; j < 4; ++j) dB[(bc + j) * FP_LD + br] = rb[j];
        } else *reinterpret_cast<F4*>(dB + br * FP_LD + bc) = F4{rb[0], rb[1], rb[2], rb[3]};
    };

    const u32 kt_n = k / FP_BK + (k % FP_BK != 0);
    if (kt_n > 0) {
        issue(0u);
        land(0);
    }
    float acc[4][4];
    simt_mainloop(acc, sA, sB, kt_n, issue, land);

    const u32 col = bn + simt_col0();
    const bool vecC = (n % 4u == 0) && aligned16(C);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const u32 row = bm + simt_row0() + i;
        if (row >= m || col >= n) continue;
        float* dst = C + ((size_t)row * n + col);
        if (vecC && n - col >= 4) {
            *reinterpret_cast<F4*>(dst) = F4{acc[i][0], acc[i][1], acc[i][2], acc[i][3]};
        } else {
#pragma unroll
            for (int j = 0; j < 4; ++j)
                if ((u32)j < n - col) dst[j] = acc[i][j];
        }
    }
}

} // namespace

extern "C" __global__ void __launch_bounds__(256) matmul_f32(const float* __restrict__ a, const float* __restrict__ b,
                                                             float* __restrict__ c, u32 m, u32 n, u32 k, int trans_a,
                                                             int trans_b, u32 a_batch_stride, u32 b_batch_stride) {
    __shared__ alignas(16) float smem[FP_SMEM];
    if (trans_a) {
        if (trans_b) gemm_simt<true, true>(a, b, c, m, n, k, a_batch_stride, b_batch_stride, smem);
        else gemm_simt<true, false>(a, b, c, m, n, k, a_batch_stride, b_batch_stride, smem);
    } else {
        if (trans_b) gemm_simt<false, true>(a, b, c, m, n, k, a_batch_stride, b_batch_stride, smem);
        else gemm_simt<false, false>(a, b, c, m, n, k, a_batch_stride, b_batch_stride, smem);
    }
}

// One entry point per 16-bit dtype; the shared stages are declared here, once,
// so the four trans instantiations share them.
#define FOIL_MATMUL_TC(NAME, T)                                                                                \
    extern "C" __global__ void __launch_bounds__(256)                                                          \
        NAME(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ c, u32 m, u32 n, u32 k,         \
             int trans_a, int trans_b, u32 a_batch_stride, u32 b_batch_stride) {                               \
        __shared__ alignas(16) unsigned short smem[TC_SMEM];                                                   \
        gemm_tc_dispatch<T>(a, b, c, m, n, k, trans_a, trans_b, a_batch_stride, b_batch_stride, smem);         \
    }

FOIL_MATMUL_TC(matmul_f16, f16)
FOIL_MATMUL_TC(matmul_bf16, bf16)
