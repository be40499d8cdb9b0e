//! diffusers' noise schedulers, read from a pipeline's scheduler/scheduler_config.json:
//! DDIM, DDPM, Euler, Euler ancestral, DPM-Solver++ (multistep) and PNDM (PLMS). Timesteps and sigmas are
//! computed as diffusers computes them (bit for bit where diffusers' own arithmetic allows),
//! and a denoising step is one fused backend op over the latents (`Tensor::scheduler_step`),
//! classifier-free guidance included.
//!
//! A denoising loop, as diffusers' StableDiffusionPipeline runs it:
//! ```text
//! let mut s = scheduler::load(dir, Some(SchedulerKind::Euler))?;
//! s.set_timesteps(25)?;
//! let mut x = noise.scale(s.init_noise_sigma())?;
//! for i in 0..s.timesteps().len() {
//!     let input = s.scale_model_input(&x, i)?;          // then cat [input; input] for CFG
//!     let eps = unet(&input, s.timesteps()[i])?;         // (2N, ...) = [uncond; cond]
//!     let fresh = s.needs_noise().then(|| randn(x.dims()));
//!     x = s.step(&eps, Some(7.5), i, &x, fresh.as_ref())?;
//! }
//! ```
//! For img2img, `let start = s.img2img_start(strength)?`, noise the image latents with
//! `s.add_noise(&latents, &noise, start)` and run the loop from `start`. Step indices are
//! always positions in `timesteps()`. The schedulers hold no random generator: the caller
//! supplies noise, so runs can be compared with diffusers on the same noise.

mod config;
mod ddim;
mod ddpm;
mod discrete;
mod dpm_solver;
mod euler;
mod euler_ancestral;
mod pndm;
mod schedule;
mod sigma;

use std::fmt;
use std::path::Path;
use std::str::FromStr;

pub use config::SchedulerConfig;

use crate::device::SchedulerStep;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use config::Prediction;

/// The schedulers foil implements, by diffusers class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SchedulerKind {
    Ddim,
    Ddpm,
    Euler,
    EulerAncestral,
    DpmSolverMultistep,
    Pndm,
}

impl SchedulerKind {
    pub const ALL: [SchedulerKind; 6] = [
        SchedulerKind::Ddim,
        SchedulerKind::Ddpm,
        SchedulerKind::Euler,
        SchedulerKind::EulerAncestral,
        SchedulerKind::DpmSolverMultistep,
        SchedulerKind::Pndm,
    ];

    /// The command-line name: ddim, ddpm, euler, euler-a, dpm++2m, pndm.
    pub fn cli_name(self) -> &'static str {
        match self {
            SchedulerKind::Ddim => "ddim",
            SchedulerKind::Ddpm => "ddpm",
            SchedulerKind::Euler => "euler",
            SchedulerKind::EulerAncestral => "euler-a",
            SchedulerKind::DpmSolverMultistep => "dpm++2m",
            SchedulerKind::Pndm => "pndm",
        }
    }

    /// The diffusers class name, as in `_class_name`.
    pub fn class_name(self) -> &'static str {
        match self {
            SchedulerKind::Ddim => "DDIMScheduler",
            SchedulerKind::Ddpm => "DDPMScheduler",
            SchedulerKind::Euler => "EulerDiscreteScheduler",
            SchedulerKind::EulerAncestral => "EulerAncestralDiscreteScheduler",
            SchedulerKind::DpmSolverMultistep => "DPMSolverMultistepScheduler",
            SchedulerKind::Pndm => "PNDMScheduler",
        }
    }

    pub fn from_class_name(name: &str) -> Option<SchedulerKind> {
        SchedulerKind::ALL.into_iter().find(|k| k.class_name() == name)
    }
}

impl fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.cli_name())
    }
}

impl FromStr for SchedulerKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<SchedulerKind> {
        SchedulerKind::ALL.into_iter().find(|k| k.cli_name() == s).ok_or_else(|| {
            let names: Vec<&str> = SchedulerKind::ALL.iter().map(|k| k.cli_name()).collect();
            Error::Usage(format!("unknown scheduler '{s}' (expected one of {})", names.join(", ")))
        })
    }
}

