// Backward passes of layer, group and batch norm, and batch norm's training-mode forward.
//
// With x̂ = (x - mean)·rstd, rstd = 1/sqrt(var + eps) (biased variance), over a normalised set S of
// M values (a row, an (image, group), a channel's n·spatial values), and gw = g·w (g the upstream
// gradient, w the weight of the element's column or channel):
//   dx = rstd·(gw - Σ_S gw / M - x̂·Σ_S gw·x̂ / M),   dweight[k] = Σ g·x̂,   dbias[k] = Σ g,
// the parameter sums over every element of column / channel k. They are deterministic: blocks write
// f32 partial (Σ g·x̂, Σ g) pairs to a scratch `partials` (parts, channels, 2) and norm_param_grads
// adds the parts in a fixed order; no atomics anywhere.
//
//   layer_norm_backward_T(x, w, g, dx, row_stats, rows, cols, eps)
//       one block a row: the forward's Welford statistics, Σ gw and Σ gw·x̂, then dx; each row's
//       (mean, rstd) goes to row_stats (f32, rows × 2) for
//   layer_norm_param_partials_T(x, g, row_stats, partials, rows, cols, rows_per_part)
//       grid (⌈cols/32⌉, parts): a block is 32 columns × 8 lanes of rows; part p takes rows
//       [p·rows_per_part, (p+1)·rows_per_part)
//   group_norm_backward_T(x, w, g, dx, partials, n, c, spatial, groups, eps)
//       one block an (image, group), grid-stride: statistics, each channel's (Σ g·x̂, Σ g) into
//       partials[image][channel] (a warp a channel; the whole block a channel when the group has
//       fewer channels than warps and a channel has at least 256 values), then dx
//   norm_param_grads_T(partials, dweight, dbias, totals, parts, channels, keep_totals)
//       a thread a channel: dweight, dbias in T; the f32 sums into totals (channels × 2) when
//       keep_totals (batch norm's dx pass wants them unrounded), else totals is not touched
//   batch_norm_stats_partials_T(x, partials, n, c, spatial, chunk)
//       grid (c, parts): Welford (count, mean, M2) of values [p·chunk, (p+1)·chunk) of the channel's
//       n·spatial (image-major), into partials (parts, c, 3)
//   batch_norm_stats_merge(partials, mean, var, parts, c)
//       a thread a channel: merges the parts in order into mean and biased var (f32)
//   batch_norm_apply_T(x, w, b, mean, var, y, n, c, spatial, chunk, eps)            grid (c, parts)
//   batch_norm_grad_partials_T(x, g, mean, var, partials, n, c, spatial, chunk, eps)  grid (c, parts)
//   batch_norm_backward_dx_T(x, w, g, mean, var, totals, dx, n, c, spatial, chunk, eps)  grid (c, parts)
// T = f32 | f16 | bf16, all arithmetic in f32. chunk is a multiple of 8, so a part starts on a
// 16-byte pack whenever spatial is a whole number of packs.
//
// Launch: blocks of 256 (8 warps). Batch norm splits each channel into parts so that the (c, parts)
// grid has about 8 blocks an SM (ResNet's first layer at batch 64 is 64 channels of 802816 values).
//
// Roofline: memory-bound, the target HBM bandwidth (~3.3 TB/s on H100 SXM). Per element: layer norm
// backward reads x, g three and two times (the row pass's re-reads mostly hit L1/L2) and writes dx;
// group norm reads x three times and g twice (a group is 40-160 KB at SD sizes: L2 hits) and writes
// dx; batch norm train reads x twice and writes y, batch norm backward reads x and g twice and
// writes dx. Batch norm's parts stream their channel in 16 B packs when spatial allows. Group norm
// keeps the forward's one block an (image, group): a small n·groups leaves SMs idle, as there.

#include "common.cuh"

#define FOIL_BLOCK 256
#define FOIL_WARPS (FOIL_BLOCK / 32)

#include "norm_stats.cuh"

// (a, b) summed over the block, returned to every thread. One barrier; `smem` holds 2·FOIL_WARPS.
__device__ __forceinline__ void block_sum2(float& a, float& b, float* smem) {
    a = warp_sum(a);
    b = warp_sum(b);
    if ((threadIdx.x & 31) == 0) {
        smem[threadIdx.x >> 5] = a;
        smem[FOIL_WARPS + (threadIdx.x >> 5)] = b;
    }
    __syncthreads();
    a = smem[0];
    b = smem[FOIL_WARPS];
#pragma unroll
    for (int w = 1; w < FOIL_WARPS; ++w) {
        a += smem[w];
        b += smem[FOIL_WARPS + w];
    }
}

