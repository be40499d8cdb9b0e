//! The gradients of the 2-D convolution of cpu/conv.rs, by the same im2col + GEMM.
//!
//! Per group, with cols the im2col unrolling of the input (cig·kh·kw rows, one column per
//! output pixel) and dY the upstream gradient (cog rows, the same columns):
//!   input grad   cols = W_gᵀ · dY, folded back onto the input by col2im (im2col's adjoint);
//!   weight grad  dW_g = dY · colsᵀ, accumulated over the batch.
//! Both GEMMs take their columns a chunk of output pixels at a time: several whole images side by
//! side while their columns fit COLS_MAX (so the 7×7 maps of a ResNet's last stage still make one
//! long GEMM, not one short one per image), else a band of one image's output rows. A chunk that
//! is one whole image reads dY in place; a 1×1, stride-1, unpadded conv then needs no unrolling
//! at all. Groups run in parallel with each other when they are small or divide evenly among the
//! threads (depthwise); otherwise one at a time, with im2col, col2im and the GEMM each parallel.

use std::cell::Cell;

use rayon::prelude::*;

use super::conv::{im2col, COLS_MAX, SMALL_STEP};
use super::gemm::sgemm;
use crate::device::contract::Conv2dParams;

thread_local! {
    /// Unrolled columns and packed upstream gradients, reused across calls; taken out while in
    /// use so nested calls are safe.
    static COLS: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    static PACK: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// GEMM columns past which joining more images gains little (packing and C traffic no longer
/// dominate the multiply-adds).
const WIDE_ENOUGH: usize = 512;

/// Output rows `oy0..oy0 + rows` of image `img`: a run of the gradients' GEMM columns.
#[derive(Clone, Copy)]
struct Segment {
    img: usize,
    oy0: usize,
    rows: usize,
}

/// The output pixels cut into chunks whose unrolled columns (`depth` floats each) fit COLS_MAX:
/// equal runs of whole images when one image fits, else bands of one image's rows. A 1×1,
/// stride-1, unpadded conv joins images only until the GEMM is WIDE_ENOUGH: one image alone
/// needs no copies.
fn chunks(p: &Conv2dParams, depth: usize) -> Vec<Vec<Segment>> {
    let hw_out = p.h_out * p.w_out;
    let mut per_image = COLS_MAX / (depth * hw_out).max(1);
    if one_by_one(p) {
        per_image = per_image.min(WIDE_ENOUGH.div_ceil(hw_out.max(1)));
    }
    if per_image >= 1 {
        let size = p.n.div_ceil(p.n.div_ceil(per_image).max(1)).max(1);
        let whole = |img| Segment { img, oy0: 0, rows: p.h_out };
        (0..p.n).step_by(size).map(|i0| (i0..(i0 + size).min(p.n)).map(whole).collect()).collect()
    } else {
        let band = (COLS_MAX / (depth * p.w_out).max(1)).clamp(1, p.h_out);
        (0..p.n)
            .flat_map(|img| {
                (0..p.h_out).step_by(band).map(move |oy0| vec![Segment { img, oy0, rows: band.min(p.h_out - oy0) }])
            })
            .collect()
    }
}

/// Columns of a chunk.
fn width(chunk: &[Segment], p: &Conv2dParams) -> usize {
    chunk.iter().map(|s| s.rows * p.w_out).sum()
}

/// The chunk is one whole image, whose group's dY is a contiguous cog × h_out·w_out matrix.
fn whole_image(chunk: &[Segment], p: &Conv2dParams) -> Option<usize> {
    (chunk.len() == 1 && chunk[0].rows == p.h_out).then_some(chunk[0].img)
}

fn one_by_one(p: &Conv2dParams) -> bool {
    p.kh == 1 && p.kw == 1 && p.stride == (1, 1) && p.padding == (0, 0)
}

/// Group g's upstream gradient over `chunk` as a cog × width matrix: in place for a whole image,
/// else copied into `pack`.
fn dy_of<'a>(dy: &'a [f32], p: &Conv2dParams, g: usize, chunk: &[Segment], pack: &'a mut Vec<f32>) -> &'a [f32] {
    let (cog, hw_out) = (p.c_out / p.groups, p.h_out * p.w_out);
    let plane = |img: usize, co: usize| (img * p.c_out + g * cog + co) * hw_out;
    if let Some(img) = whole_image(chunk, p) {
        return &dy[plane(img, 0)..][..cog * hw_out];
    }
    let width = width(chunk, p);
    pack.resize(cog * width, 0.0);
    for (co, row) in pack.chunks_exact_mut(width).enumerate() {
        let mut off = 0;
        for s in chunk {
            let n = s.rows * p.w_out;
            row[off..off + n].copy_from_slice(&dy[plane(s.img, co) + s.oy0 * p.w_out..][..n]);
            off += n;
        }
    }
    pack
}

/// Runs `group(parallel, (g, out_g))` over the groups' `per_group`-long chunks of `out`: all at
/// once when each is small or they divide evenly among the threads, else one at a time, each
/// parallel inside.
fn each_group(p: &Conv2dParams, out: &mut [f32], per_group: usize, group: impl Fn(bool, (usize, &mut [f32])) + Sync) {
    let depth = p.c_in / p.groups * p.kh * p.kw;
    let work = p.c_out / p.groups * depth * p.n * p.h_out * p.w_out;
    let by_group = work < SMALL_STEP || p.groups.is_multiple_of(rayon::current_num_threads());
    if p.groups > 1 && by_group {
        out.par_chunks_mut(per_group).enumerate().for_each(|s| group(false, s));
    } else {
        out.chunks_mut(per_group).enumerate().for_each(|s| group(true, s));
    }
}

/// dL/dx (n, c_in, h, w) from dY (n, c_out, h_out, w_out) and W (c_out, c_in/groups, kh, kw).
pub fn input_grad(dy: &[f32], w: &[f32], p: &Conv2dParams) -> Vec<f32> {
    let (cig, cog, hw) = (p.c_in / p.groups, p.c_out / p.groups, p.h * p.w);
    let depth = cig * p.kh * p.kw;
    let image = cig * hw;
    let mut dx = vec![0.0f32; p.n * p.c_in * hw];
    if dx.is_empty() {
        return dx;
    }
    let chunks = chunks(p, depth);
    // Each group writes its own (n, cig, h, w) block; with several groups those blocks
    // interleave in dx, so they are computed group-major and moved into place after.
    let group = |parallel: bool, (g, dx_g): (usize, &mut [f32])| {
        input_grad_group(dy, &w[g * cog * depth..][..cog * depth], p, g, dx_g, &chunks, parallel);
    };
    if p.groups == 1 {
        group(true, (0, &mut dx));
        return dx;
    }
    let mut by_group = vec![0.0f32; dx.len()];
    each_group(p, &mut by_group, p.n * image, group);
    for (img, out) in dx.chunks_exact_mut(p.c_in * hw).enumerate() {
        for (g, o) in out.chunks_exact_mut(image).enumerate() {
            o.copy_from_slice(&by_group[(g * p.n + img) * image..][..image]);
        }
    }
    dx
}

/// Group g's input gradient `dx_g` (n, cig, h, w), zero on entry.
fn input_grad_group(
    dy: &[f32],
    w_g: &[f32],
    p: &Conv2dParams,
    g: usize,
    dx_g: &mut [f32],
    chunks: &[Vec<Segment>],
    parallel: bool,
) {
    let (cig, cog) = (p.c_in / p.groups, p.c_out / p.groups);
    let depth = cig * p.kh * p.kw;
    let image = cig * p.h * p.w;
    let (mut cols, mut pack) = (COLS.take(), PACK.take());
    for chunk in chunks {
        let width = width(chunk, p);
        let dy_c = dy_of(dy, p, g, chunk, &mut pack);
        if let (Some(img), true) = (whole_image(chunk, p), one_by_one(p)) {
            sgemm(cig, width, cog, w_g, true, dy_c, false, &mut dx_g[img * image..][..image], false);
            continue;
        }
        cols.resize(depth * width, 0.0);
        sgemm(depth, width, cog, w_g, true, dy_c, false, &mut cols, false);
        let mut off = 0;
        for s in chunk {
            col2im(&cols[off..], width, p, s.oy0, s.rows, &mut dx_g[s.img * image..][..image], parallel);
            off += s.rows * p.w_out;
        }
    }
    COLS.set(cols);
    PACK.set(pack);
}

/// Adds the unrolled columns of output rows `oy0..oy0 + rows` (row (ci, ky, kx) of `cols` starts
/// at (ci·kh + ky)·kw + kx times `pitch`) onto one image's group input gradient `dx`
/// (cig × h × w), each to the input pixel im2col read it from: im2col's adjoint.
fn col2im(cols: &[f32], pitch: usize, p: &Conv2dParams, oy0: usize, rows: usize, dx: &mut [f32], parallel: bool) {
    let (khw, n) = (p.kh * p.kw, rows * p.w_out);
    let (sw, pw) = (p.stride.1, p.padding.1);
    let fold = |(ci, plane): (usize, &mut [f32])| {
        for r in 0..khw {
            let (ky, kx) = (r / p.kw, r % p.kw);
            let src = &cols[(ci * khw + r) * pitch..][..n];
            let off = kx * p.dilation.1;
            // Output columns ox in lo..hi land inside the row: 0 <= ox·sw + off − pw < w.
            let lo = pw.saturating_sub(off).div_ceil(sw).min(p.w_out);
            let hi = (p.w + pw).saturating_sub(off).div_ceil(sw).clamp(lo, p.w_out);
            if lo == hi {
                continue;
            }
            let start = lo * sw + off - pw;
            for (oy, s) in (oy0..).zip(src.chunks_exact(p.w_out)) {
                // Rows above the input wrap to huge values and fail the bound check with those below.
                let iy = (oy * p.stride.0 + ky * p.dilation.0).wrapping_sub(p.padding.0);
                if iy >= p.h {
                    continue;
                }
                let dst = &mut plane[iy * p.w..][..p.w];
                if sw == 1 {
                    dst[start..start + hi - lo].iter_mut().zip(&s[lo..hi]).for_each(|(d, &v)| *d += v);
                } else {
                    dst[start..].iter_mut().step_by(sw).zip(&s[lo..hi]).for_each(|(d, &v)| *d += v);
                }
            }
        }
    };
    if parallel {
        dx.par_chunks_mut(p.h * p.w).enumerate().for_each(fold);
    } else {
        dx.chunks_mut(p.h * p.w).enumerate().for_each(fold);
    }
}

/// dL/dW (c_out, c_in/groups, kh, kw) from dY (n, c_out, h_out, w_out) and x (n, c_in, h, w).
pub fn weight_grad(dy: &[f32], x: &[f32], p: &Conv2dParams) -> Vec<f32> {
    let (cig, cog) = (p.c_in / p.groups, p.c_out / p.groups);
    let depth = cig * p.kh * p.kw;
    let mut dw = vec![0.0f32; p.c_out * depth];
    if dw.is_empty() {
        return dw;
    }
    let chunks = chunks(p, depth);
    // dW is (groups, cog, depth): each group owns a contiguous block.
    each_group(p, &mut dw, cog * depth, |parallel, (g, dw_g)| {
        weight_grad_group(dy, x, p, g, dw_g, &chunks, parallel);
    });
    dw
}

/// Group g's weight gradient `dw_g` (cog × cig·kh·kw), summed over every chunk.
fn weight_grad_group(
    dy: &[f32],
    x: &[f32],
    p: &Conv2dParams,
    g: usize,
    dw_g: &mut [f32],
    chunks: &[Vec<Segment>],
    parallel: bool,
) {
    let (cig, cog, hw) = (p.c_in / p.groups, p.c_out / p.groups, p.h * p.w);
    let depth = cig * p.kh * p.kw;
    let x_of = |img: usize| &x[(img * p.c_in + g * cig) * hw..][..cig * hw];
    let (mut cols, mut pack) = (COLS.take(), PACK.take());
    for (i, chunk) in chunks.iter().enumerate() {
        let width = width(chunk, p);
        let dy_c = dy_of(dy, p, g, chunk, &mut pack);
        let x_c = match whole_image(chunk, p) {
            Some(img) if one_by_one(p) => x_of(img),
            _ => {
                cols.resize(depth * width, 0.0);
                let mut off = 0;
                for s in chunk {
                    im2col(x_of(s.img), p, s.oy0, s.rows, &mut cols[off..depth * width], width, parallel);
                    off += s.rows * p.w_out;
                }
                &cols[..depth * width]
            }
        };
        sgemm(cog, depth, width, dy_c, false, x_c, true, dw_g, i > 0);
    }
    COLS.set(cols);
    PACK.set(pack);
}
