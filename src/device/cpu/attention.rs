//! Attention, blocked over queries: for each (batch, head) and block of queries,
//! S = Q·Kᵀ·scale + mask (one GEMM), a masked softmax per row, then O = P·V (a
//! second GEMM). Only one block of scores exists at a time.

use rayon::prelude::*;

use super::gemm::sgemm;
use super::reduce::softmax_row;
use crate::device::contract::AttentionParams;

/// Queries per block: the block's scores (QUERY_BLOCK × kv_len) stay in L2.
const QUERY_BLOCK: usize = 64;

pub(crate) fn attention(q: &[f32], k: &[f32], v: &[f32], mask: Option<&[f32]>, p: &AttentionParams) -> Vec<f32> {
    let (sq, sk, d) = (p.q_len, p.kv_len, p.head_dim);
    let mut out = vec![0.0f32; p.batch * p.heads * sq * d];
    if sq == 0 || d == 0 {
        return out;
    }
    // One task per (batch, head, query block); each owns its rows of the output.
    let tasks = out.par_chunks_mut(sq * d).enumerate().flat_map(|(bh, head)| {
        head.par_chunks_mut(QUERY_BLOCK * d).enumerate().map(move |(blk, o)| (bh, blk * QUERY_BLOCK, o))
    });
    tasks.for_each(|(bh, q0, o)| {
        let rows = o.len() / d;
        let (b, h) = (bh / p.heads, bh % p.heads);
        let qb = &q[(bh * sq + q0) * d..(bh * sq + q0 + rows) * d];
        let kb = &k[bh * sk * d..(bh + 1) * sk * d];
        let vb = &v[bh * sk * d..(bh + 1) * sk * d];
        let mut scores = vec![0.0f32; rows * sk];
        sgemm(rows, sk, d, qb, false, kb, true, &mut scores, false);
        let mut probs = vec![0.0f32; rows * sk];
        for (r, (srow, prow)) in scores.chunks_mut(sk).zip(probs.chunks_mut(sk)).enumerate() {
            let i = q0 + r;
            for (j, s) in srow.iter_mut().enumerate() {
                *s *= p.scale;
                if let Some(m) = mask {
                    let [s0, s1, s2, s3] = p.mask_strides;
                    *s += m[b * s0 + h * s1 + i * s2 + j * s3];
                }
                if p.causal && j > i {
                    *s = f32::NEG_INFINITY;
                }
            }
            softmax_row(srow, prow, false);
        }
        sgemm(rows, d, sk, &probs, false, vb, false, o, false);
    });
    out
}
