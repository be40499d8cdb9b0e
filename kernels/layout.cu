// Data movement: strided gather (permute), rectangular copy (concat, split, narrow), nearest ×2
// upsampling, embedding lookup. Bits are moved, never converted, so kernels exist per element width:
// W = unsigned short (b16: f16, bf16) or u32 (b32: f32, u32).
//
//   copy_strided_W(x, y, n, args)    y[i] = x[Σ idx[d]·args.strides[d]], i row-major over args.dims
//   copy2d_W(src, dst, rows, cols, src_pitch, dst_pitch, src_offset, dst_offset)
//       dst[dst_offset + r·dst_pitch + c] = src[src_offset + r·src_pitch + c], r < rows, c < cols
//   upsample_nearest2x_W(x, y, planes, h, w)   (planes, h, w) -> (planes, 2h, 2w), y[p,i,j] = x[p,i/2,j/2]
//   embedding_W(table, ids, y, n_ids, dim, vocab)   y[r, c] = table[ids[r], c], or 0 when ids[r] ≥ vocab
//
// Launch: grid-stride, 256 threads a block, at most 32 blocks an SM; correct for any grid.
//
// Roofline: no arithmetic, so pure bandwidth: 2·sizeof(W) bytes an output element (read + write;
// upsample reads a quarter of that, embedding's ids are broadcast loads). The target is HBM
// bandwidth, ~3.3 TB/s on H100 SXM. Every kernel moves the widest of 16/8/4-byte vectors the shape
// and pointer alignment allow, so a warp moves up to 512 B an instruction; the index arithmetic
// (u32 divisions by runtime sizes) is per vector, not per element.
//
// copy_strided: when the output's last dimension is strided in the input (a real transpose), a
// plain gather would read one element a 32 B sector; instead 32×32 tiles go through shared memory,
// read along the input's unit-stride dimension and written along the output's last dimension, both
// coalesced. The tile is u32 [32][33]: the padding column makes the transposed reads conflict-free.

#include "common.cuh"

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
    T v[N];
};

__device__ __forceinline__ bool aligned(const void* p, u32 bytes) {
    return ((unsigned long long)p & (unsigned long long)(bytes - 1)) == 0;
}

#define FOIL_GRID_START ((size_t)blockIdx.x * blockDim.x + threadIdx.x)
#define FOIL_GRID_STEP ((size_t)gridDim.x * blockDim.x)

// arr[i] for a runtime i, by unrolled selects: dynamic indexing of a by-value kernel argument
// would copy the struct to local memory.
__device__ __forceinline__ u32 pick(const u32 (&arr)[FOIL_MAX_DIMS], u32 i) {
    u32 r = 0;
#pragma unroll
    for (int d = 0; d < FOIL_MAX_DIMS; ++d)
        if ((u32)d == i) r = arr[d];
    return r;
}

// ---- copy_strided ------------------------------------------------------------------------------

// y[i] = x[offset(i)] over vectors V (args already in units of V). Offsets stay in u32: each is
// below the input's length, which the launcher keeps under 2^32. The dims loop is unrolled so
// args is indexed by constants; dimension 0 needs no division because i < n.
template <typename V>
__device__ __forceinline__ void gather(const V* __restrict__ x, V* __restrict__ y, u32 n, const StridedArgs& a) {
    const u32 rank = a.rank;
    for (size_t i = FOIL_GRID_START; i < n; i += FOIL_GRID_STEP) {
        u32 rem = (u32)i, off = 0;
#pragma unroll
        for (int d = FOIL_MAX_DIMS - 1; d > 0; --d) {
            if ((u32)d < rank) {
                const u32 q = rem / a.dims[d];
                off += (rem - q * a.dims[d]) * a.strides[d];
                rem = q;
            }
        }
        y[i] = x[off + rem * a.strides[0]];
    }
}

