//! diffusers' DDIMScheduler (Song et al., "Denoising Diffusion Implicit Models"), with η.

use super::config::{Prediction, SchedulerConfig};
use super::discrete::DiscreteSchedule;
use super::{x0_coefficients, Schedule, SchedulerKind, StepRule};
use crate::device::SchedulerStep;
use crate::error::Result;
use crate::tensor::Tensor;

pub(super) struct Ddim {
    schedule: DiscreteSchedule,
    /// ᾱ before the first training step: 1, or ᾱ₀ without set_alpha_to_one.
    final_alpha_cumprod: f32,
    prediction: Prediction,
    clip: Option<f32>,
    eta: f32,
}

impl Ddim {
    pub(super) fn new(c: &SchedulerConfig) -> Result<Ddim> {
        c.unsupported_flag("thresholding", c.thresholding)?;
        let schedule = DiscreteSchedule::new(c)?;
        let eta = c.eta.unwrap_or(0.0);
        if eta.is_nan() || eta < 0.0 {
            return Err(c.error("eta", format!("{eta}: must be 0 or more")));
        }
        Ok(Ddim {
            final_alpha_cumprod: if c.set_alpha_to_one.unwrap_or(true) { 1.0 } else { schedule.alphas_cumprod[0] },
            schedule,
            prediction: c.prediction(&[Prediction::Epsilon, Prediction::Sample, Prediction::V])?,
            clip: c.clip_sample.unwrap_or(true).then(|| c.clip_sample_range.unwrap_or(1.0) as f32),
            eta: eta as f32,
        })
    }
}

impl StepRule for Ddim {
    const KIND: SchedulerKind = SchedulerKind::Ddim;

    fn schedule(&self) -> &dyn Schedule {
        &self.schedule
    }

    fn set_timesteps(&mut self, steps: usize) -> Result<()> {
        self.schedule.set_timesteps(Self::KIND, steps)
    }

    fn coefficients(&self, step: usize) -> Result<(SchedulerStep, Option<Tensor>)> {
        let alphas_cumprod = &self.schedule.alphas_cumprod;
        let t = self.schedule.timesteps[step];
        // diffusers steps back by num_train / steps whatever the spacing.
        let prev = t.checked_sub(alphas_cumprod.len() / self.schedule.steps);
        let alpha_prod = alphas_cumprod[t];
        let alpha_prod_prev = prev.map_or(self.final_alpha_cumprod, |p| alphas_cumprod[p]);
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
            ..Default::default()
        };
        Ok((coefficients, None))
    }

    fn needs_noise(&self) -> bool {
        self.eta > 0.0
    }
}
