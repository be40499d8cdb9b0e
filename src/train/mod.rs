//! The training layer: data sets, checkpoints and the classifier training loop
//! that `foil train classifier` and the reinforce stage run.

pub mod checkpoint;
pub mod classifier;
pub mod data;
pub mod diffusion;
pub mod parameters;
