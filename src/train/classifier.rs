//! Training and fine-tuning a torchvision-style ResNet classifier: minibatch
//! SGD or AdamW on cross-entropy with label smoothing, warm-up and cosine
//! decay, clipping by global norm, BatchNorm in training mode, a subset of
//! parameters trainable by name prefix, periodic evaluation, and checkpoints
//! from which a run resumes exactly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::checkpoint;
use super::data::Dataset;
use crate::autograd::optim::{AdamW, AdamWConfig, Optimizer, Sgd, SgdConfig};
use crate::autograd::schedule::LrSchedule;
use crate::autograd::{backward, no_grad};
use crate::device::{DType, Device};
use crate::error::{Error, Result};
use crate::models::resnet::{imagenet_normalize, ResNet, ResNetArch};
use crate::nn::{is_batch_norm_buffer, Weights};
use crate::tensor::{Rng, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptimizerKind {
    Sgd,
    AdamW,
}

#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub arch: ResNetArch,
    pub optimizer: OptimizerKind,
    pub lr: f32,
    /// The learning rate the cosine decay ends at.
    pub min_lr: f32,
    pub warmup_steps: usize,
    pub steps: usize,
    pub batch: usize,
    /// SGD's momentum (Nesterov); AdamW uses betas (0.9, 0.999).
    pub momentum: f32,
    pub weight_decay: f32,
    pub label_smoothing: f32,
    pub max_grad_norm: Option<f32>,
    /// Name prefixes of the trainable parameters (e.g. `layer4.`, `fc.`); empty trains all.
    pub trainable: Vec<String>,
    /// Evaluate on the held-out set every this many steps (0: only at the end).
    pub eval_every: usize,
    /// Write a checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: usize,
    pub seed: u64,
    /// The compute dtype; parameters stay f32 in the optimizer.
    pub dtype: DType,
}

/// One line of progress.
#[derive(Clone, Debug)]
pub struct Progress {
    pub step: usize,
    pub steps: usize,
    pub loss: f32,
    pub lr: f32,
    pub grad_norm: f32,
    pub seconds: f64,
    /// Held-out accuracy, when this step evaluated.
    pub accuracy: Option<f32>,
}

pub struct TrainOutcome {
    pub final_accuracy: f32,
    pub final_loss: f32,
    pub seconds: f64,
}

/// A model under training: every tensor of its checkpoint, which of them
/// train, and the optimizer over those.
pub struct ClassifierTrainer {
    config: TrainConfig,
    device: Device,
    tensors: BTreeMap<String, Tensor>,
    /// BatchNorm's `num_batches_tracked` counts and shapes, kept on the host: counting
    /// them on the device would read each one back every step.
    batches_tracked: BTreeMap<String, (u32, Vec<usize>)>,
    trainable: Vec<String>,
    optimizer: Box<dyn Optimizer>,
    step: usize,
}

impl ClassifierTrainer {
    /// A trainer starting from `tensors` (torchvision names, e.g. from
    /// `resnet_init` or a checkpoint), moved to `device`.
    pub fn new(config: TrainConfig, tensors: BTreeMap<String, Tensor>, device: &Device) -> Result<ClassifierTrainer> {
        let mut on_device = BTreeMap::new();
        let mut batches_tracked = BTreeMap::new();
        // Parameters stay f32 here (the optimizer's master copy); the model casts them to the
        // compute dtype as it loads, and the cast's gradient brings the gradients back to f32.
        for (name, t) in tensors {
            if name.ends_with("num_batches_tracked") {
                let count = t.to_vec_u32()?.first().copied().unwrap_or(0);
                batches_tracked.insert(name, (count, t.dims().to_vec()));
                continue;
            }
            let t = t.detach().to_device(device)?;
            let t = if t.dtype().is_float() { t.to_dtype(DType::F32)? } else { t };
            on_device.insert(name, t);
        }
        let trainable: Vec<String> = on_device
            .keys()
            .filter(|n| !is_batch_norm_buffer(n))
            .filter(|n| config.trainable.is_empty() || config.trainable.iter().any(|p| n.starts_with(p.as_str())))
            .cloned()
            .collect();
        if trainable.is_empty() {
            return Err(Error::Usage(format!("no parameter name starts with any of {:?}", config.trainable)));
        }
        let params: Vec<Tensor> = trainable.iter().map(|n| on_device[n].clone()).collect();
        let optimizer: Box<dyn Optimizer> = match config.optimizer {
            OptimizerKind::Sgd => Box::new(Sgd::new(
                &params,
                SgdConfig {
                    momentum: config.momentum,
                    nesterov: config.momentum > 0.0,
                    weight_decay: config.weight_decay,
                    max_grad_norm: config.max_grad_norm,
                },
            )?),
            OptimizerKind::AdamW => Box::new(AdamW::new(
                &params,
                AdamWConfig {
                    weight_decay: config.weight_decay,
                    max_grad_norm: config.max_grad_norm,
                    ..AdamWConfig::default()
                },
            )?),
        };
        let trainer = ClassifierTrainer {
            config,
            device: device.clone(),
            tensors: on_device,
            batches_tracked,
            trainable,
            optimizer,
            step: 0,
        };
        trainer.model(false)?; // the checkpoint must fit the architecture before any step
        Ok(trainer)
    }

