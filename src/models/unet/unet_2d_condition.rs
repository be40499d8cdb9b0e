//! diffusers' UNet2DConditionModel for Stable Diffusion 1.x and 2.x shapes:
//! timestep embedding, conv_in, down blocks, mid-block, up blocks with skip
//! connections, and the output norm and convolution.

use std::path::Path;

use super::blocks::{DownBlock, UpBlock};
use super::config::{BlockKind, UNetConfig};
use super::embeddings::{TimestepEmbedding, Timesteps};
use super::mid_blocks::UNetMidBlock2DCrossAttn;
use super::resnet_block::ResnetOptions;
use super::transformer::TransformerOptions;
use crate::device::{DType, Device};
use crate::error::{shape_err, Result};
use crate::nn::{Conv2d, GroupNorm, Weights};
use crate::tensor::Tensor;

/// The denoising UNet of Stable Diffusion, loaded from a diffusers `unet/`
/// folder (config.json and the safetensors weights) under diffusers' names.
pub struct UNet2DConditionModel {
    config: UNetConfig,
    dtype: DType,
    device: Device,
    time_proj: Timesteps,
    time_embedding: TimestepEmbedding,
    conv_in: Conv2d,
    down_blocks: Vec<DownBlock>,
    mid_block: Option<UNetMidBlock2DCrossAttn>,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl UNet2DConditionModel {
    /// The model in `dir` (config.json and its `*.safetensors`), computing in
    /// `dtype` on `device`. Every tensor of the checkpoint must be used.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<UNet2DConditionModel> {
        // The config first: a missing or wrong folder is reported as its config.json.
        let config = UNetConfig::open(&dir.join("config.json"))?;
        UNet2DConditionModel::checked(config, &Weights::open_dir(dir, dtype, device)?)
    }

    /// The model of the diffusers `config_file` with weights `w` (tensors in
    /// memory under diffusers' names, for training). Every tensor must be used.
    pub fn from_weights(config_file: &Path, w: &Weights) -> Result<UNet2DConditionModel> {
        UNet2DConditionModel::checked(UNetConfig::open(config_file)?, w)
    }

    fn checked(config: UNetConfig, w: &Weights) -> Result<UNet2DConditionModel> {
        let model = UNet2DConditionModel::build(config, w)?;
        w.check_all_used()?;
        Ok(model)
    }

    fn build(config: UNetConfig, w: &Weights) -> Result<UNet2DConditionModel> {
        let c = &config;
        let levels = &c.levels;
        let n = levels.len();
        let ch0 = levels[0].channels;
        let resnet = ResnetOptions {
            groups: c.norm_num_groups,
            eps: c.norm_eps,
            temb_channels: Some(c.time_embed_dim),
            output_scale_factor: 1.0,
        };
        let options = |level: usize| TransformerOptions {
            heads: levels[level].heads,
            layers: levels[level].transformer_layers,
            cross_attention_dim: levels[level].cross_attention_dim,
            groups: c.norm_num_groups,
            use_linear_projection: c.use_linear_projection,
        };
        let transformer = |kind: BlockKind, level: usize| (kind == BlockKind::CrossAttention).then(|| options(level));

        let mut down_blocks = Vec::with_capacity(n);
        for (i, &kind) in c.down_kinds.iter().enumerate() {
            let in_ch = if i == 0 { ch0 } else { levels[i - 1].channels };
            let padding = (i + 1 < n).then_some(c.downsample_padding);
            let wb = w.pp("down_blocks").pp(i);
            let block = DownBlock::load(
                &wb,
                in_ch,
                levels[i].channels,
                levels[i].layers,
                resnet,
                transformer(kind, i),
                padding,
            )?;
            down_blocks.push(block);
        }

        let mid_block = if c.mid_block {
            let mid_resnet = ResnetOptions { output_scale_factor: c.mid_block_scale_factor, ..resnet };
            let top = levels[n - 1].channels;
            Some(UNetMidBlock2DCrossAttn::load(&w.pp("mid_block"), top, mid_resnet, options(n - 1))?)
        } else {
            None
        };

        // Up block i works at level n-1-i and builds from the reversed per-block lists.
        let mut up_blocks = Vec::with_capacity(n);
        for (i, &kind) in c.up_kinds.iter().enumerate() {
            let level = n - 1 - i;
            let prev_out = levels[(level + 1).min(n - 1)].channels;
            let in_ch = levels[level.saturating_sub(1)].channels;
            let wb = w.pp("up_blocks").pp(i);
            let layers = levels[level].layers + 1;
            let opt = transformer(kind, level);
            let block = UpBlock::load(&wb, in_ch, prev_out, levels[level].channels, layers, resnet, opt, i + 1 < n)?;
            up_blocks.push(block);
        }

        let (k_in, k_out) = (c.conv_in_kernel, c.conv_out_kernel);
        Ok(UNet2DConditionModel {
            dtype: w.dtype(),
            device: w.device().clone(),
            time_proj: Timesteps {
                channels: ch0,
                flip_sin_to_cos: c.flip_sin_to_cos,
                downscale_freq_shift: c.freq_shift,
            },
            time_embedding: TimestepEmbedding::load(&w.pp("time_embedding"), ch0, c.time_embed_dim)?,
            conv_in: Conv2d::load_checked(&w.pp("conv_in"), c.in_channels, ch0, k_in, 1, k_in / 2, true)?,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNorm::load(&w.pp("conv_norm_out"), c.norm_num_groups, ch0, c.norm_eps)?,
            conv_out: Conv2d::load_checked(&w.pp("conv_out"), ch0, c.out_channels, k_out, 1, k_out / 2, true)?,
            config,
        })
    }

