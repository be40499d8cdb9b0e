//! Stable Diffusion text-to-image and image-to-image, step for step as diffusers'
//! StableDiffusionPipeline and StableDiffusionImg2ImgPipeline: the same prompt
//! encoding, classifier-free guidance, latent scaling and output range, so that
//! with the same initial noise the images match.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::scheduler::{self, Scheduler, SchedulerConfig, SchedulerKind};
use crate::device::{DType, Device};
use crate::error::{Error, Result};
use crate::models::clip_text::ClipTextModel;
use crate::models::clip_tokenizer::ClipTokenizer;
use crate::models::unet::UNet2DConditionModel;
use crate::models::vae::AutoencoderKL;
use crate::tensor::{Rng, Tensor};

/// Where the initial latent noise comes from.
pub enum InitialNoise {
    /// Drawn from foil's generator.
    Seed(u64),
    /// Given, as diffusers' `latents=` argument (N, C, h, w). For image-to-image,
    /// `latents` is the noise added to the encoded image and `encoder_noise`, when
    /// given, the draw of the VAE posterior sample.
    Given { latents: Tensor, encoder_noise: Option<Tensor> },
}

/// Everything one generation needs besides the model.
pub struct GenerateRequest {
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: usize,
    pub guidance: f32,
    /// None: the pipeline folder's own scheduler.
    pub scheduler: Option<SchedulerKind>,
    pub noise: InitialNoise,
    /// Images per prompt when the noise comes from a seed.
    pub batch: usize,
    /// Output size in pixels; None: the UNet's sample size times the VAE's scale.
    pub size: Option<(usize, usize)>,
    /// Image-to-image: an (1, 3, H, W) image in [0, 1] and the strength.
    pub init_image: Option<(Tensor, f32)>,
}

impl GenerateRequest {
    /// One image per prompt of `generate_prompts` from the given initial `latents`
    /// (N, C, h, w), the folder's scheduler and size, no negative prompt; with
    /// `init_image`, image-to-image from it.
    pub fn from_latents(steps: usize, guidance: f32, latents: Tensor, init_image: Option<(Tensor, f32)>) -> Self {
        let batch = latents.dims()[0];
        GenerateRequest {
            prompt: String::new(),
            negative_prompt: String::new(),
            steps,
            guidance,
            scheduler: None,
            noise: InitialNoise::Given { latents, encoder_noise: None },
            batch,
            size: None,
            init_image,
        }
    }
}

/// The folder's scheduler config as diffusers' StableDiffusionPipeline
/// constructor leaves it: `steps_offset` 1, and `clip_sample` off for the
/// classes that have it (DDIM and DDPM, on by default). A `--scheduler` of
/// another kind is then built from this config, as diffusers'
/// `pipe.scheduler = Cls.from_config(pipe.scheduler.config)` is.
fn as_pipeline_leaves_it(mut config: SchedulerConfig) -> SchedulerConfig {
    config.steps_offset = Some(1);
    if matches!(config.class_name.as_deref(), Some("DDIMScheduler" | "DDPMScheduler")) {
        config.clip_sample = Some(false);
    }
    config
}

/// A diffusers Stable Diffusion pipeline folder, loaded.
pub struct StableDiffusion {
    dir: PathBuf,
    tokenizer: ClipTokenizer,
    text_encoder: ClipTextModel,
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    device: Device,
    dtype: DType,
}

#[derive(Deserialize)]
struct ModelIndex {
    #[serde(rename = "_class_name")]
    class_name: Option<String>,
}