/// A diffusers scheduler. Step indices are positions in `timesteps()`.
pub trait Scheduler: Send {
    fn kind(&self) -> SchedulerKind;

    /// Builds the inference schedule of `steps` steps (diffusers' `set_timesteps`) and resets
    /// any multistep history.
    fn set_timesteps(&mut self, steps: usize) -> Result<()>;

    /// The `steps` last given to `set_timesteps` (0 before), which img2img's strength scales.
    fn num_inference_steps(&self) -> usize;

    /// The timesteps the UNet is given, one per step. Usually `num_inference_steps()` of them,
    /// but diffusers' trailing spacing can give one more and PNDM has one more (its second-to-last
    /// repeated): loop over this, not the step count.
    fn timesteps(&self) -> &[f32];

    /// The noise levels σ of the steps, plus the final one, for the sigma-based schedulers
    /// (Euler, Euler ancestral, DPM-Solver++); None for DDIM, DDPM and PNDM.
    fn sigmas(&self) -> Option<&[f32]>;

    /// The standard deviation of the initial noise: the first latents are N(0, 1)·this.
    fn init_noise_sigma(&self) -> f32;

    /// The UNet input for step `step` (the sample scaled by 1/√(σ²+1) for Euler, else as is).
    fn scale_model_input(&self, sample: &Tensor, step: usize) -> Result<Tensor>;

