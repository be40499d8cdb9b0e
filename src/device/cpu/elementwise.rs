//! Elementwise activations, scaling, and binary ops with broadcasting.

use rayon::prelude::*;

use super::PAR_MIN;
use crate::device::contract::{BinaryOp, BroadcastLayout, UnaryOp};

/// sqrt(2/π), the tanh-GELU constant.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;

#[inline(always)]
pub(crate) fn activation(op: UnaryOp, x: f32) -> f32 {
    match op {
        UnaryOp::Silu => x / (1.0 + (-x).exp()),
        UnaryOp::Gelu => (0.5 * x as f64 * erfc_f64(-(x as f64) * std::f64::consts::FRAC_1_SQRT_2)) as f32,
        // 0.5·(1 + tanh(u)) = sigmoid(2u): the same value without the cancellation for negative x.
        UnaryOp::GeluTanh => x / (1.0 + (-2.0 * SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).exp()),
        UnaryOp::QuickGelu => x / (1.0 + (-1.702 * x).exp()),
        UnaryOp::Relu => x.max(0.0),
    }
}

/// erfc with a relative error under 1.2e-7 everywhere (the Chebyshev fit of
/// Numerical Recipes' erfcc): one exp and a polynomial, where a series for erf
/// costs dozens of divisions an element and GELU runs over every feed-forward
/// activation of the UNet. GELU uses erfc(−x/√2) = 1 + erf(x/√2) directly, so
/// negative x loses nothing to cancellation.
pub(crate) fn erfc_f64(x: f64) -> f64 {
    const C: [f64; 10] = [
        -1.265_512_23,
        1.000_023_68,
        0.374_091_96,
        0.096_784_18,
        -0.186_288_06,
        0.278_868_07,
        -1.135_203_98,
        1.488_515_87,
        -0.822_152_23,
        0.170_872_77,
    ];
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = C.iter().rev().fold(0.0, |acc, &c| acc * t + c);
    let r = t * (-z * z + poly).exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

pub(crate) fn unary(op: UnaryOp, x: &[f32]) -> Vec<f32> {
    // One loop per activation, so the choice is made once, not per element.
    fn each(x: &[f32], f: impl Fn(f32) -> f32 + Sync + Send) -> Vec<f32> {
        x.par_iter().with_min_len(PAR_MIN).map(|&v| f(v)).collect()
    }
    match op {
        UnaryOp::Silu => each(x, |v| activation(UnaryOp::Silu, v)),
        UnaryOp::Gelu => each(x, |v| activation(UnaryOp::Gelu, v)),
        UnaryOp::GeluTanh => each(x, |v| activation(UnaryOp::GeluTanh, v)),
        UnaryOp::QuickGelu => each(x, |v| activation(UnaryOp::QuickGelu, v)),
        UnaryOp::Relu => each(x, |v| activation(UnaryOp::Relu, v)),
    }
}

pub(crate) fn scale(x: &[f32], factor: f32) -> Vec<f32> {
    x.par_iter().with_min_len(PAR_MIN).map(|&v| v * factor).collect()
}

/// min(max(x, lo), hi) as PyTorch computes it: NaN stays NaN, and lo > hi gives hi.
pub(crate) fn clamp(x: &[f32], lo: f32, hi: f32) -> Vec<f32> {
    x.par_iter().with_min_len(PAR_MIN).map(|&v| if v.is_nan() { v } else { v.max(lo).min(hi) }).collect()
}

/// Each row [h, g] of (rows, 2·d) to h · gelu(g), d elements.
pub(crate) fn geglu(x: &[f32], rows: usize, d: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; rows * d];
    if d == 0 {
        return out;
    }
    let rows_per_task = (PAR_MIN / d).max(1);
    out.par_chunks_mut(d * rows_per_task).enumerate().for_each(|(task, chunk)| {
        for (r, row) in chunk.chunks_mut(d).enumerate() {
            let start = (task * rows_per_task + r) * 2 * d;
            let (h, g) = x[start..start + 2 * d].split_at(d);
            for ((o, &hv), &gv) in row.iter_mut().zip(h).zip(g) {
                *o = hv * activation(UnaryOp::Gelu, gv);
            }
        }
    });
    out
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
