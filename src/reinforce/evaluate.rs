//! Evaluation on held-out real data with ground truth: accuracy over all
//! images and in the worst group (Waterbirds' measure). The data is a world's
//! balanced test split (groups: label × tied factor), or a user's test CSV with
//! image, label and group columns.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::finetune::Labelled;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::probe::images::{real_image, Classifier, Images};
use crate::probe::source::{read_csv, CaptionSet};
use crate::tensor::image::read_png;
use crate::world::groups::{group_name, Group, GroupAccuracy};
use crate::world::{Split, World};

/// Labelled images with a group each.
pub struct GroundTruth {
    pub data: Labelled,
    pub groups: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub average_accuracy: f32,
    pub worst_group_accuracy: f32,
    /// Every group: its name, accuracy and number of images.
    pub groups: Vec<(String, f32, usize)>,
}

impl GroundTruth {
    /// `n` renders of `world`'s balanced test split.
    pub fn world_test(world: &World, n: usize, seed: u64) -> Result<GroundTruth> {
        let scenes = world.sample(Split::Test, n, seed);
        let data = Labelled {
            images: Images {
                size: world.config().size,
                pixels: world.render_batch(&scenes, &Device::Cpu)?.to_vec_f32()?,
            },
            labels: scenes.iter().map(|s| world.label(s)).collect(),
        };
        Ok(GroundTruth { data, groups: scenes.iter().map(|s| group_name(world, s)).collect() })
    }

    /// A test CSV (image, label and group columns, images relative to its
    /// folder), with labels named as in `classes` (or class indices).
    pub fn from_csv(csv: &Path, classes: &[String]) -> Result<GroundTruth> {
        let bad = |detail: String| Error::File { file: csv.display().to_string(), detail };
        let rows = read_csv(csv)?;
        let header = rows.first().ok_or_else(|| bad("empty file (expected a header)".into()))?;
        let column = |name: &str| {
            header
                .iter()
                .position(|h| h.trim().eq_ignore_ascii_case(name))
                .ok_or_else(|| bad(format!("no '{name}' column")))
        };
        let (image, label, group) = (column("image").or_else(|_| column("file"))?, column("label")?, column("group")?);
        let folder = csv.parent().unwrap_or(Path::new("."));
        let mut pixels = Vec::new();
        let (mut labels, mut groups) = (Vec::new(), Vec::new());
        let mut size = 0;
        for row in &rows[1..] {
            let l = row[label].trim();
            let class = classes
                .iter()
                .position(|c| c == l)
                .ok_or_else(|| bad(format!("label '{l}' is not one of the classes {classes:?}")))?;
            let t = read_png(folder.join(row[image].trim()), &Device::Cpu)?;
            let d = t.dims();
            if d[2] != d[3] || (size != 0 && d[2] != size) {
                return Err(bad(format!("{}: every image must be square and of one size", row[image].trim())));
            }
            size = d[2];
            pixels.extend(t.to_vec_f32()?);
            labels.push(class);
            groups.push(row[group].trim().to_string());
        }
        if labels.is_empty() {
            return Err(bad("no rows after the header".into()));
        }
        Ok(GroundTruth { data: Labelled { images: Images { size, pixels }, labels }, groups })
    }

    /// `classifier`'s accuracy over all images and per group.
    pub fn evaluate(&self, classifier: &Classifier) -> Result<Evaluation> {
        let predicted = classifier.predict(&self.data.images)?;
        let mut by_group: BTreeMap<&str, Group> = BTreeMap::new();
        for ((p, l), g) in predicted.iter().zip(&self.data.labels).zip(&self.groups) {
            let group = by_group.entry(g).or_insert_with(|| Group { name: g.clone(), correct: 0, total: 0 });
            group.total += 1;
            group.correct += usize::from(p == l);
        }
        let accuracy = GroupAccuracy { groups: by_group.into_values().collect() };
        Ok(Evaluation {
            average_accuracy: accuracy.average(),
            worst_group_accuracy: accuracy.worst(),
            groups: accuracy.groups.iter().map(|g| (g.name.clone(), g.accuracy(), g.total)).collect(),
        })
    }
}

/// The real images of a caption set's subjects, labelled: a user's original training data.
pub fn subjects_data(set: &CaptionSet, world: Option<&World>) -> Result<Labelled> {
    let mut pixels = Vec::new();
    let mut size = 0;
    for subject in &set.subjects {
        let t = real_image(&subject.image, world, &Device::Cpu)?;
        if size != 0 && t.dims()[2] != size {
            return Err(Error::Usage("the subjects' images are not all of one size".into()));
        }
        size = t.dims()[2];
        pixels.extend(t.to_vec_f32()?);
    }
    Ok(Labelled { images: Images { size, pixels }, labels: set.subjects.iter().map(|s| s.label).collect() })
}