// This thread's share (first, first + stride, ...) of Σ g·x̂ and Σ g over the contiguous x, g[0..len).
template <typename T>
__device__ __forceinline__ void run_grad_sums(const T* __restrict__ x, const T* __restrict__ g, u32 len, float mean,
                                              float rstd, u32 first, u32 stride, float& sum_gx, float& sum_g) {
    constexpr int N = 16 / sizeof(T);
    u32 done = 0;
    if (aligned16(x) && aligned16(g)) {
        const u32 packs = len / N;
        const Pack<T, N>* __restrict__ xv = reinterpret_cast<const Pack<T, N>*>(x);
        const Pack<T, N>* __restrict__ gv = reinterpret_cast<const Pack<T, N>*>(g);
#pragma unroll 2
        for (u32 p = first; p < packs; p += stride) {
            const Pack<T, N> xp = xv[p], gp = gv[p];
#pragma unroll
            for (int k = 0; k < N; ++k) {
                const float gk = to_f32(gp.v[k]);
                sum_gx += gk * ((to_f32(xp.v[k]) - mean) * rstd);
                sum_g += gk;
            }
        }
        done = packs * N;
    }
    for (u32 j = done + first; j < len; j += stride) {
        const float gj = to_f32(g[j]);
        sum_gx += gj * ((to_f32(x[j]) - mean) * rstd);
        sum_g += gj;
    }
}

// ---- layer norm ---------------------------------------------------------------------------------

template <typename T>
__device__ __forceinline__ void layer_norm_backward_impl(const T* __restrict__ x, const T* __restrict__ w,
                                                         const T* __restrict__ g, T* __restrict__ dx,
                                                         float* __restrict__ row_stats, u32 rows, u32 cols,
                                                         float eps) {
    constexpr int N = 16 / sizeof(T);
    // Separate buffers for the two reductions of a row: each one's barrier orders the other's reuse.
    __shared__ Stats sm_stats[FOIL_WARPS];
    __shared__ float sm_sums[2 * FOIL_WARPS];
    const u32 tid = threadIdx.x;
    for (size_t row = blockIdx.x; row < rows; row += gridDim.x) {
        const T* __restrict__ xr = x + row * cols;
        const T* __restrict__ gr = g + row * cols;
        T* __restrict__ dxr = dx + row * cols;
        float mean, rstd;
        run_stats(xr, cols, eps, sm_stats, mean, rstd);

        const bool vec = aligned16(xr) && aligned16(gr) && aligned16(w) && aligned16(dxr);
        const u32 packs = vec ? cols / N : 0;
        const Pack<T, N>* __restrict__ xv = reinterpret_cast<const Pack<T, N>*>(xr);
        const Pack<T, N>* __restrict__ gv = reinterpret_cast<const Pack<T, N>*>(gr);
        const Pack<T, N>* __restrict__ wv = reinterpret_cast<const Pack<T, N>*>(w);
        float sum_gw = 0.0f, sum_gwx = 0.0f;
#pragma unroll 2
        for (u32 p = tid; p < packs; p += FOIL_BLOCK) {
            const Pack<T, N> xp = xv[p], gp = gv[p], wp = wv[p];
#pragma unroll
            for (int k = 0; k < N; ++k) {
                const float gw = to_f32(gp.v[k]) * to_f32(wp.v[k]);
                sum_gw += gw;
                sum_gwx += gw * ((to_f32(xp.v[k]) - mean) * rstd);
            }
        }
        for (u32 j = packs * N + tid; j < cols; j += FOIL_BLOCK) {
            const float gw = to_f32(gr[j]) * to_f32(w[j]);
            sum_gw += gw;
            sum_gwx += gw * ((to_f32(xr[j]) - mean) * rstd);
        }
        block_sum2(sum_gw, sum_gwx, sm_sums);
        if (tid == 0) {
            row_stats[2 * row] = mean;
            row_stats[2 * row + 1] = rstd;
        }
        const float mean_gw = sum_gw / (float)cols, mean_gwx = sum_gwx / (float)cols;
        auto grad = [&](float xv, float gv, float wv) {
            return rstd * (gv * wv - mean_gw - (xv - mean) * rstd * mean_gwx);
        };
        Pack<T, N>* __restrict__ dxv = reinterpret_cast<Pack<T, N>*>(dxr);
#pragma unroll 2
        for (u32 p = tid; p < packs; p += FOIL_BLOCK) {
            const Pack<T, N> xp = xv[p], gp = gv[p], wp = wv[p];
            Pack<T, N> o;
#pragma unroll
            for (int k = 0; k < N; ++k) o.v[k] = from_f32<T>(grad(to_f32(xp.v[k]), to_f32(gp.v[k]), to_f32(wp.v[k])));
            dxv[p] = o;
        }
        for (u32 j = packs * N + tid; j < cols; j += FOIL_BLOCK)
            dxr[j] = from_f32<T>(grad(to_f32(xr[j]), to_f32(gr[j]), to_f32(w[j])));
    }
}