    /// The latent channels the model takes.
    pub fn in_channels(&self) -> usize {
        self.config.in_channels
    }

    /// The latent size the model was trained at (config sample_size), if the config gives one.
    pub fn sample_size(&self) -> Option<usize> {
        self.config.sample_size
    }

    /// The noise prediction (n, out_channels, h, w) for `sample` (n,
    /// in_channels, h, w) at `timesteps` (one per batch item, or one for all)
    /// conditioned on `encoder_hidden_states` (n, seq, cross_attention_dim).
    /// Inputs are moved to the model's device and dtype; the output is in them.
    pub fn forward(&self, sample: &Tensor, timesteps: &[f32], encoder_hidden_states: &Tensor) -> Result<Tensor> {
        let sample = sample.to_device(&self.device)?.to_dtype(self.dtype)?;
        let context = encoder_hidden_states.to_device(&self.device)?.to_dtype(self.dtype)?;
        let &[n, channels, _, _] = sample.dims() else {
            return shape_err("UNet2DConditionModel", format!("sample {} is not (n, c, h, w)", sample.shape()));
        };
        if channels != self.config.in_channels {
            return shape_err(
                "UNet2DConditionModel",
                format!(
                    "sample {} has {channels} channels, the model takes {}",
                    sample.shape(),
                    self.config.in_channels
                ),
            );
        }
        if context.rank() != 3 || context.dims()[0] != n {
            return shape_err(
                "UNet2DConditionModel",
                format!("encoder_hidden_states {} is not ({n}, seq, dim)", context.shape()),
            );
        }
        let timesteps = match timesteps.len() {
            1 => vec![timesteps[0]; n],
            len if len == n => timesteps.to_vec(),
            len => return shape_err("UNet2DConditionModel", format!("{len} timesteps for a batch of {n}")),
        };

        let sample = if self.config.center_input_sample { sample.affine(2.0, -1.0)? } else { sample };
        let t_emb = self.time_proj.embed(&timesteps, self.dtype, &self.device)?;
        let temb_silu = self.time_embedding.forward(&t_emb)?.silu()?;
        let (temb, ctx) = (Some(&temb_silu), Some(&context));

        let mut h = self.conv_in.forward(&sample)?;
        let mut skips = vec![h.clone()];
        for block in &self.down_blocks {
            let (out, states) = block.forward(&h, temb, ctx)?;
            h = out;
            skips.extend(states);
        }
        if let Some(mid) = &self.mid_block {
            h = mid.forward(&h, &temb_silu, &context)?;
        }
        for block in &self.up_blocks {
            h = block.forward(&h, &mut skips, temb, ctx)?;
        }
        self.conv_out.forward(&self.conv_norm_out.forward(&h)?.silu()?)
    }
}
