//! The σ schedule Euler and Euler ancestral share: the training sigmas and the current
//! schedule, with the scaling and noising that depend on σ alone.

use super::config::{Prediction, SchedulerConfig, Spacing, SPACINGS};
use super::{mix, schedule, Schedule};
use crate::error::Result;
use crate::tensor::Tensor;

pub(super) struct SigmaSchedule {
    pub alphas_cumprod: Vec<f32>,
    pub spacing: Spacing,
    pub steps_offset: i64,
    steps: usize,
    timesteps: Vec<f32>,
    /// One per timestep plus the final σ; before set_timesteps, the training sigmas
    /// (largest first) and 0, as diffusers starts out.
    pub sigmas: Vec<f32>,
}

impl SigmaSchedule {
    pub fn new(c: &SchedulerConfig) -> Result<SigmaSchedule> {
        let alphas_cumprod = c.alphas_cumprod(true)?;
        let mut sigmas = schedule::train_sigmas(&alphas_cumprod);
        sigmas.reverse();
        sigmas.push(0.0);
        Ok(SigmaSchedule {
            alphas_cumprod,
            spacing: c.choice("timestep_spacing", &c.timestep_spacing, "linspace", &SPACINGS)?,
            steps_offset: c.steps_offset(),
            steps: 0,
            timesteps: Vec::new(),
            sigmas,
        })
    }

    /// The sigmas of `timesteps` interpolated over the training sigmas, in f64.
    pub fn interpolated(&self, timesteps: &[f32]) -> Vec<f64> {
        let train = schedule::train_sigmas(&self.alphas_cumprod);
        schedule::interp_sigmas(timesteps.iter().map(|&t| t as f64), &train)
    }

    /// Takes the schedule of `steps` steps: `timesteps` and their `sigmas`, then `last`.
    pub fn set(&mut self, steps: usize, timesteps: Vec<f32>, sigmas: &[f64], last: f32) {
        self.sigmas = sigmas.iter().map(|&v| v as f32).chain([last]).collect();
        self.timesteps = timesteps;
        self.steps = steps;
    }

    /// x0 = x0_x·x + x0_m·m at noise level σ (x = x0 + σ·ε).
    pub fn x0_coefficients(prediction: Prediction, sigma: f32) -> (f32, f32) {
        match prediction {
            Prediction::Epsilon => (1.0, -sigma),
            Prediction::Sample => (0.0, 1.0),
            Prediction::V => (1.0 / (sigma * sigma + 1.0), -sigma / (sigma * sigma + 1.0).sqrt()),
        }
    }
}

impl Schedule for SigmaSchedule {
    fn num_inference_steps(&self) -> usize {
        self.steps
    }

    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn sigmas(&self) -> Option<&[f32]> {
        Some(&self.sigmas)
    }

    /// σ_max, or √(σ_max² + 1) for leading spacing (diffusers' `init_noise_sigma`).
    fn init_noise_sigma(&self) -> f32 {
        let max = self.sigmas.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
        match self.spacing {
            Spacing::Linspace | Spacing::Trailing => max,
            Spacing::Leading => (max * max + 1.0).sqrt(),
        }
    }

    fn scale_model_input(&self, sample: &Tensor, step: usize) -> Result<Tensor> {
        let sigma = self.sigmas[step];
        sample.scale(1.0 / (sigma * sigma + 1.0).sqrt())
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor> {
        mix(original, noise, 1.0, self.sigmas[step])
    }
}
