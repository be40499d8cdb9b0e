//! The world's miniature Stable Diffusion, trained by foil from scratch and
//! written as a diffusers pipeline folder, so that `foil generate --model DIR`
//! runs it through exactly the code path of a real checkpoint: a tokenizer
//! trained on the world's captions, a CLIP text encoder, an AutoencoderKL
//! (32×32×3 ↔ 8×8×8) and a UNet2DConditionModel with cross-attention, all
//! trained on balanced renders (no factor tied to another).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{json, Value};

use super::{Split, World, FACTORS};
use crate::device::{DType, Device};
use crate::diffusion::scheduler::SchedulerConfig;
use crate::error::{Error, Result};
use crate::models::clip_text::ClipTextModel;
use crate::models::clip_tokenizer::{train_tokenizer, ClipTokenizer};
use crate::models::unet::UNet2DConditionModel;
use crate::models::vae::AutoencoderKL;
use crate::nn::{init_parameters, Weights};
use crate::tensor::{safetensors, write_text_atomically, Rng, Tensor};
use crate::train::checkpoint::read_tensors;
use crate::train::classifier::Progress;
use crate::train::diffusion::{
    encode_means, train_autoencoder, train_denoiser, train_text_encoder, AutoencoderConfig, DenoiserConfig,
    DenoiserModels, ImageCaptions, LabelledCaptions, LatentCaptions, StageConfig,
};

/// Channels of the autoencoder's 8×8 latents. Stable Diffusion's 4 blurred the
/// world's small shapes into blobs (the oracle read shape on 88.7% of
/// reconstructions); more channels a latent pixel is how SD3 and FLUX kept
/// fine detail at the same downsampling.
const LATENT_CHANNELS: usize = 8;

/// How the world's generator is trained.
#[derive(Clone, Debug)]
pub struct WorldSdConfig {
    /// Balanced renders in the training pool.
    pub images: usize,
    pub autoencoder_steps: usize,
    pub autoencoder_batch: usize,
    pub autoencoder_lr: f32,
    pub text_encoder_steps: usize,
    pub text_encoder_batch: usize,
    pub text_encoder_lr: f32,
    pub denoiser_steps: usize,
    pub denoiser_batch: usize,
    pub denoiser_lr: f32,
    pub caption_dropout: f32,
    /// The decay of the moving average of the UNet's weights that is shipped.
    pub average_decay: f32,
    /// Min-SNR-γ weighting of the UNet's loss; None weights every timestep alike.
    pub snr_gamma: Option<f32>,
    pub seed: u64,
    pub dtype: DType,
    /// A pipeline folder (an earlier run's output, or its `.partial` folder) whose
    /// tokenizer and weights, where present, start the training instead of fresh ones.
    pub init: Option<PathBuf>,
}

impl Default for WorldSdConfig {
    fn default() -> WorldSdConfig {
        WorldSdConfig {
            images: 20_000,
            autoencoder_steps: 3000,
            autoencoder_batch: 32,
            autoencoder_lr: 1e-3,
            text_encoder_steps: 1000,
            text_encoder_batch: 64,
            text_encoder_lr: 1e-3,
            denoiser_steps: 6000,
            denoiser_batch: 32,
            denoiser_lr: 1e-3,
            caption_dropout: 0.1,
            average_decay: 0.999,
            snr_gamma: Some(5.0),
            seed: 0,
            dtype: DType::F32,
            init: None,
        }
    }
}

/// What a finished training reports.
pub struct WorldSdOutcome {
    pub autoencoder_loss: f32,
    pub text_encoder_loss: f32,
    pub denoiser_loss: f32,
    pub autoencoder_seconds: f64,
    pub text_encoder_seconds: f64,
    pub denoiser_seconds: f64,
    pub scaling_factor: f32,
}

