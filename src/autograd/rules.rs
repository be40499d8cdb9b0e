//! The gradient of every recorded op: given d loss / d output, the gradients of
//! the op's inputs in the order of `Op::inputs`, None for an input that is not
//! tracked (so a frozen layer's weight gradient is never computed).

use crate::device::{BinaryOp, UnaryOp};
use crate::error::{Error, Result};
use crate::tensor::graph::Op;
use crate::tensor::Tensor;

pub(super) fn input_grads(op: &Op, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
    let when = |tracked: bool, f: &dyn Fn() -> Result<Tensor>| -> Result<Option<Tensor>> {
        if tracked {
            f().map(Some)
        } else {
            Ok(None)
        }
    };
    Ok(match op {
        Op::Leaf => vec![],
        Op::NotDifferentiable { op, .. } => {
            return Err(Error::Training(format!("backward: foil has no gradient for {op}")));
        }
        Op::Reshape { x } => vec![Some(g.reshape(x.dims().to_vec())?)],
        Op::ToDtype { x } => vec![Some(g.to_dtype(x.dtype())?)],
        Op::Permute { perm, .. } => {
            let mut inverse = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inverse[p] = i;
            }
            vec![Some(g.permute(&inverse)?)]
        }
        Op::Cat { parts, axis } => {
            let mut start = 0;
            let mut out = Vec::with_capacity(parts.len());
            for p in parts {
                let len = p.dims()[*axis];
                out.push(when(p.is_tracked(), &|| g.narrow(*axis, start, len))?);
                start += len;
            }
            out
        }
        Op::Narrow { x, axis, start } => vec![Some(pad_axis(g, x.dims(), *axis, *start)?)],
        Op::BroadcastTo { x } => vec![Some(sum_to(g, x.dims())?)],
        Op::Unary { x, op } => vec![Some(x.activation_backward(*op, g)?)],
        Op::Relu { out, .. } => vec![Some(out.activation_backward(UnaryOp::Relu, g)?)],
        Op::Scale { factor, .. } => vec![Some(g.scale(*factor)?)],
        Op::Clamp { x, lo, hi } => vec![Some(x.clamp_backward(*lo, *hi, g)?)],
        Op::Geglu { x } => vec![Some(x.geglu_backward(g)?)],
        Op::AddSub { lhs, rhs, sub } => vec![
            when(lhs.is_tracked(), &|| sum_to(g, lhs.dims()))?,
            when(rhs.is_tracked(), &|| {
                let d = sum_to(g, rhs.dims())?;
                if *sub {
                    d.scale(-1.0)
                } else {
                    Ok(d)
                }
            })?,
        ],
        Op::MulDiv { lhs, rhs, op } => mul_div(*op, lhs, rhs, g)?,
        Op::Sum { x, axis } => vec![Some(unreduce(g, x.dims(), *axis)?)],
        Op::Mean { x, axis } => {
            let len = x.dims()[*axis].max(1);
            vec![Some(unreduce(g, x.dims(), *axis)?.scale(1.0 / len as f32)?)]
        }
        Op::Softmax { out, log } => vec![Some(out.softmax_backward(g, *log)?)],
        Op::Matmul { a, b, trans_a, trans_b } => matmul(a, b, *trans_a, *trans_b, g)?,
        Op::LayerNorm { x, weight, eps, .. } => {
            let (dx, dw, db) = x.layer_norm_backward(weight, g, *eps)?;
            vec![Some(dx), Some(dw), Some(db)]
        }
        Op::GroupNorm { x, weight, groups, eps, .. } => {
            let (dx, dw, db) = x.group_norm_backward(*groups, weight, g, *eps)?;
            vec![Some(dx), Some(dw), Some(db)]
        }
        Op::BatchNorm { x, weight, mean, var, eps, .. } => {
            let (dx, dw, db) = x.batch_norm_backward(weight, g, mean, var, *eps)?;
            vec![Some(dx), Some(dw), Some(db)]
        }
        Op::Conv2d { x, weight, bias, options } => {
            let mut out = vec![
                when(x.is_tracked(), &|| g.conv2d_input_grad(weight, x.dims(), *options))?,
                when(weight.is_tracked(), &|| g.conv2d_weight_grad(x, weight.dims(), *options))?,
            ];
            if let Some(b) = bias {
                out.push(when(b.is_tracked(), &|| per_channel_sum(g))?);
            }
            out
        }
        Op::UpsampleNearest2x { x } => {
            // Each input pixel fed a 2×2 block: its gradient is the block's sum.
            let d = g.dims();
            let (h2, w2) = (d[d.len() - 2], d[d.len() - 1]);
            let planes = g.numel() / (h2 * w2).max(1);
            let pooled = g.reshape([planes, 1, h2, w2])?.avg_pool2d(2, 2, 0)?.scale(4.0)?;
            vec![Some(pooled.reshape(x.dims().to_vec())?)]
        }
        Op::Embedding { table, ids } => vec![Some(Tensor::embedding_backward(g, ids, table.dims()[0])?)],
        Op::Attention { q, k, v, mask, causal, scale } => {
            let (dq, dk, dv) = q.attention_backward(k, v, mask.as_ref(), *causal, Some(*scale), g)?;
            vec![Some(dq), Some(dk), Some(dv)]
        }
        Op::MaxPool2d { x, kernel, stride, padding } => {
            vec![Some(g.max_pool2d_backward(x, *kernel, *stride, *padding)?)]
        }
        Op::AvgPool2d { x, kernel, stride, padding } => {
            vec![Some(g.avg_pool2d_backward(x.dims(), *kernel, *stride, *padding)?)]
        }
        Op::AdaptiveAvgPool2d { x } => vec![Some(g.adaptive_avg_pool2d_backward(x.dims())?)],
        Op::CrossEntropy { logits, labels, smoothing } => {
            vec![Some(logits.cross_entropy_backward(labels, g, *smoothing)?)]
        }
    })
}

