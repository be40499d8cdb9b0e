//! Elementwise activations, scaling, and binary ops with broadcasting.

use rayon::prelude::*;

use super::PAR_MIN;
use crate::device::contract::{BinaryOp, BroadcastLayout, UnaryOp};

/// sqrt(2/π), the tanh-GELU constant.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;

pub(crate) fn activation(op: UnaryOp, x: f32) -> f32 {
    match op {
        UnaryOp::Silu => x / (1.0 + (-x).exp()),
        // In f64: 1 + erf cancels for negative x, which f32 would turn into noise.
        UnaryOp::Gelu => (0.5 * x as f64 * (1.0 + erf_f64(x as f64 * std::f64::consts::FRAC_1_SQRT_2))) as f32,
        // 0.5·(1 + tanh(u)) = sigmoid(2u): the same value without the cancellation for negative x.
        UnaryOp::GeluTanh => x / (1.0 + (-2.0 * SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).exp()),
        UnaryOp::QuickGelu => x / (1.0 + (-1.702 * x).exp()),
        UnaryOp::Relu => x.max(0.0),
    }
}

/// erf to about 1e-13: the Maclaurin series below |x| = 3 (its largest term is
/// ~e^9, so cancellation costs under four digits), and above it 1 - erfc from
/// erfc's continued fraction, evaluated bottom-up.
pub(crate) fn erf_f64(x: f64) -> f64 {
    let ax = x.abs();
    let r = if ax < 3.0 {
        let x2 = ax * ax;
        let (mut term, mut sum, mut n) = (ax, ax, 0.0);
        loop {
            n += 1.0;
            term *= -x2 / n;
            let add = term / (2.0 * n + 1.0);
            sum += add;
            if add.abs() <= 1e-17 * sum.abs() {
                break;
            }
        }
        sum * std::f64::consts::FRAC_2_SQRT_PI
    } else {
        // erfc(x) = exp(-x²)/sqrt(pi) / (x + (1/2)/(x + 1/(x + (3/2)/(x + ...)))).
        let mut k = ax;
        for n in (1..=60).rev() {
            k = ax + (n as f64 * 0.5) / k;
        }
        1.0 - (-ax * ax).exp() / (k * std::f64::consts::PI.sqrt())
    };
    r.copysign(x)
}

pub(crate) fn unary(op: UnaryOp, x: &[f32]) -> Vec<f32> {
    x.par_iter().with_min_len(PAR_MIN).map(|&v| activation(op, v)).collect()
}

pub(crate) fn scale(x: &[f32], factor: f32) -> Vec<f32> {
    x.par_iter().with_min_len(PAR_MIN).map(|&v| v * factor).collect()
}

#[inline(always)]
fn apply(op: BinaryOp, a: f32, b: f32) -> f32 {
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
    }
}

pub(crate) fn binary(op: BinaryOp, a: &[f32], b: &[f32], l: &BroadcastLayout) -> Vec<f32> {
    let n: usize = l.dims.iter().product();
    let mut out = vec![0.0f32; n];
    if n == 0 {
        return out;
    }
    let rank = l.dims.len();
    let inner = l.dims[rank - 1];
    let (sa, sb) = (l.lhs_strides[rank - 1], l.rhs_strides[rank - 1]);
    // Rows of the innermost dimension; the outer index is decoded once a row.
    let rows_per_task = (PAR_MIN / inner.max(1)).max(1);
    out.par_chunks_mut(inner * rows_per_task).enumerate().for_each(|(task, chunk)| {
        for (r, row) in chunk.chunks_mut(inner).enumerate() {
            let (oa, ob) = outer_offsets(task * rows_per_task + r, l);
            match (sa, sb) {
                (1, 1) => {
                    let (ra, rb) = (&a[oa..oa + inner], &b[ob..ob + inner]);
                    for ((o, &x), &y) in row.iter_mut().zip(ra).zip(rb) {
                        *o = apply(op, x, y);
                    }
                }
                (1, 0) => {
                    let y = b[ob];
                    for (o, &x) in row.iter_mut().zip(&a[oa..oa + inner]) {
                        *o = apply(op, x, y);
                    }
                }
                (0, 1) => {
                    let x = a[oa];
                    for (o, &y) in row.iter_mut().zip(&b[ob..ob + inner]) {
                        *o = apply(op, x, y);
                    }
                }
                _ => {
                    for (j, o) in row.iter_mut().enumerate() {
                        *o = apply(op, a[oa + j * sa], b[ob + j * sb]);
                    }
                }
            }
        }
    });
    out
}

/// Offsets into lhs and rhs of the start of innermost row `row`.
fn outer_offsets(mut row: usize, l: &BroadcastLayout) -> (usize, usize) {
    let (mut oa, mut ob) = (0, 0);
    for d in (0..l.dims.len() - 1).rev() {
        let i = row % l.dims[d];
        row /= l.dims[d];
        oa += i * l.lhs_strides[d];
        ob += i * l.rhs_strides[d];
    }
    (oa, ob)
}
