//! diffusers' AutoencoderKL (the Stable Diffusion VAE) under its public names:
//! an encoder from images in [-1, 1] to the latent distribution's mean and
//! log-variance, and a decoder from latents back to images. Built from the
//! UNet's blocks (ResNets, attention, up- and downsamplers, mid-block).

use std::path::Path;

use super::unet::blocks::{DownBlock, UpDecoderBlock};
use super::unet::config::JsonConfig;
use super::unet::mid_blocks::UNetMidBlock2D;
use super::unet::resnet_block::ResnetOptions;
use crate::device::{DType, Device};
use crate::error::{shape_err, Result};
use crate::nn::{Conv2d, GroupNorm, Weights};
use crate::tensor::Tensor;

/// The sizes of an AutoencoderKL, from its config.json.
struct VaeConfig {
    in_channels: usize,
    out_channels: usize,
    block_out_channels: Vec<usize>,
    layers_per_block: usize,
    latent_channels: usize,
    norm_num_groups: usize,
    scaling_factor: f32,
    use_quant_conv: bool,
    use_post_quant_conv: bool,
    mid_block_add_attention: bool,
}

impl VaeConfig {
    fn open(path: &Path) -> Result<VaeConfig> {
        let c = JsonConfig::open(path)?;
        c.require_silu("act_fn")?;
        // Latent statistics other than a scale are the caller's to apply; refuse rather than ignore them.
        for key in ["shift_factor", "latents_mean", "latents_std"] {
            c.reject_set(key)?;
        }
        let block_out_channels = c.usize_list_or("block_out_channels", &[64])?;
        let blocks = block_out_channels.len();
        for (key, want) in [("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")] {
            let types = c.str_list_or(key, &[want])?;
            if types.len() != blocks {
                return c.error(format!("{key} has {} entries for {blocks} block_out_channels", types.len()));
            }
            if let Some(other) = types.iter().find(|t| *t != want) {
                return c.error(format!("unsupported block type '{other}' in {key}"));
            }
        }
        let norm_num_groups = c.usize_or("norm_num_groups", 32)?;
        if blocks == 0 || block_out_channels.iter().any(|&ch| norm_num_groups == 0 || ch % norm_num_groups != 0) {
            return c.error(format!(
                "block_out_channels {block_out_channels:?} do not split into {norm_num_groups} groups"
            ));
        }
        Ok(VaeConfig {
            in_channels: c.usize_or("in_channels", 3)?,
            out_channels: c.usize_or("out_channels", 3)?,
            layers_per_block: c.usize_or("layers_per_block", 1)?,
            latent_channels: c.usize_or("latent_channels", 4)?,
            norm_num_groups,
            scaling_factor: c.f64_or("scaling_factor", 0.18215)? as f32,
            use_quant_conv: c.bool_or("use_quant_conv", true)?,
            use_post_quant_conv: c.bool_or("use_post_quant_conv", true)?,
            mid_block_add_attention: c.bool_or("mid_block_add_attention", true)?,
            block_out_channels,
        })
    }

    fn resnet(&self) -> ResnetOptions {
        ResnetOptions { groups: self.norm_num_groups, eps: 1e-6, temb_channels: None, output_scale_factor: 1.0 }
    }
}