impl StableDiffusion {
    /// Loads `dir` (model_index.json, tokenizer/, text_encoder/, unet/, vae/,
    /// scheduler/) with weights and activations in `dtype` on `device`.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<StableDiffusion> {
        let index_path = dir.join("model_index.json");
        let text = std::fs::read_to_string(&index_path).map_err(|e| Error::File {
            file: index_path.display().to_string(),
            detail: format!("{e} (is this a diffusers pipeline folder?)"),
        })?;
        let index: ModelIndex = serde_json::from_str(&text).map_err(|e| Error::File {
            file: index_path.display().to_string(),
            detail: format!("invalid JSON: {e}"),
        })?;
        if let Some(class) = index.class_name.as_deref().filter(|c| !c.starts_with("StableDiffusion")) {
            return Err(Error::File {
                file: index_path.display().to_string(),
                detail: format!("pipeline class {class} is not a Stable Diffusion pipeline"),
            });
        }
        Ok(StableDiffusion {
            dir: dir.to_path_buf(),
            tokenizer: ClipTokenizer::from_dir(&dir.join("tokenizer"))?,
            text_encoder: ClipTextModel::load(&dir.join("text_encoder"), dtype, device)?,
            unet: UNet2DConditionModel::load(&dir.join("unet"), dtype, device)?,
            vae: AutoencoderKL::load(&dir.join("vae"), dtype, device)?,
            device: device.clone(),
            dtype,
        })
    }

    /// The text embeddings of `text` repeated `batch` times, encoded once.
    fn embed_repeated(&self, text: &str, batch: usize) -> Result<Tensor> {
        let one = self.embed(&[text.to_string()])?;
        Tensor::cat(&vec![&one; batch], 0)
    }

    /// The text embeddings of `texts`, one row each: (n, max_len, dim).
    fn embed(&self, texts: &[String]) -> Result<Tensor> {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let ids = self.tokenizer.encode_batch(&refs)?;
        let len = self.tokenizer.max_len();
        let ids = Tensor::from_u32(ids.concat(), [texts.len(), len], &self.device)?;
        self.text_encoder.forward(&ids)
    }

    /// Images (N, 3, H, W), f32 in [0, 1], as diffusers' output_type="np" in NCHW.
    pub fn generate(&self, req: &GenerateRequest) -> Result<Tensor> {
        self.generate_for(req, None)
    }

    /// One image for each of `prompts` (in place of `req.prompt` and `req.batch`),
    /// in one batch: given noise must hold one latent per prompt, and an
    /// image-to-image request one image, or one per prompt.
    pub fn generate_prompts(&self, prompts: &[String], req: &GenerateRequest) -> Result<Tensor> {
        if prompts.is_empty() {
            return Err(Error::Usage("no prompts to generate from".into()));
        }
        self.generate_for(req, Some(prompts))
    }

    fn generate_for(&self, req: &GenerateRequest, prompts: Option<&[String]>) -> Result<Tensor> {
        if req.steps == 0 {
            return Err(Error::Usage("--steps must be at least 1".into()));
        }
        let config = SchedulerConfig::from_file(&self.dir.join("scheduler").join("scheduler_config.json"))?;
        let mut scheduler = scheduler::from_config(&as_pipeline_leaves_it(config), req.scheduler)?;
        scheduler.set_timesteps(req.steps)?;
        let shape = self.latent_shape(req, prompts.map(<[String]>::len))?;
        let mut rng = match req.noise {
            InitialNoise::Seed(seed) => Rng::new(seed),
            InitialNoise::Given { .. } => Rng::new(0),
        };
        let dtype = self.dtype;
        let noise = match &req.noise {
            InitialNoise::Seed(_) => Tensor::randn(shape.clone(), &mut rng, &self.device)?,
            InitialNoise::Given { latents, .. } => latents.to_device(&self.device)?.to_dtype(DType::F32)?,
        };
        let batch = shape[0];

        // Guidance as diffusers: only above 1, and then the unconditional pass first.
        let guided = req.guidance > 1.0;
        let cond = match prompts {
            Some(p) if p.len() != batch => {
                return Err(Error::Usage(format!("{} prompts for initial noise of {batch} latents", p.len())))
            }
            Some(p) => self.embed(p)?,
            None => self.embed_repeated(&req.prompt, batch)?,
        };
        let context =
            if guided { Tensor::cat(&[&self.embed_repeated(&req.negative_prompt, batch)?, &cond], 0)? } else { cond };

        let (mut latents, first) = match &req.init_image {
            None => (noise.scale(scheduler.init_noise_sigma())?, 0),
            Some((image, strength)) => {
                let encoder_noise = match &req.noise {
                    InitialNoise::Given { encoder_noise: Some(e), .. } => Some(e.clone()),
                    _ => None,
                };
                self.img2img_start(scheduler.as_mut(), image, *strength, &noise, encoder_noise, &mut rng)?
            }
        };
        let timesteps = scheduler.timesteps().to_vec();
        for (i, &t) in timesteps.iter().enumerate().skip(first) {
            let input = scheduler.scale_model_input(&latents, i)?;
            let input = if guided { Tensor::cat(&[&input, &input], 0)? } else { input };
            let out = self.unet.forward(&input.to_dtype(dtype)?, &[t], &context)?.to_dtype(DType::F32)?;
            let step_noise = if scheduler.needs_noise() {
                Some(Tensor::randn(shape.clone(), &mut rng, &self.device)?)
            } else {
                None
            };
            latents = scheduler.step(&out, guided.then_some(req.guidance), i, &latents, step_noise.as_ref())?;
        }
        self.decode(&latents)
    }

    /// The shape (C, h, w) of one image's initial noise at `(height, width)` pixels.
    pub fn latent_dims(&self, (h, w): (usize, usize)) -> Result<[usize; 3]> {
        let ds = self.vae.downscale();
        if h == 0 || w == 0 || !h.is_multiple_of(ds) || !w.is_multiple_of(ds) {
            return Err(Error::Usage(format!("image size {h}x{w} must be a non-zero multiple of {ds}")));
        }
        Ok([self.unet.in_channels(), h / ds, w / ds])
    }

    /// The image size (height, width) in pixels the UNet was made for, where its config says.
    pub fn default_size(&self) -> Option<(usize, usize)> {
        let ds = self.vae.downscale();
        self.unet.sample_size().map(|s| (s * ds, s * ds))
    }

    /// (N, C, h, w) of the latents: from the given noise, else from the size.
    fn latent_shape(&self, req: &GenerateRequest, prompts: Option<usize>) -> Result<Vec<usize>> {
        let c = self.unet.in_channels();
        let image_size = req.init_image.as_ref().map(|(img, _)| (img.dims()[2], img.dims()[3]));
        match &req.noise {
            InitialNoise::Given { latents, .. } => {
                let d = latents.dims();
                if d.len() != 4 || d[1] != c {
                    return Err(Error::Usage(format!("initial noise {} must be (N, {c}, h, w)", latents.shape())));
                }
                if let Some(size) = req.size.or(image_size) {
                    if self.latent_dims(size)?[1..] != d[2..] {
                        return Err(Error::Usage(format!(
                            "initial noise {} does not match {size:?} pixels",
                            latents.shape()
                        )));
                    }
                }
                Ok(d.to_vec())
            }
            InitialNoise::Seed(_) => {
                let Some(size) = req.size.or(image_size).or(self.default_size()) else {
                    return Err(Error::Usage("the UNet config has no sample_size: give --height and --width".into()));
                };
                let [_, h, w] = self.latent_dims(size)?;
                Ok(vec![prompts.unwrap_or(req.batch).max(1), c, h, w])
            }
        }
    }

    /// The latents image-to-image starts from and the index of its first step:
    /// the image encoded, sampled from the posterior, scaled, and noised to the
    /// timestep `strength` of the way through the schedule.
    fn img2img_start(
        &self,
        scheduler: &mut dyn Scheduler,
        image: &Tensor,
        strength: f32,
        noise: &Tensor,
        encoder_noise: Option<Tensor>,
        rng: &mut Rng,
    ) -> Result<(Tensor, usize)> {
        if !(0.0..=1.0).contains(&strength) {
            return Err(Error::Usage(format!("--strength {strength} must be in [0, 1]")));
        }
        let batch = noise.dims()[0];
        let images = image.dims()[0];
        if images != 1 && images != batch {
            return Err(Error::Usage(format!("{images} initial images for a batch of {batch}")));
        }
        let image = image.to_device(&self.device)?.to_dtype(self.dtype)?.affine(2.0, -1.0)?;
        let (mean, logvar) = self.vae.encode(&image)?;
        let (mean, logvar) = (mean.to_dtype(DType::F32)?.to_vec_f32()?, logvar.to_dtype(DType::F32)?.to_vec_f32()?);
        let eps = match encoder_noise {
            Some(e) => e.to_dtype(DType::F32)?.to_vec_f32()?,
            None => (0..mean.len()).map(|_| rng.normal()).collect(),
        };
        if eps.len() != mean.len() {
            return Err(Error::Usage(format!("encoder noise has {} values for {} latents", eps.len(), mean.len())));
        }
        let sf = self.vae.scaling_factor();
        let sample: Vec<f32> =
            mean.iter().zip(&logvar).zip(&eps).map(|((m, lv), e)| sf * (m + (0.5 * lv).exp() * e)).collect();
        let init = Tensor::from_f32(
            sample.repeat(batch / images),
            [vec![batch], noise.dims()[1..].to_vec()].concat(),
            &self.device,
        )?;
        let first = scheduler.img2img_start(strength as f64)?;
        Ok((scheduler.add_noise(&init, noise, first)?, first))
    }

    /// Latents to images in [0, 1].
    fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let z = latents.scale(1.0 / self.vae.scaling_factor())?.to_dtype(self.dtype)?;
        let image = self.vae.decode(&z)?.to_dtype(DType::F32)?;
        image.affine(0.5, 0.5)?.clamp(0.0, 1.0)?.to_device(&Device::Cpu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pipeline_patches_only_outdated_fields() {
        let ddim = SchedulerConfig::from_json(r#"{"_class_name": "DDIMScheduler", "steps_offset": 0}"#, "t").unwrap();
        let ddim = as_pipeline_leaves_it(ddim);
        assert_eq!((ddim.steps_offset, ddim.clip_sample), (Some(1), Some(false)));
        let euler = as_pipeline_leaves_it(
            SchedulerConfig::from_json(r#"{"_class_name": "EulerDiscreteScheduler"}"#, "t").unwrap(),
        );
        assert_eq!((euler.steps_offset, euler.clip_sample), (Some(1), None));
    }
}
