//! nn.BatchNorm2d as training needs it: weight and bias stay separate tensors
//! (so they get gradients), training mode normalises by the batch's statistics
//! and produces the updated running statistics, eval mode uses the running ones.
//! For inference alone, `BatchNorm2d` folds everything into one scale and shift.

use crate::device::DType;
use crate::error::Result;
use crate::nn::Weights;
use crate::tensor::Tensor;

/// PyTorch's default running-statistics momentum.
const MOMENTUM: f32 = 0.1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Batch statistics, running statistics updated.
    Train,
    /// Running statistics.
    Eval,
}

/// The running statistics a training-mode forward computed, under their
/// checkpoint names, to store once the step is taken. (`num_batches_tracked`
/// only counts steps; whoever takes them increments it.)
#[derive(Default)]
pub struct RunningStats {
    pub updated: Vec<(String, Tensor)>,
}

pub struct TrainableBatchNorm2d {
    weight: Tensor,
    bias: Tensor,
    /// f32 whatever the compute dtype, as PyTorch keeps them under autocast.
    running_mean: Tensor,
    running_var: Tensor,
    eps: f32,
    /// The checkpoint names of the running statistics, for their updates.
    mean_name: String,
    var_name: String,
}

impl TrainableBatchNorm2d {
    pub fn load(w: &Weights, channels: usize, eps: f32) -> Result<TrainableBatchNorm2d> {
        let f32_of = |name: &str| -> Result<Tensor> { w.get(name, &[channels])?.detach().to_dtype(DType::F32) };
        if w.contains("num_batches_tracked") {
            w.ignore("num_batches_tracked");
        }
        Ok(TrainableBatchNorm2d {
            weight: w.get("weight", &[channels])?,
            bias: w.get("bias", &[channels])?,
            running_mean: f32_of("running_mean")?,
            running_var: f32_of("running_var")?,
            eps,
            mean_name: w.name("running_mean"),
            var_name: w.name("running_var"),
        })
    }

    pub fn forward(&self, x: &Tensor, mode: Mode, stats: &mut RunningStats) -> Result<Tensor> {
        match mode {
            Mode::Eval => self.forward_eval(x),
            Mode::Train => self.forward_train(x, stats),
        }
    }

    fn forward_eval(&self, x: &Tensor) -> Result<Tensor> {
        let c = self.weight.numel();
        let rstd: Vec<f32> = self.running_var.to_vec_f32()?.iter().map(|v| 1.0 / (v + self.eps).sqrt()).collect();
        let rstd = Tensor::from_f32(rstd, [c], &x.device())?.to_dtype(x.dtype())?;
        let scale = self.weight.mul(&rstd)?;
        let shift = self.bias.sub(&self.running_mean.to_dtype(x.dtype())?.mul(&scale)?)?;
        x.mul(&scale.reshape([c, 1, 1])?)?.add(&shift.reshape([c, 1, 1])?)
    }

    fn forward_train(&self, x: &Tensor, stats: &mut RunningStats) -> Result<Tensor> {
        let batch = x.batch_norm_train(&self.weight, &self.bias, self.eps)?;
        let count = x.numel() / self.weight.numel().max(1);
        // PyTorch updates the running variance with the unbiased batch variance.
        let unbias = if count > 1 { count as f32 / (count - 1) as f32 } else { 1.0 };
        let blend = |old: &Tensor, new: &Tensor, k: f32| -> Result<Tensor> {
            old.scale(1.0 - MOMENTUM)?.add(&new.detach().scale(MOMENTUM * k)?)
        };
        stats.updated.push((self.mean_name.clone(), blend(&self.running_mean, &batch.mean, 1.0)?));
        stats.updated.push((self.var_name.clone(), blend(&self.running_var, &batch.var, unbias)?));
        Ok(batch.out)
    }
}

/// Whether a checkpoint name is a BatchNorm buffer (running statistics or the
/// batch count), which training updates but never differentiates.
pub fn is_batch_norm_buffer(name: &str) -> bool {
    ["running_mean", "running_var", "num_batches_tracked"].iter().any(|b| name.ends_with(b))
}
