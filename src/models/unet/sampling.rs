//! diffusers' Downsample2D and Upsample2D with their convolutions, as the
//! UNet and the VAE use them.

use super::ops::{pad_right_bottom, resize_nearest};
use crate::error::Result;
use crate::nn::{Conv2d, Weights};
use crate::tensor::Tensor;

/// A 3×3 convolution with stride 2. Padding 0 means diffusers' asymmetric
/// padding: one zero row and column at the bottom and right (the VAE encoder).
pub(crate) struct Downsample2D {
    conv: Conv2d,
    pad_right_bottom: bool,
}

impl Downsample2D {
    pub fn load(w: &Weights, channels: usize, padding: usize) -> Result<Downsample2D> {
        Ok(Downsample2D {
            conv: Conv2d::load_checked(&w.pp("conv"), channels, channels, 3, 2, padding, true)?,
            pad_right_bottom: padding == 0,
        })
    }

    /// The padding copies the input twice; a convolution with asymmetric padding would not.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.pad_right_bottom {
            self.conv.forward(&pad_right_bottom(x)?)
        } else {
            self.conv.forward(x)
        }
    }
}

/// Nearest ×2 upsampling (or to the size of the skip connection it meets) and
/// a 3×3 convolution.
pub(crate) struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    pub fn load(w: &Weights, channels: usize) -> Result<Upsample2D> {
        Ok(Upsample2D { conv: Conv2d::load_checked(&w.pp("conv"), channels, channels, 3, 1, 1, true)? })
    }

    /// `size`: the output height and width when they are not twice the input's
    /// (diffusers' upsample_size, for latents not divisible by 2^levels).
    /// The upsampled image is materialised before the convolution; a fused
    /// kernel would read each input pixel for four output pixels instead.
    pub fn forward(&self, x: &Tensor, size: Option<(usize, usize)>) -> Result<Tensor> {
        let up = match size {
            Some(size) => resize_nearest(x, size)?,
            None => x.upsample_nearest2x()?,
        };
        self.conv.forward(&up)
    }
}
