//! The world layer: a small synthetic scene model with known causes. Seeded
//! exogenous noise and factor values (shape, the label; colour; a textured
//! background; size; position) give a rendered RGB image and a caption from a
//! small grammar; a counterfactual is the same noise with one factor set.
//! Splits: training (one factor tied to the label, as configured) and
//! validation / test (exactly balanced over the groups label × tied factor).

mod config;
pub mod groups;
pub mod measure;
pub mod oracle;
mod render;
mod scene;
pub mod sd;

pub use config::{Tie, WorldConfig};
pub use render::{Background, Shape};
pub use scene::{Noise, Scene, FACTORS};

use render::Look;

use rayon::prelude::*;

use crate::device::Device;
use crate::error::Result;
use crate::tensor::{Rng, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Validation,
    Test,
}

pub struct World {
    config: WorldConfig,
}

impl World {
    pub fn new(config: WorldConfig) -> World {
        World { config }
    }

    pub fn config(&self) -> &WorldConfig {
        &self.config
    }

    /// This world with no factor tied to another (every factor drawn independently in every split).
    pub fn balanced(&self) -> World {
        World::new(WorldConfig { tie: None, ..self.config.clone() })
    }

    /// The value names of `factor` (an index into [`FACTORS`]).
    pub fn values(&self, factor: usize) -> &[String] {
        &self.config.values[factor]
    }

    /// The class of `scene`: its value of the label factor.
    pub fn label(&self, scene: &Scene) -> usize {
        scene.values[self.config.label]
    }

    /// `n` scenes of `split`, the same for the same seed. Each split draws from
    /// its own stream, so the splits never share a scene's noise.
    pub fn sample(&self, split: Split, n: usize, seed: u64) -> Vec<Scene> {
        let stream = match split {
            Split::Train => 0x7261_696e,
            Split::Validation => 0x7661_6c69,
            Split::Test => 0x7465_7374,
        };
        let mut rng = Rng::new(seed ^ stream);
        let c = &self.config;
        let counts: Vec<usize> = c.values.iter().map(Vec::len).collect();
        let tied = c.tie.map(|(f, _)| f);
        let per_label = tied.map_or(1, |f| counts[f]);
        let groups = counts[c.label] * per_label;
        // A balanced split visits the groups in rounds, each a fresh shuffle of all of them: n scenes
        // give every group n / groups or one more, and the groups of a partial round are random.
        let mut cycle = Vec::with_capacity(n + groups);
        while cycle.len() < n {
            let mut round: Vec<usize> = (0..groups).collect();
            rng.shuffle(&mut round);
            cycle.extend(round);
        }
        (0..n)
            .map(|i| {
                let mut values = [0; FACTORS.len()];
                for (f, v) in values.iter_mut().enumerate() {
                    *v = rng.below(counts[f] as u32) as usize;
                }
                match (split, c.tie) {
                    (Split::Train, Some((f, strength))) => {
                        let tied = values[c.label] % counts[f];
                        if (rng.uniform() as f64) < strength || counts[f] == 1 {
                            values[f] = tied;
                        } else {
                            // One of the other values, uniformly.
                            let other = rng.below(counts[f] as u32 - 1) as usize;
                            values[f] = if other >= tied { other + 1 } else { other };
                        }
                    }
                    (Split::Train, None) => {}
                    _ => {
                        values[c.label] = cycle[i] / per_label;
                        if let Some(f) = tied {
                            values[f] = cycle[i] % per_label;
                        }
                    }
                }
                Scene { values, noise: Noise::sample(&mut rng) }
            })
            .collect()
    }

    /// The image of `scene`: f32 RGB (3, size, size) in [0, 1].
    pub fn render(&self, scene: &Scene) -> Vec<f32> {
        let name = |f: usize| self.config.values[f][scene.values[f]].as_str();
        let shape = match name(0) {
            "circle" => Shape::Circle,
            "square" => Shape::Square,
            "triangle" => Shape::Triangle,
            _ => Shape::Star,
        };
        let colour = match name(1) {
            "red" => [0.85, 0.1, 0.1],
            "green" => [0.1, 0.75, 0.15],
            "blue" => [0.1, 0.2, 0.9],
            "yellow" => [0.95, 0.85, 0.1],
            "purple" => [0.6, 0.15, 0.75],
            _ => [0.95, 0.5, 0.05],
        };
        let background = match name(2) {
            "water" => Background::Water,
            "grass" => Background::Grass,
            "sand" => Background::Sand,
            _ => Background::Sky,
        };
        let radius = if name(3) == "small" { 0.17 } else { 0.3 };
        let x = match name(4) {
            "left" => 0.3,
            "center" => 0.5,
            _ => 0.7,
        };
        render::render(&Look { shape, colour, background, radius, centre: (x, 0.5) }, scene, self.config.size)
    }

    /// The renders of `scenes` (in parallel): (n, 3, size, size) in [0, 1] on `device`.
    pub fn render_batch(&self, scenes: &[Scene], device: &Device) -> Result<Tensor> {
        let s = self.config.size;
        let pixels: Vec<Vec<f32>> = scenes.par_iter().map(|scene| self.render(scene)).collect();
        Tensor::from_f32(pixels.concat(), [scenes.len(), 3, s, s], device)
    }

    /// The scene's caption: a template and wording chosen by its noise, every
    /// factor named ("a photo of a small red circle on grass on the left").
    pub fn caption(&self, scene: &Scene) -> String {
        let w = scene.noise.wording as usize;
        let word = |f: usize| {
            let options = &self.config.words[f][scene.values[f]];
            options[(w >> (4 + 3 * f)) % options.len()].as_str()
        };
        let (shape, colour, background, size, position) = (word(0), word(1), word(2), word(3), word(4));
        let text = match w % 3 {
            0 => format!("a photo of a {size} {colour} {shape} {background} {position}"),
            1 => format!("a {size} {colour} {shape} {position}, {background}"),
            _ => format!("an image of a {colour} {shape}, {size}, {background} {position}"),
        };
        with_articles(&text)
    }
}

/// "a" before a vowel becomes "an" ("a orange star" → "an orange star").
fn with_articles(text: &str) -> String {
    let words: Vec<&str> = text.split(' ').collect();
    let mut out = Vec::with_capacity(words.len());
    for (i, w) in words.iter().enumerate() {
        let next_vowel = words.get(i + 1).and_then(|n| n.chars().next()).is_some_and(|c| "aeiou".contains(c));
        out.push(match *w {
            "a" if next_vowel => "an",
            "an" if !next_vowel => "a",
            other => other,
        });
    }
    out.join(" ")
}
