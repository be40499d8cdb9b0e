//! The reinforce stage of the loop: fine-tune the classifier on fresh
//! counterfactual images of the weaknesses a probe found (labelled with the
//! true class, mixed with its original training data), probe it again on the
//! probe's own images, and evaluate it on held-out real data with ground truth,
//! before and after. Two baselines get the same budget of images and steps:
//! counterfactuals of attributes chosen at random (no probe), and, in a world,
//! real group-balanced renders (the upper bound a loop could reach).

pub mod evaluate;
pub mod finetune;
pub mod report;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::device::Device;
use crate::diffusion::pipeline::StableDiffusion;
use crate::error::{Error, Result};
use crate::models::resnet::ResNetArch;
use crate::probe::folder::{noise_seed, score, CaptionSource, ProbeImages, ProbeRecord};
use crate::probe::images::{generate, Classifier, GenerationConfig, ImageJob, Images};
use crate::probe::score::{chosen_weaknesses, Weakness};
use crate::probe::source::CaptionSet;
use crate::tensor::{Rng, Tensor};
use crate::world::{Split, World};
use evaluate::{subjects_data, Evaluation, GroundTruth};
use finetune::{finetune, FinetuneConfig, Labelled};

#[derive(Clone, Debug)]
pub struct ReinforceConfig {
    /// New images for each fine-tuning (the loop's and each baseline's budget).
    pub images: usize,
    /// The fraction of them held out to choose the number of steps.
    pub held_out: f32,
    /// Original training images mixed in (a world's tied training split; a CSV gives all its rows).
    pub original: usize,
    /// Test images (a world's balanced test split).
    pub test: usize,
    pub finetune: FinetuneConfig,
    pub generation: GenerationConfig,
    pub seed: u64,
}

/// One fine-tuning's result.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Variant {
    #[serde(flatten)]
    pub evaluation: Evaluation,
    pub chosen_step: usize,
    pub held_out_accuracy: f32,
    pub curve: Vec<(usize, f32)>,
    pub seconds: f64,
}

pub struct ReinforceOutcome {
    /// The attributes reinforced.
    pub reinforced: Vec<String>,
    pub before: Evaluation,
    pub after: Variant,
    pub random_attributes: Variant,
    /// Only in a world.
    pub group_balanced: Option<Variant>,
    /// The reinforced classifier's weights.
    pub tensors: BTreeMap<String, Tensor>,
    /// The probe's images scored again with the reinforced classifier.
    pub weaknesses_after: Vec<Weakness>,
    pub generated: usize,
}

/// What a stage reports while it works: (stage, done, total, detail).
pub type Progress<'a> = dyn FnMut(&str, usize, usize, &str) + 'a;

