// Fused attention: O = softmax(Q·Kᵀ·scale + mask)·V per (batch, head), never
// writing the score matrix. q, o: (batch, heads, q_len, head_dim); k, v: (batch,
// heads, kv_len, head_dim); all contiguous. causal masks key j > query i; the f32
// additive mask is read at mask[b·s0 + h·s1 + i·s2 + j·s3] only when has_mask; a
// row whose keys are all masked gets zeros. head_dim ≤ D, the compile-time tile
// width (the missing dims are zero-filled in shared memory and skipped).
//
// Launch: block 128 (4 warps), grid (⌈q_len/16⌉, batch·heads); a block owns 16
// query rows of one head and streams K/V tiles of BKV keys through static shared
// memory (< 48 KB), keeping a running max m and sum l per row (online softmax in
// base 2: scores are pre-multiplied by log2 e so exp is one ex2). With causal,
// tiles past the block's last query are skipped. -inf safety: while a row's max
// is still -inf the exponent offset is 0, so exp2(-inf - 0) = 0, never NaN.
//
// f16/bf16 (tensor cores, mma.sync m16n8k16, f32 accumulate). Q [16][D], K and V
//   [BKV][D] (BKV = 64; 32 for D = 256) and P [16][BKV] live in shared memory in
//   T, rows padded by 16 bytes so ldmatrix is conflict-free. Per tile:
//     S = Q·Kᵀ: warp w takes keys w·BKV/4.. (B operand straight from K rows);
//     row max: quad shuffles, then across the 4 warps through shared memory;
//     P = exp2(S − m) rounded to T into shared memory; each thread keeps a
//     partial row sum (same rescaling in every thread, reduced once at the end);
//     O += P·V: warp w owns output dims w·D/4.. (V through ldmatrix.trans).
//   K and V have their own buffers and come in by cp.async: V(t) lands during
//   S(t) and the softmax, K(t+1) during P·V(t). 4 barriers per tile.
// f32 (SIMT; tf32 would miss the 1e-4 f32 tolerance): Q in shared memory as f32,
//   one K-or-V buffer. Each warp owns 4 query rows: for the scores the lanes
//   split the tile's keys (Q reads are warp broadcasts, K rows padded so lanes
//   reading different rows hit different banks); P goes to shared memory and for
//   P·V the lanes split the head dims (lane owns D/32 of them).
//
// Roofline: 4·B·H·Sq·Skv·hd FLOPs over (2·Sq + 2·Skv)·B·H·hd·size bytes. SD at
// 64×64 latents (B·H = 16, Sq = Skv = 4096, hd = 40..160 → take 64, f16):
// 69 GFLOP vs 34 MB, ~2000 FLOP/byte: compute bound, floor 70 µs at 990
// TFLOP/s on tensor cores (1 ms at 67 TFLOP/s for the f32 SIMT path). With only
// 16 query rows a block, K/V are re-read Sq/16 times (from L2) and each mma
// round is short between barriers, so expect a fraction of the tensor peak.
#include "mma.cuh"

// 2^x; ex2.approx(-inf) = +0.
__device__ __forceinline__ float ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

