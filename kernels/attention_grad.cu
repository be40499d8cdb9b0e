// Attention backward, flash-style: the q_len × kv_len score matrix never reaches global memory.
// The forward is attention.cu's O = softmax(Q·Kᵀ·scale + mask)·V per (batch, head), causal masking
// key j > query i, the additive f32 mask read at b·s0 + h·s1 + i·s2 + j·s3 when has_mask, a row
// whose keys are all masked giving zeros. With dO the upstream gradient, P the probabilities and
// dP = dO·Vᵀ:  dV = Pᵀ·dO,  dS = P∘(dP − D) with D = rowsum(dO∘O) = rowsum(P∘dP),
//              dQ = scale·dS·K,  dK = scale·dSᵀ·Q.
// Three kernels, grid.y = batch·heads:
//   attention_bwd_stats_T_dD, grid.x = ⌈q_len/BQ⌉: per query row, L = log2 Σ_j 2^x_j, the base-2
//     logsumexp of the scaled, masked logits x (+inf for a row with every key masked, so that its
//     P = 2^(x − L) is 0), and D = Σ_j P_ij·dP_ij, in one online pass over the keys: each lane
//     keeps a running max, sum and Σ p·dp over its own keys, and the lanes combine once at the
//     end. O is neither read nor recomputed: D comes from P and dP at the same cost.
//   attention_bwd_dkdv_T_dD, grid.x = ⌈kv_len/BK⌉: a block keeps BK keys of K and V in shared
//     memory and walks the query tiles (causal: from the first that sees its keys), recomputing
//     P = 2^(x − L) and dS, with dK and dV accumulated in registers.
//   attention_bwd_dq_T_dD, grid.x = ⌈q_len/BQ⌉: a block keeps BQ query rows and walks the key
//     tiles (causal: up to its last query), accumulating dQ in registers.
// Every output element is written once, by one thread: deterministic, no atomics.
//
// Launch: block 256 (8 warps); all shared memory is f32 (inputs are converted on load) and
// dynamic, of the size in kernels/README.md (over 48 KB: the launcher raises the limit). D is the
// compile-time head-dim capacity (64, 96, 160); head_dim ≤ D, the padding is zeros in shared
// memory. Score tiles: warp w owns RW query rows, lane owns keys lane + 32·kk; dot products run
// over the head dims four at a time (float4: Q and dO reads are warp broadcasts, K and V rows are
// pitched D + 4 floats so the lanes' float4 reads hit distinct banks). Accumulation: lanes own head
// dims lane + 32·e, warps own keys (dK, dV) or query rows (dQ), and the tile of P or dS they
// multiply is read as a broadcast.
//
// Roofline: FLOPs per (query, key) pair are 4·hd (stats: S, dP) + 6·hd (dQ: S, dP, dS·K) + 8·hd
// (dK/dV: S, dP, Pᵀ·dO, dSᵀ·Q) = 18·hd, against the forward's 4·hd and the 10·hd of a backward
// that adds dQ with atomics (recomputing S and dP is the price of determinism without a dQ
// scratch per key block). SD at 64×64 latents (B·H = 16, Sq = Skv = 4096, hd = 64): 310 GFLOP,
// a 4.6 ms floor at the H100's 67 TFLOP/s FP32 FMA peak. Bytes: the inputs once, plus L2 re-reads
// of Q and dO (Skv/BK times) and of K and V (Sq/BQ times twice): ~0.6 GB of L2 traffic in f32,
// well under the time the FMAs take, so compute bound. The score tiles issue about one float4
// shared load per 2.7 FMAs, which caps this SIMT code near half the FMA peak; tensor cores are
// the next step.
#include "common.cuh"

