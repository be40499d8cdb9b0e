//! The world's shipped models: `foil train world-sd` trains the miniature
//! Stable Diffusion from scratch and writes it as a diffusers pipeline folder
//! `foil generate` loads; `foil train oracle` trains the attribute classifier
//! that measures generated images.

use std::path::PathBuf;

use clap::Args;

use foil::models::resnet::ResNetArch;
use foil::models::vae::AutoencoderKL;
use foil::tensor::safetensors;
use foil::train::classifier::Progress;
use foil::world::oracle::{train_oracle, OracleConfig};
use foil::world::sd::{train_world_sd, WorldSdConfig};
use foil::{DType, Device, Error, Result, Tensor};

use super::world::{factor_rates, world_of};
use super::{dtype_or, DTypeArg};

#[derive(Args)]
#[command(after_help = "Examples:
  foil train world-sd --out weights/world-sd
  foil train world-sd --images 4000 --autoencoder-steps 200 --denoiser-steps 300 --out /tmp/quick-sd")]
pub struct WorldSdArgs {
    /// A world config (JSON); default: the shipped world. Its values and words are what the model learns.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Balanced renders to train on.
    #[arg(long, value_name = "N", default_value_t = WorldSdConfig::default().images)]
    images: usize,
    #[arg(long, value_name = "N", default_value_t = WorldSdConfig::default().autoencoder_steps)]
    autoencoder_steps: usize,
    #[arg(long, value_name = "N", default_value_t = WorldSdConfig::default().autoencoder_batch)]
    autoencoder_batch: usize,
    /// Steps of the text encoder's pretraining (naming every attribute of a caption); 0 keeps --init's.
    #[arg(long, value_name = "N", default_value_t = WorldSdConfig::default().text_encoder_steps)]
    text_encoder_steps: usize,
    #[arg(long, value_name = "N", default_value_t = WorldSdConfig::default().denoiser_steps)]
    denoiser_steps: usize,
    #[arg(long, value_name = "N", default_value_t = WorldSdConfig::default().denoiser_batch)]
    denoiser_batch: usize,
    /// The UNet's peak learning rate (AdamW, warm-up then cosine decay to 5% of it).
    #[arg(long, value_name = "LR", default_value_t = WorldSdConfig::default().denoiser_lr)]
    denoiser_lr: f32,
    /// Min-SNR-γ weighting of the UNet's loss (each timestep's loss scaled by min(SNR, γ)/SNR); 0 turns it off.
    #[arg(long, value_name = "G", default_value_t = WorldSdConfig::default().snr_gamma.unwrap_or(0.0))]
    snr_gamma: f32,
    /// The fraction of captions replaced by the empty one (for classifier-free guidance).
    #[arg(long, value_name = "P", default_value_t = WorldSdConfig::default().caption_dropout)]
    caption_dropout: f32,
    /// Start from this pipeline folder's tokenizer and weights (an earlier run, or the `.partial` folder an
    /// interrupted run leaves beside --out); with --autoencoder-steps 0 its autoencoder is kept as it is.
    #[arg(long, value_name = "DIR")]
    init: Option<PathBuf>,
    #[arg(long, value_name = "N", default_value_t = 100)]
    log_every: usize,
    #[arg(long, value_name = "S", default_value_t = 0)]
    seed: u64,
    /// Compute dtype: auto (bf16 on a GPU, f32 on the CPU), f32, f16 or bf16; parameters stay f32.
    #[arg(long, value_enum, default_value = "auto")]
    dtype: DTypeArg,
    /// The pipeline folder to write (model_index.json, tokenizer/, text_encoder/, unet/, vae/, scheduler/).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

pub fn world_sd(args: WorldSdArgs, device: &Device) -> Result<()> {
    let defaults = WorldSdConfig::default();
    let config = WorldSdConfig {
        images: args.images,
        autoencoder_steps: args.autoencoder_steps,
        autoencoder_batch: args.autoencoder_batch,
        text_encoder_steps: args.text_encoder_steps,
        denoiser_steps: args.denoiser_steps,
        denoiser_batch: args.denoiser_batch,
        denoiser_lr: args.denoiser_lr,
        snr_gamma: (args.snr_gamma > 0.0).then_some(args.snr_gamma),
        caption_dropout: args.caption_dropout,
        seed: args.seed,
        dtype: dtype_or(args.dtype, device, DType::BF16),
        init: args.init.clone(),
        ..defaults
    };
    if config.init.is_none() && (config.autoencoder_steps == 0 || config.text_encoder_steps == 0) {
        return Err(Error::Usage(
            "--autoencoder-steps 0 and --text-encoder-steps 0 need --init DIR with the trained model".into(),
        ));
    }
    if config.images == 0 || config.autoencoder_batch == 0 || config.denoiser_batch == 0 {
        return Err(Error::Usage("--images and the batch sizes must be at least 1".into()));
    }
    let valid = config.denoiser_lr > 0.0 && config.denoiser_lr.is_finite() && args.snr_gamma >= 0.0;
    if !valid {
        return Err(Error::Usage("--denoiser-lr must be positive and --snr-gamma at least 0".into()));
    }
    if !(0.0..1.0).contains(&config.caption_dropout) {
        return Err(Error::Usage(format!("--caption-dropout {} must be in [0, 1)", config.caption_dropout)));
    }
    let world = world_of(&args.config)?;
    eprintln!(
        "training the world's Stable Diffusion on {device} ({}): {} balanced renders, autoencoder {} steps, \
         text encoder {} steps, UNet {} steps",
        config.dtype, config.images, config.autoencoder_steps, config.text_encoder_steps, config.denoiser_steps
    );
    let log_every = args.log_every;
    let outcome =
        train_world_sd(&world, &config, &args.out, device, &mut |stage: &str, p: &Progress| log(stage, log_every, p))?;
    let stage = |steps: usize, loss: f32, seconds: f64| match steps {
        0 => "kept from --init".to_string(),
        _ => format!("final loss {loss:.5}, {seconds:.0} s"),
    };
    println!(
        "wrote {} (autoencoder: {}; text encoder: {}; UNet: final loss {:.5}, {:.0} s; latent scaling factor {:.5})",
        args.out.display(),
        stage(config.autoencoder_steps, outcome.autoencoder_loss, outcome.autoencoder_seconds),
        stage(config.text_encoder_steps, outcome.text_encoder_loss, outcome.text_encoder_seconds),
        outcome.denoiser_loss,
        outcome.denoiser_seconds,
        outcome.scaling_factor
    );
    Ok(())
}

/// One progress line every `every` steps and at the last, to stderr.
fn log(stage: &str, every: usize, p: &Progress) {
    if p.step.is_multiple_of(every.max(1)) || p.step == p.steps {
        eprintln!(
            "{stage} step {:>5}/{}  loss {:.5}  lr {:.3e}  grad-norm {:.3}  {:.1} s",
            p.step, p.steps, p.loss, p.lr, p.grad_norm, p.seconds
        );
    }
}

#[derive(Args)]
#[command(after_help = "Examples:
  foil train oracle --model weights/world-sd --out weights/world-oracle.safetensors
  foil train oracle --steps 300 --out /tmp/oracle.safetensors")]
pub struct OracleArgs {
    /// A world config (JSON); default: the shipped world. The heads are its factors' values.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// A world generator folder: half the steps train on renders passed through its autoencoder.
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "resnet18")]
    arch: ResNetArch,
    #[arg(long, value_name = "N", default_value_t = OracleConfig::default().width)]
    width: usize,
    #[arg(long, value_name = "N", default_value_t = OracleConfig::default().steps)]
    steps: usize,
    #[arg(long, value_name = "N", default_value_t = OracleConfig::default().batch)]
    batch: usize,
    #[arg(long, value_name = "LR", default_value_t = OracleConfig::default().lr)]
    lr: f32,
    #[arg(long, value_name = "N", default_value_t = 100)]
    log_every: usize,
    #[arg(long, value_name = "S", default_value_t = 0)]
    seed: u64,
    /// Where to write the oracle (safetensors, torchvision names; the fc rows are the heads in factor order).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