template <typename T>
__device__ __forceinline__ void layer_norm_param_partials_impl(const T* __restrict__ x, const T* __restrict__ g,
                                                               const float* __restrict__ row_stats,
                                                               float* __restrict__ partials, u32 rows, u32 cols,
                                                               u32 rows_per_part) {
    __shared__ float sm[FOIL_WARPS][32][2];
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const u32 col = blockIdx.x * 32 + lane;
    const u32 r0 = blockIdx.y * rows_per_part;
    const u32 r1 = min(r0 + rows_per_part, rows);
    float sum_gx = 0.0f, sum_g = 0.0f;
    if (col < cols) {
#pragma unroll 4
        for (u32 r = r0 + warp; r < r1; r += FOIL_WARPS) {
            const size_t i = (size_t)r * cols + col;
            const float gi = to_f32(g[i]);
            sum_gx += gi * ((to_f32(x[i]) - row_stats[2 * r]) * row_stats[2 * r + 1]);
            sum_g += gi;
        }
    }
    sm[warp][lane][0] = sum_gx;
    sm[warp][lane][1] = sum_g;
    __syncthreads();
    if (warp == 0 && col < cols) {
#pragma unroll
        for (int w = 1; w < FOIL_WARPS; ++w) {
            sum_gx += sm[w][lane][0];
            sum_g += sm[w][lane][1];
        }
        float* __restrict__ out = partials + ((size_t)blockIdx.y * cols + col) * 2;
        out[0] = sum_gx;
        out[1] = sum_g;
    }
}

// ---- group norm ---------------------------------------------------------------------------------

