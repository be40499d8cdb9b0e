//! Batched matmul on top of the blocked single-matrix GEMM.

use rayon::prelude::*;

use super::gemm::sgemm;
use crate::device::contract::MatmulShape;

/// Below this many multiply-adds a matrix runs on one thread and the batch is
/// spread over threads instead.
const SMALL_GEMM: usize = 1 << 18;

pub(crate) fn batched(a: &[f32], b: &[f32], s: &MatmulShape) -> Vec<f32> {
    let mn = s.m * s.n;
    let mut out = vec![0.0f32; s.batch * mn];
    if mn == 0 {
        return out;
    }
    let (a_len, b_len) = (s.m * s.k, s.k * s.n);
    let one = |i: usize, c: &mut [f32]| {
        let ai = &a[i * s.a_batch_stride..i * s.a_batch_stride + a_len];
        let bi = &b[i * s.b_batch_stride..i * s.b_batch_stride + b_len];
        sgemm(s.m, s.n, s.k, ai, s.trans_a, bi, s.trans_b, c, false);
    };
    if s.batch > 1 && s.m * s.n * s.k < SMALL_GEMM {
        out.par_chunks_mut(mn).enumerate().for_each(|(i, c)| one(i, c));
    } else {
        out.chunks_mut(mn).enumerate().for_each(|(i, c)| one(i, c));
    }
    out
}