namespace {

struct alignas(16) F4 { float x, y, z, w; };

constexpr float LOG2E = 1.4426950408889634f;
__device__ __forceinline__ float neg_inf() { return __uint_as_float(0xff800000u); }
__device__ __forceinline__ float pos_inf() { return __uint_as_float(0x7f800000u); }

// Tile shapes per head-dim capacity D. Stats and dQ: a block owns BQ = 8·RWQ query rows and
// walks key tiles of BKQ = 32·KLQ. dK/dV: a block owns BK = 32·KLK keys and walks query tiles
// of BQK = 8·RWK rows; in its accumulation a warp owns KW = BK/8 keys. Shared-memory sizes in
// bytes (mirrored by the launcher and kernels/README.md):
//   stats: 4·(2·BQ + 2·BKQ)·LD;  dq: stats + 4·(8·BKQ·RWQ + 2·BQ);  dkdv: 4·((2·BK + 2·BQK)·LD + 2·BQK·(BK + 4) + 2·BQK).
template <int D> struct Cfg;
template <> struct Cfg<64> { static constexpr int RWQ = 4, KLQ = 1, KLK = 2, RWK = 4; };
template <> struct Cfg<96> { static constexpr int RWQ = 8, KLQ = 1, KLK = 2, RWK = 4; };
template <> struct Cfg<160> { static constexpr int RWQ = 4, KLQ = 1, KLK = 1, RWK = 4; };

template <int D> struct Tiles {
    using C = Cfg<D>;
    static constexpr int LD = D + 4;             // row pitch of Q/dO/K/V tiles (floats)
    static constexpr int E = D / 32;             // head dims a lane owns in an accumulation
    static constexpr int BQ = 8 * C::RWQ;        // stats/dQ: query rows a block
    static constexpr int BKQ = 32 * C::KLQ;      // stats/dQ: keys a tile
    static constexpr int BK = 32 * C::KLK;       // dK/dV: keys a block
    static constexpr int BQK = 8 * C::RWK;       // dK/dV: query rows a tile
    static constexpr int KW = BK / 8;            // dK/dV: keys a warp accumulates
    static constexpr int LDP = BK + 4;           // dK/dV: row pitch of the P and dS tiles
    static_assert(D % 32 == 0 && C::RWQ % 4 == 0 && KW % 4 == 0, "tile shapes");
};

// Where one (batch, head) problem lives.
struct Head {
    u32 bh, b, h;
    size_t q_base, kv_base;   // element offsets of its rows in q/dO and in k/v
    float sl2;                // scale · log2 e
};
__device__ __forceinline__ Head make_head(const AttentionArgs& a) {
    Head p;
    p.bh = blockIdx.y;
    p.b = p.bh / a.heads;
    p.h = p.bh - p.b * a.heads;
    p.q_base = (size_t)p.bh * a.q_len * a.head_dim;
    p.kv_base = (size_t)p.bh * a.kv_len * a.head_dim;
    p.sl2 = a.scale * LOG2E;
    return p;
}

// The base-2 logit of (query i, key j) from the dot product s, or -inf where masked, out of
// range, or past the causal diagonal. The mask is only read for real (i, j).
__device__ __forceinline__ float logit2(float s, u32 i, u32 j, const Head& p, const float* __restrict__ mask,
                                        const AttentionArgs& a) {
    if (i >= a.q_len || j >= a.kv_len || (a.causal && j > i)) return neg_inf();
    float x = s * p.sl2;
    if (a.has_mask) {
        const size_t off = (size_t)p.b * a.mask_strides[0] + (size_t)p.h * a.mask_strides[1] +
                           (size_t)i * a.mask_strides[2] + (size_t)j * a.mask_strides[3];
        x = fmaf(mask[off], LOG2E, x);
    }
    return x;
}

// Rows row0 .. row0 + ROWS of a (len × hd) matrix of T into shared f32 rows of pitch LD, D
// columns each; columns ≥ hd and rows ≥ len become zeros. Global reads are coalesced along rows.
template <typename T, int ROWS, int D, int LD>
__device__ __forceinline__ void load_tile(float* __restrict__ dst, const T* __restrict__ src, u32 row0, u32 len,
                                          u32 hd) {
    for (int idx = threadIdx.x; idx < ROWS * D; idx += 256) {
        const int r = idx / D, c = idx - r * D;
        const u32 row = row0 + (u32)r;
        float x = 0.f;
        if ((u32)c < hd && row < len) x = to_f32(src[(size_t)row * hd + c]);
        dst[r * LD + c] = x;
    }
}

// s[r][kk] = Q[row0 + r]·K[lane + 32·kk] and dp[r][kk] = dO[row0 + r]·V[lane + 32·kk] over the
// first 4·nch head dims of the shared tiles (pitch LD).
template <int LD, int RW, int KL>
__device__ __forceinline__ void scores(const float* __restrict__ Qs, const float* __restrict__ dOs,
                                       const float* __restrict__ Ks, const float* __restrict__ Vs, int row0,
                                       int lane, u32 nch, float (&s)[RW][KL], float (&dp)[RW][KL]) {
#pragma unroll
    for (int r = 0; r < RW; ++r)
#pragma unroll
        for (int kk = 0; kk < KL; ++kk) {
            s[r][kk] = 0.f;
            dp[r][kk] = 0.f;
        }
    for (u32 c = 0; c < nch; ++c) {
        F4 kf[KL], vf[KL];
#pragma unroll
        for (int kk = 0; kk < KL; ++kk) {
            kf[kk] = *reinterpret_cast<const F4*>(Ks + (lane + 32 * kk) * LD + 4 * c);
            vf[kk] = *reinterpret_cast<const F4*>(Vs + (lane + 32 * kk) * LD + 4 * c);
        }
#pragma unroll
        for (int r = 0; r < RW; ++r) {
            const F4 qf = *reinterpret_cast<const F4*>(Qs + (row0 + r) * LD + 4 * c);
            const F4 of = *reinterpret_cast<const F4*>(dOs + (row0 + r) * LD + 4 * c);
#pragma unroll
            for (int kk = 0; kk < KL; ++kk) {
                float t = s[r][kk], u = dp[r][kk];
                t = fmaf(qf.x, kf[kk].x, t);
                t = fmaf(qf.y, kf[kk].y, t);
                t = fmaf(qf.z, kf[kk].z, t);
                t = fmaf(qf.w, kf[kk].w, t);
                u = fmaf(of.x, vf[kk].x, u);
                u = fmaf(of.y, vf[kk].y, u);
                u = fmaf(of.z, vf[kk].z, u);
                u = fmaf(of.w, vf[kk].w, u);
                s[r][kk] = t;
                dp[r][kk] = u;
            }
        }
    }
}

// The keys a block of queries q0 .. q0 + rows sees: causal stops after its last query.
__device__ __forceinline__ u32 kv_end(const AttentionArgs& a, u32 q0, u32 rows) {
    return (a.causal && q0 + rows < a.kv_len) ? q0 + rows : a.kv_len;
}

template <typename T, int D>
__device__ __forceinline__ void bwd_stats(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                          const float* __restrict__ mask, const T* __restrict__ dout,
                                          float* __restrict__ lse, float* __restrict__ dsum, const AttentionArgs& a) {
    using S = Tiles<D>;
    constexpr int RW = Cfg<D>::RWQ, KL = Cfg<D>::KLQ;
    extern __shared__ F4 smem[];
    float* Qs = reinterpret_cast<float*>(smem);
    float* dOs = Qs + S::BQ * S::LD;
    float* Ks = dOs + S::BQ * S::LD;
    float* Vs = Ks + S::BKQ * S::LD;

    const Head p = make_head(a);
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const u32 q0 = blockIdx.x * S::BQ, hd = a.head_dim, nch = (hd + 3) / 4;
    load_tile<T, S::BQ, D, S::LD>(Qs, q + p.q_base, q0, a.q_len, hd);
    load_tile<T, S::BQ, D, S::LD>(dOs, dout + p.q_base, q0, a.q_len, hd);

    // This lane's running max, Σ 2^(x − m) and Σ 2^(x − m)·dp over its keys, per row.
    float m[RW], l[RW], pd[RW];
#pragma unroll
    for (int r = 0; r < RW; ++r) {
        m[r] = neg_inf();
        l[r] = 0.f;
        pd[r] = 0.f;
    }
    const u32 end = kv_end(a, q0, S::BQ);
    for (u32 j0 = 0; j0 < end; j0 += S::BKQ) {
        __syncthreads();   // every warp is done with the previous K and V tiles
        load_tile<T, S::BKQ, D, S::LD>(Ks, k + p.kv_base, j0, a.kv_len, hd);
        load_tile<T, S::BKQ, D, S::LD>(Vs, v + p.kv_base, j0, a.kv_len, hd);
        __syncthreads();   // K, V (and the first time Q, dO) visible
        float s[RW][KL], dp[RW][KL];
        scores<S::LD, RW, KL>(Qs, dOs, Ks, Vs, w * RW, lane, nch, s, dp);
#pragma unroll
        for (int r = 0; r < RW; ++r) {
            const u32 i = q0 + w * RW + r;
#pragma unroll
            for (int kk = 0; kk < KL; ++kk) {
                const float x = logit2(s[r][kk], i, j0 + lane + 32 * kk, p, mask, a);
                if (x != neg_inf()) {
                    const float mn = fmaxf(m[r], x);
                    const float alpha = exp2f(m[r] - mn);   // 0 while m is still -inf
                    const float e = exp2f(x - mn);
                    l[r] = fmaf(l[r], alpha, e);
                    pd[r] = fmaf(pd[r], alpha, e * dp[r][kk]);
                    m[r] = mn;
                }
            }
        }
    }

#pragma unroll
    for (int r = 0; r < RW; ++r) {
        const float mx = warp_max(m[r]);
        const float f = (mx == neg_inf()) ? 0.f : exp2f(m[r] - mx);
        const float sum = warp_sum(l[r] * f), dot = warp_sum(pd[r] * f);
        const u32 i = q0 + w * RW + r;
        if (lane == 0 && i < a.q_len) {
            const size_t at = (size_t)p.bh * a.q_len + i;
            lse[at] = sum > 0.f ? mx + log2f(sum) : pos_inf();   // +inf: every key masked, P = 0
            dsum[at] = sum > 0.f ? dot / sum : 0.f;
        }
    }
}

template <typename T, int D>
__device__ __forceinline__ void bwd_dq(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                       const float* __restrict__ mask, const T* __restrict__ dout,
                                       const float* __restrict__ lse, const float* __restrict__ dsum,
                                       T* __restrict__ dq, const AttentionArgs& a) {
    using S = Tiles<D>;
    constexpr int RW = Cfg<D>::RWQ, KL = Cfg<D>::KLQ;
    extern __shared__ F4 smem[];
    float* Qs = reinterpret_cast<float*>(smem);
    float* dOs = Qs + S::BQ * S::LD;
    float* Ks = dOs + S::BQ * S::LD;
    float* Vs = Ks + S::BKQ * S::LD;
    float* dSt = Vs + S::BKQ * S::LD;   // [warp][key][row]: dS of the warp's rows, transposed
    float* Ls = dSt + 8 * S::BKQ * RW;   // L and D of the block's rows (shared: registers are short)
    float* Ds = Ls + S::BQ;

    const Head p = make_head(a);
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const u32 q0 = blockIdx.x * S::BQ, hd = a.head_dim, nch = (hd + 3) / 4;
    load_tile<T, S::BQ, D, S::LD>(Qs, q + p.q_base, q0, a.q_len, hd);
    load_tile<T, S::BQ, D, S::LD>(dOs, dout + p.q_base, q0, a.q_len, hd);
    for (int t = threadIdx.x; t < S::BQ; t += 256) {
        const u32 i = q0 + t;
        const size_t at = (size_t)p.bh * a.q_len + i;
        Ls[t] = i < a.q_len ? lse[at] : pos_inf();
        Ds[t] = i < a.q_len ? dsum[at] : 0.f;
    }
    float acc[RW][S::E];
#pragma unroll
    for (int r = 0; r < RW; ++r)
#pragma unroll
        for (int e = 0; e < S::E; ++e) acc[r][e] = 0.f;
    float* myS = dSt + w * S::BKQ * RW;

    const u32 end = kv_end(a, q0, S::BQ);
    for (u32 j0 = 0; j0 < end; j0 += S::BKQ) {
        __syncthreads();   // every warp is done with the previous K and V tiles
        load_tile<T, S::BKQ, D, S::LD>(Ks, k + p.kv_base, j0, a.kv_len, hd);
        load_tile<T, S::BKQ, D, S::LD>(Vs, v + p.kv_base, j0, a.kv_len, hd);
        __syncthreads();
        float s[RW][KL], dp[RW][KL];
        scores<S::LD, RW, KL>(Qs, dOs, Ks, Vs, w * RW, lane, nch, s, dp);
#pragma unroll
        for (int kk = 0; kk < KL; ++kk) {
            const int key = lane + 32 * kk;
            float ds[RW];
#pragma unroll
            for (int r = 0; r < RW; ++r) {
                const int row = w * RW + r;
                const float x = logit2(s[r][kk], q0 + row, j0 + key, p, mask, a);
                const float pr = exp2f(x - Ls[row]);
                ds[r] = a.scale * pr * (dp[r][kk] - Ds[row]);
            }
#pragma unroll
            for (int r = 0; r < RW; r += 4)
                *reinterpret_cast<F4*>(myS + key * RW + r) = F4{ds[r], ds[r + 1], ds[r + 2], ds[r + 3]};
        }
        __syncwarp();   // the warp's dS visible to all its lanes
        const u32 keys = min((u32)S::BKQ, a.kv_len - j0);
        for (u32 jj = 0; jj < keys; ++jj) {
            float dsr[RW];
#pragma unroll
            for (int r = 0; r < RW; r += 4) {
                const F4 t = *reinterpret_cast<const F4*>(myS + jj * RW + r);
                dsr[r] = t.x;
                dsr[r + 1] = t.y;
                dsr[r + 2] = t.z;
                dsr[r + 3] = t.w;
            }
#pragma unroll
            for (int e = 0; e < S::E; ++e) {
                const float kv = Ks[jj * S::LD + lane + 32 * e];
#pragma unroll
                for (int r = 0; r < RW; ++r) acc[r][e] = fmaf(dsr[r], kv, acc[r][e]);
            }
        }
    }

#pragma unroll
    for (int r = 0; r < RW; ++r) {
        const u32 i = q0 + w * RW + r;
        if (i >= a.q_len) continue;
        T* row = dq + p.q_base + (size_t)i * hd;
#pragma unroll
        for (int e = 0; e < S::E; ++e) {
            const u32 c = lane + 32 * e;
            if (c < hd) row[c] = from_f32<T>(acc[r][e]);
        }
    }
}

template <typename T, int D>
__device__ __forceinline__ void bwd_dkdv(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                         const float* __restrict__ mask, const T* __restrict__ dout,
                                         const float* __restrict__ lse, const float* __restrict__ dsum,
                                         T* __restrict__ dk, T* __restrict__ dv, const AttentionArgs& a) {
    using S = Tiles<D>;
    constexpr int RW = Cfg<D>::RWK, KL = Cfg<D>::KLK, KW = S::KW;
    extern __shared__ F4 smem[];
    float* Ks = reinterpret_cast<float*>(smem);
    float* Vs = Ks + S::BK * S::LD;
    float* Qs = Vs + S::BK * S::LD;
    float* dOs = Qs + S::BQK * S::LD;
    float* Ps = dOs + S::BQK * S::LD;    // [row][key], pitch LDP
    float* dSs = Ps + S::BQK * S::LDP;   // [row][key], pitch LDP
    float* Ls = dSs + S::BQK * S::LDP;
    float* Ds = Ls + S::BQK;

    const Head p = make_head(a);
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const u32 j0 = blockIdx.x * S::BK, hd = a.head_dim, nch = (hd + 3) / 4;
    load_tile<T, S::BK, D, S::LD>(Ks, k + p.kv_base, j0, a.kv_len, hd);
    load_tile<T, S::BK, D, S::LD>(Vs, v + p.kv_base, j0, a.kv_len, hd);
    float acc_k[KW][S::E], acc_v[KW][S::E];
#pragma unroll
    for (int kw = 0; kw < KW; ++kw)
#pragma unroll
        for (int e = 0; e < S::E; ++e) {
            acc_k[kw][e] = 0.f;
            acc_v[kw][e] = 0.f;
        }

    // Causal: queries before the block's first key see none of its keys.
    const u32 begin = a.causal ? (j0 / S::BQK) * S::BQK : 0u;
    for (u32 q0 = begin; q0 < a.q_len; q0 += S::BQK) {
        __syncthreads();   // every warp is done with the previous Q, dO, P and dS tiles
        load_tile<T, S::BQK, D, S::LD>(Qs, q + p.q_base, q0, a.q_len, hd);
        load_tile<T, S::BQK, D, S::LD>(dOs, dout + p.q_base, q0, a.q_len, hd);
        for (int t = threadIdx.x; t < S::BQK; t += 256) {
            const u32 i = q0 + t;
            const size_t at = (size_t)p.bh * a.q_len + i;
            Ls[t] = i < a.q_len ? lse[at] : pos_inf();
            Ds[t] = i < a.q_len ? dsum[at] : 0.f;
        }
        __syncthreads();   // Q, dO, L, D (and the first time K, V) visible
        float s[RW][KL], dp[RW][KL];
        scores<S::LD, RW, KL>(Qs, dOs, Ks, Vs, w * RW, lane, nch, s, dp);
#pragma unroll
        for (int r = 0; r < RW; ++r) {
            const int row = w * RW + r;
#pragma unroll
            for (int kk = 0; kk < KL; ++kk) {
                const int key = lane + 32 * kk;
                const float x = logit2(s[r][kk], q0 + row, j0 + key, p, mask, a);
                const float pr = exp2f(x - Ls[row]);
                Ps[row * S::LDP + key] = pr;
                dSs[row * S::LDP + key] = a.scale * pr * (dp[r][kk] - Ds[row]);
            }
        }
        __syncthreads();   // P and dS visible
        const u32 rows = min((u32)S::BQK, a.q_len - q0);
        for (u32 row = 0; row < rows; ++row) {
            float pk[KW], sk[KW];
#pragma unroll
            for (int kw = 0; kw < KW; kw += 4) {
                const F4 t = *reinterpret_cast<const F4*>(Ps + row * S::LDP + w * KW + kw);
                const F4 u = *reinterpret_cast<const F4*>(dSs + row * S::LDP + w * KW + kw);
                pk[kw] = t.x;
                pk[kw + 1] = t.y;
                pk[kw + 2] = t.z;
                pk[kw + 3] = t.w;
                sk[kw] = u.x;
                sk[kw + 1] = u.y;
                sk[kw + 2] = u.z;
                sk[kw + 3] = u.w;
            }
#pragma unroll
            for (int e = 0; e < S::E; ++e) {
                const float qv = Qs[row * S::LD + lane + 32 * e];
                const float ov = dOs[row * S::LD + lane + 32 * e];
#pragma unroll
                for (int kw = 0; kw < KW; ++kw) {
                    acc_v[kw][e] = fmaf(pk[kw], ov, acc_v[kw][e]);
                    acc_k[kw][e] = fmaf(sk[kw], qv, acc_k[kw][e]);
                }
            }
        }
    }

#pragma unroll
    for (int kw = 0; kw < KW; ++kw) {
        const u32 j = j0 + w * KW + kw;
        if (j >= a.kv_len) continue;
        T* krow = dk + p.kv_base + (size_t)j * hd;
        T* vrow = dv + p.kv_base + (size_t)j * hd;
#pragma unroll
        for (int e = 0; e < S::E; ++e) {
            const u32 c = lane + 32 * e;
            if (c < hd) {
                krow[c] = from_f32<T>(acc_k[kw][e]);
                vrow[c] = from_f32<T>(acc_v[kw][e]);
            }
        }
    }
}

} // namespace