template <typename T>
__device__ __forceinline__ void group_norm_backward_impl(const T* __restrict__ x, const T* __restrict__ w,
                                                         const T* __restrict__ g, T* __restrict__ dx,
                                                         float* __restrict__ partials, u32 n, u32 c, u32 spatial,
                                                         u32 groups, float eps) {
    constexpr int N = 16 / sizeof(T);
    __shared__ Stats sm_stats[FOIL_WARPS];
    // Channel sums alternate two buffers, so one barrier each orders every reuse.
    __shared__ float sm_sums[2][2 * FOIL_WARPS];
    const u32 tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const u32 cpg = c / groups;
    const u32 count = cpg * spatial;  // ≤ n·c·spatial < 2^32 (host check)
    const u32 items = n * groups;
    // A warp a channel keeps all warps busy, except when there are fewer channels than warps and
    // each is long: then the block takes one channel at a time.
    const bool warp_per_channel = cpg >= FOIL_WARPS || spatial < FOIL_BLOCK;
    for (size_t item = blockIdx.x; item < items; item += gridDim.x) {
        const u32 image = (u32)item / groups, first_ch = ((u32)item % groups) * cpg;
        const size_t base = item * count;
        const T* __restrict__ xg = x + base;
        const T* __restrict__ gg = g + base;
        T* __restrict__ dxg = dx + base;
        float mean, rstd;
        run_stats(xg, count, eps, sm_stats, mean, rstd);

        // Σ gw and Σ gw·x̂ over the group, from the per-channel sums.
        float sum_gw = 0.0f, sum_gwx = 0.0f;
        if (warp_per_channel) {
            for (u32 ci = warp; ci < cpg; ci += FOIL_WARPS) {
                float sum_gx = 0.0f, sum_g = 0.0f;
                const size_t at = (size_t)ci * spatial;
                run_grad_sums(xg + at, gg + at, spatial, mean, rstd, lane, 32, sum_gx, sum_g);
                sum_gx = warp_sum(sum_gx);  // xor butterfly: every lane holds the same sums
                sum_g = warp_sum(sum_g);
                const u32 ch = first_ch + ci;
                if (lane == 0) {
                    partials[((size_t)image * c + ch) * 2] = sum_gx;
                    partials[((size_t)image * c + ch) * 2 + 1] = sum_g;
                    const float wc = to_f32(w[ch]);
                    sum_gw += wc * sum_g;
                    sum_gwx += wc * sum_gx;
                }
            }
            block_sum2(sum_gw, sum_gwx, sm_sums[0]);
        } else {
            for (u32 ci = 0; ci < cpg; ++ci) {
                float sum_gx = 0.0f, sum_g = 0.0f;
                const size_t at = (size_t)ci * spatial;
                run_grad_sums(xg + at, gg + at, spatial, mean, rstd, tid, FOIL_BLOCK, sum_gx, sum_g);
                block_sum2(sum_gx, sum_g, sm_sums[ci & 1]);
                const u32 ch = first_ch + ci;
                if (tid == 0) {
                    partials[((size_t)image * c + ch) * 2] = sum_gx;
                    partials[((size_t)image * c + ch) * 2 + 1] = sum_g;
                }
                const float wc = to_f32(w[ch]);
                sum_gw += wc * sum_g;
                sum_gwx += wc * sum_gx;
            }
        }
        const float mean_gw = sum_gw / (float)count, mean_gwx = sum_gwx / (float)count;
        auto grad = [&](float xv, float gv, float wc) {
            return rstd * (gv * wc - mean_gw - (xv - mean) * rstd * mean_gwx);
        };
        // A pack lies in one channel when spatial % N == 0: one division a pack finds it.
        u32 done = 0;
        if (spatial % N == 0 && aligned16(xg) && aligned16(gg) && aligned16(dxg)) {
            const u32 packs = count / N, spatial_packs = spatial / N;
            const Pack<T, N>* __restrict__ xv = reinterpret_cast<const Pack<T, N>*>(xg);
            const Pack<T, N>* __restrict__ gv = reinterpret_cast<const Pack<T, N>*>(gg);
            Pack<T, N>* __restrict__ dxv = reinterpret_cast<Pack<T, N>*>(dxg);
#pragma unroll 2
            for (u32 p = tid; p < packs; p += FOIL_BLOCK) {
                const float wc = to_f32(w[first_ch + p / spatial_packs]);
                const Pack<T, N> xp = xv[p], gp = gv[p];
                Pack<T, N> o;
#pragma unroll
                for (int k = 0; k < N; ++k) o.v[k] = from_f32<T>(grad(to_f32(xp.v[k]), to_f32(gp.v[k]), wc));
                dxv[p] = o;
            }
            done = packs * N;
        }
        for (u32 j = done + tid; j < count; j += FOIL_BLOCK)
            dxg[j] = from_f32<T>(grad(to_f32(xg[j]), to_f32(gg[j]), to_f32(w[first_ch + j / spatial])));
    }
}

// ---- parameter gradients from partial sums ------------------------------------------------------

template <typename T>
__device__ __forceinline__ void norm_param_grads_impl(const float* __restrict__ partials, T* __restrict__ dweight,
                                                      T* __restrict__ dbias, float* __restrict__ totals, u32 parts,
                                                      u32 channels, u32 keep_totals) {
    FOIL_GRID_STRIDE(ch, channels) {
        float sum_gx = 0.0f, sum_g = 0.0f;
        for (u32 p = 0; p < parts; ++p) {
            sum_gx += partials[((size_t)p * channels + ch) * 2];
            sum_g += partials[((size_t)p * channels + ch) * 2 + 1];
        }
        dweight[ch] = from_f32<T>(sum_gx);
        dbias[ch] = from_f32<T>(sum_g);
        if (keep_totals) {
            totals[2 * ch] = sum_gx;
            totals[2 * ch + 1] = sum_g;
        }
    }
}

// ---- batch norm ---------------------------------------------------------------------------------

