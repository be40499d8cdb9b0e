// Reductions over one axis, and softmax over the last axis.
//
//   reduce_T(x, y, outer, len, inner, op)  y[o,i] = sum | mean | max over l of x[o,l,i] (op 0, 1, 2);
//                                          max ignores NaN (Rust's f32::max), len 0 gives 0 / NaN / -inf
//   argmax_T(x, y, outer, len, inner)      y[o,i] (u32) = first l of the maximum of x[o,·,i]; NaN never
//                                          wins except at l = 0, where it gives 0 (the CPU's scan)
//   softmax_T(x, y, rows, cols, log)       softmax or log-softmax of each row; a row whose max is -inf
//                                          (only -inf / NaN) gives 0 (softmax) or -inf (log)
// T = f32 | f16 | bf16; accumulation in f32.
//
// Launch: block 256 (8 warps). reduce/argmax: grid from the host as one warp an output, at most 32
// blocks an SM; the kernel is grid-stride over "tiles" and correct for any grid. softmax: grid.x =
// rows, one block a row (grid-stride over rows, so any grid works).
//
// Roofline: memory-bound. reduce reads sizeof(T) an element once (the output is len× smaller);
// softmax reads the row twice and writes it once, 3·sizeof(T) an element, the second read mostly
// from L1/L2 since the block just streamed it. The target is HBM bandwidth, ~3.3 TB/s on H100 SXM.
//
// reduce mapping. A warp covers C = min(32, pow2 ≥ inner) adjacent columns i and R = 32/C rows l
// at once, so its loads are one contiguous run whatever inner is (inner == 1: 32 consecutive l,
// read as 16 B packs). A tile (o, C columns) goes to a group of W warps that split len, W ∈ {1..8}
// chosen so the grid's warps all have work: few outputs with long rows (a full-tensor sum) get up
// to the whole block instead of one warp. Partials fold with shuffles across the R rows of a warp,
// then through shared memory across the W warps; no atomics, one pass.
//
// softmax: one pass keeps a running (max, Σexp(x - max)) a thread (online softmax, rescaling when
// the max grows), combined across the block; a second pass writes. exp is expf: the f32 tolerance
// is tighter than __expf.

#include "common.cuh"

#define FOIL_BLOCK 256
#define FOIL_WARPS (FOIL_BLOCK / 32)

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
    T v[N];
};

__device__ __forceinline__ float neg_inf() { return __uint_as_float(0xff800000u); }

// ---- reduction operators -----------------------------------------------------------------------
// add() sees one thread's elements in increasing l; combine() is associative and commutative.

struct SumOp {
    typedef float State;
    __device__ static State identity() { return 0.0f; }
    __device__ static void add(State& s, float v, u32) { s += v; }
    __device__ static State combine(State a, State b) { return a + b; }
    __device__ static State shfl(State s, int o) { return __shfl_xor_sync(0xffffffffu, s, o); }
};

struct MaxOp {
    typedef float State;
    __device__ static State identity() { return neg_inf(); }
    __device__ static void add(State& s, float v, u32) { s = fmaxf(s, v); }  // NaN ignored, as f32::max
    __device__ static State combine(State a, State b) { return fmaxf(a, b); }
    __device__ static State shfl(State s, int o) { return __shfl_xor_sync(0xffffffffu, s, o); }
};

struct ArgMaxState {
    float v;
    u32 i;  // ARGMAX_NONE until a non-NaN value is seen
};
#define ARGMAX_NONE 0xffffffffu

// The first index of the largest non-NaN value. The CPU's scan also returns 0 when x[0] is NaN
// (nothing compares greater than it); the output step checks that one case.
struct ArgMaxOp {
    typedef ArgMaxState State;
    __device__ static State identity() { return State{neg_inf(), ARGMAX_NONE}; }
    __device__ static void add(State& s, float v, u32 l) {
        if (v > s.v || (s.i == ARGMAX_NONE && v == v)) s = State{v, l};  // strict >: first index wins
    }
    __device__ static State combine(State a, State b) {
        if (b.i == ARGMAX_NONE) return a;
        if (a.i == ARGMAX_NONE) return b;
        return (b.v > a.v || (b.v == a.v && b.i < a.i)) ? b : a;
    }
    __device__ static State shfl(State s, int o) {
        return State{__shfl_xor_sync(0xffffffffu, s.v, o), __shfl_xor_sync(0xffffffffu, s.i, o)};
    }
};

