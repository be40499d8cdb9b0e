// Backward pass of the embedding lookup (layout.cu's embedding_W): the (vocab, dim) table
// gradient, whose row v sums the upstream gradient rows n with ids[n] = v. Deterministic, no
// atomics: the positions are sorted by (id, position), then each run of equal ids is summed in
// ascending position by one block.
//   embedding_grad_rank: order[rank(n)] = n, rank(n) = #{m : (id_m, m) < (id_n, n)} with ids
//     ≥ vocab counted as vocab (sorted last). One thread per position, ids streamed through
//     shared memory in tiles of 256: n² comparisons, ~10 µs for the 616 ids of a CLIP batch of
//     8 and ~1 ms at 64k ids; past a few hundred thousand ids a radix sort would pay.
//   embedding_grad_sum_T: for each run head s of order (grid-stride over s, one block a head),
//     the block's threads stride over the dims and sum the run's gradient rows into the table row,
//     in f32, written once. Ids ≥ vocab are skipped. The table must be zeroed first (rows no id
//     names stay 0).
//
// Launch: rank: block 256, grid.x = ⌈n/256⌉. sum: block 256, grid-stride over the n sorted
// positions.
//
// Roofline: the sum reads n·dim gradient values and writes (distinct ids)·dim, memory-bound
// (~3.3 TB/s on H100 SXM); the rank costs n²/256 shared-memory reads a block, negligible for
// the few thousand ids of a text encoder's batch.

#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256) embedding_grad_rank(const u32* __restrict__ ids,
                                                                      u32* __restrict__ order, u32 n, u32 vocab) {
    __shared__ u32 tile[256];
    const u32 me = blockIdx.x * 256u + threadIdx.x;
    const u32 my_id = me < n ? min(ids[me], vocab) : 0u;
    u32 rank = 0;
    for (u32 t0 = 0; t0 < n; t0 += 256u) {
        __syncthreads();   // the previous tile is fully read
        if (t0 + threadIdx.x < n) tile[threadIdx.x] = min(ids[t0 + threadIdx.x], vocab);
        __syncthreads();
        const u32 count = min(256u, n - t0);
        for (u32 t = 0; t < count; ++t) {
            const u32 other = tile[t];
            rank += (other < my_id || (other == my_id && t0 + t < me)) ? 1u : 0u;
        }
    }
    if (me < n) order[rank] = me;
}

template <typename T>
__device__ __forceinline__ void embedding_grad_sum(const T* __restrict__ grad, const u32* __restrict__ ids,
                                                   const u32* __restrict__ order, T* __restrict__ table, u32 n,
                                                   u32 dim, u32 vocab) {
    for (u32 s = blockIdx.x; s < n; s += gridDim.x) {
        const u32 id = ids[order[s]];
        if (id >= vocab || (s > 0 && ids[order[s - 1]] == id)) continue;   // skipped, or not a run's head
        for (u32 c = threadIdx.x; c < dim; c += blockDim.x) {
            float acc = 0.f;
            for (u32 t = s; t < n && ids[order[t]] == id; ++t) acc += to_f32(grad[(size_t)order[t] * dim + c]);
            table[(size_t)id * dim + c] = from_f32<T>(acc);
        }
    }
}

#define FOIL_EMBEDDING_GRAD(NAME, T)                                                                           \
    extern "C" __global__ void __launch_bounds__(256) embedding_grad_sum_##NAME(                               \
        const T* __restrict__ grad, const u32* __restrict__ ids, const u32* __restrict__ order,                \
        T* __restrict__ table, u32 n, u32 dim, u32 vocab) {                                                    \
        embedding_grad_sum<T>(grad, ids, order, table, n, dim, vocab);                                         \
    }

FOIL_EMBEDDING_GRAD(f32, float)
FOIL_EMBEDDING_GRAD(f16, f16)
FOIL_EMBEDDING_GRAD(bf16, bf16)
