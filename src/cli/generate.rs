//! `foil generate`: text-to-image and image-to-image with a diffusers Stable
//! Diffusion folder.

use std::path::PathBuf;

use clap::Args;

use foil::diffusion::pipeline::{GenerateRequest, InitialNoise, StableDiffusion};
use foil::diffusion::scheduler::SchedulerKind;
use foil::tensor::{image, safetensors};
use foil::{Device, Error, Result};

use super::{compute_dtype, DTypeArg};

#[derive(Args)]
#[command(after_help = "Examples:
  foil generate --model ./stable-diffusion-v1-5 --prompt \"a photo of an astronaut riding a horse\" --out astronaut.png
  foil generate --model DIR --prompt \"a red circle on grass\" --negative-prompt blurry --steps 25 --guidance 7.5 \\
      --scheduler dpm++2m --seed 42 --out circle.png --save-tensor circle.safetensors
  foil generate --model DIR --prompt \"a watercolor painting\" --init-image photo.png --strength 0.6 --out painted.png")]
pub struct GenerateArgs {
    /// A diffusers pipeline folder: model_index.json, tokenizer/, text_encoder/, unet/, vae/, scheduler/.
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// What the image should show.
    #[arg(long, value_name = "TEXT")]
    prompt: String,
    /// What guidance steers away from (the unconditional prompt); empty by default.
    #[arg(long, value_name = "TEXT", default_value = "")]
    negative_prompt: String,
    /// Denoising steps.
    #[arg(long, value_name = "N", default_value_t = 50)]
    steps: usize,
    /// Classifier-free guidance scale; 1 or less turns guidance off (one UNet pass a step).
    #[arg(long, value_name = "G", default_value_t = 7.5)]
    guidance: f32,
    /// ddim, ddpm, euler, euler-a, dpm++2m or pndm; default: the folder's scheduler/scheduler_config.json.
    #[arg(long, value_name = "NAME")]
    scheduler: Option<SchedulerKind>,
    /// Seed of the initial noise and of stochastic schedulers' noise.
    #[arg(long, value_name = "S", default_value_t = 0)]
    seed: u64,
    /// A safetensors file with `latents` (N, C, h, w), C being the UNet's in_channels (4 for Stable
    /// Diffusion), used as diffusers' `latents=` argument (with --init-image: the noise added to the
    /// encoded image; an optional `encoder_noise` tensor is then the VAE posterior's draw).
    #[arg(long, value_name = "FILE")]
    init_noise: Option<PathBuf>,
    /// Image-to-image: start from this PNG instead of pure noise.
    #[arg(long, value_name = "PNG")]
    init_image: Option<PathBuf>,
    /// Image-to-image: how far into the noise schedule the image is pushed (0: unchanged, 1: replaced).
    #[arg(long, value_name = "S", requires = "init_image")]
    strength: Option<f32>,
    /// Images to make from the seed (ignored with --init-noise, whose N counts).
    #[arg(long, value_name = "N", default_value_t = 1)]
    batch: usize,
    /// Output height in pixels; default: the UNet's sample size times the VAE's scale.
    #[arg(long, value_name = "PX", requires = "width")]
    height: Option<usize>,
    /// Output width in pixels.
    #[arg(long, value_name = "PX", requires = "height")]
    width: Option<usize>,
    /// The PNG to write (image i > 0 of a batch goes to NAME-i.png).
    #[arg(long, value_name = "PNG", default_value = "out.png")]
    out: PathBuf,
    /// Also write the images as a safetensors file: `image`, f32 (N, 3, H, W) in [0, 1].
    #[arg(long, value_name = "FILE")]
    save_tensor: Option<PathBuf>,
    /// Compute dtype: auto (f16 on a GPU, f32 on the CPU), f32, f16 or bf16.
    #[arg(long, value_enum, default_value = "auto")]
    dtype: DTypeArg,
}

pub fn run(args: GenerateArgs, device: &Device) -> Result<()> {
    let dtype = compute_dtype(args.dtype, device);
    let noise = match &args.init_noise {
        Some(path) => {
            let file = safetensors::SafetensorsFile::open(path)?;
            let latents = file.load("latents", foil::DType::F32, device)?;
            let encoder_noise = if file.contains("encoder_noise") {
                Some(file.load("encoder_noise", foil::DType::F32, device)?)
            } else {
                None
            };
            InitialNoise::Given { latents, encoder_noise }
        }
        None => InitialNoise::Seed(args.seed),
    };
    let init_image = match &args.init_image {
        Some(path) => Some((image::read_png(path, device)?, args.strength.unwrap_or(0.8))),
        None => None,
    };
    let request = GenerateRequest {
        prompt: args.prompt,
        negative_prompt: args.negative_prompt,
        steps: args.steps,
        guidance: args.guidance,
        scheduler: args.scheduler,
        noise,
        batch: args.batch,
        size: args.height.zip(args.width),
        init_image,
    };
    let started = std::time::Instant::now();
    let pipeline = StableDiffusion::load(&args.model, dtype, device)?;
    let loaded = started.elapsed();
    let images = pipeline.generate(&request)?;
    eprintln!(
        "foil: {} image(s) {}x{} in {:.2?} (load {:.2?}) on {device}, {dtype}",
        images.dims()[0],
        images.dims()[3],
        images.dims()[2],
        started.elapsed(),
        loaded
    );
    if let Some(path) = &args.save_tensor {
        safetensors::save(path, &[("image", &images)])?;
    }
    for i in 0..images.dims()[0] {
        let path = if i == 0 { args.out.clone() } else { numbered(&args.out, i)? };
        image::write_png(&path, &images, i)?;
        println!("{}", path.display());
    }
    Ok(())
}

/// `dir/name-i.png` for `dir/name.png`.
fn numbered(path: &std::path::Path, i: usize) -> Result<PathBuf> {
    let stem = path.file_stem().ok_or_else(|| Error::Usage(format!("--out {} has no file name", path.display())))?;
    let ext = path.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    Ok(path.with_file_name(format!("{}-{i}{ext}", stem.to_string_lossy())))
}