// Gathers K-element vectors when the last dimension is contiguous in the input and every offset is
// a multiple of K. Returns false (nothing done) when the shape or the pointers do not allow it.
template <typename W, int K>
__device__ __forceinline__ bool gather_vec(const W* __restrict__ x, W* __restrict__ y, u32 n, const StridedArgs& a) {
    const u32 last = a.rank - 1;
    if (pick(a.strides, last) != 1 || pick(a.dims, last) % K != 0) return false;
    if (!aligned(x, K * sizeof(W)) || !aligned(y, K * sizeof(W))) return false;
    StridedArgs v = a;
#pragma unroll
    for (int d = 0; d < FOIL_MAX_DIMS; ++d) {
        if ((u32)d < last) {
            if (a.strides[d] % K != 0) return false;
            v.strides[d] = a.strides[d] / K;
        } else if ((u32)d == last) {
            v.dims[d] = a.dims[d] / K;
        }
    }
    gather(reinterpret_cast<const Pack<W, K>*>(x), reinterpret_cast<Pack<W, K>*>(y), n / K, v);
    return true;
}

// Output dims (..., P at p, ..., Q) where input dim p has stride 1 and the last has stride sQ ≠ 1.
// One 32×32 tile of (p, last) a block iteration; the other dims ("rest") select the tile's plane.
template <typename W>
__device__ __forceinline__ void transpose_tiled(const W* __restrict__ x, W* __restrict__ y, const StridedArgs& a,
                                                u32 p) {
    __shared__ u32 tile[32][33];
    const u32 rank = a.rank, last = rank - 1;
    const u32 P = pick(a.dims, p), Q = pick(a.dims, last), sQ = pick(a.strides, last);
    u32 rest = 1;
#pragma unroll
    for (int d = 0; d < FOIL_MAX_DIMS; ++d)
        if ((u32)d < last && (u32)d != p) rest *= a.dims[d];
    const u32 pt = P / 32 + (P % 32 != 0), qt = Q / 32 + (Q % 32 != 0);
    const u32 tiles = rest * pt * qt;  // ≤ rest·P·Q = n < 2^32
    const u32 tx = threadIdx.x & 31, ty = threadIdx.x >> 5;

    for (size_t t = blockIdx.x; t < tiles; t += gridDim.x) {
        u32 r = (u32)t;
        const u32 tq = r % qt;
        r /= qt;
        const u32 tp = r % pt;
        r /= pt;
        // Decompose r over the rest dims, innermost first; `prod` is the output stride of dim d.
        u32 in_base = 0, out_base = 0, prod = Q, ostride_p = 0;
#pragma unroll
        for (int d = FOIL_MAX_DIMS - 2; d >= 0; --d) {
            if ((u32)d < last) {
                if ((u32)d == p) {
                    ostride_p = prod;
                } else {
                    const u32 q = r / a.dims[d];
                    const u32 idx = r - q * a.dims[d];
                    in_base += idx * a.strides[d];
                    out_base += idx * prod;
                    r = q;
                }
                prod *= a.dims[d];
            }
        }
        const u32 p0 = tp * 32, q0 = tq * 32;
        // Read: lanes along p, the input's unit stride.
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const u32 jq = ty + 8 * k, gp = p0 + tx, gq = q0 + jq;
            if (gp < P && gq < Q) tile[jq][tx] = (u32)x[in_base + gp + gq * sQ];
        }
        __syncthreads();
        // Write: lanes along the output's last dimension.
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const u32 kp = ty + 8 * k, gp = p0 + kp, gq = q0 + tx;
            if (gp < P && gq < Q) y[out_base + gp * ostride_p + gq] = (W)tile[tx][kp];
        }
        __syncthreads();
    }
}

template <typename W>
__device__ __forceinline__ void copy_strided_impl(const W* __restrict__ x, W* __restrict__ y, u32 n,
                                                  const StridedArgs& a) {
    const u32 rank = a.rank;
    if (rank == 0) return;  // the host always passes rank ≥ 1
    const u32 last = rank - 1;
    // A transpose: tile it when both tile sides are at least half full (blockDim 256 = 8 rows of 32).
    if (rank >= 2 && pick(a.strides, last) != 1 && blockDim.x == 256) {
        u32 p = FOIL_MAX_DIMS;
#pragma unroll
        for (int d = 0; d < FOIL_MAX_DIMS; ++d)
            if ((u32)d < last && a.strides[d] == 1) p = d;
        if (p < FOIL_MAX_DIMS && pick(a.dims, p) >= 16 && pick(a.dims, last) >= 16) {
            transpose_tiled(x, y, a, p);
            return;
        }
    }
    if (gather_vec<W, 16 / sizeof(W)>(x, y, n, a)) return;
    if (gather_vec<W, 8 / sizeof(W)>(x, y, n, a)) return;
    if constexpr (sizeof(W) == 2) {
        if (gather_vec<W, 2>(x, y, n, a)) return;
    }
    gather(x, y, n, a);
}

