//! Single-precision GEMM, GotoBLAS/BLIS style.
//!
//! `k` is cut into slabs of at most KC and `n` into blocks of at most NC. Each KC×NC slab of
//! op(B) is packed once into NR-wide micro-panels (the slab lives in L3, one micro-panel in
//! L1); each thread packs its block of op(A), at most MC×KC, into MR-tall micro-panels (L2).
//! A 6×16 AVX2/FMA micro-kernel keeps the C tile in 12 ymm accumulators. Packing resolves
//! the transposes and zero-pads ragged edges so the kernel never branches on shape; partial
//! tiles go back to C through a stack tile. Threads (rayon) take equal row ranges of C, or
//! row × column ranges when there are too few rows to keep every thread busy. When all of C's
//! rows fit one A block, each B micro-panel is packed by its user just before use (hot in L1)
//! instead of into a shared slab. One row or column of C is a matrix-vector product and skips
//! packing altogether.
//!
//! Measured on the 2-core AMD EPYC (Zen 3, AVX2 + FMA) dev box, both cores, best of runs:
//! 1024³ 184 GFLOP/s (86 on one core; MKL via PyTorch ≈ 140), 4096×320×320 185,
//! 4096×1280×320 189, 4096×320×1280 with B transposed 176, 64×4096×576 148. The portable
//! kernel (SSE2 auto-vectorised) gets 55 at 1024³.

use std::cell::Cell;
use std::sync::OnceLock;

use rayon::prelude::*;

/// Micro-tile rows: 6 broadcasts of A per step.
const MR: usize = 6;
/// Micro-tile columns: two ymm vectors of B per step.
const NR: usize = 16;
/// Depth of a packed slab: one B micro-panel (384×16 floats = 24 KiB) stays in the 32 KiB L1.
/// 256..512 measure within noise; 384 keeps k = 320 (common in UNets) in one slab.
const KC: usize = 384;
/// Rows of a packed A block (MR multiple): 144×384 floats = 216 KiB of the 512 KiB L2.
const MC: usize = 144;
/// Columns of a packed B slab (NR multiple): 384×4080 floats ≈ 6 MiB, well inside the L3.
const NC: usize = 4080;
/// Below this many multiply-adds the whole product runs on the calling thread.
const PAR_MIN: usize = 64 * 64 * 64;

/// `kc` steps of a packed MR×kc A panel times a packed kc×NR B panel into the C tile at `c`
/// (row stride `ldc`), of which only the top-left `mr`×`nr` is written; added to C when `add`.
type Kernel = unsafe fn(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, tile: Tile);

/// The part of a micro-tile that lies inside C and whether to add to what is there.
#[derive(Clone, Copy)]
struct Tile {
    mr: usize,
    nr: usize,
    add: bool,
}

/// A 64-byte-aligned run of floats, so packed panels start on cache lines.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

thread_local! {
    /// Pack buffers reused across calls. They are taken out while in use, so a nested call
    /// (rayon may run another GEMM on this thread while it waits) just allocates its own.
    static PACK_A: Cell<Vec<Line>> = const { Cell::new(Vec::new()) };
    static PACK_B: Cell<Vec<Line>> = const { Cell::new(Vec::new()) };
}

/// `len` floats of `buf`, grown as needed.
fn floats(buf: &mut Vec<Line>, len: usize) -> &mut [f32] {
    let lines = len.div_ceil(16);
    if buf.len() < lines {
        buf.resize(lines, Line([0.0; 16]));
    }
    // SAFETY: `Line` is `repr(C)` over `[f32; 16]` with no padding, so the first `lines`
    // elements are `16 * lines >= len` initialised, contiguous floats borrowed from `buf`.
    unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<f32>(), len) }
}