/// Trains the generator of `world` and writes the pipeline folder `out`
/// (built beside it and renamed into place at the end). `progress` gets the
/// stage's name with each step.
pub fn train_world_sd(
    world: &World,
    config: &WorldSdConfig,
    out: &Path,
    device: &Device,
    progress: &mut dyn FnMut(&str, &Progress),
) -> Result<WorldSdOutcome> {
    let building = sibling(out, "partial");
    if config.init.as_deref().is_some_and(|init| init == building || init == out) {
        return Err(Error::Usage(format!(
            "--init must not be {} or {}: training rebuilds them",
            out.display(),
            building.display()
        )));
    }
    if let Some(init) = &config.init {
        let vae = init.join("vae/diffusion_pytorch_model.safetensors");
        if !init.is_dir() {
            return Err(Error::Usage(format!("--init {}: no such pipeline folder", init.display())));
        }
        if config.autoencoder_steps == 0 && !vae.is_file() {
            return Err(Error::Usage(format!("{}: no autoencoder to keep (--autoencoder-steps 0)", vae.display())));
        }
        let text = init.join("text_encoder/model.safetensors");
        if config.text_encoder_steps == 0 && !text.is_file() {
            return Err(Error::Usage(format!("{}: no text encoder to keep (--text-encoder-steps 0)", text.display())));
        }
    }
    if building.exists() {
        std::fs::remove_dir_all(&building).map_err(|e| file_error(&building, e))?;
    }
    let (data, labels) = balanced_renders(world, config.images, config.seed)?;
    // Starting from a folder keeps its tokenizer: its text encoder's embeddings are indexed by its ids.
    match config.init.as_ref().map(|d| d.join("tokenizer")).filter(|d| d.is_dir()) {
        Some(dir) => copy_dir(&dir, &building.join("tokenizer"))?,
        None => _ = train_tokenizer(&data.captions, &building.join("tokenizer"))?,
    }
    let tokenizer = ClipTokenizer::from_dir(&building.join("tokenizer"))?;
    let (vocab_size, max_len) = (tokenizer.vocab_size(), tokenizer.max_len());
    let size = world.config().size;
    write_json(&building.join("model_index.json"), &model_index())?;
    write_json(&building.join("scheduler").join("scheduler_config.json"), &scheduler_config())?;
    let vae_config = building.join("vae").join("config.json");
    let text_config = building.join("text_encoder").join("config.json");
    let unet_config = building.join("unet").join("config.json");
    write_json(&vae_config, &autoencoder_config(size, 1.0))?;
    write_json(&text_config, &text_encoder_config(vocab_size, max_len))?;
    write_json(&unet_config, &unet_config_json(size / 4))?;

    let stage = |steps, batch, lr, seed| StageConfig {
        steps,
        batch,
        lr,
        warmup_steps: (steps / 20).max(1),
        seed,
        dtype: config.dtype,
    };
    let mut rng = Rng::new(config.seed);
    let shapes = {
        let w = Weights::recording();
        AutoencoderKL::from_weights(&vae_config, &w)?;
        w.recorded()
    };
    let started = Instant::now();
    let mut last = f32::NAN;
    let vae_params = train_autoencoder(
        &vae_config,
        initial(&config.init, "vae/diffusion_pytorch_model.safetensors", "", &shapes, &mut rng, device)?,
        &data,
        &AutoencoderConfig {
            stage: stage(config.autoencoder_steps, config.autoencoder_batch, config.autoencoder_lr, config.seed ^ 1),
            posterior_std: 0.1,
            kl_weight: 1e-3,
        },
        device,
        &mut |p| {
            last = p.loss;
            progress("autoencoder", p)
        },
    )?;
    let (autoencoder_loss, autoencoder_seconds) = (last, started.elapsed().as_secs_f64());
    let vae = AutoencoderKL::from_weights(
        &vae_config,
        &Weights::from_tensors("vae", vae_params.clone(), DType::F32, device),
    )?;
    let (means, dims) = encode_means(&vae, &data, device)?;
    // As Stable Diffusion chose 0.18215: latents scaled to unit standard deviation.
    let mean = means.iter().map(|&v| v as f64).sum::<f64>() / means.len() as f64;
    let var = means.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / means.len() as f64;
    let scaling_factor = (1.0 / var.sqrt()) as f32;
    write_json(&vae_config, &autoencoder_config(size, scaling_factor))?;
    save(&building.join("vae").join("diffusion_pytorch_model.safetensors"), &vae_params, "")?;

    let shapes = {
        let w = Weights::recording();
        ClipTextModel::from_weights(&text_config, w.pp("text_encoder").pp("text_model"))?;
        UNet2DConditionModel::from_weights(&unet_config, &w.pp("unet"))?;
        w.recorded()
    };
    let started = Instant::now();
    let classes: Vec<usize> = (0..FACTORS.len()).map(|f| world.values(f).len()).collect();
    let text_params = train_text_encoder(
        &text_config,
        &tokenizer,
        initial(&config.init, "text_encoder/model.safetensors", "text_encoder.", &shapes, &mut rng, device)?,
        &LabelledCaptions { captions: &data.captions, labels: &labels, classes: &classes },
        &stage(config.text_encoder_steps, config.text_encoder_batch, config.text_encoder_lr, config.seed ^ 3),
        device,
        &mut |p| {
            last = p.loss;
            progress("text encoder", p)
        },
    )?;
    let (text_encoder_loss, text_encoder_seconds) = (last, started.elapsed().as_secs_f64());
    save(&building.join("text_encoder").join("model.safetensors"), &text_params, "text_encoder.")?;
    let text_encoder = ClipTextModel::from_weights(
        &text_config,
        Weights::from_tensors("text_encoder", text_params, DType::F32, device).pp("text_encoder"),
    )?;

    let alphas_cumprod =
        SchedulerConfig::from_json(&scheduler_config().to_string(), "scheduler")?.alphas_cumprod(false)?;
    let latents: Vec<f32> = means.iter().map(|v| v * scaling_factor).collect();
    let started = Instant::now();
    let unet = train_denoiser(
        &DenoiserModels {
            unet_config: &unet_config,
            text_encoder: &text_encoder,
            tokenizer: &tokenizer,
            alphas_cumprod: &alphas_cumprod,
        },
        initial(&config.init, "unet/diffusion_pytorch_model.safetensors", "unet.", &shapes, &mut rng, device)?,
        &LatentCaptions { latents: &latents, dims, captions: &data.captions },
        &DenoiserConfig {
            stage: stage(config.denoiser_steps, config.denoiser_batch, config.denoiser_lr, config.seed ^ 2),
            caption_dropout: config.caption_dropout,
            average_decay: config.average_decay,
            snr_gamma: config.snr_gamma,
        },
        device,
        &mut |p| {
            last = p.loss;
            progress("denoiser", p)
        },
    )?;
    let (denoiser_loss, denoiser_seconds) = (last, started.elapsed().as_secs_f64());
    save(&building.join("unet").join("diffusion_pytorch_model.safetensors"), &unet, "unet.")?;

    replace_dir(&building, out)?;
    Ok(WorldSdOutcome {
        autoencoder_loss,
        text_encoder_loss,
        denoiser_loss,
        autoencoder_seconds,
        text_encoder_seconds,
        denoiser_seconds,
        scaling_factor,
    })
}

