//! diffusers' EulerAncestralDiscreteScheduler: an Euler step down to σ_down, then fresh noise
//! of σ_up, with σ_down² + σ_up² = σ_next².

use super::config::{Prediction, SchedulerConfig};
use super::sigma::SigmaSchedule;
use super::{check_steps, schedule, Schedule, SchedulerKind, StepRule};
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
            schedule: SigmaSchedule::new(c)?,
            // diffusers raises NotImplementedError for the sample prediction.
            prediction: c.prediction(&[Prediction::Epsilon, Prediction::V])?,
        })
    }
}

impl StepRule for EulerAncestral {
    const KIND: SchedulerKind = SchedulerKind::EulerAncestral;

    fn schedule(&self) -> &dyn Schedule {
        &self.schedule
    }

    fn set_timesteps(&mut self, steps: usize) -> Result<()> {
        check_steps(Self::KIND, steps, None)?;
        let s = &mut self.schedule;
        let timesteps = schedule::euler_timesteps(s.spacing, s.alphas_cumprod.len(), steps, s.steps_offset);
        let sigmas = s.interpolated(&timesteps);
        s.set(steps, timesteps, &sigmas, 0.0);
        Ok(())
    }

    fn coefficients(&self, step: usize) -> Result<(SchedulerStep, Option<Tensor>)> {
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
            ..Default::default()
        };
        Ok((coefficients, None))
    }

    fn needs_noise(&self) -> bool {
        true
    }
}
