//! Measures of a world generator, read by the oracle on images of captions
//! whose factors are known:
//! - fidelity: per factor, the fraction of images from a caption whose oracle
//!   reading is the caption's value (and the fraction right on every factor),
//!   with the confusion of caption values and readings that says which values
//!   the generator mixes up;
//! - counterfactual pairs from the same initial noise with one caption phrase
//!   changed: edit success (the changed factor reads as the new value) and
//!   preservation (every other factor reads as in the factual image);
//! - the same edits by image-to-image from the rendered scene at a strength,
//!   where preservation is judged against the scene's true values.

use std::time::Instant;

use super::oracle::{Oracle, Reading};
use super::{Scene, Split, World, FACTORS};
use crate::device::Device;
use crate::diffusion::pipeline::{GenerateRequest, StableDiffusion};
use crate::error::Result;
use crate::tensor::{Rng, Tensor};

#[derive(Clone, Debug)]
pub struct MeasureConfig {
    /// Scenes (captions) measured; each also gives one counterfactual pair.
    pub scenes: usize,
    pub steps: usize,
    pub guidance: f32,
    /// Image-to-image strengths.
    pub strengths: Vec<f32>,
    /// Images generated per batch.
    pub batch: usize,
    pub seed: u64,
}

impl Default for MeasureConfig {
    fn default() -> MeasureConfig {
        MeasureConfig { scenes: 300, steps: 25, guidance: 5.0, strengths: vec![0.5, 0.7, 0.9], batch: 50, seed: 0 }
    }
}

/// Edit success and preservation of the pairs that changed one factor, as
/// counts: at tens of pairs a factor, a rate needs its interval.
#[derive(Clone, Debug, PartialEq)]
pub struct EditRates {
    pub factor: &'static str,
    pub pairs: usize,
    /// Pairs whose changed factor reads as the new value.
    pub succeeded: usize,
    /// Pairs whose every other factor reads as before.
    pub preserved: usize,
}

impl EditRates {
    pub fn success(&self) -> f32 {
        self.succeeded as f32 / self.pairs.max(1) as f32
    }

    pub fn preservation(&self) -> f32 {
        self.preserved as f32 / self.pairs.max(1) as f32
    }
}

#[derive(Clone, Debug)]
pub struct Measures {
    /// Per factor in [`FACTORS`] order.
    pub fidelity: [f32; FACTORS.len()],
    /// Every factor right at once.
    pub fidelity_all: f32,
    /// Per factor: counts of images by the caption's value (row) and the
    /// oracle's reading (column).
    pub confusion: Vec<Vec<Vec<usize>>>,
    /// Text-to-image pairs, per changed factor.
    pub pairs: Vec<EditRates>,
    /// Image-to-image edits: the strength and its rates per changed factor.
    pub img2img: Vec<(f32, Vec<EditRates>)>,
    pub images: usize,
    pub seconds: f64,
}

