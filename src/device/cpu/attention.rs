//! Attention, blocked over queries: for each (batch, head) and block of queries,
//! S = Q·Kᵀ·scale + mask (one GEMM), a masked softmax per row, then O = P·V (a
//! second GEMM). Only one block of scores exists at a time.

use rayon::prelude::*;

use super::gemm::sgemm;
use super::reduce::softmax_row;
use crate::device::contract::AttentionParams;

/// Queries per block: the block's scores (QUERY_BLOCK × kv_len) stay in L2.
const QUERY_BLOCK: usize = 128;

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
    // Score buffers are reused across the tasks of one rayon split: a fresh
    // multi-megabyte allocation per task costs more in page faults than its GEMMs.
    tasks.for_each_init(
        || (Vec::new(), Vec::new(), Vec::new()),
        |(q_scaled, scores, probs): &mut (Vec<f32>, Vec<f32>, Vec<f32>), (bh, q0, o)| {
            let rows = o.len() / d;
            let (b, h) = (bh / p.heads, bh % p.heads);
            let kb = &k[bh * sk * d..(bh + 1) * sk * d];
            let vb = &v[bh * sk * d..(bh + 1) * sk * d];
            // Scaling the queries costs rows·d multiplies instead of rows·kv_len.
            q_scaled.clear();
            q_scaled.extend(q[(bh * sq + q0) * d..(bh * sq + q0 + rows) * d].iter().map(|x| x * p.scale));
            scores.resize(rows * sk, 0.0);
            probs.resize(rows * sk, 0.0);
            sgemm(rows, sk, d, q_scaled, false, kb, true, scores, false);
            for (r, (srow, prow)) in scores.chunks_mut(sk).zip(probs.chunks_mut(sk)).enumerate() {
                let i = q0 + r;
                if let Some(m) = mask {
                    let [s0, s1, s2, s3] = p.mask_strides;
                    let base = b * s0 + h * s1 + i * s2;
                    srow.iter_mut().enumerate().for_each(|(j, s)| *s += m[base + j * s3]);
                }
                if p.causal && i + 1 < sk {
                    srow[i + 1..].fill(f32::NEG_INFINITY);
                }
                softmax_row(srow, prow, false);
            }
            sgemm(rows, d, sk, probs, false, vb, false, o, false);
        },
    );
    out
}