/// C (m×n, row-major, contiguous) = op(A)·op(B) (+ C when accumulate).
/// A is m×k row-major, or k×m when trans_a; B is k×n row-major, or n×k when trans_b.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    trans_a: bool,
    b: &[f32],
    trans_b: bool,
    c: &mut [f32],
    accumulate: bool,
) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n, "sgemm: buffer too small");
    let c = &mut c[..m * n];
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.fill(0.0);
        }
        return;
    }
    let threads = if m * n * k < PAR_MIN { 1 } else { rayon::current_num_threads() };
    // One row or column of C: packing would cost as much as the arithmetic, so stream the
    // matrix once as a matrix-vector product instead.
    if m == 1 {
        return gemv(b, trans_b, a, c, accumulate, threads);
    }
    if n == 1 {
        return gemv(a, !trans_a, b, c, accumulate, threads);
    }
    let a = Operand { data: a, trans: trans_a, rows: m, cols: k };
    let b = Operand { data: b, trans: trans_b, rows: k, cols: n };
    // Equal slabs rather than full ones plus a sliver: no thread idles on a thin last slab.
    let nc = n.div_ceil(n.div_ceil(NC)).next_multiple_of(NR);
    let kc = k.div_ceil(k.div_ceil(KC));
    let grid = Grid::new(m, nc, threads);
    let mut pack_b = PACK_B.take();
    for j0 in (0..n).step_by(nc) {
        let nc = nc.min(n - j0);
        for p0 in (0..k).step_by(kc) {
            let kc = kc.min(k - p0);
            // Several row blocks share one packed slab; a single row block packs each B
            // micro-panel just before using it, while it is hot in L1.
            let packed_b = (grid.row_blocks > 1).then(|| {
                let bp = floats(&mut pack_b, kc * nc.next_multiple_of(NR));
                let pack = |(q, panel): (usize, &mut [f32])| pack_b_panel(&b, p0, kc, j0 + q * NR, panel);
                if threads > 1 {
                    bp.par_chunks_mut(NR * kc).enumerate().for_each(pack);
                } else {
                    bp.chunks_mut(NR * kc).enumerate().for_each(pack);
                }
                &*bp
            });
            let slab = Slab { a: &a, b: &b, packed_b, p0, kc, j0, nc, add: accumulate || p0 > 0 };
            grid.run(&slab, c, n, threads);
        }
    }
    PACK_B.set(pack_b);
}

/// y (+)= M·x for the row-major matrix `mat`, stored as len(y)×len(x) when `dot_rows` (each
/// y is a dot product with a row) and as len(x)×len(y) otherwise (y sums scaled rows).
fn gemv(mat: &[f32], dot_rows: bool, x: &[f32], y: &mut [f32], accumulate: bool, threads: usize) {
    let (nx, ny) = (x.len(), y.len());
    // Chunks of y, several per thread; whole cache lines of it in the row-sum form.
    let chunk = ny.div_ceil(4 * threads).next_multiple_of(16);
    let part = |(t, ys): (usize, &mut [f32])| {
        let j0 = t * chunk;
        if dot_rows {
            for (i, yv) in ys.iter_mut().enumerate() {
                let v = dot(&mat[(j0 + i) * nx..][..nx], x);
                *yv = if accumulate { *yv + v } else { v };
            }
        } else {
            if !accumulate {
                ys.fill(0.0);
            }
            // Four rows per pass over y: a quarter of the loads and stores of y.
            let (quads, rest) = x.as_chunks::<4>();
            let len = ys.len();
            let row = |l: usize| &mat[l * ny + j0..][..len];
            for (q, xq) in quads.iter().enumerate() {
                let rows: [&[f32]; 4] = std::array::from_fn(|r| row(4 * q + r));
                for (j, yv) in ys.iter_mut().enumerate() {
                    *yv += xq[0] * rows[0][j] + xq[1] * rows[1][j] + xq[2] * rows[2][j] + xq[3] * rows[3][j];
                }
            }
            for (l, &xv) in (4 * quads.len()..).zip(rest) {
                ys.iter_mut().zip(row(l)).for_each(|(yv, &mv)| *yv += xv * mv);
            }
        }
    };
    if threads > 1 {
        y.par_chunks_mut(chunk).enumerate().for_each(part);
    } else {
        y.chunks_mut(chunk).enumerate().for_each(part);
    }
}

/// Dot product in 16 independent lanes, so it vectorises without reassociation.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let (ac, ar) = a.as_chunks::<16>();
    let (bc, br) = b.as_chunks::<16>();
    let mut acc = [0.0f32; 16];
    for (x, y) in ac.iter().zip(bc) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + ar.iter().zip(br).map(|(x, y)| x * y).sum::<f32>()
}