/// Measures `sd` on `world` with `oracle`.
pub fn measure(
    sd: &StableDiffusion,
    oracle: &Oracle,
    world: &World,
    config: &MeasureConfig,
    device: &Device,
) -> Result<Measures> {
    let start = Instant::now();
    let world = world.balanced();
    let scenes = world.sample(Split::Test, config.scenes, config.seed);
    let mut rng = Rng::new(config.seed ^ 0x6564_6974);
    // Scene i changes factor i mod 5 to another of its values, uniformly.
    let edits: Vec<(usize, usize)> = scenes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let f = i % FACTORS.len();
            let n = world.values(f).len();
            (f, (s.values[f] + 1 + rng.below(n as u32 - 1) as usize) % n)
        })
        .collect();
    let edited: Vec<Scene> = scenes.iter().zip(&edits).map(|(s, &(f, v))| s.with(f, v)).collect();
    let captions: Vec<String> = scenes.iter().map(|s| world.caption(s)).collect();
    let edited_captions: Vec<String> = edited.iter().map(|s| world.caption(s)).collect();
    let size = world.config().size;
    let [c, h, w] = sd.latent_dims((size, size))?;
    let noise: Vec<Tensor> = (0..scenes.len())
        .map(|i| Tensor::randn([1, c, h, w], &mut Rng::new(config.seed.wrapping_add(i as u64)), device))
        .collect::<Result<_>>()?;
    let mut images = 0;
    let mut generate = |prompts: &[String], init: Option<(&[Scene], f32)>| -> Result<Vec<Reading>> {
        let mut readings = Vec::with_capacity(prompts.len());
        for start in (0..prompts.len()).step_by(config.batch.max(1)) {
            let end = (start + config.batch.max(1)).min(prompts.len());
            let refs: Vec<&Tensor> = noise[start..end].iter().collect();
            let init_image = match init {
                Some((source, strength)) => Some((world.render_batch(&source[start..end], device)?, strength)),
                None => None,
            };
            let request =
                GenerateRequest::from_latents(config.steps, config.guidance, Tensor::cat(&refs, 0)?, init_image);
            readings.extend(oracle.read(&sd.generate_prompts(&prompts[start..end], &request)?)?);
            images += end - start;
        }
        Ok(readings)
    };

    let factual = generate(&captions, None)?;
    let counterfactual = generate(&edited_captions, None)?;
    let mut img2img = Vec::new();
    let truth: Vec<Reading> = scenes.iter().map(|s| s.values).collect();
    for &strength in &config.strengths {
        let readings = generate(&edited_captions, Some((&scenes, strength)))?;
        img2img.push((strength, edit_rates(&edits, &truth, &readings)));
    }

    let confusion = confusion(&world, &scenes, &factual);
    // A factor's fidelity is its confusion's diagonal share.
    let mut fidelity = [0.0; FACTORS.len()];
    for (rate, counts) in fidelity.iter_mut().zip(&confusion) {
        let right: usize = counts.iter().enumerate().map(|(v, row)| row[v]).sum();
        *rate = right as f32 / scenes.len().max(1) as f32;
    }
    let fidelity_all = fraction(factual.iter().zip(&scenes).map(|(r, s)| *r == s.values));
    Ok(Measures {
        fidelity,
        fidelity_all,
        confusion,
        pairs: edit_rates(&edits, &factual, &counterfactual),
        img2img,
        images,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Per factor: images counted by the scene's value (row) and the reading (column).
fn confusion(world: &World, scenes: &[Scene], readings: &[Reading]) -> Vec<Vec<Vec<usize>>> {
    (0..FACTORS.len())
        .map(|f| {
            let n = world.values(f).len();
            let mut counts = vec![vec![0; n]; n];
            for (r, s) in readings.iter().zip(scenes) {
                counts[s.values[f]][r[f]] += 1;
            }
            counts
        })
        .collect()
}

/// Per changed factor: how often `after` reads the new value, and how often
/// every other factor reads as in `before`.
fn edit_rates(edits: &[(usize, usize)], before: &[Reading], after: &[Reading]) -> Vec<EditRates> {
    (0..FACTORS.len())
        .filter_map(|f| {
            let pairs: Vec<usize> = (0..edits.len()).filter(|&i| edits[i].0 == f).collect();
            if pairs.is_empty() {
                return None;
            }
            let succeeded = pairs.iter().filter(|&&i| after[i][f] == edits[i].1).count();
            let kept = |i: usize| (0..FACTORS.len()).all(|g| g == f || after[i][g] == before[i][g]);
            let preserved = pairs.iter().filter(|&&i| kept(i)).count();
            Some(EditRates { factor: FACTORS[f], pairs: pairs.len(), succeeded, preserved })
        })
        .collect()
}

fn fraction(hits: impl Iterator<Item = bool>) -> f32 {
    let (mut yes, mut all) = (0usize, 0usize);
    for hit in hits {
        yes += usize::from(hit);
        all += 1;
    }
    yes as f32 / all.max(1) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::WorldConfig;

    #[test]
    fn confusion_counts_each_reading_under_its_scenes_value() {
        let world = World::new(WorldConfig::default());
        let scenes = world.sample(Split::Test, 40, 3);
        // Every fifth reading of the first factor is shifted to the next value.
        let readings: Vec<Reading> = scenes
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut r = s.values;
                if i % 5 == 0 {
                    r[0] = (r[0] + 1) % world.values(0).len();
                }
                r
            })
            .collect();
        let counts = confusion(&world, &scenes, &readings);
        assert_eq!(counts.len(), FACTORS.len());
        for (f, table) in counts.iter().enumerate() {
            let n = world.values(f).len();
            assert_eq!(table.len(), n);
            assert_eq!(table.iter().flatten().sum::<usize>(), scenes.len());
            let diagonal: usize = (0..n).map(|v| table[v][v]).sum();
            assert_eq!(diagonal, if f == 0 { scenes.len() - 8 } else { scenes.len() });
        }
        for (i, s) in scenes.iter().enumerate().filter(|(i, _)| i % 5 == 0) {
            assert!(counts[0][s.values[0]][readings[i][0]] > 0, "scene {i}");
        }
    }

    #[test]
    fn edit_rates_count_successes_and_preserved_pairs_per_changed_factor() {
        // Six pairs: four change factor 0 to value 1, two change factor 2 to value 3.
        let edits = [(0, 1), (0, 1), (0, 1), (0, 1), (2, 3), (2, 3)];
        let before: Vec<Reading> = (0..6).map(|i| [0, i % 2, 0, 1, 2]).collect();
        let mut after = before.clone();
        after[0][0] = 1; // a clean edit
        after[1][0] = 1; // an edit that also moved factor 4
        after[1][4] = 0;
        after[2][0] = 2; // the wrong new value, the rest kept
        after[3][1] ^= 1; // no edit, and factor 1 moved
        after[4][2] = 3; // a clean edit
        after[5][2] = 3; // an edit that also moved factor 0
        after[5][0] = 1;
        let rates = edit_rates(&edits, &before, &after);
        let got: Vec<_> = rates.iter().map(|r| (r.factor, r.pairs, r.succeeded, r.preserved)).collect();
        assert_eq!(got, [(FACTORS[0], 4, 2, 2), (FACTORS[2], 2, 2, 1)]);
        assert_eq!((rates[0].success(), rates[1].preservation()), (0.5, 0.5));
    }
}