// ---- copy2d ------------------------------------------------------------------------------------

template <typename V>
__device__ __forceinline__ void copy2d_run(const V* __restrict__ src, V* __restrict__ dst, u32 rows, u32 cols,
                                           u32 src_pitch, u32 dst_pitch) {
    const size_t total = (size_t)rows * cols;  // ≤ the destination's length < 2^32
    for (size_t i = FOIL_GRID_START; i < total; i += FOIL_GRID_STEP) {
        const u32 r = (u32)i / cols, c = (u32)i - r * cols;
        dst[(size_t)r * dst_pitch + c] = src[(size_t)r * src_pitch + c];
    }
}

// K-element vectors when every size and offset is a multiple of K and the pointers allow it.
template <typename W, int K>
__device__ __forceinline__ bool copy2d_vec(const W* __restrict__ src, W* __restrict__ dst, u32 rows, u32 cols,
                                           u32 src_pitch, u32 dst_pitch, u32 src_offset, u32 dst_offset) {
    if ((cols | src_pitch | dst_pitch | src_offset | dst_offset) % K != 0) return false;
    const W* s = src + src_offset;
    W* d = dst + dst_offset;
    if (!aligned(s, K * sizeof(W)) || !aligned(d, K * sizeof(W))) return false;
    copy2d_run(reinterpret_cast<const Pack<W, K>*>(s), reinterpret_cast<Pack<W, K>*>(d), rows, cols / K,
               src_pitch / K, dst_pitch / K);
    return true;
}

template <typename W>
__device__ __forceinline__ void copy2d_impl(const W* __restrict__ src, W* __restrict__ dst, u32 rows, u32 cols,
                                            u32 src_pitch, u32 dst_pitch, u32 src_offset, u32 dst_offset) {
    if (cols == 0) return;
    if (copy2d_vec<W, 16 / sizeof(W)>(src, dst, rows, cols, src_pitch, dst_pitch, src_offset, dst_offset)) return;
    if (copy2d_vec<W, 8 / sizeof(W)>(src, dst, rows, cols, src_pitch, dst_pitch, src_offset, dst_offset)) return;
    if constexpr (sizeof(W) == 2) {
        if (copy2d_vec<W, 2>(src, dst, rows, cols, src_pitch, dst_pitch, src_offset, dst_offset)) return;
    }
    copy2d_run(src + src_offset, dst + dst_offset, rows, cols, src_pitch, dst_pitch);
}

// ---- upsample_nearest2x ------------------------------------------------------------------------

// A thread reads K adjacent inputs of one row and writes them doubled (2K outputs) to both output
// rows 2·row and 2·row + 1. Input row `row` = p·h + i maps to output rows 2·row, 2·row + 1.
template <typename W, int K>
__device__ __forceinline__ void upsample_run(const W* __restrict__ x, W* __restrict__ y, u32 planes, u32 h, u32 w) {
    const u32 wk = w / K;
    const size_t total = (size_t)planes * h * wk;  // a quarter of the output: < 2^32
    for (size_t i = FOIL_GRID_START; i < total; i += FOIL_GRID_STEP) {
        const u32 row = (u32)i / wk, xi = (u32)i - row * wk;
        const Pack<W, K> in = reinterpret_cast<const Pack<W, K>*>(x)[i];
        Pack<W, 2 * K> out;
#pragma unroll
        for (int k = 0; k < K; ++k) out.v[2 * k] = out.v[2 * k + 1] = in.v[k];
        const size_t o = (size_t)(2 * row) * (2 * w) + (size_t)(2 * K) * xi;
        *reinterpret_cast<Pack<W, 2 * K>*>(y + o) = out;
        *reinterpret_cast<Pack<W, 2 * K>*>(y + o + 2 * w) = out;
    }
}

