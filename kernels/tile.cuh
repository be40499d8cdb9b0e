// The 64×64 output-tile core shared by gemm.cu and conv.cu (conv is an implicit
// GEMM): one copy of the block's two-stage k loop, its shared-memory tile layout
// and its accumulator layout, so both families get the same math and the same
// fixes. The caller owns the global side: it passes loaders as lambdas, `issue`
// to start filling a stage and `land` to finish it after the math (a no-op where
// cp.async writes shared memory directly), primes stage 0 with them, and writes
// its own epilogue.
//
// Launch shape both families use: block 256 (8 warps), one 64×64 tile a block.
// f16/bf16: tensor cores, mma.sync m16n8k16 with f32 accumulators, k-step 32;
//   warps 2×4 over the tile, each owns 32×16 (2×2 mma tiles). An operand tile
//   keeps the global layout of its operand, k contiguous ([64][32]) or m / n
//   contiguous ([32][64]), and ldmatrix (.trans for the other way round) builds
//   the fragments. Rows are padded by 16 bytes, which makes the 8 rows an
//   ldmatrix phase reads hit distinct banks.
// f32: SIMT FFMA, k-step 16, a 4×4 micro-tile per thread; both tiles sit k-major
//   in shared memory so a thread reads 4 A and 4 B values as two float4 per k.
#pragma once
#include "mma.cuh"

