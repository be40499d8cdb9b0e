//! diffusers' Attention: multi-head attention over token sequences (the
//! transformer blocks' self- and cross-attention), and the same layer over an
//! image with a group norm and a residual (the VAE's mid-block attention).

use crate::error::{shape_err, Result};
use crate::nn::{GroupNorm, Linear, Weights};
use crate::tensor::Tensor;

/// to_q, to_k, to_v, to_out.0 and softmax(q·kᵀ/√d)·v per head. Checkpoints
/// from before diffusers 0.14 name them query, key, value and proj_attn.
pub(crate) struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
}

impl Attention {
    /// `heads` heads of `head_dim` over queries of `query_dim` and keys and
    /// values from `context_dim` (equal to `query_dim` for self-attention).
    /// `qkv_bias`: whether the q, k, v projections have a bias (the output one always has).
    pub fn load(
        w: &Weights,
        query_dim: usize,
        context_dim: usize,
        heads: usize,
        head_dim: usize,
        qkv_bias: bool,
    ) -> Result<Attention> {
        let inner = heads * head_dim;
        let deprecated = !w.contains("to_q.weight") && w.contains("query.weight");
        let [q, k, v, out] =
            if deprecated { ["query", "key", "value", "proj_attn"] } else { ["to_q", "to_k", "to_v", "to_out.0"] };
        Ok(Attention {
            to_q: Linear::load(&w.pp(q), query_dim, inner, qkv_bias)?,
            to_k: Linear::load(&w.pp(k), context_dim, inner, qkv_bias)?,
            to_v: Linear::load(&w.pp(v), context_dim, inner, qkv_bias)?,
            to_out: Linear::load(&w.pp(out), inner, query_dim, true)?,
            heads,
        })
    }

    /// Attention of `x` (n, len, query_dim) over `context` (n, context_len,
    /// context_dim), or over itself when `context` is None.
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let context = context.unwrap_or(x);
        let q = self.split_heads(&self.to_q.forward(x)?)?;
        let (n, len) = (q.dims()[0], q.dims()[2]);
        let k = self.split_heads(&self.to_k.forward(context)?)?;
        let v = self.split_heads(&self.to_v.forward(context)?)?;
        let o = q.attention(&k, &v, None, false, None)?;
        let inner = self.to_q.out_dim();
        let o =
            if self.heads == 1 { o.reshape([n, len, inner])? } else { o.transpose(1, 2)?.reshape([n, len, inner])? };
        self.to_out.forward(&o)
    }

    /// (n, len, heads·d) as (n, heads, len, d).
    fn split_heads(&self, t: &Tensor) -> Result<Tensor> {
        let &[n, len, inner] = t.dims() else {
            return shape_err("attention", format!("input {} is not (batch, len, dim)", t.shape()));
        };
        let d = inner / self.heads;
        if self.heads == 1 {
            return t.reshape([n, 1, len, d]);
        }
        t.reshape([n, len, self.heads, d])?.transpose(1, 2)
    }
}

/// Attention over the pixels of (n, c, h, w) after a group norm, plus the
/// input: the attention of the VAE's UNetMidBlock2D.
pub(crate) struct SpatialAttention {
    group_norm: GroupNorm,
    attention: Attention,
}

impl SpatialAttention {
    pub fn load(w: &Weights, channels: usize, heads: usize, groups: usize, eps: f32) -> Result<SpatialAttention> {
        Ok(SpatialAttention {
            group_norm: GroupNorm::load(&w.pp("group_norm"), groups, channels, eps)?,
            attention: Attention::load(w, channels, channels, heads, channels / heads, true)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let &[n, c, h, w] = x.dims() else {
            return shape_err("attention", format!("input {} is not (n, c, h, w)", x.shape()));
        };
        let tokens = self.group_norm.forward(x)?.reshape([n, c, h * w])?.transpose(1, 2)?;
        let out = self.attention.forward(&tokens, None)?;
        out.transpose(1, 2)?.reshape([n, c, h, w])?.add(x)
    }
}