template <typename W>
__device__ __forceinline__ void upsample_impl(const W* __restrict__ x, W* __restrict__ y, u32 planes, u32 h, u32 w) {
    constexpr int K = 8 / sizeof(W);  // 8 B in, 16 B out to each of two rows
    if (w % K == 0 && aligned(x, K * sizeof(W)) && aligned(y, 16)) return upsample_run<W, K>(x, y, planes, h, w);
    if (aligned(y, 2 * sizeof(W))) return upsample_run<W, 1>(x, y, planes, h, w);
    // Only for a misaligned output pointer (never a fresh allocation): one output element a step.
    const u32 w2 = 2 * w, h2 = 2 * h;
    const size_t total = (size_t)planes * h2 * w2;
    for (size_t i = FOIL_GRID_START; i < total; i += FOIL_GRID_STEP) {
        const u32 row = (u32)i / w2, j = (u32)i - row * w2;  // row = p·2h + oy
        const u32 p = row / h2, oy = row - p * h2;
        y[i] = x[((size_t)p * h + oy / 2) * w + j / 2];
    }
}

// ---- embedding ---------------------------------------------------------------------------------

template <typename V>
__device__ __forceinline__ void embedding_run(const V* __restrict__ table, const u32* __restrict__ ids,
                                              V* __restrict__ y, u32 n_ids, u32 dim, u32 vocab) {
    const size_t total = (size_t)n_ids * dim;  // the output's length < 2^32
    for (size_t i = FOIL_GRID_START; i < total; i += FOIL_GRID_STEP) {
        const u32 r = (u32)i / dim, c = (u32)i - r * dim;
        const u32 id = ids[r];  // one id a row: a broadcast load within the warp
        V v = {};
        if (id < vocab) v = table[(size_t)id * dim + c];
        y[i] = v;
    }
}

template <typename W, int K>
__device__ __forceinline__ bool embedding_vec(const W* __restrict__ table, const u32* __restrict__ ids,
                                              W* __restrict__ y, u32 n_ids, u32 dim, u32 vocab) {
    if (dim % K != 0 || !aligned(table, K * sizeof(W)) || !aligned(y, K * sizeof(W))) return false;
    embedding_run(reinterpret_cast<const Pack<W, K>*>(table), ids, reinterpret_cast<Pack<W, K>*>(y), n_ids, dim / K,
                  vocab);
    return true;
}

template <typename W>
__device__ __forceinline__ void embedding_impl(const W* __restrict__ table, const u32* __restrict__ ids,
                                               W* __restrict__ y, u32 n_ids, u32 dim, u32 vocab) {
    if (dim == 0) return;
    if (embedding_vec<W, 16 / sizeof(W)>(table, ids, y, n_ids, dim, vocab)) return;
    if (embedding_vec<W, 8 / sizeof(W)>(table, ids, y, n_ids, dim, vocab)) return;
    if constexpr (sizeof(W) == 2) {
        if (embedding_vec<W, 2>(table, ids, y, n_ids, dim, vocab)) return;
    }
    embedding_run(table, ids, y, n_ids, dim, vocab);
}

// ---- entry points ------------------------------------------------------------------------------

#define FOIL_LAYOUT_ENTRIES(NAME, W)                                                                          \
    extern "C" __global__ void __launch_bounds__(256)                                                         \
        copy_strided_##NAME(const W* __restrict__ x, W* __restrict__ y, u32 n, StridedArgs args) {            \
        copy_strided_impl<W>(x, y, n, args);                                                                  \
    }                                                                                                         \
    extern "C" __global__ void __launch_bounds__(256)                                                         \
        copy2d_##NAME(const W* __restrict__ src, W* __restrict__ dst, u32 rows, u32 cols, u32 src_pitch,      \
                      u32 dst_pitch, u32 src_offset, u32 dst_offset) {                                        \
        copy2d_impl<W>(src, dst, rows, cols, src_pitch, dst_pitch, src_offset, dst_offset);                   \
    }                                                                                                         \
    extern "C" __global__ void __launch_bounds__(256)                                                         \
        upsample_nearest2x_##NAME(const W* __restrict__ x, W* __restrict__ y, u32 planes, u32 h, u32 w) {     \
        upsample_impl<W>(x, y, planes, h, w);                                                                 \
    }                                                                                                         \
    extern "C" __global__ void __launch_bounds__(256)                                                         \
        embedding_##NAME(const W* __restrict__ table, const u32* __restrict__ ids, W* __restrict__ y,         \
                         u32 n_ids, u32 dim, u32 vocab) {                                                     \
        embedding_impl<W>(table, ids, y, n_ids, dim, vocab);                                                  \
    }

FOIL_LAYOUT_ENTRIES(b16, unsigned short)
FOIL_LAYOUT_ENTRIES(b32, u32)
