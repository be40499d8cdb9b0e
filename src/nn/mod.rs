//! Layers over tensors and the loader that fills them from checkpoints by their
//! public names.

mod batch_norm;
mod init;
mod layers;
mod weights;

pub use batch_norm::{is_batch_norm_buffer, Mode, RunningStats, TrainableBatchNorm2d};
pub use init::init_parameters;
pub use layers::{BatchNorm2d, Conv2d, Embedding, GroupNorm, LayerNorm, Linear};
pub use weights::Weights;