/// A row-major matrix as stored, read as its transpose when `trans`; `rows`×`cols` is the
/// shape after the transpose.
struct Operand<'a> {
    data: &'a [f32],
    trans: bool,
    rows: usize,
    cols: usize,
}

impl Operand<'_> {
    /// Row `i` of the operand from column `j0`, `len` long, when stored that way (not `trans`).
    fn row(&self, i: usize, j0: usize, len: usize) -> &[f32] {
        &self.data[i * self.cols + j0..][..len]
    }

    /// Column `j` of the operand from row `i0`, `len` long, when stored transposed.
    fn col(&self, j: usize, i0: usize, len: usize) -> &[f32] {
        &self.data[j * self.rows + i0..][..len]
    }
}

/// Packs rows `i0..i0 + mc`, columns `p0..p0 + kc` of op(A) into MR-row micro-panels, each
/// `kc` steps of MR consecutive floats; rows past `mc` are zero.
fn pack_a_block(a: &Operand, i0: usize, mc: usize, p0: usize, kc: usize, dst: &mut [f32]) {
    for (q, panel) in dst.chunks_exact_mut(MR * kc).enumerate() {
        let rows = MR.min(mc - q * MR);
        let i = i0 + q * MR;
        let (steps, _) = panel.as_chunks_mut::<MR>();
        if a.trans {
            for (l, step) in steps.iter_mut().enumerate() {
                let src = a.col(p0 + l, i, rows);
                match <&[f32; MR]>::try_from(src) {
                    Ok(full) => *step = *full,
                    Err(_) => {
                        step[..rows].copy_from_slice(src);
                        step[rows..].fill(0.0);
                    }
                }
            }
        } else {
            let zero = [0.0; 0];
            let srcs: [&[f32]; MR] = std::array::from_fn(|r| if r < rows { a.row(i + r, p0, kc) } else { &zero });
            for (l, step) in steps.iter_mut().enumerate() {
                *step = std::array::from_fn(|r| srcs[r].get(l).copied().unwrap_or(0.0));
            }
        }
    }
}

/// Packs rows `p0..p0 + kc`, columns `j..j + NR` of op(B) into one micro-panel of `kc` steps
/// of NR consecutive floats; columns past op(B)'s last are zero.
fn pack_b_panel(b: &Operand, p0: usize, kc: usize, j: usize, dst: &mut [f32]) {
    let cols = NR.min(b.cols - j);
    let (steps, _) = dst[..NR * kc].as_chunks_mut::<NR>();
    if b.trans {
        let zero = [0.0; 0];
        let srcs: [&[f32]; NR] = std::array::from_fn(|c| if c < cols { b.col(j + c, p0, kc) } else { &zero });
        for (l, step) in steps.iter_mut().enumerate() {
            *step = std::array::from_fn(|c| srcs[c].get(l).copied().unwrap_or(0.0));
        }
    } else {
        for (l, step) in steps.iter_mut().enumerate() {
            let src = b.row(p0 + l, j, cols);
            match <&[f32; NR]>::try_from(src) {
                Ok(full) => *step = *full,
                Err(_) => {
                    step[..cols].copy_from_slice(src);
                    step[cols..].fill(0.0);
                }
            }
        }
    }
}

/// How one KC×NC slab's share of C is cut into tasks: `row_blocks` × `col_blocks` near-equal
/// ranges of whole micro-panels.
struct Grid {
    m: usize,
    row_blocks: usize,
    col_blocks: usize,
}

impl Grid {
    fn new(m: usize, nc: usize, threads: usize) -> Self {
        let m_panels = m.div_ceil(MR);
        let mut row_blocks = m_panels.div_ceil(MC / MR);
        let mut col_blocks = 1;
        if threads > 1 {
            // Enough rows: split them evenly (one packed A block per task). Too few to balance:
            // split columns too, so every thread gets the same number of tiles.
            if m_panels >= 8 * threads {
                row_blocks = row_blocks.next_multiple_of(threads);
            } else {
                col_blocks = threads.min(nc.div_ceil(NR));
            }
        }
        Grid { m, row_blocks, col_blocks }
    }

