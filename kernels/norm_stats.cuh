// Welford statistics of a contiguous run, shared by norm.cu and norm_grad.cu: one pass of Chan
// merges in f32, (count, mean, M2) a thread. A 16 B pack's exact mean and M2 merge into the running
// triple (one division a pack), so there is no Σx² - (Σx)² cancellation when |mean| ≫ std. Threads
// merge by warp shuffles, warps through FOIL_WARPS shared slots; every thread merges them in the
// same order, so all see identical mean and rstd. The includer defines FOIL_BLOCK and FOIL_WARPS
// and includes common.cuh first.

#pragma once

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
    T v[N];
};

struct Stats {
    float n, mean, m2;
};

// Merges (nb, mb, m2b) into a (Chan et al.). Either side may be empty; both empty stays empty.
__device__ __forceinline__ void merge(Stats& a, float nb, float mb, float m2b) {
    const float n = a.n + nb;
    if (n == 0.0f) return;
    const float d = mb - a.mean;
    const float f = nb / n;  // exactly 1 when a is empty, so a merge into nothing copies b
    a.mean += d * f;
    a.m2 += m2b + d * d * a.n * f;
    a.n = n;
}

// Folds a pack's exact mean and M2 into st (N is a power of two: the division is exact).
template <typename T, int N>
__device__ __forceinline__ void add_pack(Stats& st, const Pack<T, N>& pk) {
    float v[N], sum = 0.0f;
#pragma unroll
    for (int k = 0; k < N; ++k) {
        v[k] = to_f32(pk.v[k]);
        sum += v[k];
    }
    const float pm = sum * (1.0f / N);
    float pm2 = 0.0f;
#pragma unroll
    for (int k = 0; k < N; ++k) pm2 += (v[k] - pm) * (v[k] - pm);
    merge(st, (float)N, pm, pm2);
}

// The block's merged statistics, identical in every thread (every thread merges the warps in the
// same order). One barrier; the caller keeps a barrier between this smem's reads and its next use.
__device__ __forceinline__ Stats block_merge(Stats st, Stats* smem) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        const float n2 = __shfl_xor_sync(0xffffffffu, st.n, off);
        const float mean2 = __shfl_xor_sync(0xffffffffu, st.mean, off);
        const float m22 = __shfl_xor_sync(0xffffffffu, st.m2, off);
        merge(st, n2, mean2, m22);
    }
    if ((threadIdx.x & 31) == 0) smem[threadIdx.x >> 5] = st;
    __syncthreads();
    st = smem[0];
#pragma unroll
    for (int w = 1; w < FOIL_WARPS; ++w) merge(st, smem[w].n, smem[w].mean, smem[w].m2);
    return st;
}

// Mean and rstd (of the biased variance, as the CPU and PyTorch normalise) of the contiguous
// x[0..count), for every thread of the block. `smem` is this call's buffer: a caller that calls again
// alternates two, so that a barrier separates the reuse of one from its last reads.
template <typename T>
__device__ __forceinline__ void run_stats(const T* __restrict__ x, u32 count, float eps, Stats* smem, float& mean,
                                          float& rstd) {
    constexpr int N = 16 / sizeof(T);
    Stats st = {0.0f, 0.0f, 0.0f};
    u32 done = 0;
    if (aligned16(x)) {
        const u32 packs = count / N;
        const Pack<T, N>* __restrict__ xv = reinterpret_cast<const Pack<T, N>*>(x);
#pragma unroll 4
        for (u32 p = threadIdx.x; p < packs; p += FOIL_BLOCK) add_pack(st, xv[p]);
        done = packs * N;
    }
    for (u32 j = done + threadIdx.x; j < count; j += FOIL_BLOCK) merge(st, 1.0f, to_f32(x[j]), 0.0f);
    st = block_merge(st, smem);
    mean = st.mean;
    rstd = 1.0f / sqrtf(st.m2 / (float)count + eps);
}
