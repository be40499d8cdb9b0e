//! foil: a from-scratch GPU compute framework. Hand-written CUDA kernels loaded
//! through cudarc, a parallel CPU backend that is their reference and fallback,
//! and tensors whose every op dispatches to one or the other.
//!
//! Layers, lowest first (a layer never imports a higher one): `device` (the
//! backend contract, `cpu`, `cuda`), `tensor` (shapes, dtypes, ops, safetensors
//! and PNG files, and the record of ops autograd replays), `autograd` (reverse
//! mode, optimizers), `nn` (layers and the weight loader), `models` (CLIP, UNet,
//! VAE, ResNet under their public names), `diffusion` (schedulers, pipelines),
//! `train` (data sets, checkpoints, the classifier training loop), `world` (a
//! synthetic scene model with known causes), `probe` and `reinforce` (the loop:
//! find the attributes that flip a classifier, fine-tune it on counterfactuals
//! of them, and measure it on real shifted data).

pub mod autograd;
pub mod device;
pub mod diffusion;
pub mod error;
pub mod models;
pub mod nn;
pub mod probe;
pub mod reinforce;
pub mod tensor;
pub mod train;
pub mod world;

pub use device::{DType, Device};
pub use error::{Error, Result};
pub use tensor::{Conv2dOptions, Rng, Shape, Tensor};
