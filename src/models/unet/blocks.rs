//! The down and up blocks of diffusers' unet_2d_blocks: DownBlock2D,
//! CrossAttnDownBlock2D and DownEncoderBlock2D (one type: ResNets, optional
//! transformers, optional downsampler), UpBlock2D and CrossAttnUpBlock2D (the
//! same with skip connections), and the VAE's UpDecoderBlock2D.

use super::resnet_block::{ResnetBlock2D, ResnetOptions};
use super::sampling::{Downsample2D, Upsample2D};
use super::transformer::{Transformer2DModel, TransformerOptions};
use crate::error::{shape_err, Error, Result};
use crate::nn::Weights;
use crate::tensor::Tensor;

fn load_transformers(
    w: &Weights,
    count: usize,
    channels: usize,
    opt: Option<TransformerOptions>,
) -> Result<Vec<Transformer2DModel>> {
    match opt {
        Some(opt) => (0..count).map(|i| Transformer2DModel::load(&w.pp("attentions").pp(i), channels, opt)).collect(),
        None => Ok(vec![]),
    }
}

/// ResNet `i`, then its transformer when the block has them.
fn resnet_then_attention(
    resnet: &ResnetBlock2D,
    attention: Option<&Transformer2DModel>,
    x: &Tensor,
    temb_silu: Option<&Tensor>,
    context: Option<&Tensor>,
) -> Result<Tensor> {
    let h = resnet.forward(x, temb_silu)?;
    match (attention, context) {
        (Some(a), Some(c)) => a.forward(&h, c),
        (None, _) => Ok(h),
        (Some(_), None) => Err(Error::Usage("a cross-attention block needs encoder_hidden_states".into())),
    }
}

pub(crate) struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    downsampler: Option<Downsample2D>,
}

impl DownBlock {
    /// `layers` ResNets from `in_ch` to `out_ch`, each followed by a
    /// transformer when `transformer` is given; a downsampler with
    /// `downsample_padding` when that is given.
    pub fn load(
        w: &Weights,
        in_ch: usize,
        out_ch: usize,
        layers: usize,
        resnet: ResnetOptions,
        transformer: Option<TransformerOptions>,
        downsample_padding: Option<usize>,
    ) -> Result<DownBlock> {
        let resnets = (0..layers)
            .map(|i| ResnetBlock2D::load(&w.pp("resnets").pp(i), if i == 0 { in_ch } else { out_ch }, out_ch, resnet))
            .collect::<Result<Vec<_>>>()?;
        let downsampler = match downsample_padding {
            Some(p) => Some(Downsample2D::load(&w.pp("downsamplers.0"), out_ch, p)?),
            None => None,
        };
        Ok(DownBlock { resnets, attentions: load_transformers(w, layers, out_ch, transformer)?, downsampler })
    }

    /// The block's output and the states it hands to the up blocks (after
    /// each ResNet or transformer, and after the downsampler).
    pub fn forward(
        &self,
        x: &Tensor,
        temb_silu: Option<&Tensor>,
        context: Option<&Tensor>,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let mut h = x.clone();
        let mut states = Vec::with_capacity(self.resnets.len() + 1);
        for (i, resnet) in self.resnets.iter().enumerate() {
            h = resnet_then_attention(resnet, self.attentions.get(i), &h, temb_silu, context)?;
            states.push(h.clone());
        }
        if let Some(down) = &self.downsampler {
            h = down.forward(&h)?;
            states.push(h.clone());
        }
        Ok((h, states))
    }
}

pub(crate) struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    upsampler: Option<Upsample2D>,
}

impl UpBlock {
    /// `layers` ResNets (layers_per_block + 1) over the input concatenated
    /// with a skip connection: the first takes `prev_out` channels plus a skip
    /// of `out_ch`, the last a skip of `in_ch` (the next level down's width).
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        w: &Weights,
        in_ch: usize,
        prev_out: usize,
        out_ch: usize,
        layers: usize,
        resnet: ResnetOptions,
        transformer: Option<TransformerOptions>,
        add_upsample: bool,
    ) -> Result<UpBlock> {
        let resnets = (0..layers)
            .map(|i| {
                let skip = if i + 1 == layers { in_ch } else { out_ch };
                let input = if i == 0 { prev_out } else { out_ch };
                ResnetBlock2D::load(&w.pp("resnets").pp(i), input + skip, out_ch, resnet)
            })
            .collect::<Result<Vec<_>>>()?;
        let upsampler = if add_upsample { Some(Upsample2D::load(&w.pp("upsamplers.0"), out_ch)?) } else { None };
        Ok(UpBlock { resnets, attentions: load_transformers(w, layers, out_ch, transformer)?, upsampler })
    }

    /// The block on `x`, taking one skip connection per ResNet from the end
    /// of `skips`. The upsampler resizes to the size of the next skip
    /// connection left, which is twice the input's unless a size was odd.
    pub fn forward(
        &self,
        x: &Tensor,
        skips: &mut Vec<Tensor>,
        temb_silu: Option<&Tensor>,
        context: Option<&Tensor>,
    ) -> Result<Tensor> {
        let mut h = x.clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            let Some(skip) = skips.pop() else {
                return shape_err("UNet up block", "fewer skip connections than ResNets");
            };
            h = Tensor::cat(&[&h, &skip], 1)?;
            h = resnet_then_attention(resnet, self.attentions.get(i), &h, temb_silu, context)?;
        }
        match &self.upsampler {
            Some(up) => up.forward(&h, skips.last().map(|s| (s.dims()[2], s.dims()[3]))),
            None => Ok(h),
        }
    }
}

/// The VAE decoder's UpDecoderBlock2D: ResNets without skip connections and
/// an optional ×2 upsampler.
pub(crate) struct UpDecoderBlock {
    resnets: Vec<ResnetBlock2D>,
    upsampler: Option<Upsample2D>,
}

impl UpDecoderBlock {
    pub fn load(
        w: &Weights,
        in_ch: usize,
        out_ch: usize,
        layers: usize,
        resnet: ResnetOptions,
        add_upsample: bool,
    ) -> Result<UpDecoderBlock> {
        let resnets = (0..layers)
            .map(|i| ResnetBlock2D::load(&w.pp("resnets").pp(i), if i == 0 { in_ch } else { out_ch }, out_ch, resnet))
            .collect::<Result<Vec<_>>>()?;
        let upsampler = if add_upsample { Some(Upsample2D::load(&w.pp("upsamplers.0"), out_ch)?) } else { None };
        Ok(UpDecoderBlock { resnets, upsampler })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for resnet in &self.resnets {
            h = resnet.forward(&h, None)?;
        }
        match &self.upsampler {
            Some(up) => up.forward(&h, None),
            None => Ok(h),
        }
    }
}
