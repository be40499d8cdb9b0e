//! diffusers' DPMSolverMultistepScheduler with algorithm_type dpmsolver++ (Lu et al. 2022,
//! "DPM-Solver++"), orders 1 and 2 (midpoint or Heun), in λ = log(α/σ). Order 2 needs the
//! previous step's x0, which the fused step writes out alongside the new sample.

use super::config::{FinalSigma, Prediction, SchedulerConfig, Spacing, FINAL_SIGMAS, SPACINGS};
use super::{check_steps, mix, schedule, x0_coefficients, Schedule, SchedulerKind, StepRule};
use crate::device::SchedulerStep;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SolverType {
    Midpoint,
    Heun,
}

pub(super) struct DpmSolver {
    alphas_cumprod: Vec<f32>,
    prediction: Prediction,
    solver_order: usize,
    solver_type: SolverType,
    lower_order_final: bool,
    euler_at_final: bool,
    karras: bool,
    cosine_betas: bool,
    sigma_min: Option<f64>,
    sigma_max: Option<f64>,
    final_sigma: FinalSigma,
    lambda_min_clipped: f64,
    spacing: Spacing,
    steps_offset: i64,
    steps: usize,
    timesteps: Vec<f32>,
    sigmas: Vec<f32>,
    /// The x0 of the last step run and that step's index.
    history: Option<(Tensor, usize)>,
}

impl DpmSolver {
    pub(super) fn new(c: &SchedulerConfig) -> Result<DpmSolver> {
        c.unsupported_flag("thresholding", c.thresholding)?;
        for (option, value) in [
            ("use_exponential_sigmas", c.use_exponential_sigmas),
            ("use_beta_sigmas", c.use_beta_sigmas),
            ("use_lu_lambdas", c.use_lu_lambdas),
            ("use_flow_sigmas", c.use_flow_sigmas),
        ] {
            c.unsupported_flag(option, value)?;
        }
        // diffusers maps DEIS's and UniPC's names onto these, as from_config does.
        c.choice("algorithm_type", &c.algorithm_type, "dpmsolver++", &[("dpmsolver++", ()), ("deis", ())])?;
        let solver_types = [
            ("midpoint", SolverType::Midpoint),
            ("heun", SolverType::Heun),
            ("logrho", SolverType::Midpoint),
            ("bh1", SolverType::Midpoint),
            ("bh2", SolverType::Midpoint),
        ];
        if let Some(v) = &c.variance_type {
            return Err(c.error("variance_type", format!("\"{v}\" (a learned variance) is not supported")));
        }
        let solver_order = match c.solver_order.unwrap_or(2) {
            order @ (1 | 2) => order,
            order => return Err(c.error("solver_order", format!("{order} is not supported (supported: 1, 2)"))),
        };
        Ok(DpmSolver {
            alphas_cumprod: c.alphas_cumprod(true)?,
            prediction: c.prediction(&[Prediction::Epsilon, Prediction::Sample, Prediction::V])?,
            solver_order,
            solver_type: c.choice("solver_type", &c.solver_type, "midpoint", &solver_types)?,
            lower_order_final: c.lower_order_final.unwrap_or(true),
            euler_at_final: c.euler_at_final.unwrap_or(false),
            karras: c.use_karras_sigmas.unwrap_or(false),
            cosine_betas: c.beta_schedule.as_deref() == Some("squaredcos_cap_v2"),
            sigma_min: c.sigma_min,
            sigma_max: c.sigma_max,
            final_sigma: c.choice("final_sigmas_type", &c.final_sigmas_type, "zero", &FINAL_SIGMAS)?,
            lambda_min_clipped: c.lambda_min_clipped.unwrap_or(f64::NEG_INFINITY),
            spacing: c.choice("timestep_spacing", &c.timestep_spacing, "linspace", &SPACINGS)?,
            steps_offset: c.steps_offset(),
            steps: 0,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            history: None,
        })
    }

    /// The timestep past which λ = log(α/σ) falls below lambda_min_clipped (all of them by default).
    fn last_timestep(&self) -> usize {
        let num_train = self.alphas_cumprod.len();
        // torch.searchsorted over λ from the noisiest step up: the first λ ≥ the clip value.
        let clipped = self
            .alphas_cumprod
            .iter()
            .rev()
            .map(|&a| a.sqrt().ln() - (1.0 - a).sqrt().ln())
            .position(|lambda| lambda as f64 >= self.lambda_min_clipped)
            .unwrap_or(num_train);
        num_train - clipped
    }

    fn integer_timesteps(&self, steps: usize) -> Vec<i64> {
        let (num_train, last) = (self.alphas_cumprod.len(), self.last_timestep());
        match self.spacing {
            Spacing::Linspace => schedule::np_linspace(0.0, last as f64 - 1.0, steps + 1)
                .iter()
                .rev()
                .take(steps)
                .map(|t| t.round_ties_even() as i64)
                .collect(),
            Spacing::Leading => {
                let ratio = (last / (steps + 1)) as i64;
                (1..=steps as i64).rev().map(|i| i * ratio + self.steps_offset).collect()
            }
            Spacing::Trailing => schedule::np_arange(last as f64, 0.0, -(num_train as f64 / steps as f64))
                .iter()
                .map(|t| t.round_ties_even() as i64 - 1)
                .collect(),
        }
    }
}

