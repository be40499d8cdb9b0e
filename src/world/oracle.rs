//! The oracle: a multi-head attribute classifier that reads an image's
//! factors (shape, colour, background, size, position), used only to measure
//! generated images. It is a ResNet whose fc layer holds one head per factor,
//! in [`FACTORS`] order, with one logit per value of the world's config; it is
//! trained on balanced renders and, when an autoencoder is given, on their
//! reconstructions too, so that it reads the generator's output as well as the
//! renderer's.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use super::{Scene, Split, World, FACTORS};
use crate::autograd::no_grad;
use crate::autograd::optim::AdamWConfig;
use crate::autograd::schedule::LrSchedule;
use crate::device::{DType, Device};
use crate::error::{Error, Result};
use crate::models::resnet::{imagenet_normalize, resnet_init, ResNet, ResNetArch, Stem};
use crate::models::vae::AutoencoderKL;
use crate::nn::{is_batch_norm_buffer, Weights};
use crate::tensor::{Rng, Tensor};
use crate::train::classifier::Progress;
use crate::train::parameters::Parameters;

/// The factor values an image shows, as value indices in [`FACTORS`] order.
pub type Reading = [usize; FACTORS.len()];

pub struct Oracle {
    model: ResNet,
    heads: Vec<usize>,
    size: usize,
}

impl Oracle {
    /// The oracle in `file` (torchvision names) for `world`, whose value counts
    /// must be the heads it was trained with.
    pub fn load(file: &Path, arch: ResNetArch, world: &World, device: &Device) -> Result<Oracle> {
        let model = ResNet::load(file, arch, DType::F32, device)?;
        let heads = head_sizes(world);
        let total: usize = heads.iter().sum();
        if model.num_classes() != total {
            return Err(Error::File {
                file: file.display().to_string(),
                detail: format!(
                    "the oracle has {} outputs; this world's factors have {total} values (another world's oracle?)",
                    model.num_classes()
                ),
            });
        }
        Ok(Oracle { model, heads, size: world.config().size })
    }

    /// The reading of each of `images` (n, 3, size, size) in [0, 1].
    pub fn read(&self, images: &Tensor) -> Result<Vec<Reading>> {
        let d = images.dims();
        if d.len() != 4 || d[1] != 3 || d[2] != self.size || d[3] != self.size {
            let s = self.size;
            return Err(Error::Usage(format!("the oracle reads (n, 3, {s}, {s}) images, not {}", images.shape())));
        }
        let _no_grad = no_grad();
        let mut out = Vec::with_capacity(d[0]);
        for start in (0..d[0]).step_by(256) {
            let chunk = images.narrow(0, start, 256.min(d[0] - start))?;
            let logits = self.model.forward(&imagenet_normalize(&chunk)?)?.to_vec_f32()?;
            out.extend(readings(&logits, &self.heads));
        }
        Ok(out)
    }
}

/// Each factor's value count: the oracle's head sizes.
fn head_sizes(world: &World) -> Vec<usize> {
    (0..FACTORS.len()).map(|f| world.values(f).len()).collect()
}

/// The argmax of each head of each row of `logits` (rows × Σ heads).
fn readings(logits: &[f32], heads: &[usize]) -> Vec<Reading> {
    let total: usize = heads.iter().sum();
    logits
        .chunks(total)
        .map(|row| {
            let mut reading = [0; FACTORS.len()];
            let mut at = 0;
            for (f, &n) in heads.iter().enumerate() {
                let head = &row[at..at + n];
                reading[f] = (0..n).fold(0, |best, v| if head[v] > head[best] { v } else { best });
                at += n;
            }
            reading
        })
        .collect()
}

#[derive(Clone, Debug)]
pub struct OracleConfig {
    pub arch: ResNetArch,
    pub width: usize,
    pub steps: usize,
    pub batch: usize,
    pub lr: f32,
    /// Balanced test renders the accuracy is measured on.
    pub test_images: usize,
    pub seed: u64,
}

impl Default for OracleConfig {
    fn default() -> OracleConfig {
        OracleConfig {
            arch: ResNetArch::ResNet18,
            width: 16,
            steps: 1500,
            batch: 64,
            lr: 2e-3,
            test_images: 1000,
            seed: 0,
        }
    }
}

/// What training the oracle gives: its tensors (torchvision names) and its
/// held-out accuracy per factor on renders, and on reconstructions when an
/// autoencoder was given.
pub struct TrainedOracle {
    pub tensors: BTreeMap<String, Tensor>,
    pub accuracy: [f32; FACTORS.len()],
    pub reconstruction_accuracy: Option<[f32; FACTORS.len()]>,
    pub seconds: f64,
}