namespace {

// ---- f16 / bf16: tensor cores -------------------------------------------------------

constexpr int TC_BK = 32;
constexpr int LD_KC = TC_BK + 8;         // tile stored [64][32]: k contiguous, +16 B pad
constexpr int LD_MC = 64 + 8;            // tile stored [32][64]: m or n contiguous, +16 B pad
constexpr int TC_TILE_KC = 64 * LD_KC;     // elements of one stage of a [64][32] tile
constexpr int TC_TILE_MC = TC_BK * LD_MC;  // elements of one stage of a [32][64] tile
// Stage size of the A tile (TA: stored [32 k][64 m], else [64 m][32 k]) and of
// the B tile (TB: stored [64 n][32 k], else [32 k][64 n]).
template <bool TA> constexpr int TC_STAGE_A = TA ? TC_TILE_MC : TC_TILE_KC;
template <bool TB> constexpr int TC_STAGE_B = TB ? TC_TILE_KC : TC_TILE_MC;

// Loads a ROWS×COLS tile (COLS contiguous in global memory, row pitch ld) whose
// origin is (r0, c0) of a rlim×clim matrix into shared memory with row pitch
// COLS + 8. ROWS·COLS/8 = 256 chunks of 8 elements: one per thread. A chunk
// that is past an edge or not 16-byte aligned (vec false) is loaded element by
// element with zero fill, so any shape is correct.
template <int ROWS, int COLS>
__device__ __forceinline__ void load_tile16(unsigned short* s, const unsigned short* __restrict__ g, u32 ld, u32 r0,
                                            u32 c0, u32 rlim, u32 clim, bool vec, int tid) {
    static_assert(ROWS * COLS / 8 == 256, "one chunk per thread");
    constexpr int CPR = COLS / 8;
    const int r = tid / CPR, c = (tid % CPR) * 8;
    const u32 gr = r0 + r, gc = c0 + c;
    unsigned short* dst = s + r * (COLS + 8) + c;
    // Elements of this chunk inside the matrix (0 past an edge); overflow-safe form.
    const u32 valid = (gr < rlim && gc < clim) ? clim - gc : 0u;
    const unsigned short* src = g + ((size_t)gr * ld + gc);
    if (vec && valid >= 8) {
        cp_async16(dst, src);
    } else {
        u32 w[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const u32 lo = (2u * j < valid) ? (u32)src[2 * j] : 0u;
            const u32 hi = (2u * j + 1 < valid) ? (u32)src[2 * j + 1] : 0u;
            w[j] = lo | (hi << 16);
        }
        *reinterpret_cast<U4*>(dst) = U4{w[0], w[1], w[2], w[3]};
    }
}

// acc = A·B over kt_n k-tiles. sA, sB: two stages each, TC_STAGE_A<TA> and
// TC_STAGE_B<TB> elements apart. issue(st, k0) starts filling stage st with the
// tiles at k0 and commits its cp.async group; land(st) finishes that stage after
// the math of the other one, so register-staged loads hide behind it. The copy
// of tile t+1 overlaps the mma of tile t. The caller primes stage 0 (issue(0, 0),
// land(0)) first: gemm only when kt_n > 0, conv always (K = 0 loads just zeros),
// which spares conv the check and the registers it costs.
template <typename T, bool TA, bool TB, typename Issue, typename Land>
__device__ __forceinline__ void tc_mainloop(float (&acc)[2][2][4], const unsigned short* sA, const unsigned short* sB,
                                            u32 kt_n, Issue&& issue, Land&& land) {
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp >> 2, wn = warp & 3;     // warp tile: rows wm*32.., cols wn*16..
    const int li = lane >> 3, lr = lane & 7;     // ldmatrix: matrix index, row in matrix

#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

    for (u32 kt = 0; kt < kt_n; ++kt) {
        const int cur = kt & 1;
        const bool more = kt + 1 < kt_n;
        if (more) {
            issue(cur ^ 1, (kt + 1) * TC_BK);
            cp_async_wait<1>();    // this stage's group is done, the next may fly
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const unsigned short* tA = sA + cur * TC_STAGE_A<TA>;
        const unsigned short* tB = sB + cur * TC_STAGE_B<TB>;
#pragma unroll
        for (int ks = 0; ks < TC_BK; ks += 16) {
            u32 af[2][4], bfr[4];
#pragma unroll
            for (int mt = 0; mt < 2; ++mt) {
                const int m0 = wm * 32 + mt * 16;
                // Matrices 0..3 of the A fragment: (m0, ks), (m0+8, ks), (m0, ks+8), (m0+8, ks+8).
                if (TA) ldsm_x4_t(af[mt], tA + (ks + lr + (li >> 1) * 8) * LD_MC + m0 + (li & 1) * 8);
                else ldsm_x4(af[mt], tA + (m0 + (lane & 15)) * LD_KC + ks + (lane >> 4) * 8);
            }
            // Matrices 0..3: (n0, ks), (n0, ks+8), (n0+8, ks), (n0+8, ks+8) -> b0,b1 of two n-tiles.
            const int n0 = wn * 16;
            if (TB) ldsm_x4(bfr, tB + (n0 + lr + (li >> 1) * 8) * LD_KC + ks + (li & 1) * 8);
            else ldsm_x4_t(bfr, tB + (ks + lr + (li & 1) * 8) * LD_MC + n0 + (li >> 1) * 8);
#pragma unroll
            for (int mt = 0; mt < 2; ++mt)
#pragma unroll
                for (int nt = 0; nt < 2; ++nt) mma16816<T>(acc[mt][nt], af[mt], bfr[2 * nt], bfr[2 * nt + 1]);
        }
        // The other stage was last read before the previous barrier: safe to fill.
        if (more) land(cur ^ 1);
        __syncthreads();           // stage cur is overwritten by the next iteration's issue
    }
}

// Calls f(r, c, v0, v1) for each pair of this thread's accumulators: tile row r,
// tile columns c (even) and c + 1. Accumulator (mt, nt, e) sits at row g (+8
// for e >= 2), column 2·(lane%4) + (e & 1) of the warp's mma tile (mt, nt).
template <typename F> __device__ __forceinline__ void tc_for_each_pair(const float (&acc)[2][2][4], F&& f) {
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp >> 2, wn = warp & 3;
    const int g = lane >> 2, t4 = lane & 3;
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int hh = 0; hh < 2; ++hh)
#pragma unroll
            for (int nt = 0; nt < 2; ++nt)
                f(wm * 32 + mt * 16 + g + hh * 8, wn * 16 + nt * 8 + 2 * t4, acc[mt][nt][2 * hh],
                  acc[mt][nt][2 * hh + 1]);
}

// ---- f32: SIMT ----------------------------------------------------------------------

constexpr int FP_BK = 16;
constexpr int FP_LD = 64 + 4;            // k-major rows of 64 m (or n) values, +16 B pad
constexpr int FP_TILE = FP_BK * FP_LD;   // elements of one stage of one operand
constexpr int FP_SMEM = 4 * FP_TILE;     // 2 operands × 2 stages (17 KB)

// Origin of this thread's 4×4 micro-tile: tile rows simt_row0().., columns
// simt_col0()... Signed on purpose: unsigned index math costs gemm 6 registers.
__device__ __forceinline__ int simt_row0() { return ((int)threadIdx.x >> 4) * 4; }
__device__ __forceinline__ int simt_col0() { return ((int)threadIdx.x & 15) * 4; }

// Four consecutive elements (along the contiguous dimension) at (gr, gc) of a
// rlim×clim matrix with row pitch ld, zero outside; one float4 when aligned.
__device__ __forceinline__ void load4(float (&v)[4], const float* __restrict__ g, u32 ld, u32 gr, u32 gc, u32 rlim,
                                      u32 clim, bool vec) {
    const u32 valid = (gr < rlim && gc < clim) ? clim - gc : 0u;
    const float* src = g + ((size_t)gr * ld + gc);
    if (vec && valid >= 4) {
        const F4 t = *reinterpret_cast<const F4*>(src);
        v[0] = t.x; v[1] = t.y; v[2] = t.z; v[3] = t.w;
    } else {
#pragma unroll
        for (int j = 0; j < 4; ++j) v[j] = ((u32)j < valid) ? src[j] : 0.f;
    }
}

// acc = A·B over kt_n k-tiles; sA[st][kk][i] = A(i, k0+kk), sB[st][kk][j] =
// B(k0+kk, j), FP_TILE elements a stage. Global loads go through registers one
// tile ahead of the math: issue(k0) loads the tiles at k0 into registers,
// land(st) stores them into stage st. One barrier per k-step. The caller primes
// stage 0 (issue(0), land(0)) first, as for tc_mainloop.
template <typename Issue, typename Land>
__device__ __forceinline__ void simt_mainloop(float (&acc)[4][4], const float* sA, const float* sB, u32 kt_n,
                                              Issue&& issue, Land&& land) {
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;

    __syncthreads();
    for (u32 kt = 0; kt < kt_n; ++kt) {
        const int cur = kt & 1;
        const bool more = kt + 1 < kt_n;
        if (more) issue((kt + 1) * FP_BK);   // in flight during the math below
        const float* tA = sA + cur * FP_TILE + simt_row0();
        const float* tB = sB + cur * FP_TILE + simt_col0();
#pragma unroll
        for (int kk = 0; kk < FP_BK; ++kk) {
            const F4 av = *reinterpret_cast<const F4*>(tA + kk * FP_LD);
            const F4 bv = *reinterpret_cast<const F4*>(tB + kk * FP_LD);
            const float ai[4] = {av.x, av.y, av.z, av.w}, bj[4] = {bv.x, bv.y, bv.z, bv.w};
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(ai[i], bj[j], acc[i][j]);
        }
        // The other stage was last read before the previous barrier: safe to fill.
        if (more) land(cur ^ 1);
        __syncthreads();
    }
}

} // namespace