/// The gradient of a broadcast operand: `g` summed over the dimensions the
/// operand was broadcast along, in the operand's shape.
fn sum_to(g: &Tensor, dims: &[usize]) -> Result<Tensor> {
    if g.dims() == dims {
        return Ok(g.clone());
    }
    let lead = g.rank() - dims.len();
    let mut acc = g.clone();
    for axis in (0..g.rank()).rev() {
        let own = if axis < lead { 1 } else { dims[axis - lead] };
        if own == 1 && g.dims()[axis] != 1 {
            acc = acc.sum(axis as isize, true)?;
        }
    }
    acc.reshape(dims.to_vec())
}

/// d(a·b) = (g·b, g·a) and d(a/b) = (g/b, −g·a/b²), each summed to its operand's shape.
fn mul_div(op: BinaryOp, lhs: &Tensor, rhs: &Tensor, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
    let dl = |d: Tensor| sum_to(&d, lhs.dims());
    let dr = |d: Tensor| sum_to(&d, rhs.dims());
    let (l, r) = (lhs.is_tracked(), rhs.is_tracked());
    Ok(match op {
        BinaryOp::Div => vec![
            l.then(|| dl(g.div(rhs)?)).transpose()?,
            r.then(|| dr(g.mul(&lhs.div(rhs)?.div(rhs)?)?.scale(-1.0)?)).transpose()?,
        ],
        _ => vec![l.then(|| dl(g.mul(rhs)?)).transpose()?, r.then(|| dr(g.mul(lhs)?)).transpose()?],
    })
}

/// The gradient of a sum over `axis`: `g` repeated along it.
fn unreduce(g: &Tensor, dims: &[usize], axis: usize) -> Result<Tensor> {
    let mut kept = dims.to_vec();
    kept[axis] = 1;
    g.reshape(kept)?.broadcast_to(dims)
}

/// C = op(A)·op(B): dA = G·op(B)ᵀ (or its transpose), dB = op(A)ᵀ·G (or its
/// transpose); an operand shared across the batch sums its batch of gradients.
fn matmul(a: &Tensor, b: &Tensor, ta: bool, tb: bool, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
    let da = if a.is_tracked() {
        let d = if ta { b.matmul_t(g, tb, true)? } else { g.matmul_t(b, false, !tb)? };
        Some(sum_batch_to(d, a.dims())?)
    } else {
        None
    };
    let db = if b.is_tracked() {
        let d = if tb { g.matmul_t(a, true, ta)? } else { a.matmul_t(g, !ta, false)? };
        Some(sum_batch_to(d, b.dims())?)
    } else {
        None
    };
    Ok(vec![da, db])
}

fn sum_batch_to(d: Tensor, dims: &[usize]) -> Result<Tensor> {
    let own: usize = dims.iter().product();
    if d.numel() == own {
        return d.reshape(dims.to_vec());
    }
    let (r, c) = (d.dims()[d.rank() - 2], d.dims()[d.rank() - 1]);
    d.reshape([d.numel() / (r * c), r, c])?.sum(0, false)?.reshape(dims.to_vec())
}

/// Σ over batch and space of an (n, c, h, w) gradient: a convolution's bias gradient.
fn per_channel_sum(g: &Tensor) -> Result<Tensor> {
    let (n, c) = (g.dims()[0], g.dims()[1]);
    g.reshape([n, c, usize::MAX])?.sum(2, false)?.sum(0, false)
}

/// `g` placed at `start` along `axis` of a zero tensor of shape `dims`: the gradient of narrow.
fn pad_axis(g: &Tensor, dims: &[usize], axis: usize, start: usize) -> Result<Tensor> {
    let zeros = |n: usize| -> Result<Tensor> {
        let mut d = dims.to_vec();
        d[axis] = n;
        Tensor::zeros(d, g.dtype(), &g.device())
    };
    let after = dims[axis] - start - g.dims()[axis];
    let mut parts = vec![];
    if start > 0 {
        parts.push(zeros(start)?);
    }
    parts.push(g.clone());
    if after > 0 {
        parts.push(zeros(after)?);
    }
    Tensor::cat(&parts.iter().collect::<Vec<_>>(), axis)
}
