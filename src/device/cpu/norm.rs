//! Layer norm and group norm. Statistics are accumulated in f64: the pass is
//! memory-bound, and the reference should not lose digits to cancellation.

use rayon::prelude::*;

use crate::device::contract::GroupNormShape;

/// Mean and 1/sqrt(var + eps) of `x` (biased variance, as PyTorch normalises).
pub(super) fn stats(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f64;
    let mean = lane_sum(x, |v| v as f64) / n;
    let var = lane_sum(x, |v| (v as f64 - mean).powi(2)) / n;
    (mean as f32, (1.0 / (var + eps as f64).sqrt()) as f32)
}

/// Σ f(x) in f64 over 8 independent lanes: one accumulator would serialise on
/// the add latency and leave the pass far below memory bandwidth.
#[inline(always)]
pub(super) fn lane_sum(x: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    let mut lanes = [0f64; 8];
    let chunks = x.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for c in chunks {
        for l in 0..8 {
            lanes[l] += f(c[l]);
        }
    }
    lanes.iter().sum::<f64>() + tail
}

pub(crate) fn layer_norm(x: &[f32], w: &[f32], b: &[f32], rows: usize, cols: usize, eps: f32) -> Vec<f32> {
    let mut out = vec![0.0f32; rows * cols];
    if cols == 0 {
        return out;
    }
    out.par_chunks_mut(cols).zip(x.par_chunks(cols)).for_each(|(o, r)| {
        let (mean, rstd) = stats(r, eps);
        for (((o, &v), &w), &b) in o.iter_mut().zip(r).zip(w).zip(b) {
            *o = (v - mean) * rstd * w + b;
        }
    });
    out
}

pub(crate) fn group_norm(x: &[f32], w: &[f32], b: &[f32], s: GroupNormShape) -> Vec<f32> {
    let cpg = s.c / s.groups;
    let block = cpg * s.spatial;
    let mut out = vec![0.0f32; x.len()];
    if block == 0 {
        return out;
    }
    // Channels of one group are contiguous in NCHW: each (image, group) is one block.
    out.par_chunks_mut(block).zip(x.par_chunks(block)).enumerate().for_each(|(ng, (o, xb))| {
        let (mean, rstd) = stats(xb, s.eps);
        let g = ng % s.groups;
        for (ci, (oc, xc)) in o.chunks_mut(s.spatial).zip(xb.chunks(s.spatial)).enumerate() {
            let c = g * cpg + ci;
            // (v - mean) first: folding mean into a shift cancels badly when var ≪ eps.
            let (scale, shift) = (rstd * w[c], b[c]);
            oc.iter_mut().zip(xc).for_each(|(o, &v)| *o = (v - mean) * scale + shift);
        }
    });
    out
}
