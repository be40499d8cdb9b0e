//! Stochastic gradient descent with momentum, PyTorch's `torch.optim.SGD` (dampening 0).

use super::flat::FlatParams;
use super::{Optimizer, StepStats};
use crate::device::SgdStep;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

const OP: &str = "sgd";
/// The momentum buffer's name in the state, as in PyTorch's state dict.
const MOMENTUM_BUFFER: &str = "momentum_buffer";

/// PyTorch's SGD arguments other than the learning rate, with its defaults.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SgdConfig {
    /// 0 disables momentum (and its buffer).
    pub momentum: f32,
    /// Nesterov momentum; needs `momentum` > 0.
    pub nesterov: bool,
    /// L2 penalty, added to the gradient: g + weight_decay·p.
    pub weight_decay: f32,
    /// Clip the gradients to this global L2 norm (`clip_grad_norm_`) before the update.
    pub max_grad_norm: Option<f32>,
}

pub struct Sgd {
    config: SgdConfig,
    flat: FlatParams,
    /// Present exactly when `config.momentum` > 0.
    momentum_buffer: Option<Tensor>,
}

impl Sgd {
    /// An optimizer of `params` (one device, any float dtypes), starting from their values.
    pub fn new(params: &[Tensor], config: SgdConfig) -> Result<Sgd> {
        let SgdConfig { momentum, nesterov, weight_decay, .. } = config;
        if !(momentum.is_finite() && momentum >= 0.0) {
            return Err(Error::Usage(format!("{OP}: momentum {momentum} is not a finite non-negative number")));
        }
        if !(weight_decay.is_finite() && weight_decay >= 0.0) {
            return Err(Error::Usage(format!("{OP}: weight_decay {weight_decay} is not a finite non-negative number")));
        }
        if nesterov && momentum == 0.0 {
            return Err(Error::Usage(format!("{OP}: Nesterov momentum needs momentum > 0")));
        }
        let flat = FlatParams::new(OP, params, config.max_grad_norm)?;
        let momentum_buffer = if momentum > 0.0 { Some(flat.zeros()?) } else { None };
        Ok(Sgd { config, flat, momentum_buffer })
    }

    pub fn config(&self) -> &SgdConfig {
        &self.config
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, grads: &[Tensor], lr: f32) -> Result<StepStats> {
        let c = self.config;
        let buffer = &mut self.momentum_buffer;
        self.flat.step(OP, grads, lr, |master, g, steps| {
            let step = SgdStep {
                lr,
                momentum: c.momentum,
                weight_decay: c.weight_decay,
                nesterov: c.nesterov,
                first_step: steps == 0,
                grad_scale: g.scale,
            };
            master.sgd_step(&g.grads, buffer.as_mut(), &step)
        })
    }

    fn params(&self) -> Result<Vec<Tensor>> {
        self.flat.params()
    }

    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let buffers: Vec<(&str, &Tensor)> = self.momentum_buffer.iter().map(|b| (MOMENTUM_BUFFER, b)).collect();
        self.flat.state(&buffers)
    }

    fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        let mut buffers: Vec<(&str, &mut Tensor)> =
            self.momentum_buffer.iter_mut().map(|b| (MOMENTUM_BUFFER, b)).collect();
        self.flat.load_state(OP, state, &mut buffers)
    }

    fn steps(&self) -> u64 {
        self.flat.steps()
    }
}