namespace {

struct alignas(8) F2 { float x, y; };

constexpr float LOG2E = 1.4426950408889634f;
__device__ __forceinline__ float neg_inf() { return __uint_as_float(0xff800000u); }


// Everything a block needs to know about its problem.
struct Ctx {
    u32 bh, b, h, q0, hd, q_len, kv_len, kv_end;
    float sl2;   // scale · log2 e
};
__device__ __forceinline__ Ctx make_ctx(const AttentionArgs& a) {
    Ctx c;
    c.bh = blockIdx.y;
    c.b = c.bh / a.heads;
    c.h = c.bh - c.b * a.heads;
    c.q0 = blockIdx.x * 16u;
    c.hd = a.head_dim;
    c.q_len = a.q_len;
    c.kv_len = a.kv_len;
    // Causal: no row of this block sees a key past its last query q0 + 15.
    const unsigned long long last = (unsigned long long)c.q0 + 16u;
    c.kv_end = (a.causal && last < a.kv_len) ? (u32)last : a.kv_len;
    c.sl2 = a.scale * LOG2E;
    return c;
}

// The logit of (query i, key j) in base 2, or -inf where masked, out of range,
// or past the causal diagonal. The mask is only read for real (i, j).
__device__ __forceinline__ float logit2(float s, u32 i, u32 j, const Ctx& c, const float* __restrict__ mask,
                                        const AttentionArgs& a) {
    const bool ok = i < c.q_len && j < c.kv_len && !(a.causal && j > i);
    float v = s * c.sl2;
    if (ok && a.has_mask) {
        const size_t off = (size_t)c.b * a.mask_strides[0] + (size_t)c.h * a.mask_strides[1] +
                           (size_t)i * a.mask_strides[2] + (size_t)j * a.mask_strides[3];
        v = fmaf(mask[off], LOG2E, v);
    }
    return ok ? v : neg_inf();
}

// Copies rows [row0, row0 + ROWS) of a (rows × hd) matrix into shared rows of
// pitch LD, as 16-byte chunks of VEC elements: cp.async when the source is
// aligned, guarded element loads otherwise; rows past rlim become zeros. Chunks
// at or past nch (beyond head_dim) are never written: they stay zero from the
// kernel's start.
template <typename T, int ROWS, int CH, int LD>
__device__ __forceinline__ void load_rows(T* __restrict__ dst, const T* __restrict__ src, u32 row0, u32 rlim, u32 hd,
                                          u32 nch, bool vec, int tid) {
    constexpr int VEC = 16 / sizeof(T);
    for (int idx = tid; idx < ROWS * CH; idx += 128) {
        const int r = idx / CH, c = idx % CH;
        if ((u32)c >= nch) continue;
        T* d = dst + r * LD + c * VEC;
        const u32 j = row0 + r;
        if (j < rlim) {
            const T* s = src + ((size_t)j * hd + (u32)c * VEC);
            if (vec) {
                cp_async16(d, s);
            } else {
                const u32 valid = hd - (u32)c * VEC;   // > 0 since c < nch
                if constexpr (sizeof(T) == 4) {
                    const u32* s32 = reinterpret_cast<const u32*>(s);
                    U4 u;
                    u.x = s32[0];
                    u.y = valid > 1 ? s32[1] : 0u;
                    u.z = valid > 2 ? s32[2] : 0u;
                    u.w = valid > 3 ? s32[3] : 0u;
                    *reinterpret_cast<U4*>(d) = u;
                } else {
                    const unsigned short* s16 = reinterpret_cast<const unsigned short*>(s);
                    u32 w[4];
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const u32 lo = (2u * e < valid) ? (u32)s16[2 * e] : 0u;
                        const u32 hi = (2u * e + 1 < valid) ? (u32)s16[2 * e + 1] : 0u;
                        w[e] = lo | (hi << 16);
                    }
                    *reinterpret_cast<U4*>(d) = U4{w[0], w[1], w[2], w[3]};
                }
            }
        } else {
            *reinterpret_cast<U4*>(d) = U4{0u, 0u, 0u, 0u};
        }
    }
}

// Zeroes n16 16-byte words of shared memory, block-wide.
__device__ __forceinline__ void zero_smem(void* p, int n16, int tid) {
    U4* q = reinterpret_cast<U4*>(p);
    for (int i = tid; i < n16; i += 128) q[i] = U4{0u, 0u, 0u, 0u};
}

// ---- f16 / bf16: tensor cores -------------------------------------------------------

template <int D> struct TcCfg {
    static constexpr int BKV = D >= 256 ? 32 : 64;   // keys a tile
    static constexpr int NKW = BKV / 4;               // keys a warp in S = Q·Kᵀ (16 or 8)
    static constexpr int NTK = NKW / 8;               // its n-tiles
    static constexpr int LD = D + 8;                  // Q/K/V row pitch (elements)
    static constexpr int LDP = BKV + 8;               // P row pitch
    static constexpr int DW = D / 4;                  // output dims a warp in P·V
    static constexpr int NT = DW / 8;                 // its n-tiles
    static constexpr int CH = D / 8;                  // 16-byte chunks a row
    static constexpr int SMEM = (16 * LD + 2 * BKV * LD + 16 * LDP) * 2 + 4 * 16 * 4;
    static_assert(SMEM <= 48 * 1024, "static shared memory limit");
    static_assert(NT % 2 == 0, "P·V loads V in pairs of n-tiles");
};

