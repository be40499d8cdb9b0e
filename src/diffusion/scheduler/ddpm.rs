//! diffusers' DDPMScheduler (Ho et al., "Denoising Diffusion Probabilistic Models"): the
//! posterior mean of x_{t−1} given x_t and the predicted x0, plus fresh noise.

use super::config::{Prediction, SchedulerConfig};
use super::discrete::DiscreteSchedule;
use super::{x0_coefficients, Schedule, SchedulerKind, StepRule};
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
    schedule: DiscreteSchedule,
    prediction: Prediction,
    variance: Variance,
    clip: Option<f32>,
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
            schedule: DiscreteSchedule::new(c)?,
            prediction: c.prediction(&[Prediction::Epsilon, Prediction::Sample, Prediction::V])?,
            variance: c.choice("variance_type", &c.variance_type, "fixed_small", &variances)?,
            clip: c.clip_sample.unwrap_or(true).then(|| c.clip_sample_range.unwrap_or(1.0) as f32),
        })
    }
}

impl StepRule for Ddpm {
    const KIND: SchedulerKind = SchedulerKind::Ddpm;

    fn schedule(&self) -> &dyn Schedule {
        &self.schedule
    }

    fn set_timesteps(&mut self, steps: usize) -> Result<()> {
        self.schedule.set_timesteps(Self::KIND, steps)
    }

    fn coefficients(&self, step: usize) -> Result<(SchedulerStep, Option<Tensor>)> {
        let (alphas_cumprod, timesteps) = (&self.schedule.alphas_cumprod, &self.schedule.timesteps);
        let t = timesteps[step];
        let alpha_prod = alphas_cumprod[t];
        let alpha_prod_prev = timesteps.get(step + 1).map_or(1.0, |&p| alphas_cumprod[p]);
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
            ..Default::default()
        };
        Ok((coefficients, None))
    }

    fn needs_noise(&self) -> bool {
        true
    }
}
