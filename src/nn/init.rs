//! Initial values for a new model, by parameter name and shape, as PyTorch's
//! layers start: weights of linear and convolution layers uniform in
//! ±1/√fan_in (`kaiming_uniform_(a=√5)`), norm scales one, biases zero, and
//! CLIP's token and position embeddings normal with σ 0.02 (transformers'
//! `initializer_range`).

use std::collections::BTreeMap;

use crate::device::Device;
use crate::error::Result;
use crate::tensor::{Rng, Tensor};

/// A tensor for each of `shapes` (a model's parameters as [`super::Weights::recording`]
/// lists them), f32 on `device`, drawn from `rng` in name order.
pub fn init_parameters(
    shapes: &BTreeMap<String, Vec<usize>>,
    rng: &mut Rng,
    device: &Device,
) -> Result<BTreeMap<String, Tensor>> {
    shapes
        .iter()
        .map(|(name, dims)| {
            let t = if name.ends_with("token_embedding.weight") || name.ends_with("position_embedding.weight") {
                Tensor::randn(dims.clone(), rng, device)?.scale(0.02)?
            } else if dims.len() >= 2 {
                let bound = 1.0 / (dims[1..].iter().product::<usize>() as f32).sqrt();
                Tensor::rand_uniform(dims.clone(), -bound, bound, rng, device)?
            } else if name.ends_with("weight") {
                Tensor::from_f32(vec![1.0; dims.iter().product()], dims.clone(), device)?
            } else {
                Tensor::from_f32(vec![0.0; dims.iter().product()], dims.clone(), device)?
            };
            Ok((name.clone(), t))
        })
        .collect()
}
