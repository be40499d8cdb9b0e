//! The probe's images and the classifier's view of them. Each image is made
//! from a caption and the seed of its initial noise; the two images of a pair
//! share the seed, so only the perturbed phrase differs between them. In
//! image-to-image mode both start from the subject's real image at a strength.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::source::RealImage;
use crate::autograd::no_grad;
use crate::device::{DType, Device};
use crate::diffusion::pipeline::{GenerateRequest, StableDiffusion};
use crate::error::{Error, Result};
use crate::models::resnet::{imagenet_normalize, ResNet, ResNetArch};
use crate::nn::Weights;
use crate::tensor::image::read_png;
use crate::tensor::{Rng, Tensor};
use crate::train::checkpoint::read_tensors;
use crate::world::World;

/// How images are generated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerationConfig {
    pub steps: usize,
    pub guidance: f32,
    /// Images per generator call.
    pub batch: usize,
    /// Image-to-image from the real image at this strength; None: text-to-image.
    pub strength: Option<f32>,
}

impl Default for GenerationConfig {
    fn default() -> GenerationConfig {
        GenerationConfig { steps: 20, guidance: 5.0, batch: 64, strength: None }
    }
}

/// One image to make.
pub struct ImageJob<'a> {
    pub caption: &'a str,
    pub noise_seed: u64,
    pub real: &'a RealImage,
}

/// Images in [0, 1], planar RGB, one after another.
#[derive(Clone, Debug)]
pub struct Images {
    pub size: usize,
    pub pixels: Vec<f32>,
}

impl Images {
    pub fn len(&self) -> usize {
        self.pixels.len() / (3 * self.size * self.size).max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.pixels.is_empty()
    }

    /// Image `i`'s pixels.
    pub fn get(&self, i: usize) -> &[f32] {
        let per = 3 * self.size * self.size;
        &self.pixels[i * per..(i + 1) * per]
    }

    /// Images `idx` as an (n, 3, size, size) tensor.
    pub fn tensor(&self, idx: &[usize], device: &Device) -> Result<Tensor> {
        let data: Vec<f32> = idx.iter().flat_map(|&i| self.get(i).iter().copied()).collect();
        Tensor::from_f32(data, [idx.len(), 3, self.size, self.size], device)
    }
}

/// Generates `jobs` with `sd` in batches; `world` renders scene subjects for
/// image-to-image. `progress` gets the number of images made after each batch.
pub fn generate(
    sd: &StableDiffusion,
    jobs: &[ImageJob],
    config: &GenerationConfig,
    world: Option<&World>,
    device: &Device,
    progress: &mut dyn FnMut(usize),
) -> Result<Images> {
    let size = sd.default_size().ok_or_else(|| Error::Usage("the UNet config has no sample_size".into()))?;
    let dims = sd.latent_dims(size)?;
    let mut pixels = Vec::new();
    let mut size = size.0;
    for (done, chunk) in jobs.chunks(config.batch.max(1)).enumerate() {
        let prompts: Vec<String> = chunk.iter().map(|j| j.caption.to_string()).collect();
        let noise: Vec<Tensor> = chunk
            .iter()
            .map(|j| Tensor::randn([1, dims[0], dims[1], dims[2]], &mut Rng::new(j.noise_seed), device))
            .collect::<Result<_>>()?;
        let init_image = match config.strength {
            Some(strength) => {
                let reals: Vec<Tensor> =
                    chunk.iter().map(|j| real_image(j.real, world, device)).collect::<Result<_>>()?;
                Some((Tensor::cat(&reals.iter().collect::<Vec<_>>(), 0)?, strength))
            }
            None => None,
        };
        let latents = Tensor::cat(&noise.iter().collect::<Vec<_>>(), 0)?;
        let request = GenerateRequest::from_latents(config.steps, config.guidance, latents, init_image);
        let images = sd.generate_prompts(&prompts, &request)?;
        size = images.dims()[2];
        pixels.extend(images.to_dtype(DType::F32)?.to_vec_f32()?);
        progress((done * config.batch.max(1) + chunk.len()).min(jobs.len()));
    }
    Ok(Images { size, pixels })
}

/// A subject's real image as (1, 3, H, W) in [0, 1].
pub fn real_image(real: &RealImage, world: Option<&World>, device: &Device) -> Result<Tensor> {
    match real {
        RealImage::Scene(scene) => {
            let world = world.ok_or_else(|| Error::Usage("a world scene's image needs its world".into()))?;
            let s = world.config().size;
            Tensor::from_f32(world.render(scene), [1, 3, s, s], device)
        }
        RealImage::File(path) => read_png(path, device),
    }
}

/// An image classifier under test: a torchvision ResNet's tensors.
pub struct Classifier {
    model: ResNet,
    dtype: DType,
    device: Device,
}

impl Classifier {
    /// The state dict in `file` (safetensors) as `arch`.
    pub fn load(file: &Path, arch: ResNetArch, dtype: DType, device: &Device) -> Result<Classifier> {
        Classifier::from_tensors(read_tensors(file, device)?, arch, dtype, device)
    }

    pub fn from_tensors(
        tensors: BTreeMap<String, Tensor>,
        arch: ResNetArch,
        dtype: DType,
        device: &Device,
    ) -> Result<Classifier> {
        let model = ResNet::for_inference(&Weights::from_tensors("classifier", tensors, dtype, device), arch)?;
        Ok(Classifier { model, dtype, device: device.clone() })
    }

    pub fn classes(&self) -> usize {
        self.model.num_classes()
    }

    /// Softmax probabilities of every image, a row of `classes()` each.
    pub fn probabilities(&self, images: &Images) -> Result<Vec<Vec<f32>>> {
        let _no_grad = no_grad();
        let mut out = Vec::with_capacity(images.len());
        let idx: Vec<usize> = (0..images.len()).collect();
        for chunk in idx.chunks(256) {
            let x = imagenet_normalize(&images.tensor(chunk, &self.device)?)?.to_dtype(self.dtype)?;
            let probs = self.model.forward(&x)?.to_dtype(DType::F32)?.softmax(1)?.to_vec_f32()?;
            out.extend(probs.chunks(self.classes()).map(<[f32]>::to_vec));
        }
        Ok(out)
    }

    /// The most probable class of every image.
    pub fn predict(&self, images: &Images) -> Result<Vec<usize>> {
        Ok(self.probabilities(images)?.iter().map(|p| argmax(p)).collect())
    }
}

/// The index of the largest value.
pub fn argmax(values: &[f32]) -> usize {
    values.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i)
}