/// Images to the moments of the latent distribution (2 · latent channels).
struct Encoder {
    conv_in: Conv2d,
    down_blocks: Vec<DownBlock>,
    mid_block: UNetMidBlock2D,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    fn load(w: &Weights, c: &VaeConfig) -> Result<Encoder> {
        let ch = &c.block_out_channels;
        let top = ch[ch.len() - 1];
        let down_blocks = (0..ch.len())
            .map(|i| {
                let in_ch = if i == 0 { ch[0] } else { ch[i - 1] };
                // The encoder's downsamplers pad right and bottom (diffusers' padding 0).
                let padding = (i + 1 < ch.len()).then_some(0);
                let wb = w.pp("down_blocks").pp(i);
                DownBlock::load(&wb, in_ch, ch[i], c.layers_per_block, c.resnet(), None, padding)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Encoder {
            conv_in: Conv2d::load_checked(&w.pp("conv_in"), c.in_channels, ch[0], 3, 1, 1, true)?,
            down_blocks,
            mid_block: UNetMidBlock2D::load(&w.pp("mid_block"), top, c.resnet(), c.mid_block_add_attention)?,
            conv_norm_out: GroupNorm::load(&w.pp("conv_norm_out"), c.norm_num_groups, top, 1e-6)?,
            conv_out: Conv2d::load_checked(&w.pp("conv_out"), top, 2 * c.latent_channels, 3, 1, 1, true)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.conv_in.forward(x)?;
        for block in &self.down_blocks {
            h = block.forward(&h, None, None)?.0;
        }
        let h = self.mid_block.forward(&h)?;
        self.conv_out.forward(&self.conv_norm_out.forward(&h)?.silu()?)
    }
}

/// Latents to images.
struct Decoder {
    conv_in: Conv2d,
    mid_block: UNetMidBlock2D,
    up_blocks: Vec<UpDecoderBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    fn load(w: &Weights, c: &VaeConfig) -> Result<Decoder> {
        let reversed: Vec<usize> = c.block_out_channels.iter().rev().copied().collect();
        let top = reversed[0];
        let up_blocks = (0..reversed.len())
            .map(|i| {
                let in_ch = if i == 0 { top } else { reversed[i - 1] };
                let wb = w.pp("up_blocks").pp(i);
                let add_upsample = i + 1 < reversed.len();
                UpDecoderBlock::load(&wb, in_ch, reversed[i], c.layers_per_block + 1, c.resnet(), add_upsample)
            })
            .collect::<Result<Vec<_>>>()?;
        let bottom = c.block_out_channels[0];
        Ok(Decoder {
            conv_in: Conv2d::load_checked(&w.pp("conv_in"), c.latent_channels, top, 3, 1, 1, true)?,
            mid_block: UNetMidBlock2D::load(&w.pp("mid_block"), top, c.resnet(), c.mid_block_add_attention)?,
            up_blocks,
            conv_norm_out: GroupNorm::load(&w.pp("conv_norm_out"), c.norm_num_groups, bottom, 1e-6)?,
            conv_out: Conv2d::load_checked(&w.pp("conv_out"), bottom, c.out_channels, 3, 1, 1, true)?,
        })
    }

    fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let mut h = self.mid_block.forward(&self.conv_in.forward(z)?)?;
        for block in &self.up_blocks {
            h = block.forward(&h)?;
        }
        self.conv_out.forward(&self.conv_norm_out.forward(&h)?.silu()?)
    }
}

/// The Stable Diffusion VAE, loaded from a diffusers `vae/` folder
/// (config.json and the safetensors weights). Checkpoints with the current
/// attention names (to_q, to_k, to_v, to_out.0) and with the deprecated ones
/// (query, key, value, proj_attn) both load.
pub struct AutoencoderKL {
    config: VaeConfig,
    dtype: DType,
    device: Device,
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
}

impl AutoencoderKL {
    /// The model in `dir` (config.json and its `*.safetensors`), computing in
    /// `dtype` on `device`. Every tensor of the checkpoint must be used.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<AutoencoderKL> {
        // The config first: a missing or wrong folder is reported as its config.json.
        let config = VaeConfig::open(&dir.join("config.json"))?;
        AutoencoderKL::build(config, &Weights::open_dir(dir, dtype, device)?)
    }

    /// The model of the diffusers `config_file` with weights `w` (tensors in
    /// memory under diffusers' names, for training). Every tensor must be used.
    pub fn from_weights(config_file: &Path, w: &Weights) -> Result<AutoencoderKL> {
        AutoencoderKL::build(VaeConfig::open(config_file)?, w)
    }

    fn build(config: VaeConfig, w: &Weights) -> Result<AutoencoderKL> {
        let lat = config.latent_channels;
        let quant_conv = if config.use_quant_conv {
            Some(Conv2d::load_checked(&w.pp("quant_conv"), 2 * lat, 2 * lat, 1, 1, 0, true)?)
        } else {
            None
        };
        let post_quant_conv = if config.use_post_quant_conv {
            Some(Conv2d::load_checked(&w.pp("post_quant_conv"), lat, lat, 1, 1, 0, true)?)
        } else {
            None
        };
        let model = AutoencoderKL {
            dtype: w.dtype(),
            device: w.device().clone(),
            encoder: Encoder::load(&w.pp("encoder"), &config)?,
            decoder: Decoder::load(&w.pp("decoder"), &config)?,
            quant_conv,
            post_quant_conv,
            config,
        };
        w.check_all_used()?;
        Ok(model)
    }

    /// The factor latents are multiplied by after encoding and divided by
    /// before decoding (config scaling_factor, 0.18215 by default).
    pub fn scaling_factor(&self) -> f32 {
        self.config.scaling_factor
    }

    pub fn latent_channels(&self) -> usize {
        self.config.latent_channels
    }

    /// How many image pixels one latent pixel spans per side: 2^(levels − 1).
    pub fn downscale(&self) -> usize {
        1 << (self.config.block_out_channels.len() - 1)
    }

    fn check_input(&self, op: &'static str, x: &Tensor, channels: usize) -> Result<Tensor> {
        if x.rank() != 4 || x.dims()[1] != channels {
            return shape_err(op, format!("input {} is not (n, {channels}, h, w)", x.shape()));
        }
        x.to_device(&self.device)?.to_dtype(self.dtype)
    }

    /// The latent distribution of `images` (n, in_channels, h, w) in [-1, 1]:
    /// its mean and its log-variance clamped to [-30, 20], each (n,
    /// latent_channels, h/downscale, w/downscale) with odd sizes rounded down at
    /// each level, in the model's dtype.
    pub fn encode(&self, images: &Tensor) -> Result<(Tensor, Tensor)> {
        let x = self.check_input("AutoencoderKL::encode", images, self.config.in_channels)?;
        let h = self.encoder.forward(&x)?;
        let moments = match &self.quant_conv {
            Some(conv) => conv.forward(&h)?,
            None => h,
        };
        let lat = self.config.latent_channels;
        let mut parts = moments.split(&[lat, lat], 1)?;
        let logvar = parts.remove(1).clamp(-30.0, 20.0)?;
        Ok((parts.remove(0), logvar))
    }

    /// The images (n, out_channels, h·downscale, w·downscale), about [-1, 1],
    /// of `latents` (n, latent_channels, h, w) already divided by the scaling factor.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let z = self.check_input("AutoencoderKL::decode", latents, self.config.latent_channels)?;
        let z = match &self.post_quant_conv {
            Some(conv) => conv.forward(&z)?,
            None => z,
        };
        self.decoder.forward(&z)
    }
}
