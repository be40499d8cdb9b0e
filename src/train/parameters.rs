//! The parameters of models trained from scratch: named f32 tensors under one
//! AdamW with a warm-up + cosine schedule. Each step builds the models from the
//! parameters as tracked leaves, and `update` applies the gradients found for them.

use std::collections::BTreeMap;
use std::time::Instant;

use super::classifier::Progress;
use crate::autograd::optim::{AdamW, AdamWConfig, Optimizer, StepStats};
use crate::autograd::schedule::LrSchedule;
use crate::autograd::{backward, Gradients};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

pub struct Parameters {
    names: Vec<String>,
    tensors: BTreeMap<String, Tensor>,
    optimizer: AdamW,
    schedule: LrSchedule,
    average: Option<Average>,
}

/// An exponential moving average of the parameters, as diffusers' EMAModel
/// keeps for sampling: the decay ramps up as (1 + step) / (10 + step) to `decay`,
/// so the early, poor weights fade out quickly.
struct Average {
    decay: f32,
    tensors: BTreeMap<String, Tensor>,
}

impl Parameters {
    /// Every tensor of `tensors` trains (f32, on the device it is on).
    pub fn new(tensors: BTreeMap<String, Tensor>, config: AdamWConfig, schedule: LrSchedule) -> Result<Parameters> {
        let names: Vec<String> = tensors.keys().cloned().collect();
        let values: Vec<Tensor> = tensors.values().cloned().collect();
        let optimizer = AdamW::new(&values, config)?;
        Ok(Parameters { names, tensors, optimizer, schedule, average: None })
    }

    /// Also keep an exponential moving average of the parameters (`decay` per step).
    pub fn with_average(mut self, decay: f32) -> Parameters {
        self.average = Some(Average { decay, tensors: self.tensors.clone() });
        self
    }

    /// The moving average where one is kept, else the current values.
    pub fn averaged(&self) -> &BTreeMap<String, Tensor> {
        self.average.as_ref().map_or(&self.tensors, |a| &a.tensors)
    }

    /// The parameters as tracked leaves, for the models of one step.
    pub fn leaves(&self) -> BTreeMap<String, Tensor> {
        self.tensors.iter().map(|(n, t)| (n.clone(), t.tracked())).collect()
    }

    /// The current values (untracked).
    pub fn tensors(&self) -> &BTreeMap<String, Tensor> {
        &self.tensors
    }

    /// Optimizer steps taken.
    pub fn steps(&self) -> u64 {
        self.optimizer.steps()
    }

    /// The learning rate of the next step.
    pub fn lr(&self) -> f32 {
        self.schedule.lr(self.optimizer.steps())
    }

    /// One AdamW step with the gradients `grads` holds for `leaves` (as
    /// [`Parameters::leaves`] gave them); a leaf the loss did not reach gets zero.
    pub fn update(&mut self, leaves: &BTreeMap<String, Tensor>, grads: &Gradients) -> Result<StepStats> {
        let grads = grads.for_leaves(self.names.iter().map(|name| &leaves[name]))?;
        let stats = self.optimizer.step(&grads, self.lr())?;
        for (name, value) in self.names.iter().zip(self.optimizer.params()?) {
            self.tensors.insert(name.clone(), value);
        }
        if let Some(average) = &mut self.average {
            let step = self.optimizer.steps() as f32;
            let decay = average.decay.min((1.0 + step) / (10.0 + step));
            for (name, avg) in average.tensors.iter_mut() {
                *avg = avg.scale(decay)?.add(&self.tensors[name].scale(1.0 - decay)?)?;
            }
        }
        Ok(stats)
    }

    /// One step on `loss`, a scalar of models built from `leaves`: a non-finite
    /// loss is an error naming `what`; otherwise back-propagation, the update,
    /// and a progress report (of `total` steps, timed from `started`). Returns the loss.
    pub fn minimize(
        &mut self,
        leaves: &BTreeMap<String, Tensor>,
        loss: &Tensor,
        what: &str,
        total: usize,
        started: Instant,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<f32> {
        let value = loss.to_vec_f32()?[0];
        let step = self.steps() as usize + 1;
        if !value.is_finite() {
            return Err(Error::Training(format!("the {what} loss is {value} at step {step}")));
        }
        let lr = self.lr();
        let stats = self.update(leaves, &backward(loss)?)?;
        progress(&Progress {
            step,
            steps: total,
            loss: value,
            lr,
            grad_norm: stats.grad_norm,
            seconds: started.elapsed().as_secs_f64(),
            accuracy: None,
        });
        Ok(value)
    }
}
