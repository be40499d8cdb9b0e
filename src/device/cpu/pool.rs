//! Max pooling over square windows, PyTorch's max_pool2d: padding counts as -inf
//! and a NaN in a window wins, so the result is always one of the inputs.

use rayon::prelude::*;

use super::PAR_MIN;
use crate::device::contract::MaxPool2dParams;

/// (planes, h, w) -> (planes, h_out, w_out), one plane a task.
pub(crate) fn max_pool2d(x: &[f32], p: &MaxPool2dParams) -> Vec<f32> {
    let plane_out = p.h_out * p.w_out;
    let mut out = vec![0.0f32; p.planes * plane_out];
    if out.is_empty() {
        return out;
    }
    // Windows clipped to the input; the tensor layer keeps every clipped window non-empty.
    let span = |o: usize, size: usize| {
        let start = (o * p.stride).saturating_sub(p.padding);
        let end = (o * p.stride + p.kernel).saturating_sub(p.padding).min(size);
        start..end
    };
    let planes_per_task = (PAR_MIN / (p.h * p.w).max(1)).max(1);
    out.par_chunks_mut(plane_out * planes_per_task).enumerate().for_each(|(task, chunk)| {
        for (i, o) in chunk.chunks_mut(plane_out).enumerate() {
            let plane = &x[(task * planes_per_task + i) * p.h * p.w..][..p.h * p.w];
            for oy in 0..p.h_out {
                let rows = span(oy, p.h);
                for ox in 0..p.w_out {
                    let cols = span(ox, p.w);
                    let mut m = f32::NEG_INFINITY;
                    for y in rows.clone() {
                        for &v in &plane[y * p.w + cols.start..y * p.w + cols.end] {
                            if v > m || v.is_nan() {
                                m = v;
                            }
                        }
                    }
                    o[oy * p.w_out + ox] = m;
                }
            }
        }
    });
    out
}
