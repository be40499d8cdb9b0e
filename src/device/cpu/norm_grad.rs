//! Backward passes of layer, group and batch norm, and batch norm's training-mode forward.
//!
//! With x̂ = (x − mean)·rstd over a normalised set S of M values, gw = g·w (g the upstream
//! gradient, w the weight of the element's channel or column):
//!   dx = rstd·(gw − Σ_S gw / M − x̂·Σ_S gw·x̂ / M),  dweight = Σ g·x̂,  dbias = Σ g,
//! the parameter sums running over every element that shares the parameter. Sums accumulate in
//! f64 (a channel of batch norm can hold 64·112·112 values), and tasks are fixed by the shape, so
//! the results do not depend on the thread count.

use rayon::prelude::*;

use super::norm::{lane_sum, stats};
use super::PAR_MIN;
use crate::device::contract::{BatchNormShape, GroupNormShape};

/// Three f32 outputs: (dx, dweight, dbias) of a backward pass, (out, mean, var) of batch_norm_train.
pub(crate) type Outputs = (Vec<f32>, Vec<f32>, Vec<f32>);

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&v| v as f32).collect()
}

pub(crate) fn layer_norm_backward(x: &[f32], w: &[f32], g: &[f32], rows: usize, cols: usize, eps: f32) -> Outputs {
    let mut dx = vec![0.0f32; rows * cols];
    if rows * cols == 0 {
        return (dx, vec![0.0; cols], vec![0.0; cols]);
    }
    // Rows in at most ~256 tasks, each with its own f64 column sums for dweight and dbias.
    let per_task = rows.div_ceil(256).max(PAR_MIN / cols).max(1) * cols;
    let partials: Vec<Vec<f64>> = dx
        .par_chunks_mut(per_task)
        .zip(x.par_chunks(per_task))
        .zip(g.par_chunks(per_task))
        .map(|((dx, x), g)| {
            let mut acc = vec![0f64; 2 * cols];
            let (acc_gx, acc_g) = acc.split_at_mut(cols);
            for ((dx, x), g) in dx.chunks_mut(cols).zip(x.chunks(cols)).zip(g.chunks(cols)) {
                let (mean, rstd) = stats(x, eps);
                let (mut sum_gw, mut sum_gwx) = (0f64, 0f64);
                for j in 0..cols {
                    let (xh, gw) = ((x[j] - mean) * rstd, g[j] * w[j]);
                    sum_gw += gw as f64;
                    sum_gwx += (gw * xh) as f64;
                    acc_gx[j] += (g[j] * xh) as f64;
                    acc_g[j] += g[j] as f64;
                }
                let (mean_gw, mean_gwx) = ((sum_gw / cols as f64) as f32, (sum_gwx / cols as f64) as f32);
                for j in 0..cols {
                    let xh = (x[j] - mean) * rstd;
                    dx[j] = rstd * (g[j] * w[j] - mean_gw - xh * mean_gwx);
                }
            }
            acc
        })
        .collect();
    let mut total = vec![0f64; 2 * cols];
    for p in &partials {
        total.iter_mut().zip(p).for_each(|(t, v)| *t += v);
    }
    (dx, to_f32(&total[..cols]), to_f32(&total[cols..]))
}

pub(crate) fn group_norm_backward(x: &[f32], w: &[f32], g: &[f32], s: GroupNormShape) -> Outputs {
    let cpg = s.c / s.groups;
    let block = cpg * s.spatial;
    let mut dx = vec![0.0f32; x.len()];
    if block == 0 || s.n == 0 {
        return (dx, vec![0.0; s.c], vec![0.0; s.c]);
    }
    // One task an (image, group), a contiguous block; each returns its channels' (Σ g·x̂, Σ g).
    let per_group: Vec<Vec<[f64; 2]>> = dx
        .par_chunks_mut(block)
        .zip(x.par_chunks(block))
        .zip(g.par_chunks(block))
        .enumerate()
        .map(|(ng, ((dx, x), g))| {
            let (mean, rstd) = stats(x, s.eps);
            let w = &w[(ng % s.groups) * cpg..][..cpg];
            let sums: Vec<[f64; 2]> = x
                .chunks(s.spatial)
                .zip(g.chunks(s.spatial))
                .map(|(x, g)| {
                    let mut sum = [0f64; 2];
                    for (&x, &g) in x.iter().zip(g) {
                        sum[0] += (g * ((x - mean) * rstd)) as f64;
                        sum[1] += g as f64;
                    }
                    sum
                })
                .collect();
            let (sum_gwx, sum_gw) =
                sums.iter().zip(w).fold((0f64, 0f64), |(a, b), (s, &w)| (a + w as f64 * s[0], b + w as f64 * s[1]));
            let (mean_gw, mean_gwx) = ((sum_gw / block as f64) as f32, (sum_gwx / block as f64) as f32);
            for ((dx, (x, g)), &w) in dx.chunks_mut(s.spatial).zip(x.chunks(s.spatial).zip(g.chunks(s.spatial))).zip(w)
            {
                for ((dx, &x), &g) in dx.iter_mut().zip(x).zip(g) {
                    *dx = rstd * (g * w - mean_gw - (x - mean) * rstd * mean_gwx);
                }
            }
            sums
        })
        .collect();
    let (mut dw, mut db) = (vec![0f64; s.c], vec![0f64; s.c]);
    for (ng, sums) in per_group.iter().enumerate() {
        let first = (ng % s.groups) * cpg;
        for (k, sum) in sums.iter().enumerate() {
            dw[first + k] += sum[0];
            db[first + k] += sum[1];
        }
    }
    (dx, to_f32(&dw), to_f32(&db))
}