/// The parameters named `prefix…` of `shapes`: from `file` under the folder
/// `init` (stored without the prefix) when it exists, else freshly initialised.
fn initial(
    init: &Option<PathBuf>,
    file: &str,
    prefix: &str,
    shapes: &BTreeMap<String, Vec<usize>>,
    rng: &mut Rng,
    device: &Device,
) -> Result<BTreeMap<String, Tensor>> {
    let mine: BTreeMap<String, Vec<usize>> =
        shapes.iter().filter(|(n, _)| n.starts_with(prefix)).map(|(n, d)| (n.clone(), d.clone())).collect();
    match init.as_ref().map(|d| d.join(file)).filter(|f| f.is_file()) {
        Some(path) => {
            let stored = read_tensors(&path, device)?;
            mine.iter()
                .map(|(name, dims)| {
                    let t = stored.get(&name[prefix.len()..]).filter(|t| t.dims() == dims.as_slice());
                    let t = t.ok_or_else(|| Error::File {
                        file: path.display().to_string(),
                        detail: format!("no tensor '{}' of shape {dims:?} to start from", &name[prefix.len()..]),
                    })?;
                    Ok((name.clone(), t.clone()))
                })
                .collect()
        }
        None => init_parameters(&mine, rng, device),
    }
}

/// Copies the files of the folder `from` into `to`.
fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| file_error(to, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| file_error(from, e))? {
        let path = entry.map_err(|e| file_error(from, e))?.path();
        if let Some(name) = path.file_name() {
            std::fs::copy(&path, to.join(name)).map_err(|e| file_error(&path, e))?;
        }
    }
    Ok(())
}

