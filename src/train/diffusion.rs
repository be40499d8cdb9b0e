//! Training a latent diffusion model from scratch in the order Stable Diffusion
//! was made: the autoencoder first, on images alone; a text encoder trained on
//! text alone (SD took CLIP's, trained contrastively; here the encoder learns to
//! name every attribute of a caption, so that each phrase moves its hidden
//! states); then the UNet on the autoencoder's latents, conditioned on the
//! frozen text encoder, with ε-prediction at timesteps drawn uniformly (their
//! losses weighted by Min-SNR-γ when asked), the caption replaced by the empty
//! one at a rate (so that the model also learns the unconditional prediction
//! that classifier-free guidance needs), and an exponential moving average of
//! its weights kept for sampling.
//!
//! The autoencoder's posterior has a fixed variance: the decoder learns from
//! `mean + σ·ε`, the KL term keeps its mean part (β·½·mean²), and the encoder's
//! log-variance output is regressed onto log σ², so that diffusers' image-to-
//! image, which samples the posterior, sees the variance the decoder was trained with.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use super::classifier::Progress;
use super::parameters::Parameters;
use crate::autograd::no_grad;
use crate::autograd::optim::AdamWConfig;
use crate::autograd::schedule::LrSchedule;
use crate::device::{DType, Device};
use crate::error::Result;
use crate::models::clip_text::{ClipTextConfig, ClipTextModel};
use crate::models::clip_tokenizer::ClipTokenizer;
use crate::models::unet::UNet2DConditionModel;
use crate::models::vae::AutoencoderKL;
use crate::nn::{init_parameters, Linear, Weights};
use crate::tensor::{Rng, Tensor};

/// Images (RGB in [0, 1], `size`×`size`) with a caption each.
pub struct ImageCaptions {
    pub size: usize,
    pub images: Vec<f32>,
    pub captions: Vec<String>,
}

impl ImageCaptions {
    pub fn len(&self) -> usize {
        self.captions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.captions.is_empty()
    }

    /// The images of `idx` as (n, 3, size, size) in [-1, 1], the autoencoder's range.
    fn batch(&self, idx: &[usize], device: &Device) -> Result<Tensor> {
        let per = 3 * self.size * self.size;
        let mut data = Vec::with_capacity(idx.len() * per);
        for &i in idx {
            data.extend(self.images[i * per..(i + 1) * per].iter().map(|v| 2.0 * v - 1.0));
        }
        Tensor::from_f32(data, [idx.len(), 3, self.size, self.size], device)
    }
}

/// What every stage shares: steps, batch, AdamW's peak rate, its warm-up, the seed.
#[derive(Clone, Debug)]
pub struct StageConfig {
    pub steps: usize,
    pub batch: usize,
    pub lr: f32,
    pub warmup_steps: usize,
    pub seed: u64,
    /// The compute dtype; parameters stay f32.
    pub dtype: DType,
}

impl StageConfig {
    fn parameters(&self, tensors: BTreeMap<String, Tensor>) -> Result<Parameters> {
        let adamw = AdamWConfig { weight_decay: 0.0, max_grad_norm: Some(1.0), ..AdamWConfig::default() };
        let schedule = LrSchedule {
            base_lr: self.lr,
            warmup_steps: self.warmup_steps as u64,
            total_steps: self.steps as u64,
            min_lr: self.lr * 0.05,
        };
        Parameters::new(tensors, adamw, schedule)
    }

    fn batch_indices(&self, rng: &mut Rng, n: usize) -> Vec<usize> {
        (0..self.batch).map(|_| rng.below(n as u32) as usize).collect()
    }
}

#[derive(Clone, Debug)]
pub struct AutoencoderConfig {
    pub stage: StageConfig,
    /// σ of the posterior: the noise the decoder learns to ignore.
    pub posterior_std: f32,
    /// β of the KL term's mean part.
    pub kl_weight: f32,
}

/// The mean of the squares of `a − b` over every element: a scalar.
fn mse(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let d = a.sub(b)?;
    let n = d.numel();
    d.mul(&d)?.reshape([n])?.mean(0, false)
}

/// The Min-SNR-γ weight of ε-prediction's loss at ᾱ: min(SNR, γ)/SNR with
/// SNR = ᾱ/(1 − ᾱ); 1 without γ.
fn min_snr_weight(alpha_bar: f32, gamma: Option<f32>) -> f32 {
    let snr = alpha_bar / (1.0 - alpha_bar);
    gamma.map_or(1.0, |gamma| snr.min(gamma) / snr)
}

