//! diffusers' ResnetBlock2D (pre-norm, SiLU, "default" time-embedding shift),
//! with or without a time embedding: the UNet's blocks and the VAE's.

use crate::error::{Error, Result};
use crate::nn::{Conv2d, GroupNorm, Linear, Weights};
use crate::tensor::Tensor;

/// The settings a block passes to all its ResNets.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ResnetOptions {
    pub groups: usize,
    pub eps: f32,
    /// The width of the time embedding; None for the VAE's ResNets.
    pub temb_channels: Option<usize>,
    /// The output is divided by this (the UNet's mid_block_scale_factor).
    pub output_scale_factor: f32,
}

pub(crate) struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    output_scale_factor: f32,
}

impl ResnetBlock2D {
    pub fn load(w: &Weights, in_ch: usize, out_ch: usize, opt: ResnetOptions) -> Result<ResnetBlock2D> {
        let time_emb_proj = match opt.temb_channels {
            Some(t) => Some(Linear::load(&w.pp("time_emb_proj"), t, out_ch, true)?),
            None => None,
        };
        let conv_shortcut = if in_ch != out_ch {
            Some(Conv2d::load_checked(&w.pp("conv_shortcut"), in_ch, out_ch, 1, 1, 0, true)?)
        } else {
            None
        };
        Ok(ResnetBlock2D {
            norm1: GroupNorm::load(&w.pp("norm1"), opt.groups, in_ch, opt.eps)?,
            conv1: Conv2d::load_checked(&w.pp("conv1"), in_ch, out_ch, 3, 1, 1, true)?,
            time_emb_proj,
            norm2: GroupNorm::load(&w.pp("norm2"), opt.groups, out_ch, opt.eps)?,
            conv2: Conv2d::load_checked(&w.pp("conv2"), out_ch, out_ch, 3, 1, 1, true)?,
            conv_shortcut,
            output_scale_factor: opt.output_scale_factor,
        })
    }

    /// The block on `x`. `temb_silu` is SiLU of the time embedding, (n, temb
    /// channels): every ResNet applies SiLU to the same embedding first, so the
    /// UNet computes it once.
    pub fn forward(&self, x: &Tensor, temb_silu: Option<&Tensor>) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward(x)?.silu()?)?;
        let h = match (&self.time_emb_proj, temb_silu) {
            (Some(proj), Some(t)) => {
                let t = proj.forward(t)?;
                h.add(&t.reshape([t.dims()[0], t.dims()[1], 1, 1])?)?
            }
            (None, _) => h,
            (Some(_), None) => return Err(Error::Usage("ResnetBlock2D: a time embedding is required".into())),
        };
        let h = self.conv2.forward(&self.norm2.forward(&h)?.silu()?)?;
        let skip = match &self.conv_shortcut {
            Some(conv) => conv.forward(x)?,
            None => x.clone(),
        };
        let out = skip.add(&h)?;
        if self.output_scale_factor == 1.0 {
            Ok(out)
        } else {
            out.scale(1.0 / self.output_scale_factor)
        }
    }
}
