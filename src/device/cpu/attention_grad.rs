//! Attention's backward pass, blocked over queries like the forward. For each (batch, head)
//! and block of queries it recomputes P = softmax(Q·Kᵀ·scale + mask) (one GEMM), then
//! dV += Pᵀ·dO, dP = dO·Vᵀ, D = rowsum(P∘dP), dS = scale·P∘(dP − D), dQ = dS·K and
//! dK += dSᵀ·Q: five GEMMs against the forward's two. D equals rowsum(dO∘O) (O = P·V), and
//! taken from P and dP it needs no sixth GEMM to recompute O. Only one block of scores exists
//! at a time; with `causal` a block only visits the keys its last query sees.

use rayon::prelude::*;

use super::gemm::sgemm;
use super::reduce::softmax_row;
use crate::device::contract::AttentionParams;

/// Queries per block, as in the forward: the block's score rows stay in L2.
const QUERY_BLOCK: usize = 128;

/// The inputs of one attention backward, all contiguous f32.
pub(crate) struct AttentionInputs<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub mask: Option<&'a [f32]>,
    pub grad_out: &'a [f32],
}

/// Buffers reused across the blocks of one rayon split (fresh multi-megabyte allocations per
/// block cost more in page faults than their GEMMs).
#[derive(Default)]
struct Scratch {
    q_scaled: Vec<f32>,
    probs: Vec<f32>,
    /// The scores, then dP, then dS.
    work: Vec<f32>,
}

/// (dq, dk, dv), shaped as q, k and v.
pub(crate) fn attention_backward(x: &AttentionInputs, p: &AttentionParams) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (sq, sk, d) = (p.q_len, p.kv_len, p.head_dim);
    let heads = p.batch * p.heads;
    let mut dq = vec![0.0f32; heads * sq * d];
    let mut dk = vec![0.0f32; heads * sk * d];
    let mut dv = vec![0.0f32; heads * sk * d];
    if sq == 0 || sk == 0 || d == 0 {
        return (dq, dk, dv);
    }
    let per_head = dq.par_chunks_mut(sq * d).zip(dk.par_chunks_mut(sk * d)).zip(dv.par_chunks_mut(sk * d));
    per_head.enumerate().for_each_init(Scratch::default, |scratch, (bh, ((dq, dk), dv))| {
        for q0 in (0..sq).step_by(QUERY_BLOCK) {
            let grads = HeadGrads { dq: &mut dq[q0 * d..], dk: &mut *dk, dv: &mut *dv };
            query_block(x, p, bh, q0, scratch, grads);
        }
    });
    (dq, dk, dv)
}

/// One head's gradients: dq from the block's first query on, dk and dv whole.
struct HeadGrads<'a> {
    dq: &'a mut [f32],
    dk: &'a mut [f32],
    dv: &'a mut [f32],
}

/// The queries q0.. (at most QUERY_BLOCK) of head `bh`: writes their dq rows and adds their
/// share to dk and dv.
fn query_block(x: &AttentionInputs, p: &AttentionParams, bh: usize, q0: usize, s: &mut Scratch, g: HeadGrads) {
    let (sq, sk, d) = (p.q_len, p.kv_len, p.head_dim);
    let rows = QUERY_BLOCK.min(sq - q0);
    // Causal: no query of the block sees a key past its last one.
    let kv = if p.causal { sk.min(q0 + rows) } else { sk };
    let (b, h) = (bh / p.heads, bh % p.heads);
    let q_rows = (bh * sq + q0) * d..(bh * sq + q0 + rows) * d;
    let (qb, gb) = (&x.q[q_rows.clone()], &x.grad_out[q_rows]);
    let kb = &x.k[bh * sk * d..(bh * sk + kv) * d];
    let vb = &x.v[bh * sk * d..(bh * sk + kv) * d];

    // P, recomputed as the forward does.
    s.q_scaled.clear();
    s.q_scaled.extend(qb.iter().map(|v| v * p.scale));
    s.work.resize(rows * kv, 0.0);
    s.probs.resize(rows * kv, 0.0);
    sgemm(rows, kv, d, &s.q_scaled, false, kb, true, &mut s.work, false);
    for (r, (srow, prow)) in s.work.chunks_mut(kv).zip(s.probs.chunks_mut(kv)).enumerate() {
        let i = q0 + r;
        if let Some(m) = x.mask {
            let [s0, s1, s2, s3] = p.mask_strides;
            let base = b * s0 + h * s1 + i * s2;
            srow.iter_mut().enumerate().for_each(|(j, s)| *s += m[base + j * s3]);
        }
        if p.causal && i + 1 < kv {
            srow[i + 1..].fill(f32::NEG_INFINITY);
        }
        softmax_row(srow, prow, false);
    }

    sgemm(kv, d, rows, &s.probs, true, gb, false, &mut g.dv[..kv * d], true);
    sgemm(rows, kv, d, gb, false, vb, true, &mut s.work, false);
    for (dp, prow) in s.work.chunks_mut(kv).zip(s.probs.chunks(kv)) {
        let row_d = dot(prow, dp);
        dp.iter_mut().zip(prow).for_each(|(ds, &pv)| *ds = p.scale * pv * (*ds - row_d));
    }
    sgemm(rows, d, kv, &s.work, false, kb, false, &mut g.dq[..rows * d], false);
    sgemm(kv, d, rows, &s.work, true, qb, false, &mut g.dk[..kv * d], true);
}

/// Σ a·b with eight independent partial sums, so it vectorises.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}
