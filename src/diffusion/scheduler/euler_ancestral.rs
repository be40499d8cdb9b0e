//! diffusers' EulerAncestralDiscreteScheduler: an Euler step down to σ_down, then fresh noise
//! of σ_up, with σ_down² + σ_up² = σ_next².

use super::config::{Prediction, SchedulerConfig};
use super::euler::SigmaSchedule;
use super::{check_step, check_steps, run_step, schedule, Scheduler, SchedulerKind};
use crate::device::SchedulerStep;
use crate::error::Result;
use crate::tensor::Tensor;

pub(super) struct EulerAncestral {
    schedule: SigmaSchedule,
    prediction: Prediction,
}

impl EulerAncestral {
    pub(super) fn new(c: &SchedulerConfig) -> Result<EulerAncestral> {
        Ok(EulerAncestral {
            schedule: SigmaSchedule::new(SchedulerKind::EulerAncestral, c)?,
            // diffusers raises NotImplementedError for the sample prediction.
            prediction: c.prediction(&[Prediction::Epsilon, Prediction::V])?,
        })
    }
}

impl Scheduler for EulerAncestral {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::EulerAncestral
    }

    fn set_timesteps(&mut self, steps: usize) -> Result<()> {
        check_steps(self.kind(), steps, None)?;
        let s = &mut self.schedule;
        let timesteps = schedule::euler_timesteps(s.spacing, s.alphas_cumprod.len(), steps, s.steps_offset);
        s.sigmas = s.interpolated(&timesteps).iter().map(|&v| v as f32).chain([0.0]).collect();
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
        let (from, to) = (self.schedule.sigmas[step], self.schedule.sigmas[step + 1]);
        let (x0_x, x0_m) = SigmaSchedule::x0_coefficients(self.prediction, from);
        let sigma_up = (to * to * (from * from - to * to) / (from * from)).sqrt();
        let sigma_down = (to * to - sigma_up * sigma_up).sqrt();
        // x + (x − x0)/σ·(σ_down − σ) + σ_up·noise, as in euler.rs.
        let coefficients = SchedulerStep {
            x0_x,
            x0_m,
            out_x0: (from - sigma_down) / from,
            out_x: sigma_down / from,
            out_noise: sigma_up,
            guidance,
            ..Default::default()
        };
        Ok(run_step(self.kind(), sample, model_output, noise, None, &coefficients)?.0)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor> {
        self.schedule.add_noise(original, noise, step)
    }

    fn needs_noise(&self) -> bool {
        true
    }

    fn order(&self) -> usize {
        1
    }
}
