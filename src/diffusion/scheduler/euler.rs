//! diffusers' EulerDiscreteScheduler (Karras et al. 2022, Algorithm 2 without churn): the
//! probability-flow ODE in σ, one Euler step a model call; optionally on the Karras σ schedule.

use super::config::{FinalSigma, Prediction, SchedulerConfig, FINAL_SIGMAS};
use super::sigma::SigmaSchedule;
use super::{check_steps, schedule, Schedule, SchedulerKind, StepRule};
use crate::device::SchedulerStep;
use crate::error::Result;
use crate::tensor::Tensor;

pub(super) struct Euler {
    schedule: SigmaSchedule,
    prediction: Prediction,
    karras: bool,
    sigma_min: Option<f64>,
    sigma_max: Option<f64>,
    final_sigma: FinalSigma,
}

impl Euler {
    pub(super) fn new(c: &SchedulerConfig) -> Result<Euler> {
        c.choice("interpolation_type", &c.interpolation_type, "linear", &[("linear", ())])?;
        c.unsupported_flag("use_exponential_sigmas", c.use_exponential_sigmas)?;
        c.unsupported_flag("use_beta_sigmas", c.use_beta_sigmas)?;
        let prediction = match c.prediction_type.as_deref() {
            // diffusers' Euler also knows the sample prediction by this name.
            Some("original_sample") => Prediction::Sample,
            _ => c.prediction(&[Prediction::Epsilon, Prediction::Sample, Prediction::V])?,
        };
        let continuous =
            c.choice("timestep_type", &c.timestep_type, "discrete", &[("discrete", false), ("continuous", true)])?;
        if continuous && prediction == Prediction::V {
            return Err(c.error("timestep_type", "\"continuous\" with v_prediction is not supported"));
        }
        Ok(Euler {
            schedule: SigmaSchedule::new(c)?,
            prediction,
            karras: c.use_karras_sigmas.unwrap_or(false),
            sigma_min: c.sigma_min,
            sigma_max: c.sigma_max,
            final_sigma: c.choice("final_sigmas_type", &c.final_sigmas_type, "zero", &FINAL_SIGMAS)?,
        })
    }
}

impl StepRule for Euler {
    const KIND: SchedulerKind = SchedulerKind::Euler;

    fn schedule(&self) -> &dyn Schedule {
        &self.schedule
    }

    fn set_timesteps(&mut self, steps: usize) -> Result<()> {
        check_steps(Self::KIND, steps, None)?;
        let s = &mut self.schedule;
        let num_train = s.alphas_cumprod.len();
        let mut timesteps = schedule::euler_timesteps(s.spacing, num_train, steps, s.steps_offset);
        let mut sigmas = s.interpolated(&timesteps);
        if self.karras {
            let sigma_min = self.sigma_min.unwrap_or(sigmas[sigmas.len() - 1]);
            let sigma_max = self.sigma_max.unwrap_or(sigmas[0]);
            sigmas = schedule::karras_sigmas(sigma_min, sigma_max, steps);
            let train = schedule::train_sigmas(&s.alphas_cumprod);
            let log_sigmas: Vec<f32> = train.iter().map(|&v| schedule::np_log_f32(v)).collect();
            timesteps = sigmas.iter().map(|&v| schedule::sigma_to_t(v, &log_sigmas) as f32).collect();
        }
        let last = match self.final_sigma {
            FinalSigma::Zero => 0.0,
            FinalSigma::SigmaMin => ((1.0 - s.alphas_cumprod[0]) / s.alphas_cumprod[0]).sqrt(),
        };
        s.set(steps, timesteps, &sigmas, last);
        Ok(())
    }

    fn coefficients(&self, step: usize) -> Result<(SchedulerStep, Option<Tensor>)> {
        let (sigma, sigma_next) = (self.schedule.sigmas[step], self.schedule.sigmas[step + 1]);
        let (x0_x, x0_m) = SigmaSchedule::x0_coefficients(self.prediction, sigma);
        // x + (x − x0)/σ·(σ_next − σ) = (σ_next/σ)·x + ((σ − σ_next)/σ)·x0, free of the
        // cancellation in 1 + (σ_next − σ)/σ when σ_next ≪ σ.
        let coefficients = SchedulerStep {
            x0_x,
            x0_m,
            out_x0: (sigma - sigma_next) / sigma,
            out_x: sigma_next / sigma,
            ..Default::default()
        };
        Ok((coefficients, None))
    }

    fn needs_noise(&self) -> bool {
        false
    }
}
