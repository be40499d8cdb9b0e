//! A probe, run and kept: the factual and counterfactual images of a caption
//! set, the classifier's scores on them, and the ranked weaknesses, written to a
//! folder (probe.json, images.safetensors, one PNG grid an attribute) from
//! which `foil reinforce` goes on.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::grid::{write_grid, GridCell, GridRow};
use super::images::{generate, Classifier, GenerationConfig, ImageJob, Images};
use super::score::{score_pairs, weaknesses, PairScore, Weakness};
use super::source::CaptionSet;
use crate::device::{DType, Device};
use crate::diffusion::pipeline::StableDiffusion;
use crate::error::{Error, Result};
use crate::tensor::{safetensors, write_text_atomically, Tensor};
use crate::world::{World, WorldConfig};

/// Where the captions came from, so that a later stage can draw more.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum CaptionSource {
    /// A world: its config file, or the shipped world.
    World { config: Option<PathBuf> },
    /// A user's metadata CSV and attribute lexicon, and the classifier's class
    /// names in order when the labels are names (empty: sorted).
    Csv { captions: PathBuf, lexicon: PathBuf, classes: Vec<String> },
}

impl CaptionSource {
    /// The world of a world source.
    pub fn world(&self) -> Result<Option<World>> {
        match self {
            CaptionSource::World { config: Some(file) } => Ok(Some(World::new(WorldConfig::from_file(file)?))),
            CaptionSource::World { config: None } => Ok(Some(World::new(WorldConfig::default()))),
            CaptionSource::Csv { .. } => Ok(None),
        }
    }

    /// `n` subjects (a world draws them with `seed`; a CSV gives all its rows).
    pub fn captions(&self, n: usize, seed: u64) -> Result<CaptionSet> {
        match self {
            CaptionSource::World { .. } => {
                Ok(CaptionSet::from_world(&self.world()?.expect("a world source has a world"), n, seed))
            }
            CaptionSource::Csv { captions, lexicon, classes } => CaptionSet::from_csv(captions, lexicon, classes),
        }
    }
}

/// The factual image of every subject and the counterfactual of every pair.
pub struct ProbeImages {
    pub factual: Images,
    pub counterfactual: Images,
}

/// The seed of subject `s`'s initial noise: both images of its pairs share it.
pub fn noise_seed(seed: u64, s: usize) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(s as u64)
}

/// Generates the probe's images; `progress` gets (images made, images in all).
pub fn probe_images(
    sd: &StableDiffusion,
    set: &CaptionSet,
    world: Option<&World>,
    generation: &GenerationConfig,
    seed: u64,
    device: &Device,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<ProbeImages> {
    let factual_jobs: Vec<ImageJob> = set
        .subjects
        .iter()
        .enumerate()
        .map(|(s, subject)| ImageJob {
            caption: &subject.caption,
            noise_seed: noise_seed(seed, s),
            real: &subject.image,
        })
        .collect();
    let pair_jobs: Vec<ImageJob> = set
        .pairs()
        .map(|(s, p)| ImageJob { caption: &p.caption, noise_seed: noise_seed(seed, s), real: &set.subjects[s].image })
        .collect();
    let total = factual_jobs.len() + pair_jobs.len();
    let factual = generate(sd, &factual_jobs, generation, world, device, &mut |done| progress(done, total))?;
    let counterfactual =
        generate(sd, &pair_jobs, generation, world, device, &mut |done| progress(factual_jobs.len() + done, total))?;
    Ok(ProbeImages { factual, counterfactual })
}

/// What probe.json holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProbeRecord {
    pub generator: PathBuf,
    pub classifier: PathBuf,
    pub arch: String,
    pub source: CaptionSource,
    pub generation: GenerationConfig,
    pub seed: u64,
    pub captions: CaptionSet,
    pub scores: Vec<PairScore>,
    /// Every attribute, worst first.
    pub weaknesses: Vec<Weakness>,
    pub images: usize,
    pub seconds: f64,
}

