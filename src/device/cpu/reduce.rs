//! Reductions over one axis, and softmax over the last axis.

use rayon::prelude::*;

use super::vexp::exp_shifted;
use super::PAR_MIN;
use crate::device::contract::{ReduceOp, ReduceShape};

/// Sum, mean or max of (outer, len, inner) over `len`, giving (outer, inner).
pub(crate) fn reduce(op: ReduceOp, x: &[f32], s: ReduceShape) -> Vec<f32> {
    let mut out = vec![0.0f32; s.outer * s.inner];
    if s.inner == 0 {
        return out;
    }
    let outer_per_task = (PAR_MIN / (s.len * s.inner).max(1)).max(1);
    out.par_chunks_mut(s.inner * outer_per_task).enumerate().for_each(|(task, chunk)| {
        for (i, acc) in chunk.chunks_mut(s.inner).enumerate() {
            let o = task * outer_per_task + i;
            let block = &x[o * s.len * s.inner..(o + 1) * s.len * s.inner];
            if op == ReduceOp::Max {
                acc.fill(f32::NEG_INFINITY);
            }
            // Whole rows of `inner` at a time: contiguous and vectorisable.
            for row in block.chunks_exact(s.inner) {
                match op {
                    ReduceOp::Max => acc.iter_mut().zip(row).for_each(|(a, &v)| *a = a.max(v)),
                    _ => acc.iter_mut().zip(row).for_each(|(a, &v)| *a += v),
                }
            }
            if op == ReduceOp::Mean {
                let inv = 1.0 / s.len as f32;
                acc.iter_mut().for_each(|a| *a *= inv);
            }
        }
    });
    out
}

/// Index of the first maximum along `len`.
pub(crate) fn argmax(x: &[f32], s: ReduceShape) -> Vec<u32> {
    (0..s.outer * s.inner)
        .into_par_iter()
        .with_min_len((PAR_MIN / s.len.max(1)).max(1))
        .map(|oi| {
            let (o, i) = (oi / s.inner, oi % s.inner);
            let base = o * s.len * s.inner + i;
            let mut best = (0u32, f32::NEG_INFINITY);
            for l in 0..s.len {
                let v = x[base + l * s.inner];
                if v > best.1 || (l == 0) {
                    best = (l as u32, v);
                }
            }
            best.0
        })
        .collect()
}

/// Softmax or log-softmax of each row of (rows, cols).
pub(crate) fn softmax(x: &[f32], rows: usize, cols: usize, log: bool) -> Vec<f32> {
    let mut out = vec![0.0f32; rows * cols];
    if cols == 0 {
        return out;
    }
    out.par_chunks_mut(cols)
        .zip(x.par_chunks(cols))
        .with_min_len((PAR_MIN / cols).max(1))
        .for_each(|(o, r)| softmax_row(r, o, log));
    out
}

/// The maximum of a row (NaN ignored, as f32::max does), over 8 lanes so it vectorises.
fn row_max(r: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = r.chunks_exact(8);
    let tail = chunks.remainder().iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for c in chunks {
        for l in 0..8 {
            lanes[l] = lanes[l].max(c[l]);
        }
    }
    lanes.iter().copied().fold(tail, f32::max)
}

/// One row, stable: exponentiates x - max. A row of only -inf gives zeros
/// (softmax) or -inf (log-softmax) rather than NaN.
pub(crate) fn softmax_row(r: &[f32], o: &mut [f32], log: bool) {
    let max = row_max(r);
    if max == f32::NEG_INFINITY {
        o.fill(if log { f32::NEG_INFINITY } else { 0.0 });
        return;
    }
    let sum = exp_shifted(r, max, o);
    if log {
        let lse = sum.ln();
        o.iter_mut().zip(r).for_each(|(o, &v)| *o = v - max - lse);
    } else {
        let inv = 1.0 / sum;
        o.iter_mut().for_each(|o| *o *= inv);
    }
}
