//! diffusers' PNDMScheduler (Liu et al., "Pseudo Numerical Methods for Diffusion Models on
//! Manifolds") with skip_prk_steps, the PLMS sampler Stable Diffusion 1.x ships: a linear
//! multistep method over the last four model outputs, with no Runge-Kutta warm-up. Its second
//! step re-runs the first interval from the first step's sample with the average of the first
//! two outputs, so the schedule has one timestep more than steps (the second-to-last repeated).

use super::config::{Prediction, SchedulerConfig};
use super::discrete::DiscreteSchedule;
use super::{Schedule, SchedulerKind, StepRule};
use crate::device::SchedulerStep;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

pub(super) struct Pndm {
    schedule: DiscreteSchedule,
    /// ᾱ before the first training step: 1, or ᾱ₀ without set_alpha_to_one.
    final_alpha_cumprod: f32,
    prediction: Prediction,
    /// Steps run since `set_timesteps` (diffusers' `counter`), which chooses the multistep
    /// formula: diffusers counts steps, not positions, so img2img starts afresh.
    counter: usize,
    /// The (guided) model outputs of the last steps, oldest first, at most three (diffusers'
    /// `ets`, without the second step's, which diffusers does not keep either).
    history: Vec<Tensor>,
    /// The first step's sample, which the second starts from again (diffusers' `cur_sample`).
    first_sample: Option<Tensor>,
}

impl Pndm {
    pub(super) fn new(c: &SchedulerConfig) -> Result<Pndm> {
        if !c.skip_prk_steps.unwrap_or(false) {
            let value = if c.skip_prk_steps.is_some() { "false" } else { "absent (diffusers' default: false)" };
            return Err(c.error(
                "skip_prk_steps",
                format!("{value}: the Runge-Kutta warm-up is not supported, only PLMS (skip_prk_steps true)"),
            ));
        }
        let schedule = DiscreteSchedule::new(c)?;
        Ok(Pndm {
            final_alpha_cumprod: if c.set_alpha_to_one.unwrap_or(false) { 1.0 } else { schedule.alphas_cumprod[0] },
            schedule,
            prediction: c.prediction(&[Prediction::Epsilon, Prediction::V])?,
            counter: 0,
            history: Vec::new(),
            first_sample: None,
        })
    }

    /// ᾱ at training step `t`, or an error where diffusers' index would be out of range.
    fn alpha_at(&self, t: usize) -> Result<f32> {
        let alphas = &self.schedule.alphas_cumprod;
        alphas.get(t).copied().ok_or_else(|| {
            Error::Usage(format!(
                "{} scheduler: timestep {t} is outside the {} training steps",
                Self::KIND,
                alphas.len()
            ))
        })
    }
}

impl StepRule for Pndm {
    const KIND: SchedulerKind = SchedulerKind::Pndm;

    fn schedule(&self) -> &dyn Schedule {
        &self.schedule
    }

    fn set_timesteps(&mut self, steps: usize) -> Result<()> {
        // diffusers' PLMS timesteps: DDIM's spacings with the second-to-last repeated, and
        // (unlike DDIM) no limit of one step per training step.
        self.schedule.set_timesteps_with(SchedulerKind::Pndm, steps, None, |t| {
            if steps > 1 {
                t.insert(1, t[1]);
            }
        })?;
        self.counter = 0;
        self.history.clear();
        self.first_sample = None;
        Ok(())
    }

    /// diffusers' `step_plms` and `_get_prev_sample`. The PLMS combination c = w·m + H of the
    /// current output m and the history H is folded into the fused op (x0 = m is kept, so the
    /// history gets the guided output); H itself is summed with tensor ops before it. Fusing
    /// that too would need an op taking three history tensors with a weight each.
    fn coefficients(&self, step: usize) -> Result<(SchedulerStep, Option<Tensor>)> {
        let ratio = self.schedule.alphas_cumprod.len() / self.schedule.steps;
        let t = self.schedule.timesteps[step];
        // The second step goes from t + ratio to t again (t is the repeated timestep).
        let (t, prev) = match self.counter {
            1 => (t + ratio, Some(t)),
            _ => (t, t.checked_sub(ratio)),
        };
        let (weight, terms): (f32, &[f32]) = match (self.counter, self.history.len()) {
            (0, _) => (1.0, &[]),
            (1, _) => (0.5, &[0.5]),
            (_, 1) => (1.5, &[-0.5]),
            (_, 2) => (23.0 / 12.0, &[5.0 / 12.0, -16.0 / 12.0]),
            (_, _) => (55.0 / 24.0, &[-9.0 / 24.0, 37.0 / 24.0, -59.0 / 24.0]),
        };
        let past = &self.history[self.history.len().saturating_sub(terms.len())..];
        if past.len() != terms.len() {
            return Err(Error::Usage(format!("{} scheduler: step {step} without the steps before it", Self::KIND)));
        }
        let mut history: Option<Tensor> = None;
        for (e, &w) in past.iter().zip(terms) {
            let term = e.scale(w)?;
            history = Some(match history {
                Some(h) => h.add(&term)?,
                None => term,
            });
        }
        let alpha_prod = self.alpha_at(t)?;
        let alpha_prod_prev = match prev {
            Some(p) => self.alpha_at(p)?,
            None => self.final_alpha_cumprod,
        };
        let (beta_prod, beta_prod_prev) = (1.0 - alpha_prod, 1.0 - alpha_prod_prev);
        // Formula (9) of the PNDM paper: x' = (√ᾱ'/√ᾱ)·x − (ᾱ' − ᾱ)·ε / (ᾱ·√(1−ᾱ') + √(ᾱ·(1−ᾱ)·ᾱ')).
        let sample_coeff = (alpha_prod_prev / alpha_prod).sqrt();
        let denom = alpha_prod * beta_prod_prev.sqrt() + (alpha_prod * beta_prod * alpha_prod_prev).sqrt();
        let k = (alpha_prod_prev - alpha_prod) / denom;
        // ε = a·c + b·x: with v-prediction ε = √ᾱ·v + √(1−ᾱ)·x.
        let (a, b) = match self.prediction {
            Prediction::V => (alpha_prod.sqrt(), beta_prod.sqrt()),
            _ => (1.0, 0.0),
        };
        let coefficients = SchedulerStep {
            x0_m: 1.0,
            out_x: sample_coeff - k * b,
            out_x0: -k * a * weight,
            out_prev: if history.is_some() { -k * a } else { 0.0 },
            keep_x0: self.counter != 1,
            ..Default::default()
        };
        Ok((coefficients, history))
    }

    fn restart_sample(&self) -> Option<&Tensor> {
        self.first_sample.as_ref().filter(|_| self.counter == 1)
    }

    fn keep_x0(&mut self, _step: usize, sample: &Tensor, x0: Option<Tensor>) {
        match self.counter {
            0 => self.first_sample = Some(sample.clone()),
            1 => self.first_sample = None,
            _ => {}
        }
        if let Some(output) = x0 {
            if self.history.len() == 3 {
                self.history.remove(0);
            }
            self.history.push(output);
        }
        self.counter += 1;
    }

    fn needs_noise(&self) -> bool {
        false
    }
}