/// The mean over every element of `weights · (a − b)²`, `weights` broadcast
/// against `a` (one a sample, for instance): a scalar.
fn weighted_mse(a: &Tensor, b: &Tensor, weights: &Tensor) -> Result<Tensor> {
    let d = a.sub(b)?;
    let n = d.numel();
    d.mul(&d)?.mul(weights)?.reshape([n])?.mean(0, false)
}

/// Trains the autoencoder of diffusers config `config_file` from `init` on
/// `data`; returns its parameters.
pub fn train_autoencoder(
    config_file: &Path,
    init: BTreeMap<String, Tensor>,
    data: &ImageCaptions,
    config: &AutoencoderConfig,
    device: &Device,
    progress: &mut dyn FnMut(&Progress),
) -> Result<BTreeMap<String, Tensor>> {
    let stage = &config.stage;
    let mut params = stage.parameters(init)?;
    let mut rng = Rng::new(stage.seed);
    let start = Instant::now();
    let target_logvar = 2.0 * config.posterior_std.ln();
    while (params.steps() as usize) < stage.steps {
        let images = data.batch(&stage.batch_indices(&mut rng, data.len()), device)?.to_dtype(stage.dtype)?;
        let leaves = params.leaves();
        let vae = AutoencoderKL::from_weights(
            config_file,
            &Weights::from_tensors("vae", leaves.clone(), stage.dtype, device),
        )?;
        let (mean, logvar) = vae.encode(&images)?;
        let eps = Tensor::randn(mean.dims().to_vec(), &mut rng, device)?.scale(config.posterior_std)?;
        let recon = vae.decode(&mean.add(&eps.to_dtype(stage.dtype)?)?)?;
        let (mean, logvar) = (mean.to_dtype(DType::F32)?, logvar.to_dtype(DType::F32)?);
        let target = Tensor::from_f32(vec![target_logvar; logvar.numel()], logvar.dims().to_vec(), device)?;
        let kl = mean.mul(&mean)?;
        let kl = kl.reshape([kl.numel()])?.mean(0, false)?.scale(0.5 * config.kl_weight)?;
        let loss = mse(&recon.to_dtype(DType::F32)?, &images.to_dtype(DType::F32)?)?
            .add(&kl)?
            .add(&mse(&logvar, &target)?.scale(0.01)?)?;
        params.minimize(&leaves, &loss, "autoencoder", stage.steps, start, progress)?;
    }
    Ok(params.tensors().clone())
}

/// The posterior means of every image of `data` under `vae`, unscaled, flat
/// in the data's order, with the latent shape (c, h, w).
pub fn encode_means(vae: &AutoencoderKL, data: &ImageCaptions, device: &Device) -> Result<(Vec<f32>, [usize; 3])> {
    let _no_grad = no_grad();
    let mut out = Vec::new();
    let mut dims = [0; 3];
    let idx: Vec<usize> = (0..data.len()).collect();
    for chunk in idx.chunks(256) {
        let (mean, _) = vae.encode(&data.batch(chunk, device)?)?;
        dims.copy_from_slice(&mean.dims()[1..]);
        out.extend(mean.to_dtype(DType::F32)?.to_vec_f32()?);
    }
    Ok((out, dims))
}

/// Captions with the value of each of their attributes: the text encoder's targets.
pub struct LabelledCaptions<'a> {
    pub captions: &'a [String],
    /// Per caption, the value index of each attribute.
    pub labels: &'a [Vec<usize>],
    /// The number of values of each attribute.
    pub classes: &'a [usize],
}

