//! diffusers' Transformer2DModel over continuous inputs, as the UNet's
//! cross-attention blocks use it: group norm, proj_in (a 1×1 convolution, or
//! a linear layer with use_linear_projection), BasicTransformerBlocks, proj_out
//! and the residual.

use super::attention::Attention;
use crate::error::{shape_err, Result};
use crate::nn::{Conv2d, GroupNorm, LayerNorm, Linear, Weights};
use crate::tensor::Tensor;

/// How a Transformer2DModel is built inside a UNet block.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TransformerOptions {
    pub heads: usize,
    pub layers: usize,
    pub cross_attention_dim: usize,
    pub groups: usize,
    pub use_linear_projection: bool,
}

/// proj_in / proj_out: a 1×1 convolution on (n, c, h, w) or a linear layer on
/// the (n, h·w, c) tokens.
enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

impl Projection {
    fn load(w: &Weights, linear: bool, in_dim: usize, out_dim: usize) -> Result<Projection> {
        Ok(if linear {
            Projection::Linear(Linear::load(w, in_dim, out_dim, true)?)
        } else {
            Projection::Conv(Conv2d::load_checked(w, in_dim, out_dim, 1, 1, 0, true)?)
        })
    }
}

pub(crate) struct Transformer2DModel {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Projection,
}

impl Transformer2DModel {
    pub fn load(w: &Weights, channels: usize, opt: TransformerOptions) -> Result<Transformer2DModel> {
        // As diffusers: head_dim = channels // heads, inner = heads · head_dim.
        let head_dim = channels / opt.heads;
        let inner = opt.heads * head_dim;
        let blocks = (0..opt.layers)
            .map(|i| BasicTransformerBlock::load(&w.pp("transformer_blocks").pp(i), inner, head_dim, opt))
            .collect::<Result<Vec<_>>>()?;
        Ok(Transformer2DModel {
            norm: GroupNorm::load(&w.pp("norm"), opt.groups, channels, 1e-6)?,
            proj_in: Projection::load(&w.pp("proj_in"), opt.use_linear_projection, channels, inner)?,
            blocks,
            proj_out: Projection::load(&w.pp("proj_out"), opt.use_linear_projection, inner, channels)?,
        })
    }

    /// The model on `x` (n, c, h, w), attending to `context` (n, seq, cross_attention_dim).
    pub fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let &[n, _, h, w] = x.dims() else {
            return shape_err("Transformer2DModel", format!("input {} is not (n, c, h, w)", x.shape()));
        };
        let normed = self.norm.forward(x)?;
        let to_tokens = |t: &Tensor| -> Result<Tensor> {
            let dim = t.dims()[1];
            t.permute(&[0, 2, 3, 1])?.reshape([n, h * w, dim])
        };
        let mut tokens = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(&conv.forward(&normed)?)?,
            Projection::Linear(linear) => linear.forward(&to_tokens(&normed)?)?,
        };
        for block in &self.blocks {
            tokens = block.forward(&tokens, context)?;
        }
        let to_image = |t: &Tensor| -> Result<Tensor> {
            let dim = t.dims()[2];
            t.reshape([n, h, w, dim])?.permute(&[0, 3, 1, 2])
        };
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(&to_image(&tokens)?)?,
            Projection::Linear(linear) => to_image(&linear.forward(&tokens)?)?,
        };
        out.add(x)
    }
}

/// Self-attention, cross-attention and a GEGLU feed-forward, each after a
/// layer norm and added to its input.
struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: FeedForward,
}

impl BasicTransformerBlock {
    fn load(w: &Weights, dim: usize, head_dim: usize, opt: TransformerOptions) -> Result<BasicTransformerBlock> {
        let heads = opt.heads;
        Ok(BasicTransformerBlock {
            norm1: LayerNorm::load(&w.pp("norm1"), dim, 1e-5)?,
            attn1: Attention::load(&w.pp("attn1"), dim, dim, heads, head_dim, false)?,
            norm2: LayerNorm::load(&w.pp("norm2"), dim, 1e-5)?,
            attn2: Attention::load(&w.pp("attn2"), dim, opt.cross_attention_dim, heads, head_dim, false)?,
            norm3: LayerNorm::load(&w.pp("norm3"), dim, 1e-5)?,
            ff: FeedForward::load(&w.pp("ff"), dim)?,
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let x = self.attn1.forward(&self.norm1.forward(x)?, None)?.add(x)?;
        let x = self.attn2.forward(&self.norm2.forward(&x)?, Some(context))?.add(&x)?;
        self.ff.forward(&self.norm3.forward(&x)?)?.add(&x)
    }
}

/// net.0.proj to twice the inner width, value · GELU(gate), net.2 back (GEGLU, mult 4).
struct FeedForward {
    proj: Linear,
    out: Linear,
}

impl FeedForward {
    fn load(w: &Weights, dim: usize) -> Result<FeedForward> {
        let inner = 4 * dim;
        Ok(FeedForward {
            proj: Linear::load(&w.pp("net.0.proj"), dim, 2 * inner, true)?,
            out: Linear::load(&w.pp("net.2"), inner, dim, true)?,
        })
    }

    /// The fused GEGLU reads the projection once and writes only the product.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.out.forward(&self.proj.forward(x)?.geglu()?)
    }
}
