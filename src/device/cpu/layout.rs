//! Data movement: strided gathers (permute), rectangular copies (concat, split),
//! nearest upsampling and embedding lookup. Generic over the element type: these
//! move values without arithmetic, so no dtype is widened.

use rayon::prelude::*;

use super::PAR_MIN;
use crate::device::contract::Copy2d;
use crate::error::{shape_err, Result};

pub(crate) fn copy_strided<T: Copy + Send + Sync + Default>(x: &[T], dims: &[usize], strides: &[usize]) -> Vec<T> {
    let n: usize = dims.iter().product();
    let mut out = vec![T::default(); n];
    if n == 0 {
        return out;
    }
    let rank = dims.len();
    let (inner, s_inner) = (dims[rank - 1], strides[rank - 1]);
    let rows_per_task = (PAR_MIN / inner).max(1);
    out.par_chunks_mut(inner * rows_per_task).enumerate().for_each(|(task, chunk)| {
        for (r, row) in chunk.chunks_mut(inner).enumerate() {
            let mut rem = task * rows_per_task + r;
            let mut base = 0;
            for d in (0..rank - 1).rev() {
                base += (rem % dims[d]) * strides[d];
                rem /= dims[d];
            }
            for (j, o) in row.iter_mut().enumerate() {
                *o = x[base + j * s_inner];
            }
        }
    });
    out
}

pub(crate) fn copy2d<T: Copy>(src: &[T], dst: &mut [T], c: Copy2d) {
    for r in 0..c.rows {
        let s = c.src_offset + r * c.src_pitch;
        let d = c.dst_offset + r * c.dst_pitch;
        dst[d..d + c.cols].copy_from_slice(&src[s..s + c.cols]);
    }
}

pub(crate) fn upsample_nearest2x<T: Copy + Send + Sync + Default>(
    x: &[T],
    planes: usize,
    h: usize,
    w: usize,
) -> Vec<T> {
    let mut out = vec![T::default(); planes * 4 * h * w];
    if w == 0 {
        return out;
    }
    out.par_chunks_mut(4 * w).enumerate().for_each(|(row, o)| {
        let (p, y) = (row / h, row % h);
        let src = &x[(p * h + y) * w..(p * h + y + 1) * w];
        let (top, bottom) = o.split_at_mut(2 * w);
        for (j, &v) in src.iter().enumerate() {
            top[2 * j] = v;
            top[2 * j + 1] = v;
        }
        bottom.copy_from_slice(top);
    });
    out
}

pub(crate) fn embedding<T: Copy + Send + Sync + Default>(table: &[T], ids: &[u32], dim: usize) -> Result<Vec<T>> {
    let vocab = table.len() / dim.max(1);
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= vocab) {
        return shape_err("embedding", format!("id {bad} is out of range for a vocabulary of {vocab}"));
    }
    let mut out = vec![T::default(); ids.len() * dim];
    if dim > 0 {
        out.par_chunks_mut(dim).zip(ids).for_each(|(o, &i)| {
            o.copy_from_slice(&table[i as usize * dim..(i as usize + 1) * dim]);
        });
    }
    Ok(out)
}