#define FOIL_ATTENTION_BWD(T, NAME, D)                                                                          \
    extern "C" __global__ void __launch_bounds__(256) attention_bwd_stats_##NAME##_d##D(                       \
        const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, const float* __restrict__ mask, \
        const T* __restrict__ dout, float* __restrict__ lse, float* __restrict__ dsum, AttentionArgs a) {       \
        bwd_stats<T, D>(q, k, v, mask, dout, lse, dsum, a);                                                    \
    }                                                                                                          \
    extern "C" __global__ void __launch_bounds__(256) attention_bwd_dq_##NAME##_d##D(                          \
        const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, const float* __restrict__ mask, \
        const T* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ dsum,             \
        T* __restrict__ dq, AttentionArgs a) {                                                                 \
        bwd_dq<T, D>(q, k, v, mask, dout, lse, dsum, dq, a);                                                   \
    }                                                                                                          \
    extern "C" __global__ void __launch_bounds__(256) attention_bwd_dkdv_##NAME##_d##D(                        \
        const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, const float* __restrict__ mask, \
        const T* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ dsum,             \
        T* __restrict__ dk, T* __restrict__ dv, AttentionArgs a) {                                             \
        bwd_dkdv<T, D>(q, k, v, mask, dout, lse, dsum, dk, dv, a);                                             \
    }

#define FOIL_ATTENTION_BWD_DTYPES(D)   \
    FOIL_ATTENTION_BWD(float, f32, D)  \
    FOIL_ATTENTION_BWD(f16, f16, D)    \
    FOIL_ATTENTION_BWD(bf16, bf16, D)

FOIL_ATTENTION_BWD_DTYPES(64)
FOIL_ATTENTION_BWD_DTYPES(96)
FOIL_ATTENTION_BWD_DTYPES(160)