/// α_t = 1/√(σ²+1) and σ_t = σ·α_t of the noise level σ.
fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

/// λ = log α_t − log σ_t.
fn lambda(alpha: f32, sigma: f32) -> f32 {
    alpha.ln() - sigma.ln()
}

impl Schedule for DpmSolver {
    fn num_inference_steps(&self) -> usize {
        self.steps
    }

    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn sigmas(&self) -> Option<&[f32]> {
        (!self.sigmas.is_empty()).then_some(self.sigmas.as_slice())
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor> {
        let (alpha, sigma) = alpha_sigma(self.sigmas[step]);
        mix(original, noise, alpha, sigma)
    }
}

impl StepRule for DpmSolver {
    const KIND: SchedulerKind = SchedulerKind::DpmSolverMultistep;

    fn schedule(&self) -> &dyn Schedule {
        self
    }

    fn set_timesteps(&mut self, steps: usize) -> Result<()> {
        check_steps(Self::KIND, steps, None)?;
        let train = schedule::train_sigmas(&self.alphas_cumprod);
        let (timesteps, sigmas) = if self.karras {
            let sigma_min = self.sigma_min.unwrap_or(train[0] as f64);
            let sigma_max = self.sigma_max.unwrap_or(train[train.len() - 1] as f64);
            let sigmas = schedule::karras_sigmas(sigma_min, sigma_max, steps);
            let log_sigmas: Vec<f32> = train.iter().map(|&v| schedule::np_log_f32(v)).collect();
            let timesteps = sigmas
                .iter()
                .map(|&v| {
                    let t = schedule::sigma_to_t(v, &log_sigmas);
                    // diffusers rounds unless the betas are cosine; the int64 cast truncates.
                    (if self.cosine_betas { t } else { t.round_ties_even() }) as i64
                })
                .collect();
            (timesteps, sigmas)
        } else {
            let timesteps = self.integer_timesteps(steps);
            let sigmas = schedule::interp_sigmas(timesteps.iter().map(|&t| t as f64), &train);
            (timesteps, sigmas)
        };
        let last = match self.final_sigma {
            FinalSigma::Zero => 0.0,
            FinalSigma::SigmaMin => train[0],
        };
        self.sigmas = sigmas.iter().map(|&v| v as f32).chain([last]).collect();
        self.timesteps = timesteps.iter().map(|&t| t as f32).collect();
        self.steps = steps;
        self.history = None;
        Ok(())
    }

    fn coefficients(&self, step: usize) -> Result<(SchedulerStep, Option<Tensor>)> {
        let previous = match &self.history {
            Some((x0, at)) if at + 1 == step => Some(x0.clone()),
            Some((_, at)) => {
                return Err(Error::Usage(format!(
                    "{} scheduler: step {step} after step {at}: multistep steps must run in order",
                    Self::KIND
                )))
            }
            None => None,
        };
        let n = self.timesteps.len();
        let last = step == n - 1;
        let lower_order_final =
            last && (self.euler_at_final || (self.lower_order_final && n < 15) || self.final_sigma == FinalSigma::Zero);
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[step]);
        let (x0_x, x0_m) = x0_coefficients(self.prediction, alpha_s0, sigma_s0);
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[step + 1]);
        let h = lambda(alpha_t, sigma_t) - lambda(alpha_s0, sigma_s0);
        // x_t = (σ_t/σ_s0)·x − A·D0 (+ the D1 term), A = α_t·(e^−h − 1), D0 = x0.
        let a = alpha_t * ((-h).exp() - 1.0);
        let mut coefficients = SchedulerStep {
            x0_x,
            x0_m,
            out_x: sigma_t / sigma_s0,
            out_x0: -a,
            keep_x0: self.solver_order == 2 && !last,
            ..Default::default()
        };
        let previous = previous.filter(|_| self.solver_order == 2 && !lower_order_final);
        if previous.is_some() {
            // D1 = (x0 − x0_prev)/r0 with r0 = h_0/h, h_0 = λ_s0 − λ_s1.
            let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas[step - 1]);
            let r0 = (lambda(alpha_s0, sigma_s0) - lambda(alpha_s1, sigma_s1)) / h;
            let d1 = match self.solver_type {
                SolverType::Midpoint => -0.5 * a,
                SolverType::Heun => alpha_t * (((-h).exp() - 1.0) / h + 1.0),
            } * (1.0 / r0);
            coefficients.out_x0 += d1;
            coefficients.out_prev = -d1;
        }
        Ok((coefficients, previous))
    }

    fn keep_x0(&mut self, step: usize, _sample: &Tensor, x0: Option<Tensor>) {
        self.history = x0.map(|x0| (x0, step));
    }

    fn needs_noise(&self) -> bool {
        false
    }
}
