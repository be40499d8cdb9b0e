//! Layers over tensors and the loader that fills them from checkpoints by their
//! public names.

mod layers;
mod weights;

pub use layers::{BatchNorm2d, Conv2d, Embedding, GroupNorm, LayerNorm, Linear};
pub use weights::Weights;
