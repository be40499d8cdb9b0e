//! diffusers' UNet2DConditionModel under its public names, and the blocks it
//! shares with the VAE (ResNets, attention, up- and downsamplers, mid-blocks).

mod attention;
pub(crate) mod blocks;
pub(crate) mod config;
mod embeddings;
pub(crate) mod mid_blocks;
pub(crate) mod ops;
pub(crate) mod resnet_block;
mod sampling;
mod transformer;
mod unet_2d_condition;

pub use unet_2d_condition::UNet2DConditionModel;