/// Trains the text encoder of transformers config `config_file` (parameters
/// under `text_encoder.` in `init`) to predict every attribute of a caption
/// from the mean of its last hidden states, through one linear head an
/// attribute (discarded after); returns the encoder's parameters.
pub fn train_text_encoder(
    config_file: &Path,
    tokenizer: &ClipTokenizer,
    init: BTreeMap<String, Tensor>,
    data: &LabelledCaptions,
    stage: &StageConfig,
    device: &Device,
    progress: &mut dyn FnMut(&Progress),
) -> Result<BTreeMap<String, Tensor>> {
    let mut rng = Rng::new(stage.seed);
    let hidden = ClipTextConfig::from_file(config_file)?.hidden_size;
    let heads: BTreeMap<String, Vec<usize>> = data
        .classes
        .iter()
        .enumerate()
        .flat_map(|(f, &n)| [(format!("head.{f}.weight"), vec![n, hidden]), (format!("head.{f}.bias"), vec![n])])
        .collect();
    let mut tensors = init;
    tensors.extend(init_parameters(&heads, &mut rng, device)?);
    let mut params = stage.parameters(tensors)?;
    let caption_ids = tokenizer.encode_batch(&data.captions.iter().map(String::as_str).collect::<Vec<_>>())?;
    let seq = tokenizer.max_len();
    let start = Instant::now();
    while (params.steps() as usize) < stage.steps {
        let idx = stage.batch_indices(&mut rng, data.captions.len());
        let ids: Vec<u32> = idx.iter().flat_map(|&i| caption_ids[i].iter().copied()).collect();
        let ids = Tensor::from_u32(ids, [idx.len(), seq], device)?;
        let leaves = params.leaves();
        let w = Weights::from_tensors("text_encoder", leaves.clone(), stage.dtype, device);
        let text = ClipTextModel::from_weights(config_file, w.pp("text_encoder"))?;
        let pooled = text.forward(&ids)?.mean(1, false)?;
        let mut loss: Option<Tensor> = None;
        for (f, &n) in data.classes.iter().enumerate() {
            let head = Linear::load(&w.pp(format!("head.{f}")), hidden, n, true)?;
            let labels =
                Tensor::from_u32(idx.iter().map(|&i| data.labels[i][f] as u32).collect(), [idx.len()], device)?;
            let term = head.forward(&pooled)?.to_dtype(DType::F32)?.cross_entropy(&labels, 0.0)?.mean(0, false)?;
            loss = Some(match loss {
                Some(l) => l.add(&term)?,
                None => term,
            });
        }
        let loss =
            loss.ok_or_else(|| crate::error::Error::Training("no attributes to train the text encoder on".into()))?;
        params.minimize(&leaves, &loss, "text encoder", stage.steps, start, progress)?;
    }
    Ok(params
        .tensors()
        .iter()
        .filter(|(n, _)| n.starts_with("text_encoder."))
        .map(|(n, t)| (n.clone(), t.clone()))
        .collect())
}

/// The last hidden states of `text` for each caption, flat (seq × hidden a caption), computed once.
fn encode_captions(
    text: &ClipTextModel,
    tokenizer: &ClipTokenizer,
    captions: &[&str],
    device: &Device,
) -> Result<Vec<f32>> {
    let _no_grad = no_grad();
    let seq = tokenizer.max_len();
    let mut out = Vec::new();
    for chunk in captions.chunks(256) {
        let ids: Vec<u32> = tokenizer.encode_batch(chunk)?.concat();
        let ids = Tensor::from_u32(ids, [chunk.len(), seq], device)?;
        out.extend(text.forward(&ids)?.to_dtype(DType::F32)?.to_vec_f32()?);
    }
    Ok(out)
}

/// The denoiser's models: diffusers' UNet config, the frozen text encoder and
/// its tokenizer, and ᾱ of the training noise schedule.
pub struct DenoiserModels<'a> {
    pub unet_config: &'a Path,
    pub text_encoder: &'a ClipTextModel,
    pub tokenizer: &'a ClipTokenizer,
    pub alphas_cumprod: &'a [f32],
}

#[derive(Clone, Debug)]
pub struct DenoiserConfig {
    pub stage: StageConfig,
    /// The fraction of captions replaced by the empty caption.
    pub caption_dropout: f32,
    /// The decay of the moving average of the weights that is returned.
    pub average_decay: f32,
    /// Min-SNR-γ loss weighting (Hang et al. 2023, diffusers' `--snr_gamma`): each
    /// sample's loss is scaled by min(SNR, γ)/SNR, so the nearly clean timesteps,
    /// which are easy and decide only texture, stop dominating the gradient.
    pub snr_gamma: Option<f32>,
}

/// Latents already multiplied by the autoencoder's scaling factor, flat, with
/// their shape (c, h, w) and one caption each.
pub struct LatentCaptions<'a> {
    pub latents: &'a [f32],
    pub dims: [usize; 3],
    pub captions: &'a [String],
}

