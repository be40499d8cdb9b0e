//! Pooling over (planes, h, w), one task a run of planes, and the gradients of each pooling.
//! Max pooling is PyTorch's max_pool2d: padding counts as -inf and a NaN in a window wins, so
//! the result is always one of the inputs; its gradient goes to the input the forward picked.
//! Average pooling is PyTorch's avg_pool2d with count_include_pad (every window divides by
//! kernel²); adaptive average pooling uses PyTorch's bins. Gradients add each output's share to
//! its inputs in row-major output order, the order the CUDA kernels sum in.

use std::ops::Range;

use rayon::prelude::*;

use super::PAR_MIN;
use crate::device::contract::{AdaptivePool2dParams, AvgPool2dParams, MaxPool2dParams};

/// Runs `f(plane_out, plane_in)` over the planes of `out` (`out_len` floats each) paired with
/// those of `input` (`in_len` floats each), in parallel over runs of planes.
fn per_plane(out: &mut [f32], out_len: usize, input: &[f32], in_len: usize, f: impl Fn(&mut [f32], &[f32]) + Sync) {
    if out.is_empty() {
        return;
    }
    let per_task = (PAR_MIN / in_len.max(out_len).max(1)).max(1);
    out.par_chunks_mut(out_len * per_task).zip(input.par_chunks(in_len * per_task)).for_each(|(o, i)| {
        o.chunks_exact_mut(out_len).zip(i.chunks_exact(in_len)).for_each(|(o, i)| f(o, i));
    });
}

/// Input positions of window `o` along an axis of `size`, clipped to the input; the tensor
/// layer keeps every clipped window non-empty.
fn window(o: usize, size: usize, p: &MaxPool2dParams) -> Range<usize> {
    let start = (o * p.stride).saturating_sub(p.padding);
    let end = (o * p.stride + p.kernel).saturating_sub(p.padding).min(size);
    start..end
}

/// Index in `plane` (h × w) of the maximum of window (oy, ox) and its value: the first maximum
/// in row-major order, or the last NaN (PyTorch's rule).
fn window_max(plane: &[f32], oy: usize, ox: usize, p: &MaxPool2dParams) -> (usize, f32) {
    let (rows, cols) = (window(oy, p.h, p), window(ox, p.w, p));
    let (mut at, mut m) = (rows.start * p.w + cols.start, f32::NEG_INFINITY);
    for y in rows {
        for x in cols.clone() {
            let v = plane[y * p.w + x];
            if v > m || v.is_nan() {
                (at, m) = (y * p.w + x, v);
            }
        }
    }
    (at, m)
}

/// (planes, h, w) -> (planes, h_out, w_out).
pub(crate) fn max_pool2d(x: &[f32], p: &MaxPool2dParams) -> Vec<f32> {
    let mut out = vec![0.0f32; p.planes * p.h_out * p.w_out];
    per_plane(&mut out, p.h_out * p.w_out, x, p.h * p.w, |o, plane| {
        for (i, v) in o.iter_mut().enumerate() {
            *v = window_max(plane, i / p.w_out, i % p.w_out, p).1;
        }
    });
    out
}

/// dL/dx (planes, h, w) of max_pool2d from the input `x` and the upstream gradient `dy`.
pub(crate) fn max_pool2d_backward(x: &[f32], dy: &[f32], p: &MaxPool2dParams) -> Vec<f32> {
    let mut dx = vec![0.0f32; p.planes * p.h * p.w];
    let (plane_out, plane_in) = (p.h_out * p.w_out, p.h * p.w);
    let per_task = (PAR_MIN / plane_in.max(1)).max(1);
    if dx.is_empty() {
        return dx;
    }
    dx.par_chunks_mut(plane_in * per_task).enumerate().for_each(|(task, chunk)| {
        for (i, d) in chunk.chunks_exact_mut(plane_in).enumerate() {
            let plane = task * per_task + i;
            let (x, g) = (&x[plane * plane_in..][..plane_in], &dy[plane * plane_out..][..plane_out]);
            for (o, &gv) in g.iter().enumerate() {
                d[window_max(x, o / p.w_out, o % p.w_out, p).0] += gv;
            }
        }
    });
    dx
}