template <typename T> __device__ __forceinline__ u32 pack2(float lo, float hi) {
    return (u32)from_f32<T>(lo).bits | ((u32)from_f32<T>(hi).bits << 16);
}

template <typename T, int D>
__device__ __forceinline__ void attention_tc(const T* __restrict__ q, const T* __restrict__ k,
                                             const T* __restrict__ v, const float* __restrict__ mask,
                                             T* __restrict__ o, const AttentionArgs& a) {
    using C = TcCfg<D>;
    __shared__ alignas(16) T Qs[16 * C::LD];
    __shared__ alignas(16) T Ks[C::BKV * C::LD];
    __shared__ alignas(16) T Vs[C::BKV * C::LD];
    __shared__ alignas(16) T Ps[16 * C::LDP];
    __shared__ alignas(16) float red[4 * 16];   // per-warp row partials (max, then sum)

    const Ctx c = make_ctx(a);
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    const int g = lane >> 2, t4 = lane & 3;       // mma fragment row group / column pair
    const int li = lane >> 3, lr = lane & 7;      // ldmatrix matrix index / row
    const u32 nch = (c.hd + 7) / 8;
    const size_t kv_base = (size_t)c.bh * c.kv_len * c.hd;
    const T* Qg = q + (size_t)c.bh * c.q_len * c.hd;
    const T* Kg = k + kv_base;
    const T* Vg = v + kv_base;
    const bool vec = (c.hd % 8u == 0) && aligned16(q) && aligned16(k) && aligned16(v);

    zero_smem(Qs, 16 * C::LD * 2 / 16, tid);
    zero_smem(Ks, C::BKV * C::LD * 2 / 16, tid);
    zero_smem(Vs, C::BKV * C::LD * 2 / 16, tid);
    __syncthreads();
    // cp.async groups, in order: Q, K0, V0, then K(t+1) and V(t+1) in tile t
    // (empty past the end), so "wait until one group is pending" always means
    // "the operand about to be used has landed".
    load_rows<T, 16, C::CH, C::LD>(Qs, Qg, c.q0, c.q_len, c.hd, nch, vec, tid);
    cp_async_commit();
    if (c.kv_end > 0) load_rows<T, C::BKV, C::CH, C::LD>(Ks, Kg, 0, c.kv_len, c.hd, nch, vec, tid);
    cp_async_commit();
    if (c.kv_end > 0) load_rows<T, C::BKV, C::CH, C::LD>(Vs, Vg, 0, c.kv_len, c.hd, nch, vec, tid);
    cp_async_commit();

    float m_run[2] = {neg_inf(), neg_inf()};   // rows g and g + 8
    float l_part[2] = {0.f, 0.f};          // this thread's share of the row sums
    float acc[C::NT][4];
#pragma unroll
    for (int i = 0; i < C::NT; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[i][e] = 0.f;

    for (u32 j0 = 0; j0 < c.kv_end; j0 += C::BKV) {
        cp_async_wait<1>();   // Q and K(t) landed; V(t) may be in flight
        __syncthreads();

        // S = Q·Kᵀ for this warp's keys.
        float s[C::NTK][4];
#pragma unroll
        for (int i = 0; i < C::NTK; ++i)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[i][e] = 0.f;
        if constexpr (C::NKW == 16) {
#pragma unroll
            for (int ks = 0; ks < D; ks += 16) {
                if ((u32)ks < c.hd) {
                    u32 qa[4], kb[4];
                    ldsm_x4(qa, Qs + (lane & 15) * C::LD + ks + (lane >> 4) * 8);
                    // Matrices: (keys n0.., ks), (n0.., ks+8), (n0+8.., ks), (n0+8.., ks+8).
                    ldsm_x4(kb, Ks + (w * 16 + lr + (li >> 1) * 8) * C::LD + ks + (li & 1) * 8);
                    mma16816<T>(s[0], qa, kb[0], kb[1]);
                    mma16816<T>(s[1], qa, kb[2], kb[3]);
                }
            }
        } else {
#pragma unroll
            for (int ks = 0; ks < D; ks += 32) {
                if ((u32)ks < c.hd) {
                    u32 qa0[4], qa1[4], kb[4];
                    ldsm_x4(qa0, Qs + (lane & 15) * C::LD + ks + (lane >> 4) * 8);
                    ldsm_x4(qa1, Qs + (lane & 15) * C::LD + ks + 16 + (lane >> 4) * 8);
                    // Matrices: (keys n0.., ks + 8·li): b0/b1 for ks, then for ks + 16.
                    ldsm_x4(kb, Ks + (w * 8 + lr) * C::LD + ks + li * 8);
                    mma16816<T>(s[0], qa0, kb[0], kb[1]);
                    mma16816<T>(s[0], qa1, kb[2], kb[3]);
                }
            }
        }

        // Scale, mask, and this warp's row maxima.
        float mx[2] = {neg_inf(), neg_inf()};
#pragma unroll
        for (int nt = 0; nt < C::NTK; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const u32 i = c.q0 + g + (e >> 1) * 8;
                const u32 j = j0 + w * C::NKW + nt * 8 + 2 * t4 + (e & 1);
                s[nt][e] = logit2(s[nt][e], i, j, c, mask, a);
                mx[e >> 1] = fmaxf(mx[e >> 1], s[nt][e]);
            }
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
            mx[hh] = fmaxf(mx[hh], __shfl_xor_sync(0xffffffffu, mx[hh], 1));
            mx[hh] = fmaxf(mx[hh], __shfl_xor_sync(0xffffffffu, mx[hh], 2));
        }
        if (t4 == 0) {
            red[w * 16 + g] = mx[0];
            red[w * 16 + g + 8] = mx[1];
        }
        __syncthreads();   // maxima visible; every warp is done with K(t)

        if (j0 + C::BKV < c.kv_end)
            load_rows<T, C::BKV, C::CH, C::LD>(Ks, Kg, j0 + C::BKV, c.kv_len, c.hd, nch, vec, tid);
        cp_async_commit();

        // Online softmax: new max, rescale factor, P = exp2(S − m) into shared memory.
        float alpha[2], moff[2];
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
            const int row = g + hh * 8;
            const float mt = fmaxf(fmaxf(red[row], red[16 + row]), fmaxf(red[32 + row], red[48 + row]));
            const float m_new = fmaxf(m_run[hh], mt);
            moff[hh] = (m_new == neg_inf()) ? 0.f : m_new;   // all -inf so far: exp2(-inf - 0) = 0
            alpha[hh] = ex2(m_run[hh] - moff[hh]);
            m_run[hh] = m_new;
        }
        float psum[2] = {0.f, 0.f};
#pragma unroll
        for (int nt = 0; nt < C::NTK; ++nt) {
            float p[4];
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                p[e] = ex2(s[nt][e] - moff[e >> 1]);
                psum[e >> 1] += p[e];
            }
            const int col = w * C::NKW + nt * 8 + 2 * t4;
            *reinterpret_cast<u32*>(Ps + g * C::LDP + col) = pack2<T>(p[0], p[1]);
            *reinterpret_cast<u32*>(Ps + (g + 8) * C::LDP + col) = pack2<T>(p[2], p[3]);
        }
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) l_part[hh] = fmaf(l_part[hh], alpha[hh], psum[hh]);

        cp_async_wait<1>();   // V(t) landed; K(t+1) may be in flight
        __syncthreads();      // P and V(t) visible

        // O = O·alpha + P·V for this warp's output dims.