    /// Runs every task of `slab` on C (m × `ldc`), in parallel when `threads > 1`.
    fn run(&self, slab: &Slab, c: &mut [f32], ldc: usize, threads: usize) {
        let (m_panels, n_panels) = (self.m.div_ceil(MR), slab.nc.div_ceil(NR));
        let range = |total: usize, parts: usize, i: usize| (total * i / parts, total * (i + 1) / parts);
        let cp = CPtr(c.as_mut_ptr());
        let task = |t: usize| {
            let (q0, q1) = range(m_panels, self.row_blocks, t / self.col_blocks);
            let (r0, r1) = range(n_panels, self.col_blocks, t % self.col_blocks);
            let (i0, i1) = (q0 * MR, (q1 * MR).min(self.m));
            // SAFETY: `cp` is the m×ldc C borrowed mutably for this call; task `t` writes only
            // rows i0..i1 × columns j0 + r0·NR .. j0 + r1·NR (clipped to C), and the ranges of
            // distinct tasks are disjoint.
            unsafe { slab.block(i0, i1 - i0, r0, r1, cp, ldc) };
        };
        let tasks = self.row_blocks * self.col_blocks;
        if threads > 1 && tasks > 1 {
            (0..tasks).into_par_iter().for_each(task);
        } else {
            (0..tasks).for_each(task);
        }
    }
}

/// Columns `j0..j0 + nc`, depth `p0..p0 + kc` of the product, with op(B) either packed for
/// the whole slab or (`packed_b` is `None`) packed a micro-panel at a time by each task.
struct Slab<'a> {
    a: &'a Operand<'a>,
    b: &'a Operand<'a>,
    packed_b: Option<&'a [f32]>,
    p0: usize,
    kc: usize,
    j0: usize,
    nc: usize,
    add: bool,
}

/// C's base pointer, shared by tasks that write disjoint tiles of it.
#[derive(Clone, Copy)]
struct CPtr(*mut f32);
// SAFETY: every task writes a distinct set of C tiles (see `Grid::run`).
unsafe impl Send for CPtr {}
// SAFETY: as above; the pointer itself is only copied.
unsafe impl Sync for CPtr {}

impl Slab<'_> {
    /// Packs rows `i0..i0 + mc` of op(A) and multiplies them by B micro-panels `r0..r1`.
    ///
    /// # Safety
    /// `c` must point to an m×`ldc` row-major C with no other writer to the touched tiles.
    unsafe fn block(&self, i0: usize, mc: usize, r0: usize, r1: usize, c: CPtr, ldc: usize) {
        let kernel = kernel();
        let kc = self.kc;
        let mut pack = PACK_A.take();
        let a_len = kc * mc.next_multiple_of(MR);
        // The B panel goes after A on a cache line: the kernel loads it with aligned loads.
        let b_at = a_len.next_multiple_of(16);
        let (ap, b_panel) = floats(&mut pack, b_at + NR * kc).split_at_mut(b_at);
        let ap = &mut ap[..a_len];
        pack_a_block(self.a, i0, mc, self.p0, kc, ap);
        for r in r0..r1 {
            let j = r * NR;
            let bp = match self.packed_b {
                Some(slab) => &slab[r * NR * kc..][..NR * kc],
                None => {
                    pack_b_panel(self.b, self.p0, kc, self.j0 + j, b_panel);
                    &*b_panel
                }
            };
            for (q, a_panel) in ap.chunks_exact(MR * kc).enumerate() {
                let i = q * MR;
                let tile = Tile { mr: MR.min(mc - i), nr: NR.min(self.nc - j), add: self.add };
                // SAFETY: the panels hold kc packed steps, `bp` is 64-byte aligned (slab panels
                // are 16·kc floats apart, `b_panel` sits at a multiple of 16), and the tile
                // clipped to `tile` lies in this task's part of C (the caller's contract).
                unsafe {
                    let ct = c.0.add((i0 + i) * ldc + self.j0 + j);
                    kernel(kc, a_panel.as_ptr(), bp.as_ptr(), ct, ldc, tile);
                }
            }
        }
        PACK_A.set(pack);
    }
}