// Output writers: y[o·inner + i] from the folded state.
template <typename T>
struct ReduceOut {
    T* __restrict__ y;
    float scale;  // 1/len for mean, 1 otherwise (s·1 is exact)
    __device__ void operator()(const T* __restrict__, u32 o, u32 i, u32, u32 inner, float s) const {
        y[(size_t)o * inner + i] = from_f32<T>(s * scale);
    }
};

template <typename T>
struct ArgMaxOut {
    u32* __restrict__ y;
    __device__ void operator()(const T* __restrict__ x, u32 o, u32 i, u32 len, u32 inner, ArgMaxState s) const {
        u32 r = s.i == ARGMAX_NONE ? 0u : s.i;
        if (len > 0) {
            const float x0 = to_f32(x[(size_t)o * len * inner + i]);
            if (x0 != x0) r = 0;
        }
        y[(size_t)o * inner + i] = r;
    }
};

// ---- reduce over the middle axis of (outer, len, inner) ----------------------------------------

template <typename T, typename Op, typename Out>
__device__ __forceinline__ void reduce_axis(const T* __restrict__ x, u32 outer, u32 len, u32 inner, Out out) {
    typedef typename Op::State S;
    constexpr int N = 16 / sizeof(T);
    __shared__ S part[FOIL_WARPS][32];

    const u32 warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    u32 log_c = 0;  // C = 2^log_c columns a warp, the smallest power of two ≥ min(inner, 32)
    while (log_c < 5 && (1u << log_c) < inner) ++log_c;
    const u32 C = 1u << log_c, R = 32 >> log_c;
    const u32 ctiles = inner / C + (inner % C != 0);  // no overflow for inner near 2^32
    const u32 tiles = outer * ctiles;                  // ≤ outer·inner < 2^32 (host check)
    // Rows a warp consumes a step; groups of W warps share a tile while that leaves no tile waiting
    // and every warp at least two steps of work.
    const u32 step = inner == 1 ? 32 * N : R;
    u32 W = FOIL_WARPS;
    while (W > 1 && ((size_t)gridDim.x * (FOIL_WARPS / W) < tiles || (size_t)W * step * 2 > len)) W >>= 1;
    const u32 gpb = FOIL_WARPS / W, g = warp / W, wg = warp % W;

    for (size_t base = (size_t)blockIdx.x * gpb; base < tiles; base += (size_t)gridDim.x * gpb) {
        const bool valid = base + g < tiles;  // uniform across the warp, and the W warps of a group
        const u32 t = (u32)(base + g);
        S s = Op::identity();
        u32 o = 0, i0 = 0;
        if (valid) {
            o = t / ctiles;
            i0 = (t - o * ctiles) * C;
            if (inner == 1) {
                // A contiguous row: the group's 32·W threads stride over it, 16 B packs if aligned.
                const T* __restrict__ row = x + (size_t)o * len;
                const size_t tg = wg * 32 + lane, gs = W * 32;
                size_t done = 0;
                if (aligned16(row)) {
                    const size_t packs = len / N;
                    const Pack<T, N>* __restrict__ rv = reinterpret_cast<const Pack<T, N>*>(row);
#pragma unroll 4
                    for (size_t p = tg; p < packs; p += gs) {
                        const Pack<T, N> v = rv[p];
#pragma unroll
                        for (int k = 0; k < N; ++k) Op::add(s, to_f32(v.v[k]), (u32)(p * N + k));
                    }
                    done = packs * N;
                }
                for (size_t l = done + tg; l < len; l += gs) Op::add(s, to_f32(row[l]), (u32)l);
            } else {
                // Lane (r, c) reads column i0 + c of rows l ≡ wg·R + r (mod W·R): each warp step is
                // R consecutive rows of C consecutive columns.
                const u32 r = lane >> log_c, c = lane & (C - 1), col = i0 + c;
                if (col < inner) {
                    size_t l = (size_t)wg * R + r;
                    const T* __restrict__ p = x + ((size_t)o * len + l) * inner + col;
                    const size_t dl = (size_t)W * R, dp = dl * inner;
#pragma unroll 4
                    for (; l < len; l += dl, p += dp) Op::add(s, to_f32(*p), (u32)l);
                }
            }
        }
        // Fold the R row-partials of each column: lanes c, c + C, c + 2C, ... All 32 lanes take
        // part (idle lanes hold the identity), as the full shuffle mask requires.
        for (u32 off = C; off < 32; off <<= 1) s = Op::combine(s, Op::shfl(s, off));
        if (W > 1) {  // uniform over the block: every thread reaches both barriers
            if (lane < C) part[warp][lane] = s;
            __syncthreads();
            if (wg == 0 && lane < C)
                for (u32 j = 1; j < W; ++j) s = Op::combine(s, part[warp + j][lane]);
            __syncthreads();
        }
        if (valid && wg == 0 && lane < C && i0 + lane < inner) out(x, o, i0 + lane, len, inner, s);
    }
}

