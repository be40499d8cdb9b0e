//! Adam with decoupled weight decay, PyTorch's `torch.optim.AdamW` (amsgrad off).

use super::flat::FlatParams;
use super::{Optimizer, StepStats};
use crate::device::AdamWStep;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

const OP: &str = "adamw";
/// The moments' names in the state, as in PyTorch's state dict.
const EXP_AVG: &str = "exp_avg";
const EXP_AVG_SQ: &str = "exp_avg_sq";

/// PyTorch's AdamW arguments other than the learning rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f32,
    pub beta2: f32,
    /// Added to √v̂, outside the square root.
    pub eps: f32,
    /// Decoupled decay: p ← p − lr·weight_decay·p before the Adam update.
    pub weight_decay: f32,
    /// Clip the gradients to this global L2 norm (`clip_grad_norm_`) before the update.
    pub max_grad_norm: Option<f32>,
}

impl Default for AdamWConfig {
    /// PyTorch's defaults: betas (0.9, 0.999), eps 1e-8, weight decay 0.01; no clipping.
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, max_grad_norm: None }
    }
}

pub struct AdamW {
    config: AdamWConfig,
    flat: FlatParams,
    /// The first and second moments, flat f32.
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

impl AdamW {
    /// An optimizer of `params` (one device, any float dtypes), starting from their values.
    pub fn new(params: &[Tensor], config: AdamWConfig) -> Result<AdamW> {
        let AdamWConfig { beta1, beta2, eps, weight_decay, .. } = config;
        for (name, beta) in [("beta1", beta1), ("beta2", beta2)] {
            if !(0.0..1.0).contains(&beta) {
                return Err(Error::Usage(format!("{OP}: {name} {beta} is outside [0, 1)")));
            }
        }
        for (name, v) in [("eps", eps), ("weight_decay", weight_decay)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::Usage(format!("{OP}: {name} {v} is not a finite non-negative number")));
            }
        }
        let flat = FlatParams::new(OP, params, config.max_grad_norm)?;
        let (exp_avg, exp_avg_sq) = (flat.zeros()?, flat.zeros()?);
        Ok(AdamW { config, flat, exp_avg, exp_avg_sq })
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }
}

impl Optimizer for AdamW {
    fn step(&mut self, grads: &[Tensor], lr: f32) -> Result<StepStats> {
        let c = self.config;
        let (m, v) = (&mut self.exp_avg, &mut self.exp_avg_sq);
        self.flat.step(OP, grads, lr, |master, g, steps| {
            let step = AdamWStep::new(lr, (c.beta1, c.beta2), c.eps, c.weight_decay, steps + 1, g.scale);
            master.adamw_step(&g.grads, m, v, &step)
        })
    }

    fn params(&self) -> Result<Vec<Tensor>> {
        self.flat.params()
    }

    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        self.flat.state(&[(EXP_AVG, &self.exp_avg), (EXP_AVG_SQ, &self.exp_avg_sq)])
    }

    fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        self.flat.load_state(OP, state, &mut [(EXP_AVG, &mut self.exp_avg), (EXP_AVG_SQ, &mut self.exp_avg_sq)])
    }

    fn steps(&self) -> u64 {
        self.flat.steps()
    }
}