#pragma unroll
        for (int nt = 0; nt < C::NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[nt][e] *= alpha[e >> 1];
#pragma unroll
        for (int ks = 0; ks < C::BKV; ks += 16) {
            u32 pa[4];
            ldsm_x4(pa, Ps + (lane & 15) * C::LDP + ks + (lane >> 4) * 8);
#pragma unroll
            for (int pr = 0; pr < C::NT / 2; ++pr) {
                const int n0 = w * C::DW + pr * 16;
                if ((u32)n0 < c.hd) {
                    u32 vb[4];
                    // Matrices: (keys ks.., dims n0..), (ks+8.., n0..), (ks.., n0+8..), (ks+8.., n0+8..).
                    ldsm_x4_t(vb, Vs + (ks + lr + (li & 1) * 8) * C::LD + n0 + (li >> 1) * 8);
                    mma16816<T>(acc[2 * pr], pa, vb[0], vb[1]);
                    mma16816<T>(acc[2 * pr + 1], pa, vb[2], vb[3]);
                }
            }
        }
        __syncthreads();   // every warp is done with V(t), P and the maxima

        if (j0 + C::BKV < c.kv_end)
            load_rows<T, C::BKV, C::CH, C::LD>(Vs, Vg, j0 + C::BKV, c.kv_len, c.hd, nch, vec, tid);
        cp_async_commit();
    }
    cp_async_wait<0>();

    // Row sums: quad, then across warps (the loop's last barrier freed red).
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
        l_part[hh] += __shfl_xor_sync(0xffffffffu, l_part[hh], 1);
        l_part[hh] += __shfl_xor_sync(0xffffffffu, l_part[hh], 2);
    }
    if (t4 == 0) {
        red[w * 16 + g] = l_part[0];
        red[w * 16 + g + 8] = l_part[1];
    }
    __syncthreads();
    const bool pair = (c.hd % 2u == 0) && ((size_t)o & 3) == 0;
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
        const int row = g + hh * 8;
        const u32 i = c.q0 + row;
        if (i >= c.q_len) continue;
        const float l = red[row] + red[16 + row] + red[32 + row] + red[48 + row];
        const float inv = l > 0.f ? 1.f / l : 0.f;   // every key masked: zeros
        T* orow = o + ((size_t)c.bh * c.q_len + i) * c.hd;