// Calls f(offset) for this thread's packs of channel ch's values [m0, m1) (pack units; the channel
// is n runs of sp packs, run i at pack offset (i·c + ch)·sp): m0 + tid, then every FOIL_BLOCK-th.
// The (image, position) advance by increments, so the loop has no division.
template <typename F>
__device__ __forceinline__ void channel_packs(u32 ch, u32 c, u32 sp, u32 m0, u32 m1, F&& f) {
    size_t m = (size_t)m0 + threadIdx.x;  // 64-bit: m + FOIL_BLOCK must not wrap
    if (m >= m1) return;
    const u32 image = (u32)m / sp;
    u32 s = (u32)m - image * sp;
    size_t off = ((size_t)image * c + ch) * sp + s;
    const u32 q = FOIL_BLOCK / sp, r = FOIL_BLOCK - q * sp;
    const size_t jump = (size_t)q * c * sp + r, wrap = (size_t)(c - 1) * sp;
#pragma unroll 4
    for (; m < m1; m += FOIL_BLOCK) {
        f(off);
        off += jump;
        s += r;
        if (s >= sp) {
            s -= sp;
            off += wrap;
        }
    }
}

// The batch-norm kernels run in packs of N when spatial is a whole number of them and the pointers
// are 16-byte aligned (VEC_OK), else element by element: CALL(N) instantiates the body for both.
#define BN_DISPATCH(VEC_OK, CALL)                    \
    do {                                             \
        constexpr int NV = 16 / sizeof(T);           \
        if (spatial % NV == 0 && (VEC_OK)) CALL(NV); \
        else CALL(1);                                \
    } while (0)

// The part of channel blockIdx.x this block takes, in packs of N: [m0, m1) of n·sp.
struct PartRange {
    u32 sp, m0, m1;
};
template <int N>
__device__ __forceinline__ PartRange part_range(u32 n, u32 spatial, u32 chunk) {
    const u32 sp = spatial / N, per = chunk / N;
    const u32 m0 = blockIdx.y * per;
    return PartRange{sp, m0, min(m0 + per, n * sp)};
}

template <typename T, int N>
__device__ __forceinline__ void bn_stats_partials(const T* __restrict__ x, float* __restrict__ partials, u32 n, u32 c,
                                                  u32 spatial, u32 chunk) {
    __shared__ Stats sm_stats[FOIL_WARPS];
    const u32 ch = blockIdx.x;
    const PartRange pr = part_range<N>(n, spatial, chunk);
    const Pack<T, N>* __restrict__ xv = reinterpret_cast<const Pack<T, N>*>(x);
    Stats st = {0.0f, 0.0f, 0.0f};
    channel_packs(ch, c, pr.sp, pr.m0, pr.m1, [&](size_t off) { add_pack(st, xv[off]); });
    st = block_merge(st, sm_stats);
    if (threadIdx.x == 0) {
        float* __restrict__ out = partials + ((size_t)blockIdx.y * c + ch) * 3;
        out[0] = st.n;
        out[1] = st.mean;
        out[2] = st.m2;
    }
}

template <typename T, int N>
__device__ __forceinline__ void bn_apply(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,
                                         const float* __restrict__ mean, const float* __restrict__ var,
                                         T* __restrict__ y, u32 n, u32 c, u32 spatial, u32 chunk, float eps) {
    const u32 ch = blockIdx.x;
    const PartRange pr = part_range<N>(n, spatial, chunk);
    const float mu = mean[ch], scale = to_f32(w[ch]) / sqrtf(var[ch] + eps), shift = to_f32(b[ch]);
    const Pack<T, N>* __restrict__ xv = reinterpret_cast<const Pack<T, N>*>(x);
    Pack<T, N>* __restrict__ yv = reinterpret_cast<Pack<T, N>*>(y);
    channel_packs(ch, c, pr.sp, pr.m0, pr.m1, [&](size_t off) {
        const Pack<T, N> xp = xv[off];
        Pack<T, N> o;
#pragma unroll
        for (int k = 0; k < N; ++k) o.v[k] = from_f32<T>((to_f32(xp.v[k]) - mu) * scale + shift);
        yv[off] = o;
    });
}