// ---- softmax -----------------------------------------------------------------------------------

// exp(v - m) with exp(-inf - -inf) taken as 0: lets a thread whose values so far are all -inf keep
// s = 0, while a NaN still poisons s (as it does the CPU's sum).
__device__ __forceinline__ float exp_sub(float v, float m) { return v == neg_inf() ? 0.0f : expf(v - m); }

// Folds values v[0..n) into the running (m, s).
template <int N>
__device__ __forceinline__ void online_add(float& m, float& s, const float (&v)[N]) {
    float pm = v[0];
#pragma unroll
    for (int k = 1; k < N; ++k) pm = fmaxf(pm, v[k]);
    const float mn = fmaxf(m, pm);  // fmaxf drops NaN, as the CPU's max does
    if (mn != m) s *= exp_sub(m, mn);
#pragma unroll
    for (int k = 0; k < N; ++k) s += exp_sub(v[k], mn);
    m = mn;
}

__device__ __forceinline__ void online_combine(float& m, float& s, float m2, float s2) {
    const float mn = fmaxf(m, m2);
    s = s * exp_sub(m, mn) + s2 * exp_sub(m2, mn);
    m = mn;
}

template <typename T, bool LOG>
__device__ __forceinline__ void softmax_impl(const T* __restrict__ x, T* __restrict__ y, u32 rows, u32 cols) {
    constexpr int N = 16 / sizeof(T);
    // Double-buffered by row parity: the barrier of the next row separates a reuse from the reads.
    __shared__ float sm_m[2][FOIL_WARPS], sm_s[2][FOIL_WARPS];
    const u32 tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    u32 parity = 0;
    for (size_t row = blockIdx.x; row < rows; row += gridDim.x, parity ^= 1) {  // 64-bit: no wrap
        const T* __restrict__ xr = x + (size_t)row * cols;
        T* __restrict__ yr = y + (size_t)row * cols;
        const bool vec = aligned16(xr) && aligned16(yr);
        const u32 packs = vec ? cols / N : 0;
        const Pack<T, N>* __restrict__ xv = reinterpret_cast<const Pack<T, N>*>(xr);
        Pack<T, N>* __restrict__ yv = reinterpret_cast<Pack<T, N>*>(yr);

        float m = neg_inf(), s = 0.0f;
#pragma unroll 2
        for (u32 p = tid; p < packs; p += FOIL_BLOCK) {
            const Pack<T, N> pk = xv[p];
            float v[N];
#pragma unroll
            for (int k = 0; k < N; ++k) v[k] = to_f32(pk.v[k]);
            online_add(m, s, v);
        }
        for (u32 c = packs * N + tid; c < cols; c += FOIL_BLOCK) {
            const float v[1] = {to_f32(xr[c])};
            online_add(m, s, v);
        }
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) {
            const float m2 = __shfl_xor_sync(0xffffffffu, m, off);
            const float s2 = __shfl_xor_sync(0xffffffffu, s, off);
            online_combine(m, s, m2, s2);
        }
        if (lane == 0) {
            sm_m[parity][warp] = m;
            sm_s[parity][warp] = s;
        }
        __syncthreads();
        m = sm_m[parity][0];
        s = sm_s[parity][0];
#pragma unroll
        for (int w = 1; w < FOIL_WARPS; ++w) online_combine(m, s, sm_m[parity][w], sm_s[parity][w]);

        if (m == neg_inf()) {  // only -inf / NaN: the CPU's explicit fill
            const T fill = from_f32<T>(LOG ? neg_inf() : 0.0f);
            Pack<T, N> f;
#pragma unroll
            for (int k = 0; k < N; ++k) f.v[k] = fill;
            for (u32 p = tid; p < packs; p += FOIL_BLOCK) yv[p] = f;
            for (u32 c = packs * N + tid; c < cols; c += FOIL_BLOCK) yr[c] = fill;
            continue;
        }
        // The CPU's formulas: exp(v - max) · (1/sum), and v - max - ln(sum).
        const float inv = 1.0f / s, lse = logf(s);
        auto f = [&](float v) { return LOG ? (v - m) - lse : expf(v - m) * inv; };
#pragma unroll 2
        for (u32 p = tid; p < packs; p += FOIL_BLOCK) {
            const Pack<T, N> pk = xv[p];
            Pack<T, N> o;
#pragma unroll
            for (int k = 0; k < N; ++k) o.v[k] = from_f32<T>(f(to_f32(pk.v[k])));
            yv[p] = o;
        }
        for (u32 c = packs * N + tid; c < cols; c += FOIL_BLOCK) yr[c] = from_f32<T>(f(to_f32(xr[c])));
    }
}