#pragma unroll
        for (int nt = 0; nt < C::NT; ++nt) {
            const u32 d = w * C::DW + nt * 8 + 2 * t4;
            if (d >= c.hd) continue;
            const float v0 = acc[nt][2 * hh] * inv, v1 = acc[nt][2 * hh + 1] * inv;
            if (pair) {
                *reinterpret_cast<u32*>(orow + d) = pack2<T>(v0, v1);
            } else {
                orow[d] = from_f32<T>(v0);
                if (d + 1 < c.hd) orow[d + 1] = from_f32<T>(v1);
            }
        }
    }
}

// ---- f32: SIMT ----------------------------------------------------------------------

template <int D> struct SimtCfg {
    static constexpr int LD = D + 4;                              // Q and K/V row pitch (floats), +16 B
    static constexpr int BKV = D <= 64 ? 64 : (D <= 128 ? 32 : 16);
    static constexpr int CW = BKV < 32 ? BKV : 32;                // lanes sharing one row group's keys
    static constexpr int RG = 32 / CW;                            // row groups in a warp (1 or 2)
    static constexpr int RPL = 4 / RG;                            // rows a lane scores
    static constexpr int CPL = BKV / CW;                          // keys a lane scores
    static constexpr int W = D / 32;                              // dims a lane owns in P·V
    static constexpr int CH = D / 4;                              // float4 chunks a row
    static constexpr int SMEM = (16 * LD + BKV * LD + 4 * BKV * 4) * 4;
    static_assert(SMEM <= 48 * 1024, "static shared memory limit");
};