/// Trains the UNet (parameters under `unet.` in `init`) conditioned on the
/// frozen text encoder; returns the moving average of its parameters.
pub fn train_denoiser(
    models: &DenoiserModels,
    init: BTreeMap<String, Tensor>,
    data: &LatentCaptions,
    config: &DenoiserConfig,
    device: &Device,
    progress: &mut dyn FnMut(&Progress),
) -> Result<BTreeMap<String, Tensor>> {
    let stage = &config.stage;
    let mut params = stage.parameters(init)?.with_average(config.average_decay);
    let mut rng = Rng::new(stage.seed);
    let per: usize = data.dims.iter().product();
    let n = data.captions.len();
    let train_steps = models.alphas_cumprod.len();
    let (seq, hidden) = (models.tokenizer.max_len(), models.text_encoder.hidden_size());
    let context_len = seq * hidden;
    // The encoder is frozen: every caption's context is computed once.
    let captions: Vec<&str> = data.captions.iter().map(String::as_str).collect();
    let contexts = encode_captions(models.text_encoder, models.tokenizer, &captions, device)?;
    let empty = encode_captions(models.text_encoder, models.tokenizer, &[""], device)?;
    let start = Instant::now();
    while (params.steps() as usize) < stage.steps {
        let idx = stage.batch_indices(&mut rng, n);
        let mut context = Vec::with_capacity(idx.len() * context_len);
        let (mut noisy, mut eps, mut timesteps, mut weights) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for &i in &idx {
            if rng.uniform() < config.caption_dropout {
                context.extend(&empty);
            } else {
                context.extend(&contexts[i * context_len..(i + 1) * context_len]);
            }
            let t = rng.below(train_steps as u32) as usize;
            let abar = models.alphas_cumprod[t];
            let (a, s) = (abar.sqrt(), (1.0 - abar).sqrt());
            for &x0 in &data.latents[i * per..(i + 1) * per] {
                let e = rng.normal();
                noisy.push(a * x0 + s * e);
                eps.push(e);
            }
            timesteps.push(t as f32);
            weights.push(min_snr_weight(abar, config.snr_gamma));
        }
        let shape = [idx.len(), data.dims[0], data.dims[1], data.dims[2]];
        let noisy = Tensor::from_f32(noisy, shape, device)?.to_dtype(stage.dtype)?;
        let eps = Tensor::from_f32(eps, shape, device)?;
        let context = Tensor::from_f32(context, [idx.len(), seq, hidden], device)?.to_dtype(stage.dtype)?;

        let leaves = params.leaves();
        let w = Weights::from_tensors("world-sd", leaves.clone(), stage.dtype, device);
        let unet = UNet2DConditionModel::from_weights(models.unet_config, &w.pp("unet"))?;
        let pred = unet.forward(&noisy, &timesteps, &context)?;
        let weights = Tensor::from_f32(weights, [idx.len(), 1, 1, 1], device)?;
        let loss = weighted_mse(&pred.to_dtype(DType::F32)?, &eps, &weights)?;
        params.minimize(&leaves, &loss, "denoiser", stage.steps, start, progress)?;
    }
    Ok(params.averaged().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_snr_weight_caps_only_the_nearly_clean_timesteps() {
        // SNR 1 and 0.25 are under γ = 5: full weight.
        assert_eq!(min_snr_weight(0.5, Some(5.0)), 1.0);
        assert_eq!(min_snr_weight(0.2, Some(5.0)), 1.0);
        // SNR 20: weighted 5/20.
        assert!((min_snr_weight(20.0 / 21.0, Some(5.0)) - 0.25).abs() < 1e-5);
        assert_eq!(min_snr_weight(20.0 / 21.0, None), 1.0);
    }

    #[test]
    fn weighted_mse_weights_each_element() {
        let device = Device::Cpu;
        let a = Tensor::from_f32(vec![1.0, 2.0, -1.5, 0.25], [4], &device).unwrap();
        let b = Tensor::from_f32(vec![0.5, -1.0, 0.5, 1.25], [4], &device).unwrap();
        let w = Tensor::from_f32(vec![1.0, 0.5, 0.25, 2.0], [4], &device).unwrap();
        let got = weighted_mse(&a, &b, &w).unwrap().to_vec_f32().unwrap()[0];
        let want = (0.25 + 0.5 * 9.0 + 0.25 * 4.0 + 2.0 * 1.0) / 4.0;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        // One weight a sample, broadcast over its elements, as the denoiser passes them.
        let (a, b) = (a.reshape([2, 2]).unwrap(), b.reshape([2, 2]).unwrap());
        let w = Tensor::from_f32(vec![0.5, 2.0], [2, 1], &device).unwrap();
        let got = weighted_mse(&a, &b, &w).unwrap().to_vec_f32().unwrap()[0];
        let want = (0.5 * (0.25 + 9.0) + 2.0 * (4.0 + 1.0)) / 4.0;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }
}