template <typename T, int N>
__device__ __forceinline__ void bn_grad_partials(const T* __restrict__ x, const T* __restrict__ g,
                                                 const float* __restrict__ mean, const float* __restrict__ var,
                                                 float* __restrict__ partials, u32 n, u32 c, u32 spatial, u32 chunk,
                                                 float eps) {
    __shared__ float sm_sums[2 * FOIL_WARPS];
    const u32 ch = blockIdx.x;
    const PartRange pr = part_range<N>(n, spatial, chunk);
    const float mu = mean[ch], rstd = 1.0f / sqrtf(var[ch] + eps);
    const Pack<T, N>* __restrict__ xv = reinterpret_cast<const Pack<T, N>*>(x);
    const Pack<T, N>* __restrict__ gv = reinterpret_cast<const Pack<T, N>*>(g);
    float sum_gx = 0.0f, sum_g = 0.0f;
    channel_packs(ch, c, pr.sp, pr.m0, pr.m1, [&](size_t off) {
        const Pack<T, N> xp = xv[off], gp = gv[off];
#pragma unroll
        for (int k = 0; k < N; ++k) {
            const float gk = to_f32(gp.v[k]);
            sum_gx += gk * ((to_f32(xp.v[k]) - mu) * rstd);
            sum_g += gk;
        }
    });
    block_sum2(sum_gx, sum_g, sm_sums);
    if (threadIdx.x == 0) {
        float* __restrict__ out = partials + ((size_t)blockIdx.y * c + ch) * 2;
        out[0] = sum_gx;
        out[1] = sum_g;
    }
}

template <typename T, int N>
__device__ __forceinline__ void bn_backward_dx(const T* __restrict__ x, const T* __restrict__ w,
                                               const T* __restrict__ g, const float* __restrict__ mean,
                                               const float* __restrict__ var, const float* __restrict__ totals,
                                               T* __restrict__ dx, u32 n, u32 c, u32 spatial, u32 chunk, float eps) {
    const u32 ch = blockIdx.x;
    const PartRange pr = part_range<N>(n, spatial, chunk);
    const float mu = mean[ch], rstd = 1.0f / sqrtf(var[ch] + eps), scale = to_f32(w[ch]) * rstd;
    const float inv_m = 1.0f / ((float)n * (float)spatial);
    const float mean_gx = totals[2 * ch] * inv_m, mean_g = totals[2 * ch + 1] * inv_m;
    const Pack<T, N>* __restrict__ xv = reinterpret_cast<const Pack<T, N>*>(x);
    const Pack<T, N>* __restrict__ gv = reinterpret_cast<const Pack<T, N>*>(g);
    Pack<T, N>* __restrict__ dxv = reinterpret_cast<Pack<T, N>*>(dx);
    channel_packs(ch, c, pr.sp, pr.m0, pr.m1, [&](size_t off) {
        const Pack<T, N> xp = xv[off], gp = gv[off];
        Pack<T, N> o;
#pragma unroll
        for (int k = 0; k < N; ++k)
            o.v[k] = from_f32<T>(scale * (to_f32(gp.v[k]) - mean_g - (to_f32(xp.v[k]) - mu) * rstd * mean_gx));
        dxv[off] = o;
    });
}

extern "C" __global__ void __launch_bounds__(FOIL_BLOCK)
    batch_norm_stats_merge(const float* __restrict__ partials, float* __restrict__ mean, float* __restrict__ var,
                           u32 parts, u32 c) {
    FOIL_GRID_STRIDE(ch, c) {
        Stats st = {0.0f, 0.0f, 0.0f};
        for (u32 p = 0; p < parts; ++p) {
            const float* __restrict__ in = partials + ((size_t)p * c + ch) * 3;
            merge(st, in[0], in[1], in[2]);
        }
        mean[ch] = st.mean;
        var[ch] = st.m2 / st.n;  // biased, as the forward normalises
    }
}

// ---- entry points -------------------------------------------------------------------------------

#define FOIL_BN_STATS(N) bn_stats_partials<T, N>(x, partials, n, c, spatial, chunk)
#define FOIL_BN_APPLY(N) bn_apply<T, N>(x, w, b, mean, var, y, n, c, spatial, chunk, eps)
#define FOIL_BN_GRAD(N) bn_grad_partials<T, N>(x, g, mean, var, partials, n, c, spatial, chunk, eps)
#define FOIL_BN_DX(N) bn_backward_dx<T, N>(x, w, g, mean, var, totals, dx, n, c, spatial, chunk, eps)