/// `n` scenes with every factor drawn independently, rendered, with their
/// captions and factor values.
fn balanced_renders(world: &World, n: usize, seed: u64) -> Result<(ImageCaptions, Vec<Vec<usize>>)> {
    let balanced = world.balanced();
    let scenes = balanced.sample(Split::Train, n, seed);
    let data = ImageCaptions {
        size: balanced.config().size,
        images: balanced.render_batch(&scenes, &Device::Cpu)?.to_vec_f32()?,
        captions: scenes.iter().map(|s| balanced.caption(s)).collect(),
    };
    Ok((data, scenes.iter().map(|s| s.values.to_vec()).collect()))
}

/// The tensors of `params` named `prefix…`, without the prefix, in f32.
fn save(path: &Path, params: &BTreeMap<String, Tensor>, prefix: &str) -> Result<()> {
    let picked: Vec<(&str, &Tensor)> =
        params.iter().filter_map(|(n, t)| n.strip_prefix(prefix).map(|name| (name, t))).collect();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
    }
    safetensors::save(path, &picked)
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
    }
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Usage(e.to_string()))?;
    write_text_atomically(path, &text)
}

fn sibling(out: &Path, tag: &str) -> PathBuf {
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "world-sd".into());
    out.with_file_name(format!("{name}.{tag}"))
}

/// Puts the finished folder `built` at `out`, replacing what was there only once `built` is complete.
fn replace_dir(built: &Path, out: &Path) -> Result<()> {
    let old = sibling(out, "old");
    if out.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| file_error(&old, e))?;
        }
        std::fs::rename(out, &old).map_err(|e| file_error(out, e))?;
    }
    std::fs::rename(built, out).map_err(|e| file_error(out, e))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| file_error(&old, e))?;
    }
    Ok(())
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::File { file: path.display().to_string(), detail: e.to_string() }
}

fn model_index() -> Value {
    json!({
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.35.0",
        "feature_extractor": [null, null],
        "requires_safety_checker": false,
        "safety_checker": [null, null],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"]
    })
}

/// Stable Diffusion 1.5's noise schedule and sampler.
fn scheduler_config() -> Value {
    json!({
        "_class_name": "DDIMScheduler",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": false,
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "set_alpha_to_one": false,
        "steps_offset": 1,
        "timestep_spacing": "leading"
    })
}

/// Three levels (32 → 16 → 8 pixels), one ResNet block each, attention in the middle.
fn autoencoder_config(size: usize, scaling_factor: f32) -> Value {
    json!({
        "_class_name": "AutoencoderKL",
        "act_fn": "silu",
        "block_out_channels": [16, 32, 64],
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": LATENT_CHANNELS,
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "sample_size": size,
        "scaling_factor": scaling_factor,
        "mid_block_add_attention": true,
        "use_quant_conv": true,
        "use_post_quant_conv": true
    })
}

fn text_encoder_config(vocab_size: usize, max_len: usize) -> Value {
    json!({
        "architectures": ["CLIPTextModel"],
        "model_type": "clip_text_model",
        "hidden_act": "quick_gelu",
        "hidden_size": 64,
        "intermediate_size": 256,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "layer_norm_eps": 1e-5,
        "max_position_embeddings": max_len,
        "vocab_size": vocab_size,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 1
    })
}

/// Two levels over the 8×8 latents, cross-attention at both and in the middle.
fn unet_config_json(sample_size: usize) -> Value {
    json!({
        "_class_name": "UNet2DConditionModel",
        "act_fn": "silu",
        "attention_head_dim": 4,
        "block_out_channels": [48, 96],
        "center_input_sample": false,
        "cross_attention_dim": 64,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "downsample_padding": 1,
        "flip_sin_to_cos": true,
        "freq_shift": 0,
        "in_channels": LATENT_CHANNELS,
        "out_channels": LATENT_CHANNELS,
        "layers_per_block": 1,
        "norm_eps": 1e-5,
        "norm_num_groups": 16,
        "sample_size": sample_size,
        "use_linear_projection": false
    })
}
