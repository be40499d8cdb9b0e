//! The timestep embedding: diffusers' Timesteps (sinusoidal features) and
//! TimestepEmbedding (linear_1, SiLU, linear_2).

use crate::device::{DType, Device};
use crate::error::Result;
use crate::nn::{Linear, Weights};
use crate::tensor::Tensor;

/// Sinusoidal features of the timesteps, as diffusers' get_timestep_embedding
/// with scale 1 and max_period 10000.
pub(crate) struct Timesteps {
    pub channels: usize,
    pub flip_sin_to_cos: bool,
    pub downscale_freq_shift: f32,
}

impl Timesteps {
    /// (timesteps.len(), channels) features, computed on the host in f32 as
    /// PyTorch does (frequencies and products in f32, so timesteps near 1000
    /// round the same way), then moved to `device` as `dtype`.
    pub fn embed(&self, timesteps: &[f32], dtype: DType, device: &Device) -> Result<Tensor> {
        let half = self.channels / 2;
        let log_period = -(10000f64.ln() as f32);
        let freqs: Vec<f32> =
            (0..half).map(|i| (log_period * i as f32 / (half as f32 - self.downscale_freq_shift)).exp()).collect();
        let mut data = Vec::with_capacity(timesteps.len() * self.channels);
        for &t in timesteps {
            let args = freqs.iter().map(|f| (t * f) as f64);
            let sin: Vec<f32> = args.clone().map(|a| a.sin() as f32).collect();
            let cos: Vec<f32> = args.map(|a| a.cos() as f32).collect();
            let (first, second) = if self.flip_sin_to_cos { (cos, sin) } else { (sin, cos) };
            data.extend(first);
            data.extend(second);
            // An odd channel count gets a zero last feature.
            data.extend(std::iter::repeat_n(0.0, self.channels - 2 * half));
        }
        Tensor::from_f32(data, [timesteps.len(), self.channels], device)?.to_dtype(dtype)
    }
}

/// linear_2(SiLU(linear_1(x))).
pub(crate) struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepEmbedding {
    pub fn load(w: &Weights, in_dim: usize, dim: usize) -> Result<TimestepEmbedding> {
        Ok(TimestepEmbedding {
            linear_1: Linear::load(&w.pp("linear_1"), in_dim, dim, true)?,
            linear_2: Linear::load(&w.pp("linear_2"), dim, dim, true)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.linear_2.forward(&self.linear_1.forward(x)?.silu()?)
    }
}