/// The scores of `classifier` on the probe's images and the ranked weaknesses.
pub fn score(
    classifier: &Classifier,
    set: &CaptionSet,
    images: &ProbeImages,
    seed: u64,
) -> Result<(Vec<PairScore>, Vec<Weakness>)> {
    if classifier.classes() != set.classes.len() {
        return Err(Error::Usage(format!(
            "the classifier has {} classes, the captions' labels {}",
            classifier.classes(),
            set.classes.len()
        )));
    }
    let scores = score_pairs(
        set,
        &classifier.probabilities(&images.factual)?,
        &classifier.probabilities(&images.counterfactual)?,
    );
    let ranked = weaknesses(set, &scores, seed);
    Ok((scores, ranked))
}

impl ProbeRecord {
    /// Writes probe.json, images.safetensors and the grids into `dir`; each file
    /// whole or not at all, probe.json last (its presence means the probe finished).
    pub fn save(&self, dir: &Path, images: &ProbeImages, started: Instant) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
        let size = images.factual.size;
        let tensor = |i: &Images| Tensor::from_f32(i.pixels.clone(), [i.len(), 3, size, size], &Device::Cpu);
        safetensors::save(
            dir.join("images.safetensors"),
            &[("factual", &tensor(&images.factual)?), ("counterfactual", &tensor(&images.counterfactual)?)],
        )?;
        write_grids(dir, self, images)?;
        let record = ProbeRecord { seconds: started.elapsed().as_secs_f64(), ..self.clone() };
        let text = serde_json::to_string_pretty(&record).map_err(|e| Error::Usage(e.to_string()))?;
        write_text_atomically(&dir.join("probe.json"), &text)
    }

    /// The probe in `dir`, with its images.
    pub fn load(dir: &Path) -> Result<(ProbeRecord, ProbeImages)> {
        let path = dir.join("probe.json");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| file_error(&path, format!("{e} (is this a folder `foil probe` wrote?)")))?;
        let record: ProbeRecord = serde_json::from_str(&text).map_err(|e| file_error(&path, e))?;
        let file = safetensors::SafetensorsFile::open(dir.join("images.safetensors"))?;
        let read = |name: &str| -> Result<Images> {
            let t = file.load(name, DType::F32, &Device::Cpu)?;
            Ok(Images { size: t.dims()[2], pixels: t.to_vec_f32()? })
        };
        let images = ProbeImages { factual: read("factual")?, counterfactual: read("counterfactual")? };
        let pairs = record.captions.pairs().count();
        if images.factual.len() != record.captions.subjects.len() || images.counterfactual.len() != pairs {
            return Err(file_error(&dir.join("images.safetensors"), "its images do not match probe.json's captions"));
        }
        Ok((record, images))
    }
}

/// Rows shown in each attribute's grid.
const GRID_ROWS: usize = 12;

/// grid-<attribute>.png: factual | counterfactual with the prediction and its
/// confidence under each, flips first, then by the drop in the true class's probability.
fn write_grids(dir: &Path, record: &ProbeRecord, images: &ProbeImages) -> Result<()> {
    let set = &record.captions;
    for (a, attribute) in set.attributes.iter().enumerate() {
        let mut pairs: Vec<(usize, &PairScore)> =
            record.scores.iter().enumerate().filter(|(_, p)| p.attribute == a && p.factual_correct()).collect();
        pairs.sort_by(|x, y| {
            (y.1.flipped(), y.1.drop()).partial_cmp(&(x.1.flipped(), x.1.drop())).unwrap_or(std::cmp::Ordering::Equal)
        });
        let label = |class: usize, confidence: f32| format!("{} {:.0}%", set.classes[class], 100.0 * confidence);
        let rows: Vec<GridRow> = pairs
            .iter()
            .take(GRID_ROWS)
            .map(|&(i, p)| GridRow {
                title: format!(
                    "{}: {} -> {} ({})",
                    attribute.name, attribute.values[p.from], attribute.values[p.to], set.classes[p.label]
                ),
                cells: vec![
                    GridCell {
                        pixels: images.factual.get(p.subject),
                        text: label(p.factual_prediction, p.factual_confidence),
                    },
                    GridCell {
                        pixels: images.counterfactual.get(i),
                        text: label(p.counterfactual_prediction, p.counterfactual_confidence),
                    },
                ],
            })
            .collect();
        if !rows.is_empty() {
            write_grid(&dir.join(format!("grid-{}.png", attribute.name)), &rows, images.factual.size, 3)?;
        }
    }
    Ok(())
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::File { file: path.display().to_string(), detail: e.to_string() }
}
