//! diffusers' EulerDiscreteScheduler (Karras et al. 2022, Algorithm 2 without churn): the
//! probability-flow ODE in σ, one Euler step a model call; optionally on the Karras σ schedule.

use super::config::{FinalSigma, Prediction, SchedulerConfig, Spacing, FINAL_SIGMAS, SPACINGS};
use super::{check_step, check_steps, mix, run_step, schedule, Scheduler, SchedulerKind};
use crate::device::SchedulerStep;
use crate::error::Result;
use crate::tensor::Tensor;

/// What the σ-based (Euler and Euler ancestral) schedulers share: the training sigmas and the
/// current schedule, with the scaling and noising that depend on σ alone.
pub(super) struct SigmaSchedule {
    pub kind: SchedulerKind,
    pub alphas_cumprod: Vec<f32>,
    pub spacing: Spacing,
    pub steps_offset: i64,
    pub steps: usize,
    pub timesteps: Vec<f32>,
    /// One per timestep plus the final σ; before set_timesteps, the training sigmas
    /// (largest first) and 0, as diffusers starts out.
    pub sigmas: Vec<f32>,
}

impl SigmaSchedule {
    pub fn new(kind: SchedulerKind, c: &SchedulerConfig) -> Result<SigmaSchedule> {
        let alphas_cumprod = c.alphas_cumprod(true)?;
        let mut sigmas = schedule::train_sigmas(&alphas_cumprod);
        sigmas.reverse();
        sigmas.push(0.0);
        Ok(SigmaSchedule {
            kind,
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

    /// σ_max, or √(σ_max² + 1) for leading spacing (diffusers' `init_noise_sigma`).
    pub fn init_noise_sigma(&self) -> f32 {
        let max = self.sigmas.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
        match self.spacing {
            Spacing::Linspace | Spacing::Trailing => max,
            Spacing::Leading => (max * max + 1.0).sqrt(),
        }
    }

    pub fn scale_model_input(&self, sample: &Tensor, step: usize) -> Result<Tensor> {
        check_step(self.kind, step, &self.timesteps)?;
        let sigma = self.sigmas[step];
        sample.scale(1.0 / (sigma * sigma + 1.0).sqrt())
    }

    pub fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor> {
        check_step(self.kind, step, &self.timesteps)?;
        mix(original, noise, 1.0, self.sigmas[step])
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
            schedule: SigmaSchedule::new(SchedulerKind::Euler, c)?,
            prediction,
            karras: c.use_karras_sigmas.unwrap_or(false),
            sigma_min: c.sigma_min,
            sigma_max: c.sigma_max,
            final_sigma: c.choice("final_sigmas_type", &c.final_sigmas_type, "zero", &FINAL_SIGMAS)?,
        })
    }
}

impl Scheduler for Euler {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::Euler
    }

    fn set_timesteps(&mut self, steps: usize) -> Result<()> {
        check_steps(self.kind(), steps, None)?;
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
        s.sigmas = sigmas.iter().map(|&v| v as f32).chain([last]).collect();
        s.timesteps = timesteps;
        s.steps = steps;
        Ok(())
    }

    fn num_inference_steps(&self) -> usize {
        self.schedule.steps
    }

    fn timesteps(&self) -> &[f32] {
        &self.schedule.timesteps
    }

    fn sigmas(&self) -> Option<&[f32]> {
        Some(&self.schedule.sigmas)
    }

    fn init_noise_sigma(&self) -> f32 {
        self.schedule.init_noise_sigma()
    }

    fn scale_model_input(&self, sample: &Tensor, step: usize) -> Result<Tensor> {
        self.schedule.scale_model_input(sample, step)
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        guidance: Option<f32>,
        step: usize,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        check_step(self.kind(), step, &self.schedule.timesteps)?;
        let (sigma, sigma_next) = (self.schedule.sigmas[step], self.schedule.sigmas[step + 1]);
        let (x0_x, x0_m) = SigmaSchedule::x0_coefficients(self.prediction, sigma);
        // x + (x − x0)/σ·(σ_next − σ) = (σ_next/σ)·x + ((σ − σ_next)/σ)·x0, free of the
        // cancellation in 1 + (σ_next − σ)/σ when σ_next ≪ σ.
        let coefficients = SchedulerStep {
            x0_x,
            x0_m,
            out_x0: (sigma - sigma_next) / sigma,
            out_x: sigma_next / sigma,
            guidance,
            ..Default::default()
        };
        Ok(run_step(self.kind(), sample, model_output, noise, None, &coefficients)?.0)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor> {
        self.schedule.add_noise(original, noise, step)
    }

    fn needs_noise(&self) -> bool {
        false
    }

    fn order(&self) -> usize {
        1
    }
}
