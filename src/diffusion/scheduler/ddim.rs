//! diffusers' DDIMScheduler (Song et al., "Denoising Diffusion Implicit Models"), with η.

use super::config::{Prediction, SchedulerConfig, Spacing, SPACINGS};
use super::{
    check_step, check_steps, mix, run_step, schedule, timestep_indices, x0_coefficients, Scheduler, SchedulerKind,
};
use crate::device::SchedulerStep;
use crate::error::Result;
use crate::tensor::Tensor;

pub(super) struct Ddim {
    alphas_cumprod: Vec<f32>,
    /// ᾱ before the first training step: 1, or ᾱ₀ without set_alpha_to_one.
    final_alpha_cumprod: f32,
    prediction: Prediction,
    clip: Option<f32>,
    spacing: Spacing,
    steps_offset: i64,
    eta: f32,
    steps: usize,
    timesteps: Vec<usize>,
    timesteps_f32: Vec<f32>,
}

impl Ddim {
    pub(super) fn new(c: &SchedulerConfig) -> Result<Ddim> {
        c.unsupported_flag("thresholding", c.thresholding)?;
        let alphas_cumprod = c.alphas_cumprod(false)?;
        let eta = c.eta.unwrap_or(0.0);
        if eta.is_nan() || eta < 0.0 {
            return Err(c.error("eta", format!("{eta}: must be 0 or more")));
        }
        Ok(Ddim {
            final_alpha_cumprod: if c.set_alpha_to_one.unwrap_or(true) { 1.0 } else { alphas_cumprod[0] },
            alphas_cumprod,
            prediction: c.prediction(&[Prediction::Epsilon, Prediction::Sample, Prediction::V])?,
            clip: c.clip_sample.unwrap_or(true).then(|| c.clip_sample_range.unwrap_or(1.0) as f32),
            spacing: c.choice("timestep_spacing", &c.timestep_spacing, "leading", &SPACINGS)?,
            steps_offset: c.steps_offset(),
            eta: eta as f32,
            steps: 0,
            timesteps: Vec::new(),
            timesteps_f32: Vec::new(),
        })
    }
}

impl Scheduler for Ddim {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::Ddim
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
        // diffusers steps back by num_train / steps whatever the spacing.
        let prev = t.checked_sub(self.alphas_cumprod.len() / self.steps);
        let alpha_prod = self.alphas_cumprod[t];
        let alpha_prod_prev = prev.map_or(self.final_alpha_cumprod, |p| self.alphas_cumprod[p]);
        let beta_prod = 1.0 - alpha_prod;
        let (x0_x, x0_m) = x0_coefficients(self.prediction, alpha_prod.sqrt(), beta_prod.sqrt());
        let (eps_x, eps_m) = match self.prediction {
            Prediction::Epsilon => (0.0, 1.0),
            // ε from the unclipped x0 = m, as diffusers computes it before clipping.
            Prediction::Sample => (1.0 / beta_prod.sqrt(), -alpha_prod.sqrt() / beta_prod.sqrt()),
            Prediction::V => (beta_prod.sqrt(), alpha_prod.sqrt()),
        };
        let variance = ((1.0 - alpha_prod_prev) / beta_prod) * (1.0 - alpha_prod / alpha_prod_prev);
        let std_dev = self.eta * variance.sqrt();
        let coefficients = SchedulerStep {
            x0_x,
            x0_m,
            clip: self.clip,
            eps_x,
            eps_m,
            out_x0: alpha_prod_prev.sqrt(),
            out_eps: (1.0 - alpha_prod_prev - std_dev * std_dev).sqrt(),
            out_noise: if self.eta > 0.0 { std_dev } else { 0.0 },
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
        self.eta > 0.0
    }

    fn order(&self) -> usize {
        1
    }
}
