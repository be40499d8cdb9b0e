//! diffusers' DDPMScheduler (Ho et al., "Denoising Diffusion Probabilistic Models"): the
//! posterior mean of x_{t−1} given x_t and the predicted x0, plus fresh noise.

use super::config::{Prediction, SchedulerConfig, Spacing, SPACINGS};
use super::{
    check_step, check_steps, mix, run_step, schedule, timestep_indices, x0_coefficients, Scheduler, SchedulerKind,
};
use crate::device::SchedulerStep;
use crate::error::Result;
use crate::tensor::Tensor;

/// The fixed posterior variance (diffusers' variance_type fixed_*).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variance {
    /// β̃_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t)·β_t, the noise scaled by √β̃_t.
    Small,
    /// The same, with the scale computed as exp(½·log β̃_t).
    SmallLog,
    /// β_t, the noise scaled by √β_t.
    Large,
}

pub(super) struct Ddpm {
    alphas_cumprod: Vec<f32>,
    prediction: Prediction,
    variance: Variance,
    clip: Option<f32>,
    spacing: Spacing,
    steps_offset: i64,
    steps: usize,
    timesteps: Vec<usize>,
    timesteps_f32: Vec<f32>,
}

impl Ddpm {
    pub(super) fn new(c: &SchedulerConfig) -> Result<Ddpm> {
        c.unsupported_flag("thresholding", c.thresholding)?;
        let variances = [
            ("fixed_small", Variance::Small),
            ("fixed_small_log", Variance::SmallLog),
            ("fixed_large", Variance::Large),
        ];
        Ok(Ddpm {
            alphas_cumprod: c.alphas_cumprod(false)?,
            prediction: c.prediction(&[Prediction::Epsilon, Prediction::Sample, Prediction::V])?,
            variance: c.choice("variance_type", &c.variance_type, "fixed_small", &variances)?,
            clip: c.clip_sample.unwrap_or(true).then(|| c.clip_sample_range.unwrap_or(1.0) as f32),
            spacing: c.choice("timestep_spacing", &c.timestep_spacing, "leading", &SPACINGS)?,
            steps_offset: c.steps_offset(),
            steps: 0,
            timesteps: Vec::new(),
            timesteps_f32: Vec::new(),
        })
    }
}

impl Scheduler for Ddpm {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::Ddpm
    }

    fn set_timesteps(&mut self, steps: usize) -> Result<()> {
        let num_train = self.alphas_cumprod.len();
        check_steps(self.kind(), steps, Some(num_train))?;
        let timesteps = schedule::discrete_timesteps(self.spacing, num_train, steps, self.steps_offset);
        self.timesteps = timestep_indices(self.kind(), steps, &timesteps, num_train)?;
        self.timesteps_f32 = self.timesteps.iter().map(|&t| t as f32).collect();
        self.steps = steps;
        Ok(())
    }

    fn num_inference_steps(&self) -> usize {
        self.steps
    }

    fn timesteps(&self) -> &[f32] {
        &self.timesteps_f32
    }

    fn sigmas(&self) -> Option<&[f32]> {
        None
    }

    fn init_noise_sigma(&self) -> f32 {
        1.0
    }

    fn scale_model_input(&self, sample: &Tensor, step: usize) -> Result<Tensor> {
        check_step(self.kind(), step, &self.timesteps_f32)?;
        Ok(sample.clone())
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        guidance: Option<f32>,
        step: usize,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        check_step(self.kind(), step, &self.timesteps_f32)?;
        let t = self.timesteps[step];
        let alpha_prod = self.alphas_cumprod[t];
        let alpha_prod_prev = self.timesteps.get(step + 1).map_or(1.0, |&p| self.alphas_cumprod[p]);
        let (beta_prod, beta_prod_prev) = (1.0 - alpha_prod, 1.0 - alpha_prod_prev);
        let current_alpha = alpha_prod / alpha_prod_prev;
        let current_beta = 1.0 - current_alpha;
        let (x0_x, x0_m) = x0_coefficients(self.prediction, alpha_prod.sqrt(), beta_prod.sqrt());
        // diffusers adds noise at every timestep but 0.
        let noise_scale = if t > 0 {
            let small = ((beta_prod_prev / beta_prod) * current_beta).max(1e-20);
            match self.variance {
                Variance::Small => small.sqrt(),
                Variance::SmallLog => (0.5 * small.ln()).exp(),
                Variance::Large => current_beta.sqrt(),
            }
        } else {
            0.0
        };
        let coefficients = SchedulerStep {
            x0_x,
            x0_m,
            clip: self.clip,
            out_x0: alpha_prod_prev.sqrt() * current_beta / beta_prod,
            out_x: current_alpha.sqrt() * beta_prod_prev / beta_prod,
            out_noise: noise_scale,
            guidance,
            ..Default::default()
        };
        Ok(run_step(self.kind(), sample, model_output, noise, None, &coefficients)?.0)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor> {
        check_step(self.kind(), step, &self.timesteps_f32)?;
        let alpha_prod = self.alphas_cumprod[self.timesteps[step]];
        mix(original, noise, alpha_prod.sqrt(), (1.0 - alpha_prod).sqrt())
    }

    fn needs_noise(&self) -> bool {
        true
    }

    fn order(&self) -> usize {
        1
    }
}
