//! The softmax backward and cross-entropy with label smoothing, a row of (rows, cols) at a time.
//! Row sums accumulate in f64.

use rayon::prelude::*;

use super::reduce::softmax_row;
use super::PAR_MIN;
use crate::error::{shape_err, Result};

/// dx of softmax (y·(g − Σ g·y)) or of log-softmax (g − exp(y)·Σ g) from the output y.
pub(crate) fn softmax_backward(y: &[f32], g: &[f32], rows: usize, cols: usize, log: bool) -> Vec<f32> {
    let mut dx = vec![0.0f32; rows * cols];
    if cols == 0 {
        return dx;
    }
    dx.par_chunks_mut(cols)
        .zip(y.par_chunks(cols).zip(g.par_chunks(cols)))
        .with_min_len((PAR_MIN / cols).max(1))
        .for_each(|(dx, (y, g))| {
            if log {
                let sum = g.iter().map(|&g| g as f64).sum::<f64>() as f32;
                dx.iter_mut().zip(y.iter().zip(g)).for_each(|(dx, (&y, &g))| *dx = g - y.exp() * sum);
            } else {
                let dot = y.iter().zip(g).map(|(&y, &g)| (y * g) as f64).sum::<f64>() as f32;
                dx.iter_mut().zip(y.iter().zip(g)).for_each(|(dx, (&y, &g))| *dx = y * (g - dot));
            }
        });
    dx
}

fn check_labels(op: &'static str, labels: &[u32], classes: usize) -> Result<()> {
    match labels.iter().enumerate().find(|(_, &l)| l as usize >= classes) {
        Some((row, l)) => shape_err(op, format!("label {l} of row {row} is out of range for {classes} classes")),
        None => Ok(()),
    }
}

/// Per-row (1−ε)·(−log p_label) + ε·mean_j(−log p_j) of (rows, classes) logits.
pub(crate) fn cross_entropy(z: &[f32], labels: &[u32], classes: usize, smoothing: f32) -> Result<Vec<f32>> {
    check_labels("cross_entropy", labels, classes)?;
    let eps = smoothing as f64;
    Ok(z.par_chunks(classes)
        .zip(labels.par_iter())
        .map_init(
            || vec![0.0f32; classes],
            |logp, (z, &label)| {
                softmax_row(z, logp, true);
                let mean = logp.iter().map(|&v| v as f64).sum::<f64>() / classes as f64;
                (-(1.0 - eps) * logp[label as usize] as f64 - eps * mean) as f32
            },
        )
        .collect())
}

/// dlogits = grad_rows[r]·(softmax − ((1−ε)·onehot + ε/classes)).
pub(crate) fn cross_entropy_backward(
    z: &[f32],
    labels: &[u32],
    grad_rows: &[f32],
    classes: usize,
    smoothing: f32,
) -> Result<Vec<f32>> {
    check_labels("cross_entropy_backward", labels, classes)?;
    let mut dz = vec![0.0f32; z.len()];
    let (uniform, hit) = (smoothing / classes as f32, 1.0 - smoothing);
    dz.par_chunks_mut(classes).zip(z.par_chunks(classes)).zip(labels.par_iter().zip(grad_rows)).for_each(
        |((dz, z), (&label, &gr))| {
            softmax_row(z, dz, false);
            // (p − ε/classes) − (1−ε) at the label, then one product: exactly 0 for one class.
            for (j, d) in dz.iter_mut().enumerate() {
                *d = gr * (*d - uniform - if j == label as usize { hit } else { 0.0 });
            }
        },
    );
    Ok(dz)
}