/// The fastest micro-kernel this CPU runs, picked once.
fn kernel() -> Kernel {
    static KERNEL: OnceLock<Kernel> = OnceLock::new();
    *KERNEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if super::has_avx2_fma() {
            return avx2::kernel_6x16;
        }
        kernel_portable
    })
}

/// Writes the MR×NR `acc` tile to C, clipped to `tile`.
///
/// # Safety
/// `c` must be valid for `tile.mr` rows of `tile.nr` floats at row stride `ldc`.
unsafe fn store_partial(acc: &[f32; MR * NR], c: *mut f32, ldc: usize, tile: Tile) {
    for r in 0..tile.mr {
        // SAFETY: row `r` < mr of the tile, `nr` floats long, is valid by the contract above.
        let row = unsafe { std::slice::from_raw_parts_mut(c.add(r * ldc), tile.nr) };
        let src = &acc[r * NR..][..tile.nr];
        if tile.add {
            row.iter_mut().zip(src).for_each(|(d, s)| *d += s);
        } else {
            row.copy_from_slice(src);
        }
    }
}

/// Plain-Rust micro-kernel for CPUs without AVX2/FMA; the fixed-size loops auto-vectorise.
///
/// # Safety
/// `a` and `b` must hold `kc` packed steps (`b` 32-byte aligned); `c` as for [`store_partial`].
unsafe fn kernel_portable(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, tile: Tile) {
    // SAFETY: the caller guarantees kc packed steps of each panel.
    let (a, b) = unsafe { (std::slice::from_raw_parts(a, MR * kc), std::slice::from_raw_parts(b, NR * kc)) };
    let mut acc = [0.0f32; MR * NR];
    for (al, bl) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
        for (row, &av) in acc.chunks_exact_mut(NR).zip(al) {
            for (d, &bv) in row.iter_mut().zip(bl) {
                *d += av * bv;
            }
        }
    }
    // SAFETY: `c` is valid for the tile by the caller's contract.
    unsafe { store_partial(&acc, c, ldc, tile) };
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{store_partial, Tile, MR, NR};

    /// The 6×16 AVX2/FMA micro-kernel: per step 2 loads of B, 6 broadcasts of A, 12 FMAs.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; `a`, `b`, `c` as for `kernel_portable`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn kernel_6x16(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, tile: Tile) {
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        for l in 0..kc {
            // SAFETY: step `l` < kc of the B panel: NR floats, 32-byte aligned like the panel.
            let (b0, b1) = unsafe { (_mm256_load_ps(b.add(l * NR)), _mm256_load_ps(b.add(l * NR + 8))) };
            for (r, acc) in acc.iter_mut().enumerate() {
                // SAFETY: step `l` < kc of the A panel holds MR floats.
                let av = unsafe { _mm256_broadcast_ss(&*a.add(l * MR + r)) };
                acc[0] = _mm256_fmadd_ps(av, b0, acc[0]);
                acc[1] = _mm256_fmadd_ps(av, b1, acc[1]);
            }
        }
        if tile.mr == MR && tile.nr == NR {
            for (r, acc) in acc.iter().enumerate() {
                // SAFETY: a whole tile lies in C, so row `r` has NR floats at c + r·ldc.
                unsafe {
                    let p = c.add(r * ldc);
                    let (mut v0, mut v1) = (acc[0], acc[1]);
                    if tile.add {
                        v0 = _mm256_add_ps(v0, _mm256_loadu_ps(p));
                        v1 = _mm256_add_ps(v1, _mm256_loadu_ps(p.add(8)));
                    }
                    _mm256_storeu_ps(p, v0);
                    _mm256_storeu_ps(p.add(8), v1);
                }
            }
        } else {
            let mut buf = [0.0f32; MR * NR];
            for (row, acc) in buf.chunks_exact_mut(NR).zip(&acc) {
                // SAFETY: `row` is NR = 16 floats.
                unsafe {
                    _mm256_storeu_ps(row.as_mut_ptr(), acc[0]);
                    _mm256_storeu_ps(row.as_mut_ptr().add(8), acc[1]);
                }
            }
            // SAFETY: `c` is valid for the clipped tile by the caller's contract.
            unsafe { store_partial(&buf, c, ldc, tile) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{floats, kernel, kernel_portable, sgemm, Kernel, Tile, MR, NR};

    /// Deterministic values in [-1, 1) from a 64-bit LCG.
    fn random(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 23) as f32) - 1.0
            })
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn reference(m: usize, n: usize, k: usize, a: &[f32], ta: bool, b: &[f32], tb: bool, c0: &[f32]) -> Vec<f64> {
        let mut out: Vec<f64> = c0.iter().map(|&v| v as f64).collect();
        for i in 0..m {
            for j in 0..n {
                for l in 0..k {
                    let av = if ta { a[l * m + i] } else { a[i * k + l] };
                    let bv = if tb { b[j * k + l] } else { b[l * n + j] };
                    out[i * n + j] += av as f64 * bv as f64;
                }
            }
        }
        out
    }

    fn check(m: usize, n: usize, k: usize) {
        let a = random(m * k, 1 + m as u64);
        let b = random(k * n, 2 + n as u64);
        let init = random(m * n, 3 + k as u64);
        for (ta, tb, acc) in (0..8).map(|f| (f & 1 != 0, f & 2 != 0, f & 4 != 0)) {
            let mut c = if acc { init.clone() } else { vec![f32::NAN; m * n] };
            sgemm(m, n, k, &a, ta, &b, tb, &mut c, acc);
            let zero = vec![0.0; m * n];
            let want = reference(m, n, k, &a, ta, &b, tb, if acc { &init } else { &zero });
            let scale = want.iter().fold(1e-30f64, |s, v| s.max(v.abs()));
            let err = c.iter().zip(&want).fold(0.0f64, |e, (&g, &w)| e.max((g as f64 - w).abs()));
            assert!(err / scale < 1e-5, "m={m} n={n} k={k} ta={ta} tb={tb} acc={acc}: rel err {}", err / scale);
        }
    }

    #[test]
    fn kernels_on_edge_tiles() {
        // The portable kernel only runs on CPUs without AVX2, so check it here directly.
        let kc = 37;
        let ldc = NR + 5;
        let mut buf = Vec::new();
        let (b, a) = floats(&mut buf, (NR + MR) * kc).split_at_mut(NR * kc);
        a.copy_from_slice(&random(MR * kc, 4));
        b.copy_from_slice(&random(NR * kc, 5));
        let init = random(MR * ldc, 6);
        for (mr, nr, add) in
            [(MR, NR, false), (MR, NR, true), (1, 1, false), (4, 9, true), (MR, 3, false), (2, NR, true)]
        {
            for kern in [kernel(), kernel_portable as Kernel] {
                let mut c = init.clone();
                // SAFETY: a and b hold kc packed steps (b 64-byte aligned), c is MR rows of ldc.
                unsafe { kern(kc, a.as_ptr(), b.as_ptr(), c.as_mut_ptr(), ldc, Tile { mr, nr, add }) };
                for (i, (&got, &old)) in c.iter().zip(&init).enumerate() {
                    let (r, j) = (i / ldc, i % ldc);
                    let want = if r < mr && j < nr {
                        let dot: f64 = (0..kc).map(|l| a[l * MR + r] as f64 * b[l * NR + j] as f64).sum();
                        dot + if add { old as f64 } else { 0.0 }
                    } else {
                        old as f64
                    };
                    assert!((got as f64 - want).abs() < 1e-4, "tile {mr}x{nr} add={add} at ({r}, {j})");
                }
            }
        }
    }

    #[test]
    fn tiny_and_degenerate() {
        for (m, n, k) in [(1, 1, 1), (1, 17, 3), (7, 5, 0), (0, 3, 4), (3, 0, 4), (1, 1, 300), (5, 1, 9), (1, 40, 1)] {
            check(m, n, k);
        }
    }

    #[test]
    fn odd_shapes() {
        for (m, n, k) in [(13, 29, 31), (6, 16, 8), (12, 32, 1), (67, 130, 259), (145, 33, 17), (2, 300, 70)] {
            check(m, n, k);
        }
    }

    #[test]
    fn blocked_and_parallel() {
        // Several KC slabs, several MC blocks and a column split for few rows.
        for (m, n, k) in [(300, 200, 600), (40, 700, 300), (160, 4100, 20), (1, 4100, 300), (700, 1, 500)] {
            check(m, n, k);
        }
    }
}
