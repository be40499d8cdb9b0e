//! Diffusion: the schedulers of diffusers and the text-to-image and
//! image-to-image pipelines built on the models.

pub mod pipeline;
pub mod scheduler;
