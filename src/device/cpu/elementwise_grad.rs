//! The backward passes of the elementwise activations, clamp and GEGLU: dx from the op's
//! input x and the upstream gradient, in f32 (GELU's normal CDF in f64, as its forward).

use rayon::prelude::*;

use super::elementwise::erfc_f64;
use super::PAR_MIN;
use crate::device::contract::UnaryOp;

/// sqrt(2/π), the tanh-GELU constant (the forward's f32 value).
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
/// 1/sqrt(2π), the standard normal density at 0.
const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

/// d/dx of x·σ(x): σ + x·σ·(1 − σ).
fn silu_grad(x: f32) -> f32 {
    let s = sigmoid(x);
    s * (1.0 + x * (1.0 - s))
}

/// d/dx of the erf GELU: Φ(x) + x·φ(x), Φ through erfc so negative x loses nothing to cancellation.
fn gelu_grad(x: f32) -> f32 {
    let x = x as f64;
    (0.5 * erfc_f64(-x * std::f64::consts::FRAC_1_SQRT_2) + x * INV_SQRT_2PI * (-0.5 * x * x).exp()) as f32
}

/// d/dx of x·σ(2u), u = c·(x + 0.044715·x³): σ + x·σ·(1 − σ)·2c·(1 + 3·0.044715·x²).
fn gelu_tanh_grad(x: f32) -> f32 {
    let s = sigmoid(2.0 * SQRT_2_OVER_PI * (x + 0.044715 * x * x * x));
    s + x * s * (1.0 - s) * 2.0 * SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * x * x)
}

/// d/dx of x·σ(1.702·x): σ + 1.702·x·σ·(1 − σ).
fn quick_gelu_grad(x: f32) -> f32 {
    let s = sigmoid(1.702 * x);
    s + 1.702 * x * s * (1.0 - s)
}

/// dx = grad·op'(x); relu'(0) = 0, as PyTorch.
pub(crate) fn activation_backward(op: UnaryOp, x: &[f32], grad: &[f32]) -> Vec<f32> {
    // One loop per activation, so the choice is made once, not per element.
    fn each(x: &[f32], grad: &[f32], f: impl Fn(f32, f32) -> f32 + Sync + Send) -> Vec<f32> {
        x.par_iter().zip(grad).with_min_len(PAR_MIN).map(|(&v, &g)| f(v, g)).collect()
    }
    match op {
        UnaryOp::Silu => each(x, grad, |v, g| g * silu_grad(v)),
        UnaryOp::Gelu => each(x, grad, |v, g| g * gelu_grad(v)),
        UnaryOp::GeluTanh => each(x, grad, |v, g| g * gelu_tanh_grad(v)),
        UnaryOp::QuickGelu => each(x, grad, |v, g| g * quick_gelu_grad(v)),
        // A select, not g·0: an infinite gradient where x ≤ 0 still gives 0 (PyTorch's threshold_backward).
        UnaryOp::Relu => each(x, grad, |v, g| if v > 0.0 { g } else { 0.0 }),
    }
}

/// The gradient where lo ≤ x ≤ hi (bounds included, as PyTorch), else 0; NaN x gets 0.
pub(crate) fn clamp_backward(x: &[f32], grad: &[f32], lo: f32, hi: f32) -> Vec<f32> {
    x.par_iter().zip(grad).with_min_len(PAR_MIN).map(|(&v, &g)| if lo <= v && v <= hi { g } else { 0.0 }).collect()
}

/// For each row [h, g] of x (rows, 2·d) and its (rows, d) upstream gradient r: the row
/// [r·gelu(g), r·h·gelu'(g)].
pub(crate) fn geglu_backward(x: &[f32], grad: &[f32], rows: usize, d: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; rows * 2 * d];
    if d == 0 {
        return out;
    }
    let rows_per_task = (PAR_MIN / d).max(1);
    out.par_chunks_mut(2 * d * rows_per_task).enumerate().for_each(|(task, chunk)| {
        for (r, row) in chunk.chunks_mut(2 * d).enumerate() {
            let at = task * rows_per_task + r;
            let (h, g) = x[at * 2 * d..(at + 1) * 2 * d].split_at(d);
            let up = &grad[at * d..(at + 1) * d];
            let (dh, dg) = row.split_at_mut(d);
            for j in 0..d {
                dh[j] = up[j] * super::elementwise::activation(UnaryOp::Gelu, g[j]);
                dg[j] = up[j] * h[j] * gelu_grad(g[j]);
            }
        }
    });
    out
}