    /// One denoising step from `sample` at step `step` to the next sample. With `guidance`
    /// Some(g), `model_output` is (2N, ...) = [uncond; cond] for a sample of batch N and the
    /// step uses u + g·(c − u); with None it has the sample's shape. `noise` (the sample's
    /// shape, N(0, 1)) is required when `needs_noise()`. Multistep schedulers keep history:
    /// run the steps in order after `set_timesteps`.
    fn step(
        &mut self,
        model_output: &Tensor,
        guidance: Option<f32>,
        step: usize,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor>;

    /// `original` noised to the level of step `step` (diffusers' `add_noise` at `timesteps()[step]`).
    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor>;

    /// Whether `step` draws on fresh noise (DDPM, Euler ancestral, DDIM with η > 0).
    fn needs_noise(&self) -> bool;

    /// Model evaluations a step (diffusers' `scheduler.order`; 1 for all of these).
    fn order(&self) -> usize;

    /// The first step of img2img at `strength` in [0, 1], as diffusers'
    /// StableDiffusionImg2ImgPipeline.get_timesteps: the last ⌊steps·strength⌋ steps run.
    /// Noise the image latents with `add_noise(.., start)` and run steps `start..`.
    fn img2img_start(&self, strength: f64) -> Result<usize> {
        if !(0.0..=1.0).contains(&strength) {
            return Err(Error::Usage(format!("img2img strength {strength} is not in [0, 1]")));
        }
        let steps = self.num_inference_steps();
        if steps == 0 {
            return Err(not_set(self.kind()));
        }
        let init = ((steps as f64 * strength) as usize).min(steps);
        let start = (steps - init) * self.order();
        if start >= self.timesteps().len() {
            return Err(Error::Usage(format!("img2img strength {strength} with {steps} steps leaves no step to run")));
        }
        Ok(start)
    }
}

/// Reads `path` (a scheduler_config.json, a folder holding one, or a pipeline folder with
/// scheduler/scheduler_config.json) and builds its scheduler, or the `kind` given instead.
pub fn load(path: impl AsRef<Path>, kind: Option<SchedulerKind>) -> Result<Box<dyn Scheduler>> {
    let path = path.as_ref();
    let file = if path.is_dir() {
        let direct = path.join("scheduler_config.json");
        if direct.is_file() {
            direct
        } else {
            path.join("scheduler").join("scheduler_config.json")
        }
    } else {
        path.to_path_buf()
    };
    from_config(&SchedulerConfig::from_file(&file)?, kind)
}

/// The scheduler of `config`'s `_class_name`, or of `kind` when given: as diffusers'
/// `from_config`, another kind keeps the shared fields (betas, spacing, prediction type, ...)
/// and takes its own defaults for the rest.
pub fn from_config(config: &SchedulerConfig, kind: Option<SchedulerKind>) -> Result<Box<dyn Scheduler>> {
    let kind = match (kind, config.class_name.as_deref()) {
        (Some(kind), _) => kind,
        (None, Some(name)) => SchedulerKind::from_class_name(name).ok_or_else(|| {
            let names: Vec<&str> = SchedulerKind::ALL.iter().map(|k| k.cli_name()).collect();
            config.error("_class_name", format!("{name} is not supported; choose a scheduler ({})", names.join(", ")))
        })?,
        (None, None) => return Err(config.error("_class_name", "missing; choose a scheduler kind")),
    };
    Ok(match kind {
        SchedulerKind::Ddim => Box::new(ddim::Ddim::new(config)?),
        SchedulerKind::Ddpm => Box::new(ddpm::Ddpm::new(config)?),
        SchedulerKind::Euler => Box::new(euler::Euler::new(config)?),
        SchedulerKind::EulerAncestral => Box::new(euler_ancestral::EulerAncestral::new(config)?),
        SchedulerKind::DpmSolverMultistep => Box::new(dpm_solver::DpmSolver::new(config)?),
        SchedulerKind::Pndm => Box::new(pndm::Pndm::new(config)?),
    })
}

fn not_set(kind: SchedulerKind) -> Error {
    Error::Usage(format!("{kind} scheduler: set_timesteps has not been called"))
}

/// Checks that `step` indexes a timestep of the current schedule.
fn check_step(kind: SchedulerKind, step: usize, timesteps: &[f32]) -> Result<()> {
    match timesteps.len() {
        0 => Err(not_set(kind)),
        n if step >= n => Err(Error::Usage(format!("{kind} scheduler: step {step} is past the last of {n} steps"))),
        _ => Ok(()),
    }
}

/// Checks the step count given to `set_timesteps`; DDIM and DDPM (`max` Some) also refuse more
/// steps than training steps, as diffusers does.
fn check_steps(kind: SchedulerKind, steps: usize, max: Option<usize>) -> Result<()> {
    match max {
        _ if steps == 0 => Err(Error::Usage(format!("{kind} scheduler: 0 inference steps"))),
        Some(max) if steps > max => {
            Err(Error::Usage(format!("{kind} scheduler: {steps} inference steps exceed the {max} training steps")))
        }
        _ => Ok(()),
    }
}

/// Timesteps as indices into ᾱ: diffusers indexes with them, so one outside the training
/// range (trailing spacing at some step counts gives −1, leading with steps_offset can give
/// num_train) is an error here rather than a wrapped index.
fn timestep_indices(kind: SchedulerKind, steps: usize, timesteps: &[i64], num_train: usize) -> Result<Vec<usize>> {
    timesteps
        .iter()
        .map(|&t| {
            usize::try_from(t).ok().filter(|&t| t < num_train).ok_or_else(|| {
                Error::Usage(format!(
                    "{kind} scheduler: {steps} steps give timestep {t}, outside the {num_train} training steps"
                ))
            })
        })
        .collect()
}

/// x0 = x0_x·x + x0_m·m for a model output m under the parametrisation x = α·x0 + σ·ε:
/// ε-prediction (x − σ·m)/α, sample prediction m, v-prediction α·x − σ·m.
fn x0_coefficients(prediction: Prediction, alpha: f32, sigma: f32) -> (f32, f32) {
    match prediction {
        Prediction::Epsilon => (1.0 / alpha, -sigma / alpha),
        Prediction::Sample => (0.0, 1.0),
        Prediction::V => (alpha, -sigma),
    }
}

/// The schedule a scheduler holds (`DiscreteSchedule`, `SigmaSchedule`, or DPM-Solver's own),
/// which answers the `Scheduler` methods that read it. Steps given to it are checked already.
trait Schedule {
    fn num_inference_steps(&self) -> usize;