template <int D>
__device__ __forceinline__ void attention_simt(const float* __restrict__ q, const float* __restrict__ k,
                                               const float* __restrict__ v, const float* __restrict__ mask,
                                               float* __restrict__ o, const AttentionArgs& a) {
    using C = SimtCfg<D>;
    __shared__ alignas(16) float Qs[16 * C::LD];
    __shared__ alignas(16) float KV[C::BKV * C::LD];    // K(t), then V(t)
    __shared__ alignas(16) float Ps[4 * C::BKV * 4];    // [warp][key][row]

    const Ctx c = make_ctx(a);
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    const u32 nch = (c.hd + 3) / 4;
    const size_t kv_base = (size_t)c.bh * c.kv_len * c.hd;
    const float* Qg = q + (size_t)c.bh * c.q_len * c.hd;
    const float* Kg = k + kv_base;
    const float* Vg = v + kv_base;
    const bool vec = (c.hd % 4u == 0) && aligned16(q) && aligned16(k) && aligned16(v);

    zero_smem(Qs, 16 * C::LD / 4, tid);
    zero_smem(KV, C::BKV * C::LD / 4, tid);
    __syncthreads();
    load_rows<float, 16, C::CH, C::LD>(Qs, Qg, c.q0, c.q_len, c.hd, nch, vec, tid);
    cp_async_commit();

    const int cl = lane % C::CW, rg = lane / C::CW;   // score role: key cl + CW·cc, rows rg·RPL + rr
    float m_run[C::RPL], l_run[C::RPL];
#pragma unroll
    for (int r = 0; r < C::RPL; ++r) {
        m_run[r] = neg_inf();
        l_run[r] = 0.f;
    }
    float acc[4][C::W];
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int e = 0; e < C::W; ++e) acc[r][e] = 0.f;
    const u32 d0 = (u32)lane * C::W;                   // P·V role: dims d0..d0+W

    for (u32 j0 = 0; j0 < c.kv_end; j0 += C::BKV) {
        load_rows<float, C::BKV, C::CH, C::LD>(KV, Kg, j0, c.kv_len, c.hd, nch, vec, tid);
        cp_async_commit();
        cp_async_wait<0>();
        __syncthreads();   // K(t) (and, the first time, Q) visible

        float s[C::RPL][C::CPL];
#pragma unroll
        for (int r = 0; r < C::RPL; ++r)
#pragma unroll
            for (int cc = 0; cc < C::CPL; ++cc) s[r][cc] = 0.f;
#pragma unroll 4
        for (int ch = 0; ch < C::CH; ++ch) {
            if ((u32)ch >= nch) break;
            F4 kf[C::CPL];
#pragma unroll
            for (int cc = 0; cc < C::CPL; ++cc)
                kf[cc] = *reinterpret_cast<const F4*>(KV + (cl + cc * C::CW) * C::LD + ch * 4);
#pragma unroll
            for (int r = 0; r < C::RPL; ++r) {
                const F4 qf = *reinterpret_cast<const F4*>(Qs + (w * 4 + rg * C::RPL + r) * C::LD + ch * 4);
#pragma unroll
                for (int cc = 0; cc < C::CPL; ++cc) {
                    float t = s[r][cc];
                    t = fmaf(qf.x, kf[cc].x, t);
                    t = fmaf(qf.y, kf[cc].y, t);
                    t = fmaf(qf.z, kf[cc].z, t);
                    t = fmaf(qf.w, kf[cc].w, t);
                    s[r][cc] = t;
                }
            }
        }

        float alpha_mine[C::RPL];
#pragma unroll
        for (int r = 0; r < C::RPL; ++r) {
            const int row = w * 4 + rg * C::RPL + r;
            const u32 i = c.q0 + row;
            float mx = neg_inf();
#pragma unroll
            for (int cc = 0; cc < C::CPL; ++cc) {
                s[r][cc] = logit2(s[r][cc], i, j0 + cl + cc * C::CW, c, mask, a);
                mx = fmaxf(mx, s[r][cc]);
            }
#pragma unroll
            for (int off = C::CW / 2; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
            const float m_new = fmaxf(m_run[r], mx);
            const float moff = (m_new == neg_inf()) ? 0.f : m_new;   // all -inf so far: exp2(-inf - 0) = 0
            const float alpha = ex2(m_run[r] - moff);
            float ps = 0.f;
#pragma unroll
            for (int cc = 0; cc < C::CPL; ++cc) {
                const float p = ex2(s[r][cc] - moff);
                ps += p;
                Ps[(w * C::BKV + cl + cc * C::CW) * 4 + rg * C::RPL + r] = p;
            }
#pragma unroll
            for (int off = C::CW / 2; off > 0; off >>= 1) ps += __shfl_xor_sync(0xffffffffu, ps, off);
            l_run[r] = fmaf(l_run[r], alpha, ps);
            m_run[r] = m_new;
            alpha_mine[r] = alpha;
        }
        // Every lane needs all 4 rows' alpha for P·V: row r lives in lane (r / RPL)·CW.
        float alpha4[4];
#pragma unroll
        for (int r = 0; r < 4; ++r)
            alpha4[r] = __shfl_sync(0xffffffffu, alpha_mine[r % C::RPL], (r / C::RPL) * C::CW);

        __syncthreads();   // every warp is done with K(t)
        load_rows<float, C::BKV, C::CH, C::LD>(KV, Vg, j0, c.kv_len, c.hd, nch, vec, tid);
        cp_async_commit();
        cp_async_wait<0>();
        __syncthreads();   // V(t) and P visible

#pragma unroll
        for (int r = 0; r < 4; ++r)
#pragma unroll
            for (int e = 0; e < C::W; ++e) acc[r][e] *= alpha4[r];
        if (d0 < nch * 4u) {
            const float* vp = KV + d0;
            const float* pp = Ps + w * C::BKV * 4;
#pragma unroll 4
            for (int j = 0; j < C::BKV; ++j) {
                const F4 p4 = *reinterpret_cast<const F4*>(pp + j * 4);
                const float pr[4] = {p4.x, p4.y, p4.z, p4.w};
                float vf[C::W];
                if constexpr (C::W == 2) {
                    const F2 t = *reinterpret_cast<const F2*>(vp + j * C::LD);
                    vf[0] = t.x;
                    vf[1] = t.y;
                } else {
#pragma unroll
                    for (int e = 0; e < C::W; e += 4) {
                        const F4 t = *reinterpret_cast<const F4*>(vp + j * C::LD + e);
                        vf[e] = t.x;
                        vf[e + 1] = t.y;
                        vf[e + 2] = t.z;
                        vf[e + 3] = t.w;
                    }
                }
#pragma unroll
                for (int r = 0; r < 4; ++r)
#pragma unroll
                    for (int e = 0; e < C::W; ++e) acc[r][e] = fmaf(pr[r], vf[e], acc[r][e]);
            }
        }
        __syncthreads();   // every warp is done with V(t) and P
    }
    cp_async_wait<0>();

#pragma unroll
    for (int r = 0; r < 4; ++r) {
        const float l = __shfl_sync(0xffffffffu, l_run[r % C::RPL], (r / C::RPL) * C::CW);
        const u32 i = c.q0 + w * 4 + r;
        if (i >= c.q_len) continue;
        const float inv = l > 0.f ? 1.f / l : 0.f;   // every key masked: zeros
        float* orow = o + ((size_t)c.bh * c.q_len + i) * c.hd;
#pragma unroll
        for (int e = 0; e < C::W; ++e)
            if (d0 + e < c.hd) orow[d0 + e] = acc[r][e] * inv;
    }
}

} // namespace

