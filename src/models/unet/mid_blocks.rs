//! The mid-blocks: UNetMidBlock2DCrossAttn (the UNet's: ResNet, then
//! transformer and ResNet) and UNetMidBlock2D (the VAE's: ResNet, then
//! optional attention and ResNet).

use super::attention::SpatialAttention;
use super::resnet_block::{ResnetBlock2D, ResnetOptions};
use super::transformer::{Transformer2DModel, TransformerOptions};
use crate::error::Result;
use crate::nn::Weights;
use crate::tensor::Tensor;

pub(crate) struct UNetMidBlock2DCrossAttn {
    first: ResnetBlock2D,
    attention: Transformer2DModel,
    second: ResnetBlock2D,
}

impl UNetMidBlock2DCrossAttn {
    pub fn load(
        w: &Weights,
        channels: usize,
        resnet: ResnetOptions,
        transformer: TransformerOptions,
    ) -> Result<UNetMidBlock2DCrossAttn> {
        Ok(UNetMidBlock2DCrossAttn {
            first: ResnetBlock2D::load(&w.pp("resnets.0"), channels, channels, resnet)?,
            attention: Transformer2DModel::load(&w.pp("attentions.0"), channels, transformer)?,
            second: ResnetBlock2D::load(&w.pp("resnets.1"), channels, channels, resnet)?,
        })
    }

    pub fn forward(&self, x: &Tensor, temb_silu: &Tensor, context: &Tensor) -> Result<Tensor> {
        let h = self.first.forward(x, Some(temb_silu))?;
        let h = self.attention.forward(&h, context)?;
        self.second.forward(&h, Some(temb_silu))
    }
}

pub(crate) struct UNetMidBlock2D {
    first: ResnetBlock2D,
    attention: Option<SpatialAttention>,
    second: ResnetBlock2D,
}

impl UNetMidBlock2D {
    /// Without a time embedding; the attention (when `add_attention`) has one
    /// head over all channels, as in the VAE.
    pub fn load(w: &Weights, channels: usize, resnet: ResnetOptions, add_attention: bool) -> Result<UNetMidBlock2D> {
        let attention = if add_attention {
            Some(SpatialAttention::load(&w.pp("attentions.0"), channels, 1, resnet.groups, resnet.eps)?)
        } else {
            None
        };
        Ok(UNetMidBlock2D {
            first: ResnetBlock2D::load(&w.pp("resnets.0"), channels, channels, resnet)?,
            attention,
            second: ResnetBlock2D::load(&w.pp("resnets.1"), channels, channels, resnet)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.first.forward(x, None)?;
        let h = match &self.attention {
            Some(a) => a.forward(&h)?,
            None => h,
        };
        self.second.forward(&h, None)
    }
}
