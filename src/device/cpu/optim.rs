//! The optimizer updates over flat f32 buffers, in place (the reference for kernels/optim.cu),
//! and the sum of squares the global gradient norm comes from.

use rayon::prelude::*;

use super::CpuStorage;
use crate::device::contract::{AdamWStep, SgdStep};
use crate::device::BackendStorage;
use crate::error::{Error, Result};

/// Elements one rayon task handles: enough to amortise the task.
const CHUNK: usize = 1 << 14;

fn flat<'a>(op: &'static str, s: &'a CpuStorage) -> Result<&'a [f32]> {
    match s {
        CpuStorage::F32(v) => Ok(v),
        other => Err(Error::DType { op, dtype: other.dtype() }),
    }
}

fn flat_mut<'a>(op: &'static str, s: &'a mut CpuStorage) -> Result<&'a mut [f32]> {
    match s {
        CpuStorage::F32(v) => Ok(v),
        other => Err(Error::DType { op, dtype: other.dtype() }),
    }
}

pub(crate) fn adamw_step(
    p: &mut CpuStorage,
    g: &CpuStorage,
    m: &mut CpuStorage,
    v: &mut CpuStorage,
    s: &AdamWStep,
) -> Result<()> {
    const OP: &str = "adamw_step";
    let (p, g, m, v) = (flat_mut(OP, p)?, flat(OP, g)?, flat_mut(OP, m)?, flat_mut(OP, v)?);
    let decay = 1.0 - s.lr * s.weight_decay;
    let step_size = s.lr / s.bias_correction1;
    let (rate1, rate2) = (1.0 - s.beta1, 1.0 - s.beta2);
    let chunks = p.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).zip(m.par_chunks_mut(CHUNK));
    chunks.zip(v.par_chunks_mut(CHUNK)).for_each(|(((p, g), m), v)| {
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            let g = g * s.grad_scale;
            // PyTorch's order: decoupled decay, exp_avg.lerp_(g, 1 − β1), exp_avg_sq.mul_(β2).addcmul_(g, g, 1 − β2).
            let decayed = *p * decay;
            *m += rate1 * (g - *m);
            *v = *v * s.beta2 + rate2 * (g * g);
            let denom = v.sqrt() / s.bias_correction2_sqrt + s.eps;
            *p = decayed - step_size * (*m / denom);
        }
    });
    Ok(())
}

pub(crate) fn sgd_step(
    p: &mut CpuStorage,
    g: &CpuStorage,
    momentum: Option<&mut CpuStorage>,
    s: &SgdStep,
) -> Result<()> {
    const OP: &str = "sgd_step";
    let (p, g) = (flat_mut(OP, p)?, flat(OP, g)?);
    // Weight decay is skipped, not multiplied by 0, when off: 0·inf would turn an infinite weight into NaN.
    let decayed = |g: f32, p: f32| if s.weight_decay != 0.0 { g + s.weight_decay * p } else { g };
    match momentum {
        Some(b) => {
            let b = flat_mut(OP, b)?;
            let chunks = p.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).zip(b.par_chunks_mut(CHUNK));
            chunks.for_each(|((p, g), b)| {
                for ((p, &g), b) in p.iter_mut().zip(g).zip(b.iter_mut()) {
                    let g = decayed(g * s.grad_scale, *p);
                    *b = if s.first_step { g } else { *b * s.momentum + g };
                    let d = if s.nesterov { g + s.momentum * *b } else { *b };
                    *p -= s.lr * d;
                }
            });
        }
        None => p.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).for_each(|(p, g)| {
            for (p, &g) in p.iter_mut().zip(g) {
                *p -= s.lr * decayed(g * s.grad_scale, *p);
            }
        }),
    }
    Ok(())
}

/// Σ x² as a one-element f32 storage: f32 within a chunk (8 lanes, so it vectorises), the
/// chunks' partial sums added in f64 in a fixed order, so the result does not depend on threads.
pub(crate) fn sum_squares(x: &CpuStorage) -> Result<CpuStorage> {
    let x = x.f32s("sum_squares")?;
    let partials: Vec<f32> = x.par_chunks(CHUNK).map(chunk_sum_squares).collect();
    Ok(CpuStorage::F32(vec![partials.iter().map(|&p| p as f64).sum::<f64>() as f32]))
}

fn chunk_sum_squares(x: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    for c in chunks {
        for l in 0..8 {
            lanes[l] += c[l] * c[l];
        }
    }
    lanes.iter().sum::<f32>() + tail
}