template <typename T>
__device__ __forceinline__ void bn_stats_entry(const T* x, float* partials, u32 n, u32 c, u32 spatial, u32 chunk) {
    BN_DISPATCH(aligned16(x), FOIL_BN_STATS);
}
template <typename T>
__device__ __forceinline__ void bn_apply_entry(const T* x, const T* w, const T* b, const float* mean,
                                               const float* var, T* y, u32 n, u32 c, u32 spatial, u32 chunk,
                                               float eps) {
    BN_DISPATCH(aligned16(x) && aligned16(y), FOIL_BN_APPLY);
}
template <typename T>
__device__ __forceinline__ void bn_grad_entry(const T* x, const T* g, const float* mean, const float* var,
                                              float* partials, u32 n, u32 c, u32 spatial, u32 chunk, float eps) {
    BN_DISPATCH(aligned16(x) && aligned16(g), FOIL_BN_GRAD);
}
template <typename T>
__device__ __forceinline__ void bn_dx_entry(const T* x, const T* w, const T* g, const float* mean, const float* var,
                                            const float* totals, T* dx, u32 n, u32 c, u32 spatial, u32 chunk,
                                            float eps) {
    BN_DISPATCH(aligned16(x) && aligned16(g) && aligned16(dx), FOIL_BN_DX);
}

#define FOIL_NORM_GRAD_ENTRIES(NAME, T)                                                                         \
    extern "C" __global__ void __launch_bounds__(FOIL_BLOCK)                                                    \
        layer_norm_backward_##NAME(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ g,    \
                                   T* __restrict__ dx, float* __restrict__ row_stats, u32 rows, u32 cols,        \
                                   float eps) {                                                                 \
        layer_norm_backward_impl<T>(x, w, g, dx, row_stats, rows, cols, eps);                                   \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(FOIL_BLOCK)                                                    \
        layer_norm_param_partials_##NAME(const T* __restrict__ x, const T* __restrict__ g,                      \
                                         const float* __restrict__ row_stats, float* __restrict__ partials,     \
                                         u32 rows, u32 cols, u32 rows_per_part) {                               \
        layer_norm_param_partials_impl<T>(x, g, row_stats, partials, rows, cols, rows_per_part);                \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(FOIL_BLOCK)                                                    \
        group_norm_backward_##NAME(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ g,    \
                                   T* __restrict__ dx, float* __restrict__ partials, u32 n, u32 c, u32 spatial,  \
                                   u32 groups, float eps) {                                                     \
        group_norm_backward_impl<T>(x, w, g, dx, partials, n, c, spatial, groups, eps);                         \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(FOIL_BLOCK)                                                    \
        norm_param_grads_##NAME(const float* __restrict__ partials, T* __restrict__ dweight,                    \
                                T* __restrict__ dbias, float* __restrict__ totals, u32 parts, u32 channels,     \
                                u32 keep_totals) {                                                              \
        norm_param_grads_impl<T>(partials, dweight, dbias, totals, parts, channels, keep_totals);               \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(FOIL_BLOCK)                                                    \
        batch_norm_stats_partials_##NAME(const T* __restrict__ x, float* __restrict__ partials, u32 n, u32 c,   \
                                         u32 spatial, u32 chunk) {                                              \
        bn_stats_entry<T>(x, partials, n, c, spatial, chunk);                                                   \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(FOIL_BLOCK)                                                    \
        batch_norm_apply_##NAME(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,       \
                                const float* __restrict__ mean, const float* __restrict__ var,                  \
                                T* __restrict__ y, u32 n, u32 c, u32 spatial, u32 chunk, float eps) {           \
        bn_apply_entry<T>(x, w, b, mean, var, y, n, c, spatial, chunk, eps);                                    \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(FOIL_BLOCK)                                                    \
        batch_norm_grad_partials_##NAME(const T* __restrict__ x, const T* __restrict__ g,                       \
                                        const float* __restrict__ mean, const float* __restrict__ var,          \
                                        float* __restrict__ partials, u32 n, u32 c, u32 spatial, u32 chunk,     \
                                        float eps) {                                                            \
        bn_grad_entry<T>(x, g, mean, var, partials, n, c, spatial, chunk, eps);                                 \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(FOIL_BLOCK)                                                    \
        batch_norm_backward_dx_##NAME(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ g, \
                                      const float* __restrict__ mean, const float* __restrict__ var,            \
                                      const float* __restrict__ totals, T* __restrict__ dx, u32 n, u32 c,       \
                                      u32 spatial, u32 chunk, float eps) {                                      \
        bn_dx_entry<T>(x, w, g, mean, var, totals, dx, n, c, spatial, chunk, eps);                              \
    }

FOIL_NORM_GRAD_ENTRIES(f32, float)
FOIL_NORM_GRAD_ENTRIES(f16, f16)
FOIL_NORM_GRAD_ENTRIES(bf16, bf16)