/// Trains the oracle of `world` on fresh balanced renders each step (half the
/// steps on their reconstructions by `autoencoder`, when given).
pub fn train_oracle(
    world: &World,
    config: &OracleConfig,
    autoencoder: Option<&AutoencoderKL>,
    device: &Device,
    progress: &mut dyn FnMut(&Progress),
) -> Result<TrainedOracle> {
    let balanced = world.balanced();
    let heads = head_sizes(world);
    let mut rng = Rng::new(config.seed);
    let init = resnet_init(config.arch, Stem::Small, config.width, heads.iter().sum(), &mut rng)?;
    let (params, mut buffers): (BTreeMap<_, _>, BTreeMap<_, _>) = init
        .into_iter()
        .map(|(n, t)| Ok((n, t.to_device(device)?)))
        .collect::<Result<BTreeMap<String, Tensor>>>()?
        .into_iter()
        .partition(|(n, _)| !is_batch_norm_buffer(n));
    let schedule = LrSchedule {
        base_lr: config.lr,
        warmup_steps: (config.steps / 20) as u64,
        total_steps: config.steps as u64,
        min_lr: config.lr * 0.01,
    };
    let mut params = Parameters::new(params, AdamWConfig { weight_decay: 1e-4, ..AdamWConfig::default() }, schedule)?;
    let start = Instant::now();
    for step in 0..config.steps {
        let scenes = balanced.sample(Split::Train, config.batch, config.seed.wrapping_add(1 + step as u64));
        let mut images = balanced.render_batch(&scenes, device)?;
        if let (Some(vae), true) = (autoencoder, step % 2 == 1) {
            images = reconstruct(vae, &images)?;
        }
        let leaves = params.leaves();
        let mut all = buffers.clone();
        all.extend(leaves.clone());
        let model = ResNet::for_training(&Weights::from_tensors("oracle", all, DType::F32, device), config.arch)?;
        let (logits, stats) = model.forward_train(&imagenet_normalize(&images)?)?;
        let mut loss: Option<Tensor> = None;
        let mut at = 0;
        for (f, &n) in heads.iter().enumerate() {
            let labels: Vec<u32> = scenes.iter().map(|s| s.values[f] as u32).collect();
            let labels = Tensor::from_u32(labels, [scenes.len()], device)?;
            let head = logits.narrow(1, at, n)?.cross_entropy(&labels, 0.0)?.mean(0, false)?;
            loss = Some(match loss {
                Some(l) => l.add(&head)?,
                None => head,
            });
            at += n;
        }
        let loss = loss.ok_or_else(|| Error::Usage("the world has no factors".into()))?;
        params.minimize(&leaves, &loss, "oracle", config.steps, start, progress)?;
        buffers.extend(stats.updated);
    }
    let mut tensors = buffers;
    tensors.extend(params.tensors().clone());
    let oracle = Oracle {
        model: ResNet::for_training(
            &Weights::from_tensors("oracle", tensors.clone(), DType::F32, device),
            config.arch,
        )?,
        heads,
        size: world.config().size,
    };
    let test = balanced.sample(Split::Test, config.test_images, config.seed);
    let images = balanced.render_batch(&test, device)?;
    let accuracy = factor_accuracy(&oracle.read(&images)?, &test);
    let reconstruction_accuracy = match autoencoder {
        Some(vae) => Some(factor_accuracy(&oracle.read(&reconstruct(vae, &images)?)?, &test)),
        None => None,
    };
    Ok(TrainedOracle { tensors, accuracy, reconstruction_accuracy, seconds: start.elapsed().as_secs_f64() })
}

/// `images` in [0, 1] through the autoencoder (posterior mean, decoded), in [0, 1].
pub(crate) fn reconstruct(vae: &AutoencoderKL, images: &Tensor) -> Result<Tensor> {
    let _no_grad = no_grad();
    let (mean, _) = vae.encode(&images.affine(2.0, -1.0)?)?;
    vae.decode(&mean)?.to_dtype(DType::F32)?.affine(0.5, 0.5)?.clamp(0.0, 1.0)
}

/// The fraction of `scenes` whose value of each factor `readings` got right.
pub fn factor_accuracy(readings: &[Reading], scenes: &[Scene]) -> [f32; FACTORS.len()] {
    let mut acc = [0.0; FACTORS.len()];
    for (f, a) in acc.iter_mut().enumerate() {
        let right = readings.iter().zip(scenes).filter(|(r, s)| r[f] == s.values[f]).count();
        *a = right as f32 / scenes.len().max(1) as f32;
    }
    acc
}