/// (planes, h, w) -> (planes, h_out, w_out), each window's sum over kernel².
pub(crate) fn avg_pool2d(x: &[f32], p: &AvgPool2dParams) -> Vec<f32> {
    let mut out = vec![0.0f32; p.planes * p.h_out * p.w_out];
    let area = (p.kernel * p.kernel) as f32;
    per_plane(&mut out, p.h_out * p.w_out, x, p.h * p.w, |o, plane| {
        for (i, v) in o.iter_mut().enumerate() {
            let (rows, cols) = (window(i / p.w_out, p.h, p), window(i % p.w_out, p.w, p));
            let sum: f32 = rows.flat_map(|y| &plane[y * p.w + cols.start..y * p.w + cols.end]).sum();
            *v = sum / area;
        }
    });
    out
}

/// dL/dx (planes, h, w) of avg_pool2d from the upstream gradient `dy`.
pub(crate) fn avg_pool2d_backward(dy: &[f32], p: &AvgPool2dParams) -> Vec<f32> {
    let mut dx = vec![0.0f32; p.planes * p.h * p.w];
    let area = (p.kernel * p.kernel) as f32;
    per_plane(&mut dx, p.h * p.w, dy, p.h_out * p.w_out, |d, g| {
        for (o, &gv) in g.iter().enumerate() {
            let (rows, cols) = (window(o / p.w_out, p.h, p), window(o % p.w_out, p.w, p));
            let share = gv / area;
            for y in rows {
                d[y * p.w + cols.start..y * p.w + cols.end].iter_mut().for_each(|v| *v += share);
            }
        }
    });
    dx
}

/// PyTorch's adaptive bin `i` of `out` over an axis of `size`: floor(i·size/out) ..
/// ceil((i + 1)·size/out).
fn bin(i: usize, size: usize, out: usize) -> Range<usize> {
    i * size / out..((i + 1) * size).div_ceil(out)
}

/// (planes, h, w) -> (planes, h_out, w_out), each bin's mean.
pub(crate) fn adaptive_avg_pool2d(x: &[f32], p: &AdaptivePool2dParams) -> Vec<f32> {
    let mut out = vec![0.0f32; p.planes * p.h_out * p.w_out];
    per_plane(&mut out, p.h_out * p.w_out, x, p.h * p.w, |o, plane| {
        for (i, v) in o.iter_mut().enumerate() {
            let (rows, cols) = (bin(i / p.w_out, p.h, p.h_out), bin(i % p.w_out, p.w, p.w_out));
            let area = (rows.len() * cols.len()) as f32;
            let sum: f32 = rows.flat_map(|y| &plane[y * p.w + cols.start..y * p.w + cols.end]).sum();
            *v = sum / area;
        }
    });
    out
}

/// dL/dx (planes, h, w) of adaptive_avg_pool2d from the upstream gradient `dy`.
pub(crate) fn adaptive_avg_pool2d_backward(dy: &[f32], p: &AdaptivePool2dParams) -> Vec<f32> {
    let mut dx = vec![0.0f32; p.planes * p.h * p.w];
    per_plane(&mut dx, p.h * p.w, dy, p.h_out * p.w_out, |d, g| {
        for (o, &gv) in g.iter().enumerate() {
            let (rows, cols) = (bin(o / p.w_out, p.h, p.h_out), bin(o % p.w_out, p.w, p.w_out));
            let share = gv / (rows.len() * cols.len()) as f32;
            for y in rows {
                d[y * p.w + cols.start..y * p.w + cols.end].iter_mut().for_each(|v| *v += share);
            }
        }
    });
    dx
}