#define FOIL_ATTENTION_TC(T, NAME, D)                                                                          \
    extern "C" __global__ void __launch_bounds__(128)                                                          \
        attention_##NAME##_d##D(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,     \
                                const float* __restrict__ mask, T* __restrict__ o, AttentionArgs a) {         \
        attention_tc<T, D>(q, k, v, mask, o, a);                                                               \
    }
#define FOIL_ATTENTION_F32(D)                                                                                  \
    extern "C" __global__ void __launch_bounds__(128)                                                          \
        attention_f32_d##D(const float* __restrict__ q, const float* __restrict__ k,                           \
                           const float* __restrict__ v, const float* __restrict__ mask, float* __restrict__ o, \
                           AttentionArgs a) {                                                                  \
        attention_simt<D>(q, k, v, mask, o, a);                                                                \
    }

FOIL_ATTENTION_F32(64)
FOIL_ATTENTION_F32(128)
FOIL_ATTENTION_F32(256)
FOIL_ATTENTION_TC(f16, f16, 64)
FOIL_ATTENTION_TC(f16, f16, 128)
FOIL_ATTENTION_TC(f16, f16, 256)
FOIL_ATTENTION_TC(bf16, bf16, 64)
FOIL_ATTENTION_TC(bf16, bf16, 128)
FOIL_ATTENTION_TC(bf16, bf16, 256)
