//! A world's data sets for classifiers, and accuracy by group (label × tied
//! factor, as Waterbirds reports it): the average over images and the worst group.

use super::{Scene, Split, World};
use crate::device::Device;
use crate::error::Result;
use crate::train::data::Dataset;

impl World {
    /// `n` scenes of `split` rendered and labelled with the label factor, and the scenes.
    pub fn dataset(&self, split: Split, n: usize, seed: u64) -> Result<(Dataset, Vec<Scene>)> {
        let scenes = self.sample(split, n, seed);
        let pixels = self.render_batch(&scenes, &Device::Cpu)?.to_vec_f32()?;
        let labels = scenes.iter().map(|s| self.label(s) as u32).collect();
        let classes = self.values(self.config().label).to_vec();
        Ok((Dataset::from_pixels(pixels, labels, self.config().size, classes)?, scenes))
    }
}

/// One group's count of images and of correct predictions.
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    /// "circle / water": the label's value and the tied factor's.
    pub name: String,
    pub correct: usize,
    pub total: usize,
}

impl Group {
    pub fn accuracy(&self) -> f32 {
        self.correct as f32 / self.total.max(1) as f32
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct GroupAccuracy {
    pub groups: Vec<Group>,
}

impl GroupAccuracy {
    /// Accuracy over all images.
    pub fn average(&self) -> f32 {
        let correct: usize = self.groups.iter().map(|g| g.correct).sum();
        let total: usize = self.groups.iter().map(|g| g.total).sum();
        correct as f32 / total.max(1) as f32
    }

    /// The lowest accuracy of a group with images.
    pub fn worst(&self) -> f32 {
        self.groups.iter().filter(|g| g.total > 0).map(Group::accuracy).fold(1.0, f32::min)
    }
}

/// The group of `scene`: "circle / water" (label / tied factor), or the label alone when the world ties nothing.
pub fn group_name(world: &World, scene: &Scene) -> String {
    let tied = world.config().tie.map(|(f, _)| scene.values[f]);
    name_of(world, world.label(scene), tied)
}

fn name_of(world: &World, label: usize, tied_value: Option<usize>) -> String {
    let c = world.config();
    let label = &world.values(c.label)[label];
    match (c.tie, tied_value) {
        (Some((f, _)), Some(v)) => format!("{label} / {}", world.values(f)[v]),
        _ => label.clone(),
    }
}

/// Accuracy per group of `scenes` for `predictions` (a class each). Groups are
/// label × tied factor, or the labels alone when the world ties nothing; every
/// group is listed, in (label, tied value) order, even one with no scenes.
pub fn group_accuracy(world: &World, scenes: &[Scene], predictions: &[u32]) -> GroupAccuracy {
    let c = world.config();
    let tied = c.tie.map(|(f, _)| f);
    let per_label = tied.map_or(1, |f| world.values(f).len());
    let mut groups: Vec<Group> = (0..world.values(c.label).len() * per_label)
        .map(|g| Group { name: name_of(world, g / per_label, tied.map(|_| g % per_label)), correct: 0, total: 0 })
        .collect();
    for (scene, &p) in scenes.iter().zip(predictions) {
        let label = world.label(scene);
        let g = label * per_label + tied.map_or(0, |f| scene.values[f]);
        groups[g].total += 1;
        groups[g].correct += usize::from(p as usize == label);
    }
    GroupAccuracy { groups }
}
