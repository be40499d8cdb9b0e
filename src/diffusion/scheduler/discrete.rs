//! The integer-timestep schedule DDIM, DDPM and PNDM share: ᾱ over the training steps and
//! the timesteps of the last `set_timesteps`, as indices into it.

use super::config::{SchedulerConfig, Spacing, SPACINGS};
use super::{check_steps, mix, schedule, timestep_indices, Schedule, SchedulerKind};
use crate::error::Result;
use crate::tensor::Tensor;

pub(super) struct DiscreteSchedule {
    pub alphas_cumprod: Vec<f32>,
    spacing: Spacing,
    steps_offset: i64,
    pub steps: usize,
    pub timesteps: Vec<usize>,
    timesteps_f32: Vec<f32>,
}

impl DiscreteSchedule {
    pub fn new(c: &SchedulerConfig) -> Result<DiscreteSchedule> {
        Ok(DiscreteSchedule {
            alphas_cumprod: c.alphas_cumprod(false)?,
            spacing: c.choice("timestep_spacing", &c.timestep_spacing, "leading", &SPACINGS)?,
            steps_offset: c.steps_offset(),
            steps: 0,
            timesteps: Vec::new(),
            timesteps_f32: Vec::new(),
        })
    }

    /// diffusers' `set_timesteps`, which refuses more steps than training steps.
    pub fn set_timesteps(&mut self, kind: SchedulerKind, steps: usize) -> Result<()> {
        let num_train = self.alphas_cumprod.len();
        self.set_timesteps_with(kind, steps, Some(num_train), |_| {})
    }

    /// The spaced timesteps of `steps` steps (at most `max_steps`), as `edit` leaves them.
    pub fn set_timesteps_with(
        &mut self,
        kind: SchedulerKind,
        steps: usize,
        max_steps: Option<usize>,
        edit: impl FnOnce(&mut Vec<i64>),
    ) -> Result<()> {
        let num_train = self.alphas_cumprod.len();
        check_steps(kind, steps, max_steps)?;
        let mut timesteps = schedule::discrete_timesteps(self.spacing, num_train, steps, self.steps_offset);
        edit(&mut timesteps);
        self.timesteps = timestep_indices(kind, steps, &timesteps, num_train)?;
        self.timesteps_f32 = self.timesteps.iter().map(|&t| t as f32).collect();
        self.steps = steps;
        Ok(())
    }
}

impl Schedule for DiscreteSchedule {
    fn num_inference_steps(&self) -> usize {
        self.steps
    }

    fn timesteps(&self) -> &[f32] {
        &self.timesteps_f32
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor> {
        let alpha_prod = self.alphas_cumprod[self.timesteps[step]];
        mix(original, noise, alpha_prod.sqrt(), (1.0 - alpha_prod).sqrt())
    }
}