    fn timesteps(&self) -> &[f32];

    fn sigmas(&self) -> Option<&[f32]> {
        None
    }

    fn init_noise_sigma(&self) -> f32 {
        1.0
    }

    fn scale_model_input(&self, sample: &Tensor, _step: usize) -> Result<Tensor> {
        Ok(sample.clone())
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor>;
}

/// What sets one scheduler apart: its schedule and the fused-step coefficients of a step.
/// `Scheduler` is implemented from this for all of them, so the step checks, guidance and the
/// fused op are in one place.
trait StepRule: Send {
    const KIND: SchedulerKind;

    fn schedule(&self) -> &dyn Schedule;

    fn set_timesteps(&mut self, steps: usize) -> Result<()>;

    /// The coefficients of step `step` (a checked step), guidance aside, and the x0 of the
    /// previous step where a multistep update uses it.
    fn coefficients(&self, step: usize) -> Result<(SchedulerStep, Option<Tensor>)>;

    /// The sample the fused step starts from instead of the caller's, where a multistep rule
    /// goes back to one it kept (PNDM's second step).
    fn restart_sample(&self) -> Option<&Tensor> {
        None
    }

    /// Receives the caller's `sample` and the x0 the fused step kept (`keep_x0`) at step `step`.
    fn keep_x0(&mut self, _step: usize, _sample: &Tensor, _x0: Option<Tensor>) {}

    fn needs_noise(&self) -> bool;
}

impl<R: StepRule> Scheduler for R {
    fn kind(&self) -> SchedulerKind {
        R::KIND
    }

    fn set_timesteps(&mut self, steps: usize) -> Result<()> {
        StepRule::set_timesteps(self, steps)
    }

    fn num_inference_steps(&self) -> usize {
        self.schedule().num_inference_steps()
    }

    fn timesteps(&self) -> &[f32] {
        self.schedule().timesteps()
    }

    fn sigmas(&self) -> Option<&[f32]> {
        self.schedule().sigmas()
    }

    fn init_noise_sigma(&self) -> f32 {
        self.schedule().init_noise_sigma()
    }

    fn scale_model_input(&self, sample: &Tensor, step: usize) -> Result<Tensor> {
        check_step(R::KIND, step, self.timesteps())?;
        self.schedule().scale_model_input(sample, step)
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        guidance: Option<f32>,
        step: usize,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        check_step(R::KIND, step, self.timesteps())?;
        let (coefficients, prev_x0) = self.coefficients(step)?;
        let coefficients = SchedulerStep { guidance, ..coefficients };
        if coefficients.out_noise != 0.0 && noise.is_none() {
            return Err(Error::Usage(format!("{} scheduler: this step adds noise, but no noise was given", R::KIND)));
        }
        let restart = self.restart_sample().cloned();
        let from = restart.as_ref().unwrap_or(sample);
        let (out, x0) = from.scheduler_step(model_output, noise, prev_x0.as_ref(), &coefficients)?;
        self.keep_x0(step, sample, x0);
        Ok(out)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor> {
        check_step(R::KIND, step, self.timesteps())?;
        self.schedule().add_noise(original, noise, step)
    }

    fn needs_noise(&self) -> bool {
        StepRule::needs_noise(self)
    }

    fn order(&self) -> usize {
        1
    }
}

/// `original`·a + `noise`·b as one fused op.
fn mix(original: &Tensor, noise: &Tensor, a: f32, b: f32) -> Result<Tensor> {
    let coefficients = SchedulerStep { out_x: a, eps_m: 1.0, out_eps: b, ..Default::default() };
    Ok(original.scheduler_step(noise, None, None, &coefficients)?.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_names_round_trip() {
        for k in SchedulerKind::ALL {
            assert_eq!(k.cli_name().parse::<SchedulerKind>().unwrap(), k);
            assert_eq!(SchedulerKind::from_class_name(k.class_name()), Some(k));
        }
        assert!("lms".parse::<SchedulerKind>().unwrap_err().to_string().contains("euler-a"));
    }
}