pub fn oracle(args: OracleArgs, device: &Device) -> Result<()> {
    if args.steps == 0 || args.batch == 0 || args.width == 0 {
        return Err(Error::Usage("--steps, --batch and --width must be at least 1".into()));
    }
    let world = world_of(&args.config)?;
    let vae = match &args.model {
        Some(dir) => Some(AutoencoderKL::load(&dir.join("vae"), DType::F32, device)?),
        None => None,
    };
    let config = OracleConfig {
        arch: args.arch,
        width: args.width,
        steps: args.steps,
        batch: args.batch,
        lr: args.lr,
        seed: args.seed,
        ..OracleConfig::default()
    };
    eprintln!(
        "training the oracle ({} width {}) on {device}: {} steps of {} balanced renders",
        args.arch, args.width, args.steps, args.batch
    );
    let trained =
        train_oracle(&world, &config, vae.as_ref(), device, &mut |p: &Progress| log("oracle", args.log_every, p))?;
    let refs: Vec<(&str, &Tensor)> = trained.tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    safetensors::save(&args.out, &refs)?;
    println!("wrote {} ({} steps in {:.0} s)", args.out.display(), args.steps, trained.seconds);
    println!("held-out accuracy on {} balanced renders: {}", config.test_images, factor_rates(&trained.accuracy));
    if let Some(acc) = &trained.reconstruction_accuracy {
        println!("on their autoencoder reconstructions: {}", factor_rates(acc));
    }
    Ok(())
}