/// The planes (n·c runs of `spatial`) of channel `ch`.
fn channel_planes<'a>(x: &'a [f32], ch: usize, s: BatchNormShape) -> impl Iterator<Item = &'a [f32]> + 'a {
    x.chunks(s.spatial).skip(ch).step_by(s.c)
}

/// Per-channel f64 (mean, biased variance) over n·spatial, two-pass.
fn channel_stats(x: &[f32], s: BatchNormShape) -> Vec<(f64, f64)> {
    let m = (s.n * s.spatial) as f64;
    (0..s.c)
        .into_par_iter()
        .map(|ch| {
            let mean = channel_planes(x, ch, s).map(|p| lane_sum(p, |v| v as f64)).sum::<f64>() / m;
            let var = channel_planes(x, ch, s).map(|p| lane_sum(p, |v| (v as f64 - mean).powi(2))).sum::<f64>() / m;
            (mean, var)
        })
        .collect()
}

fn rstd(var: f64, eps: f32) -> f32 {
    (1.0 / (var + eps as f64).sqrt()) as f32
}

/// Training-mode batch norm: (out, mean, biased var).
pub(crate) fn batch_norm_train(x: &[f32], w: &[f32], b: &[f32], s: BatchNormShape) -> Outputs {
    let mut out = vec![0.0f32; x.len()];
    if s.spatial == 0 || s.n == 0 {
        return (out, vec![f32::NAN; s.c], vec![f32::NAN; s.c]);
    }
    let st = channel_stats(x, s);
    out.par_chunks_mut(s.spatial).zip(x.par_chunks(s.spatial)).enumerate().for_each(|(plane, (o, x))| {
        let ch = plane % s.c;
        let (mean, scale, shift) = (st[ch].0 as f32, rstd(st[ch].1, s.eps) * w[ch], b[ch]);
        o.iter_mut().zip(x).for_each(|(o, &v)| *o = (v - mean) * scale + shift);
    });
    let mean = st.iter().map(|p| p.0 as f32).collect();
    let var = st.iter().map(|p| p.1 as f32).collect();
    (out, mean, var)
}

pub(crate) fn batch_norm_backward(
    x: &[f32],
    w: &[f32],
    g: &[f32],
    mean: &[f32],
    var: &[f32],
    s: BatchNormShape,
) -> Outputs {
    let mut dx = vec![0.0f32; x.len()];
    if s.spatial == 0 || s.n == 0 {
        return (dx, vec![0.0; s.c], vec![0.0; s.c]);
    }
    let m = (s.n * s.spatial) as f64;
    // Per channel (Σ g·x̂, Σ g) in f64.
    let sums: Vec<(f64, f64)> = (0..s.c)
        .into_par_iter()
        .map(|ch| {
            let (mean, rstd) = (mean[ch], rstd(var[ch] as f64, s.eps));
            let mut sum = (0f64, 0f64);
            for (x, g) in channel_planes(x, ch, s).zip(channel_planes(g, ch, s)) {
                for (&x, &g) in x.iter().zip(g) {
                    sum.0 += (g * ((x - mean) * rstd)) as f64;
                    sum.1 += g as f64;
                }
            }
            sum
        })
        .collect();
    dx.par_chunks_mut(s.spatial).zip(x.par_chunks(s.spatial).zip(g.par_chunks(s.spatial))).enumerate().for_each(
        |(plane, (dx, (x, g)))| {
            let ch = plane % s.c;
            let (mean, rstd) = (mean[ch], rstd(var[ch] as f64, s.eps));
            let (mean_g, mean_gx) = ((sums[ch].1 / m) as f32, (sums[ch].0 / m) as f32);
            let scale = w[ch] * rstd;
            for ((dx, &x), &g) in dx.iter_mut().zip(x).zip(g) {
                *dx = scale * (g - mean_g - (x - mean) * rstd * mean_gx);
            }
        },
    );
    let dw = sums.iter().map(|p| p.0 as f32).collect();
    let db = sums.iter().map(|p| p.1 as f32).collect();
    (dx, dw, db)
}
