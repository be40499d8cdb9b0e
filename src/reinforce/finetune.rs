//! Fine-tuning a classifier on new labelled images mixed with its original
//! training data at a stated ratio, choosing the number of steps on images held
//! out of the new ones: the weights kept are those of the evaluation (every
//! `eval_every` steps, and before the first step) with the best held-out accuracy.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::device::{DType, Device};
use crate::error::{Error, Result};
use crate::models::resnet::{imagenet_normalize, ResNetArch};
use crate::probe::images::{Classifier, Images};
use crate::tensor::{Rng, Tensor};
use crate::train::classifier::{ClassifierTrainer, OptimizerKind, TrainConfig};

/// Images with a class each.
#[derive(Clone, Debug)]
pub struct Labelled {
    pub images: Images,
    pub labels: Vec<usize>,
}

impl Labelled {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The first `n` and the rest.
    pub fn split_at(&self, n: usize) -> (Labelled, Labelled) {
        let per = 3 * self.images.size * self.images.size;
        let n = n.min(self.len());
        let part = |range: std::ops::Range<usize>| Labelled {
            images: Images {
                size: self.images.size,
                pixels: self.images.pixels[range.start * per..range.end * per].to_vec(),
            },
            labels: self.labels[range].to_vec(),
        };
        (part(0..n), part(n..self.len()))
    }

    /// The fraction `classifier` gets right.
    pub fn accuracy(&self, classifier: &Classifier) -> Result<f32> {
        let predicted = classifier.predict(&self.images)?;
        let right = predicted.iter().zip(&self.labels).filter(|(p, l)| p == l).count();
        Ok(right as f32 / self.len().max(1) as f32)
    }
}

#[derive(Clone, Debug)]
pub struct FinetuneConfig {
    pub arch: ResNetArch,
    /// The most steps; the held-out images choose how many of them to keep.
    pub steps: usize,
    pub batch: usize,
    /// The fraction of each batch drawn from the new images; the rest from the original data.
    pub mix: f32,
    /// SGD's peak learning rate (Nesterov momentum 0.9, warm-up then cosine).
    pub lr: f32,
    pub eval_every: usize,
    /// Name prefixes of the parameters that train (e.g. `layer4.`, `fc.`); empty: all.
    pub trainable: Vec<String>,
    pub seed: u64,
    pub dtype: DType,
}

/// The weights chosen, and how they were chosen.
pub struct Finetuned {
    pub tensors: BTreeMap<String, Tensor>,
    pub chosen_step: usize,
    pub held_out_accuracy: f32,
    /// (step, held-out accuracy) of every evaluation.
    pub curve: Vec<(usize, f32)>,
    pub seconds: f64,
}

/// Fine-tunes `initial` on `new` mixed with `original`, choosing on `held_out`.
/// `progress` gets (steps done, the last loss).
pub fn finetune(
    initial: &BTreeMap<String, Tensor>,
    new: &Labelled,
    held_out: &Labelled,
    original: &Labelled,
    config: &FinetuneConfig,
    device: &Device,
    progress: &mut dyn FnMut(usize, f32),
) -> Result<Finetuned> {
    if new.is_empty() || original.is_empty() || held_out.is_empty() {
        return Err(Error::Usage("fine-tuning needs new, held-out and original images".into()));
    }
    let start = Instant::now();
    let train = TrainConfig {
        arch: config.arch,
        optimizer: OptimizerKind::Sgd,
        lr: config.lr,
        min_lr: config.lr * 0.05,
        warmup_steps: (config.steps / 20).max(1),
        steps: config.steps,
        batch: config.batch,
        momentum: 0.9,
        weight_decay: 5e-4,
        label_smoothing: 0.0,
        max_grad_norm: Some(5.0),
        trainable: config.trainable.clone(),
        eval_every: 0,
        checkpoint_every: 0,
        seed: config.seed,
        dtype: config.dtype,
    };
    let mut trainer = ClassifierTrainer::new(train, initial.clone(), device)?;
    let judge = |tensors: &BTreeMap<String, Tensor>| -> Result<f32> {
        held_out.accuracy(&Classifier::from_tensors(tensors.clone(), config.arch, config.dtype, device)?)
    };
    let mut best = (judge(initial)?, 0, initial.clone());
    let mut curve = vec![(0, best.0)];
    let mut rng = Rng::new(config.seed ^ 0x006d_6978);
    let from_new = ((config.batch as f32 * config.mix).round() as usize).clamp(1, config.batch.max(1));
    let from_original = config.batch.saturating_sub(from_new);
    for step in 1..=config.steps {
        let pick = |rng: &mut Rng, data: &Labelled, n: usize| -> Vec<usize> {
            (0..n).map(|_| rng.below(data.len() as u32) as usize).collect()
        };
        let (a, b) = (pick(&mut rng, new, from_new), pick(&mut rng, original, from_original));
        let mut parts = vec![new.images.tensor(&a, device)?];
        if !b.is_empty() {
            parts.push(original.images.tensor(&b, device)?);
        }
        let x = imagenet_normalize(&Tensor::cat(&parts.iter().collect::<Vec<_>>(), 0)?)?;
        let labels: Vec<u32> =
            a.iter().map(|&i| new.labels[i] as u32).chain(b.iter().map(|&i| original.labels[i] as u32)).collect();
        let n = labels.len();
        let (loss, _) = trainer.train_step_on(&x, &Tensor::from_u32(labels, [n], device)?)?;
        if step % config.eval_every.max(1) == 0 || step == config.steps {
            let tensors: BTreeMap<String, Tensor> = trainer.weights()?.into_iter().collect();
            let accuracy = judge(&tensors)?;
            curve.push((step, accuracy));
            if accuracy > best.0 {
                best = (accuracy, step, tensors);
            }
        }
        progress(step, loss);
    }
    let (held_out_accuracy, chosen_step, tensors) = best;
    Ok(Finetuned { tensors, chosen_step, held_out_accuracy, curve, seconds: start.elapsed().as_secs_f64() })
}
