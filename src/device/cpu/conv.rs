//! 2-D convolution as im2col + GEMM.
//!
//! For each (image, group) the input patches are unrolled into a column matrix
//! cols[cig·kh·kw × h_out·w_out] and the output planes are W_g[cog × cig·kh·kw] · cols, computed
//! by [`sgemm`] straight into the output. A 1×1, stride-1, unpadded conv needs no unrolling:
//! the input planes already are that matrix. When cols would exceed COLS_MAX floats it is
//! built a band of output rows at a time, bounding memory. (image, group) steps run in parallel
//! with each other when they are small or divide evenly among the threads; otherwise one at a
//! time, with im2col and the GEMM each parallel.
//!
//! Measured on the 2-core AMD EPYC (Zen 3, AVX2 + FMA) dev box, both cores, best of runs:
//! 64→64 3×3 pad 1 on 64×64 135 GFLOP/s (PyTorch ≈ 160), 320→320 3×3 on 32×32 158,
//! batch 8 64→64 3×3 on 32×32 133, 256→256 1×1 on 64×64 160, 3→64 7×7 stride 2 on 224×224
//! 103, depthwise 3×3 64 channels on 56×56 14 (memory bound).

use std::cell::Cell;

use rayon::prelude::*;

use super::gemm::sgemm;
use crate::device::contract::Conv2dParams;

/// Most floats of unrolled columns held at once (8 MiB, a quarter of L3).
pub(super) const COLS_MAX: usize = 1 << 21;
/// (image, group) steps with fewer multiply-adds than this always run in parallel with each
/// other rather than parallelising inside one step.
pub(super) const SMALL_STEP: usize = 1 << 22;