    /// A trainer resuming from a checkpoint written by [`ClassifierTrainer::save_checkpoint`].
    pub fn resume(config: TrainConfig, file: &Path, device: &Device) -> Result<ClassifierTrainer> {
        let saved = checkpoint::read(file, device)?;
        let mut trainer = ClassifierTrainer::new(config, saved.model, device)?;
        trainer.optimizer.load_state(&saved.optimizer)?;
        trainer.step = saved.step;
        trainer.refresh_params()?;
        Ok(trainer)
    }

    pub fn step(&self) -> usize {
        self.step
    }

    pub fn trainable_names(&self) -> &[String] {
        &self.trainable
    }

    /// The model's tensors under torchvision names (parameters in f32), as
    /// `foil classify` loads them.
    pub fn weights(&self) -> Result<Vec<(String, Tensor)>> {
        let mut all: Vec<(String, Tensor)> = self.tensors.iter().map(|(n, t)| (n.clone(), t.clone())).collect();
        for (name, (count, dims)) in &self.batches_tracked {
            all.push((name.clone(), Tensor::from_u32(vec![*count], dims.clone(), &self.device)?));
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(all)
    }

    fn model(&self, tracked: bool) -> Result<(ResNet, Vec<Tensor>)> {
        let mut map = self.tensors.clone();
        let mut leaves = Vec::with_capacity(self.trainable.len());
        if tracked {
            for name in &self.trainable {
                let leaf = self.tensors[name].tracked();
                map.insert(name.clone(), leaf.clone());
                leaves.push(leaf);
            }
        }
        let w = Weights::from_tensors("model", map, self.config.dtype, &self.device);
        Ok((ResNet::for_training(&w, self.config.arch)?, leaves))
    }

    /// One optimisation step on the images and labels of `idx`; returns the loss and gradient norm.
    pub fn train_step(&mut self, data: &Dataset, idx: &[usize]) -> Result<(f32, f32)> {
        let (images, labels) = data.batch(idx, &self.device)?;
        self.train_step_on(&imagenet_normalize(&images)?, &labels)
    }

    /// One optimisation step on model inputs `x` (already normalised) and u32 `labels`.
    pub fn train_step_on(&mut self, x: &Tensor, labels: &Tensor) -> Result<(f32, f32)> {
        let (model, leaves) = self.model(true)?;
        let x = x.to_dtype(self.config.dtype)?;
        let (logits, stats) = model.forward_train(&x)?;
        let loss = logits.to_dtype(DType::F32)?.cross_entropy(labels, self.config.label_smoothing)?.mean(0, false)?;
        let loss_value = loss.to_vec_f32()?[0];
        if !loss_value.is_finite() {
            return Err(Error::Training(format!("the loss is {loss_value} at step {}", self.step + 1)));
        }
        let grads = backward(&loss)?.for_leaves(&leaves)?;
        let lr = self.schedule().lr(self.step as u64);
        let stats_out = self.optimizer.step(&grads, lr)?;
        self.refresh_params()?;
        for (name, t) in stats.updated {
            self.tensors.insert(name, t);
        }
        // PyTorch counts every training forward in each BatchNorm's `num_batches_tracked`.
        for (count, _) in self.batches_tracked.values_mut() {
            *count += 1;
        }
        self.step += 1;
        Ok((loss_value, stats_out.grad_norm))
    }

    fn schedule(&self) -> LrSchedule {
        LrSchedule {
            base_lr: self.config.lr,
            warmup_steps: self.config.warmup_steps as u64,
            total_steps: self.config.steps as u64,
            min_lr: self.config.min_lr,
        }
    }

    fn refresh_params(&mut self) -> Result<()> {
        for (name, value) in self.trainable.iter().zip(self.optimizer.params()?) {
            self.tensors.insert(name.clone(), value);
        }
        Ok(())
    }

    /// Accuracy on `data` with BatchNorm's running statistics.
    pub fn evaluate(&self, data: &Dataset) -> Result<f32> {
        let pred = self.predict(data)?;
        let correct = pred.iter().zip(data.labels()).filter(|(p, l)| p == l).count();
        Ok(correct as f32 / data.len().max(1) as f32)
    }

    /// The predicted class of every image of `data`, with BatchNorm's running statistics.
    pub fn predict(&self, data: &Dataset) -> Result<Vec<u32>> {
        let _no_grad = no_grad();
        let (model, _) = self.model(false)?;
        let mut pred = Vec::with_capacity(data.len());
        let idx: Vec<usize> = (0..data.len()).collect();
        for chunk in idx.chunks(self.config.batch.max(1)) {
            let (images, _) = data.batch(chunk, &self.device)?;
            let x = imagenet_normalize(&images)?.to_dtype(self.config.dtype)?;
            pred.extend(model.forward(&x)?.to_dtype(DType::F32)?.argmax(1, false)?.to_vec_u32()?);
        }
        Ok(pred)
    }

    /// Model, optimizer state and step count, written atomically.
    pub fn save_checkpoint(&self, file: &Path) -> Result<()> {
        checkpoint::write(file, &self.weights()?, &self.optimizer.state()?, self.step)
    }

    /// Trains until `config.steps`, evaluating on `held_out` and checkpointing to
    /// `checkpoint_file` as configured. A non-finite loss stops the run with an
    /// error; the last checkpoint written stays as it was.
    pub fn run(
        &mut self,
        train: &Dataset,
        held_out: &Dataset,
        checkpoint_file: Option<&PathBuf>,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<TrainOutcome> {
        self.run_to(self.config.steps, train, held_out, checkpoint_file, progress)
    }

    /// As [`ClassifierTrainer::run`], stopping after step `last` (of `config.steps`).
    pub fn run_to(
        &mut self,
        last: usize,
        train: &Dataset,
        held_out: &Dataset,
        checkpoint_file: Option<&PathBuf>,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<TrainOutcome> {
        let last = last.min(self.config.steps);
        let start = Instant::now();
        let mut rng = Rng::new(self.config.seed);
        let mut order: Vec<usize> = (0..train.len()).collect();
        let batch = self.config.batch.min(train.len()).max(1);
        let per_epoch = train.len() / batch;
        // Every epoch reshuffles; a resumed run replays the earlier shuffles, so it sees the same batches.
        let mut shuffles = 0;
        let mut last_loss = f32::NAN;
        while self.step < last {
            while shuffles <= self.step / per_epoch {
                rng.shuffle(&mut order);
                shuffles += 1;
            }
            let at = (self.step % per_epoch) * batch;
            let idx = order[at..at + batch].to_vec();
            let (loss, grad_norm) = self.train_step(train, &idx)?;
            last_loss = loss;
            let every = |n: usize| n > 0 && self.step.is_multiple_of(n);
            let done = self.step == last;
            let accuracy = if (every(self.config.eval_every) || done) && !held_out.is_empty() {
                Some(self.evaluate(held_out)?)
            } else {
                None
            };
            if let Some(file) = checkpoint_file {
                if every(self.config.checkpoint_every) || done {
                    self.save_checkpoint(file)?;
                }
            }
            let lr = self.schedule().lr(self.step as u64 - 1);
            progress(&Progress {
                step: self.step,
                steps: self.config.steps,
                loss,
                lr,
                grad_norm,
                seconds: start.elapsed().as_secs_f64(),
                accuracy,
            });
        }
        let final_accuracy = if held_out.is_empty() { f32::NAN } else { self.evaluate(held_out)? };
        Ok(TrainOutcome { final_accuracy, final_loss: last_loss, seconds: start.elapsed().as_secs_f64() })
    }
}