// ---- entry points ------------------------------------------------------------------------------

template <typename T>
__device__ __forceinline__ void reduce_entry(const T* __restrict__ x, T* __restrict__ y, u32 outer, u32 len, u32 inner,
                                             int op) {
    if (op == 2) {
        reduce_axis<T, MaxOp>(x, outer, len, inner, ReduceOut<T>{y, 1.0f});
    } else {
        // Mean multiplies by 1/len as the CPU does (len 0 gives 0·inf = NaN there too).
        reduce_axis<T, SumOp>(x, outer, len, inner, ReduceOut<T>{y, op == 1 ? 1.0f / (float)len : 1.0f});
    }
}

#define FOIL_REDUCE_ENTRIES(NAME, T)                                                                           \
    extern "C" __global__ void __launch_bounds__(FOIL_BLOCK)                                                   \
        reduce_##NAME(const T* __restrict__ x, T* __restrict__ y, u32 outer, u32 len, u32 inner, int op) {     \
        reduce_entry<T>(x, y, outer, len, inner, op);                                                          \
    }                                                                                                          \
    extern "C" __global__ void __launch_bounds__(FOIL_BLOCK)                                                   \
        argmax_##NAME(const T* __restrict__ x, u32* __restrict__ y, u32 outer, u32 len, u32 inner) {           \
        reduce_axis<T, ArgMaxOp>(x, outer, len, inner, ArgMaxOut<T>{y});                                       \
    }                                                                                                          \
    extern "C" __global__ void __launch_bounds__(FOIL_BLOCK)                                                   \
        softmax_##NAME(const T* __restrict__ x, T* __restrict__ y, u32 rows, u32 cols, int log) {              \
        if (log)                                                                                               \
            softmax_impl<T, true>(x, y, rows, cols);                                                           \
        else                                                                                                   \
            softmax_impl<T, false>(x, y, rows, cols);                                                          \
    }

FOIL_REDUCE_ENTRIES(f32, float)
FOIL_REDUCE_ENTRIES(f16, f16)
FOIL_REDUCE_ENTRIES(bf16, bf16)