/// Runs the reinforce stage for the probe `record` (with its images) of the
/// classifier `initial`, generating with `sd`; `test` is the ground truth
/// (None: the world's balanced test split).
#[allow(clippy::too_many_arguments)]
pub fn reinforce(
    record: &ProbeRecord,
    probe_images: &ProbeImages,
    initial: &BTreeMap<String, Tensor>,
    sd: &StableDiffusion,
    test: Option<GroundTruth>,
    config: &ReinforceConfig,
    device: &Device,
    progress: &mut Progress,
) -> Result<ReinforceOutcome> {
    let arch = config.finetune.arch;
    let world = record.source.world()?;
    let reinforced = chosen_weaknesses(&record.weaknesses);
    if reinforced.is_empty() {
        return Err(Error::Usage("the probe found no attribute whose change flips the classifier".into()));
    }
    let test = match (test, &world) {
        (Some(t), _) => t,
        (None, Some(w)) => GroundTruth::world_test(w, config.test, config.seed)?,
        (None, None) => return Err(Error::Usage("a CSV probe needs a test CSV with a group column".into())),
    };
    let pool = match &record.source {
        CaptionSource::World { .. } => record.source.captions(config.images, config.seed ^ 0x7265_696e)?,
        CaptionSource::Csv { .. } => record.captions.clone(),
    };
    let original = match (&record.source, &world) {
        (CaptionSource::World { .. }, Some(w)) => {
            let scenes = w.sample(Split::Train, config.original, config.seed ^ 0x6f72_6967);
            Labelled {
                images: Images { size: w.config().size, pixels: w.render_batch(&scenes, &Device::Cpu)?.to_vec_f32()? },
                labels: scenes.iter().map(|s| w.label(s)).collect(),
            }
        }
        _ => subjects_data(&pool, None)?,
    };

    let index: Vec<usize> =
        reinforced.iter().filter_map(|name| record.captions.attributes.iter().position(|a| &a.name == name)).collect();
    let all: Vec<usize> = (0..record.captions.attributes.len()).collect();
    let total = 2 * config.images;
    let mut made = 0;
    let mut make = |attributes: &[usize], seed: u64| -> Result<Labelled> {
        let data = counterfactuals(sd, &pool, attributes, world.as_ref(), config, seed, device, &mut |done| {
            progress("generating counterfactuals", made + done, total, "")
        })?;
        made += config.images;
        Ok(data)
    };
    let weak = make(&index, config.seed ^ 0x7765_616b)?;
    let random = make(&all, config.seed ^ 0x7261_6e64)?;

    let before = test.evaluate(&Classifier::from_tensors(initial.clone(), arch, config.finetune.dtype, device)?)?;
    let held =
        ((config.images as f32 * config.held_out).round() as usize).clamp(1, config.images.saturating_sub(1).max(1));
    let mut tune = |name: &str, data: &Labelled| -> Result<(Variant, BTreeMap<String, Tensor>)> {
        let (held_out, new) = data.split_at(held);
        let steps = config.finetune.steps;
        let tuned = finetune(initial, &new, &held_out, &original, &config.finetune, device, &mut |step, loss| {
            progress(name, step, steps, &format!("loss {loss:.3}"))
        })?;
        let classifier = Classifier::from_tensors(tuned.tensors.clone(), arch, config.finetune.dtype, device)?;
        let variant = Variant {
            evaluation: test.evaluate(&classifier)?,
            chosen_step: tuned.chosen_step,
            held_out_accuracy: tuned.held_out_accuracy,
            curve: tuned.curve,
            seconds: tuned.seconds,
        };
        Ok((variant, tuned.tensors))
    };
    let (after, tensors) = tune("fine-tuning on the weaknesses", &weak)?;
    let (random_attributes, _) = tune("baseline: random attributes", &random)?;
    let group_balanced = match &world {
        Some(w) => {
            let scenes = w.sample(Split::Validation, config.images, config.seed ^ 0x6261_6c61);
            let data = Labelled {
                images: Images { size: w.config().size, pixels: w.render_batch(&scenes, &Device::Cpu)?.to_vec_f32()? },
                labels: scenes.iter().map(|s| w.label(s)).collect(),
            };
            Some(tune("upper bound: group-balanced renders", &data)?.0)
        }
        None => None,
    };
    let reprobe = Classifier::from_tensors(tensors.clone(), arch, config.finetune.dtype, device)?;
    let (_, weaknesses_after) = score(&reprobe, &record.captions, probe_images, record.seed)?;
    Ok(ReinforceOutcome {
        reinforced,
        before,
        after,
        random_attributes,
        group_balanced,
        tensors,
        weaknesses_after,
        generated: made,
    })
}

/// `config.images` counterfactual images from `pool`'s subjects, each changed
/// in one of `attributes` (drawn uniformly, then one of its other values),
/// labelled with the subject's true class. A subject with no perturbation of
/// the drawn attribute is passed over.
#[allow(clippy::too_many_arguments)]
fn counterfactuals(
    sd: &StableDiffusion,
    pool: &CaptionSet,
    attributes: &[usize],
    world: Option<&World>,
    config: &ReinforceConfig,
    seed: u64,
    device: &Device,
    progress: &mut dyn FnMut(usize),
) -> Result<Labelled> {
    let mut rng = Rng::new(seed);
    let mut jobs = Vec::with_capacity(config.images);
    let mut labels = Vec::with_capacity(config.images);
    let mut misses = 0;
    while jobs.len() < config.images {
        let s = rng.below(pool.subjects.len() as u32) as usize;
        let subject = &pool.subjects[s];
        let attribute = attributes[rng.below(attributes.len() as u32) as usize];
        let options: Vec<_> = subject.perturbations.iter().filter(|p| p.attribute == attribute).collect();
        if options.is_empty() {
            misses += 1;
            if misses > 100 * config.images {
                return Err(Error::Usage("no caption states the attributes to reinforce".into()));
            }
            continue;
        }
        let p = options[rng.below(options.len() as u32) as usize];
        jobs.push(ImageJob { caption: &p.caption, noise_seed: noise_seed(seed, jobs.len()), real: &subject.image });
        labels.push(subject.label);
    }
    let images = generate(sd, &jobs, &config.generation, world, device, progress)?;
    Ok(Labelled { images, labels })
}

/// The classifier architecture a probe record names.
pub fn arch_of(record: &ProbeRecord) -> Result<ResNetArch> {
    record.arch.parse().map_err(|e| Error::Usage(format!("probe.json's arch '{}': {e}", record.arch)))
}