thread_local! {
    /// The im2col buffer, reused across calls; taken out while in use so nested calls are safe.
    static COLS: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// NCHW conv2d, weight (c_out, c_in/groups, kh, kw), optional bias (c_out); output (n, c_out, h_out, w_out).
pub fn conv2d(x: &[f32], w: &[f32], bias: Option<&[f32]>, p: &Conv2dParams) -> Vec<f32> {
    let (cig, cog) = (p.c_in / p.groups, p.c_out / p.groups);
    let hw_out = p.h_out * p.w_out;
    let depth = cig * p.kh * p.kw;
    let mut out = vec![0.0f32; p.n * p.c_out * hw_out];
    if out.is_empty() {
        return out;
    }
    // `out` is (n, groups, cog, h_out·w_out): one chunk per (image, group) step.
    let step = |parallel: bool, (s, out_g): (usize, &mut [f32])| {
        let (img, g) = (s / p.groups, s % p.groups);
        let x_g = &x[(img * p.c_in + g * cig) * p.h * p.w..][..cig * p.h * p.w];
        let w_g = &w[g * cog * depth..][..cog * depth];
        conv_group(x_g, w_g, out_g, p, parallel);
        if let Some(bias) = bias {
            for (plane, &b) in out_g.chunks_exact_mut(hw_out).zip(&bias[g * cog..]) {
                plane.iter_mut().for_each(|v| *v += b);
            }
        }
    };
    // Whole steps per thread beat splitting each one (no per-slab fork-join), when they are
    // small or when they divide evenly among the threads.
    let steps = p.n * p.groups;
    let by_step = cog * hw_out * depth < SMALL_STEP || steps.is_multiple_of(rayon::current_num_threads());
    if steps > 1 && by_step {
        out.par_chunks_mut(cog * hw_out).enumerate().for_each(|s| step(false, s));
    } else {
        out.chunks_mut(cog * hw_out).enumerate().for_each(|s| step(true, s));
    }
    out
}

/// One (image, group): `out` (cog × h_out·w_out) = `w` (cog × cig·kh·kw) · im2col(`x`).
fn conv_group(x: &[f32], w: &[f32], out: &mut [f32], p: &Conv2dParams, parallel: bool) {
    let cig = p.c_in / p.groups;
    let cog = out.len() / (p.h_out * p.w_out);
    let depth = cig * p.kh * p.kw;
    if p.kh == 1 && p.kw == 1 && p.stride == (1, 1) && p.padding == (0, 0) {
        sgemm(cog, p.h * p.w, cig, w, false, x, false, out, false);
        return;
    }
    let band = (COLS_MAX / (depth * p.w_out).max(1)).clamp(1, p.h_out);
    let mut cols = COLS.take();
    cols.resize(depth * band * p.w_out, 0.0);
    if band == p.h_out {
        im2col(x, p, 0, band, &mut cols, band * p.w_out, parallel);
        sgemm(cog, p.h_out * p.w_out, depth, w, false, &cols, false, out, false);
    } else {
        // A band's outputs are a column block of `out`, which sgemm cannot address: go through
        // a dense tile.
        let mut tile = vec![0.0f32; cog * band * p.w_out];
        for oy0 in (0..p.h_out).step_by(band) {
            let rows = band.min(p.h_out - oy0);
            let n = rows * p.w_out;
            im2col(x, p, oy0, rows, &mut cols[..depth * n], n, parallel);
            sgemm(cog, n, depth, w, false, &cols[..depth * n], false, &mut tile[..cog * n], false);
            for (plane, t) in out.chunks_exact_mut(p.h_out * p.w_out).zip(tile.chunks_exact(n)) {
                plane[oy0 * p.w_out..][..n].copy_from_slice(t);
            }
        }
    }
    COLS.set(cols);
}

/// Unrolls output rows `oy0..oy0 + rows` of one group's input `x` (cig × h × w) into `cols`,
/// whose rows start `pitch` floats apart: row (ci, ky, kx), column (oy, ox) holds
/// x[ci, oy·sh + ky·dh − ph, ox·sw + kx·dw − pw], or 0 in the padding.
pub(super) fn im2col(
    x: &[f32],
    p: &Conv2dParams,
    oy0: usize,
    rows: usize,
    cols: &mut [f32],
    pitch: usize,
    parallel: bool,
) {
    let n = rows * p.w_out;
    let fill = |(r, dst): (usize, &mut [f32])| {
        let dst = &mut dst[..n];
        let (ci, ky, kx) = (r / (p.kh * p.kw), r / p.kw % p.kh, r % p.kw);
        let plane = &x[ci * p.h * p.w..][..p.h * p.w];
        let (sw, pw) = (p.stride.1, p.padding.1);
        let off = kx * p.dilation.1;
        // Output columns ox in lo..hi read inside the row: 0 <= ox·sw + off − pw < w.
        let lo = pw.saturating_sub(off).div_ceil(sw).min(p.w_out);
        let hi = (p.w + pw).saturating_sub(off).div_ceil(sw).clamp(lo, p.w_out);
        for (oy, d) in (oy0..).zip(dst.chunks_exact_mut(p.w_out)) {
            // Rows above the input wrap to huge values and fail the bound check with those below.
            let iy = (oy * p.stride.0 + ky * p.dilation.0).wrapping_sub(p.padding.0);
            if iy >= p.h {
                d.fill(0.0);
                continue;
            }
            let src = &plane[iy * p.w..][..p.w];
            d[..lo].fill(0.0);
            d[hi..].fill(0.0);
            if lo == hi {
                continue;
            }
            let start = lo * sw + off - pw;
            if sw == 1 {
                d[lo..hi].copy_from_slice(&src[start..start + hi - lo]);
            } else {
                for (v, &s) in d[lo..hi].iter_mut().zip(src[start..].iter().step_by(sw)) {
                    *v = s;
                }
            }
        }
    };
    if parallel {
        cols.par_chunks_mut(pitch).enumerate().for_each(fill);
    } else {
        cols.chunks_mut(pitch).enumerate().for_each(fill);
    }
}

#[cfg(test)]
mod tests {
    use super::conv2d;
    use crate::device::contract::Conv2dParams;

    /// Deterministic values in [-1, 1) from a 64-bit LCG.
    fn random(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 23) as f32) - 1.0
            })
            .collect()
    }

    fn reference(x: &[f32], w: &[f32], bias: Option<&[f32]>, p: &Conv2dParams) -> Vec<f64> {
        let (cig, cog) = (p.c_in / p.groups, p.c_out / p.groups);
        let mut out = vec![0.0f64; p.n * p.c_out * p.h_out * p.w_out];
        for n in 0..p.n {
            for co in 0..p.c_out {
                let g = co / cog;
                for oy in 0..p.h_out {
                    for ox in 0..p.w_out {
                        let mut s = bias.map_or(0.0, |b| b[co] as f64);
                        for ci in 0..cig {
                            for ky in 0..p.kh {
                                for kx in 0..p.kw {
                                    let iy = (oy * p.stride.0 + ky * p.dilation.0) as isize - p.padding.0 as isize;
                                    let ix = (ox * p.stride.1 + kx * p.dilation.1) as isize - p.padding.1 as isize;
                                    if iy < 0 || ix < 0 || iy >= p.h as isize || ix >= p.w as isize {
                                        continue;
                                    }
                                    let xv = x[((n * p.c_in + g * cig + ci) * p.h + iy as usize) * p.w + ix as usize];
                                    let wv = w[((co * cig + ci) * p.kh + ky) * p.kw + kx];
                                    s += xv as f64 * wv as f64;
                                }
                            }
                        }
                        out[((n * p.c_out + co) * p.h_out + oy) * p.w_out + ox] = s;
                    }
                }
            }
        }
        out
    }

    /// Checks conv2d on (n, c_in, h, w) input, (c_out, kh, kw) kernel, with and without bias.
    #[allow(clippy::too_many_arguments)]
    fn check(
        (n, c_in, h, w): (usize, usize, usize, usize),
        (c_out, kh, kw): (usize, usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
        dilation: (usize, usize),
        groups: usize,
    ) {
        let out_len =
            |size: usize, k: usize, s: usize, pad: usize, d: usize| (size + 2 * pad - d * (k - 1) - 1) / s + 1;
        let p = Conv2dParams {
            n,
            c_in,
            h,
            w,
            c_out,
            kh,
            kw,
            stride,
            padding,
            dilation,
            groups,
            h_out: out_len(h, kh, stride.0, padding.0, dilation.0),
            w_out: out_len(w, kw, stride.1, padding.1, dilation.1),
        };
        let x = random(n * c_in * h * w, 1);
        let wt = random(c_out * c_in / groups * kh * kw, 2);
        let b = random(c_out, 3);
        for bias in [None, Some(&b[..])] {
            let got = conv2d(&x, &wt, bias, &p);
            let want = reference(&x, &wt, bias, &p);
            assert_eq!(got.len(), want.len());
            let scale = want.iter().fold(1e-30f64, |s, v| s.max(v.abs()));
            let err = got.iter().zip(&want).fold(0.0f64, |e, (&g, &w)| e.max((g as f64 - w).abs()));
            assert!(err / scale < 1e-5, "{p:?} bias={}: rel err {}", bias.is_some(), err / scale);
        }
    }

    #[test]
    fn plain_and_odd_sizes() {
        check((1, 3, 7, 9), (5, 3, 3), (1, 1), (0, 0), (1, 1), 1);
        check((1, 4, 13, 11), (6, 3, 3), (1, 1), (1, 1), (1, 1), 1);
        check((3, 5, 9, 10), (7, 2, 3), (1, 1), (1, 0), (1, 1), 1);
        // No input channels: the output is the bias alone.
        check((1, 0, 4, 4), (3, 3, 3), (1, 1), (1, 1), (1, 1), 1);
    }

    #[test]
    fn stride_padding_dilation() {
        check((1, 3, 15, 16), (4, 3, 3), (2, 2), (1, 1), (1, 1), 1);
        check((2, 3, 12, 13), (4, 5, 5), (2, 1), (2, 2), (1, 1), 1);
        check((1, 2, 14, 15), (3, 3, 3), (1, 1), (2, 2), (2, 2), 1);
        check((1, 2, 9, 11), (3, 3, 2), (3, 2), (0, 3), (2, 3), 1);
    }

    #[test]
    fn groups_and_depthwise() {
        check((1, 4, 10, 9), (6, 3, 3), (1, 1), (1, 1), (1, 1), 2);
        check((3, 6, 8, 7), (6, 3, 3), (2, 2), (1, 1), (1, 1), 6);
        check((2, 4, 9, 9), (8, 3, 3), (1, 1), (1, 1), (2, 2), 4);
    }

    #[test]
    fn one_by_one() {
        check((1, 8, 5, 7), (16, 1, 1), (1, 1), (0, 0), (1, 1), 1);
        check((3, 6, 4, 4), (4, 1, 1), (1, 1), (0, 0), (1, 1), 2);
        check((1, 8, 9, 9), (4, 1, 1), (2, 2), (0, 0), (1, 1), 1);
        check((1, 3, 4, 5), (2, 1, 1), (1, 1), (1, 2), (1, 1), 1);
    }

    #[test]
    fn kernel_covers_input() {
        // h_out = w_out = 1: the kernel spans the whole padded input.
        check((2, 3, 3, 4), (5, 5, 6), (1, 1), (1, 1), (1, 1), 1);
        check((1, 2, 1, 1), (3, 3, 3), (2, 2), (1, 1), (1, 1), 1);
        check((1, 2, 3, 3), (3, 3, 3), (1, 1), (1, 1), (2, 2), 1);
    }

    #[test]
    fn large_parallel_and_banded() {
        // Large enough for the parallel im2col and GEMM, and (c_in = 256) for the banded cols.
        check((1, 16, 40, 40), (24, 3, 3), (1, 1), (1, 1), (1, 1), 1);
        check((1, 256, 40, 40), (8, 3, 3), (1, 1), (1, 1), (1, 1), 1);
    }
}
