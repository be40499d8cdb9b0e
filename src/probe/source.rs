//! What the probe perturbs: captions of the task's images, each with its true
//! class, the value it states of each attribute, and one counterfactual caption
//! per other value of each attribute (one attribute changed at a time).
//!
//! Two sources: the world's grammar (the scenes of its training split, whose
//! counterfactuals keep the scene's noise, so the caption's wording stays), and
//! a user's metadata CSV (image, label, caption) with an attribute lexicon
//! (JSON: attribute → its alternative phrases), where the phrase a caption
//! contains is replaced by each of the others.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::world::{Scene, Split, World, FACTORS};

/// An attribute captions can state, and the names of its values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attribute {
    pub name: String,
    pub values: Vec<String>,
}

/// One caption changed in one attribute.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Perturbation {
    /// Index into the source's attributes.
    pub attribute: usize,
    /// The value the factual caption states, and the one it is changed to.
    pub from: usize,
    pub to: usize,
    pub caption: String,
}

/// Where a subject's real image comes from, for image-to-image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RealImage {
    /// Rendered from the world's scene.
    Scene(Scene),
    /// A PNG file.
    File(PathBuf),
}

/// A factual caption with its true class and its counterfactuals.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Subject {
    pub caption: String,
    pub label: usize,
    pub image: RealImage,
    pub perturbations: Vec<Perturbation>,
}

/// The captions of a task: the class names, the attributes, the subjects.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CaptionSet {
    pub classes: Vec<String>,
    pub attributes: Vec<Attribute>,
    pub subjects: Vec<Subject>,
}

impl CaptionSet {
    /// `n` scenes of `world`'s training split (drawn with `seed`): the
    /// attributes are every factor but the label, each scene perturbed to every
    /// other value of each.
    pub fn from_world(world: &World, n: usize, seed: u64) -> CaptionSet {
        let label = world.config().label;
        let factors: Vec<usize> = (0..FACTORS.len()).filter(|&f| f != label).collect();
        let attributes = factors
            .iter()
            .map(|&f| Attribute { name: FACTORS[f].to_string(), values: world.values(f).to_vec() })
            .collect();
        let subjects = world
            .sample(Split::Train, n, seed)
            .into_iter()
            .map(|scene| {
                let perturbations = factors
                    .iter()
                    .enumerate()
                    .flat_map(|(a, &f)| {
                        let scene = &scene;
                        (0..world.values(f).len()).filter(move |&v| v != scene.values[f]).map(move |v| Perturbation {
                            attribute: a,
                            from: scene.values[f],
                            to: v,
                            caption: world.caption(&scene.with(f, v)),
                        })
                    })
                    .collect();
                Subject {
                    caption: world.caption(&scene),
                    label: world.label(&scene),
                    perturbations,
                    image: RealImage::Scene(scene),
                }
            })
            .collect();
        CaptionSet { classes: world.values(label).to_vec(), attributes, subjects }
    }

    /// The rows of the metadata CSV `csv` (a header naming `image` or `file`,
    /// `label` and `caption` columns; image paths relative to the CSV's folder)
    /// perturbed by the lexicon JSON `lexicon`. A label is a class index, or a
    /// name: one of `classes` (the classifier's names in its output order), or
    /// with no `classes` one of the sorted distinct labels. A caption that
    /// contains none of an attribute's phrases is not perturbed in it.
    pub fn from_csv(csv: &Path, lexicon: &Path, classes: &[String]) -> Result<CaptionSet> {
        let attributes = read_lexicon(lexicon)?;
        let rows = read_csv(csv)?;
        let bad = |detail: String| Error::File { file: csv.display().to_string(), detail };
        let header = rows.first().ok_or_else(|| bad("empty file (expected a header)".into()))?;
        let column = |names: &[&str]| {
            header
                .iter()
                .position(|h| names.contains(&h.trim().to_lowercase().as_str()))
                .ok_or_else(|| bad(format!("no '{}' column in the header", names[0])))
        };
        let (image, label, caption) = (column(&["image", "file"])?, column(&["label"])?, column(&["caption"])?);
        let body = &rows[1..];
        if body.is_empty() {
            return Err(bad("no rows after the header".into()));
        }
        let labels: Vec<&str> = body.iter().map(|r| r[label].trim()).collect();
        let numeric = labels.iter().all(|l| l.parse::<usize>().is_ok());
        let classes: Vec<String> = if !classes.is_empty() {
            classes.to_vec()
        } else if numeric {
            let n = labels.iter().filter_map(|l| l.parse::<usize>().ok()).max().unwrap_or(0) + 1;
            (0..n).map(|i| i.to_string()).collect()
        } else {
            let distinct: std::collections::BTreeSet<&str> = labels.iter().copied().collect();
            distinct.into_iter().map(String::from).collect()
        };
        let folder = csv.parent().unwrap_or(Path::new("."));
        let subjects = body
            .iter()
            .zip(&labels)
            .map(|(row, l)| {
                let class = classes
                    .iter()
                    .position(|c| c == l)
                    .or_else(|| l.parse::<usize>().ok().filter(|&i| i < classes.len()))
                    .ok_or_else(|| bad(format!("label '{l}' is not one of the classes {classes:?}")))?;
                let text = row[caption].trim().to_string();
                Ok(Subject {
                    perturbations: perturb(&text, &attributes),
                    caption: text,
                    label: class,
                    image: RealImage::File(folder.join(row[image].trim())),
                })
            })
            .collect::<Result<_>>()?;
        Ok(CaptionSet { classes, attributes, subjects })
    }

    /// Every perturbation, with the index of its subject.
    pub fn pairs(&self) -> impl Iterator<Item = (usize, &Perturbation)> {
        self.subjects.iter().enumerate().flat_map(|(s, subject)| subject.perturbations.iter().map(move |p| (s, p)))
    }
}

/// The lexicon: a JSON object of attribute → its phrases (at least two each).
fn read_lexicon(path: &Path) -> Result<Vec<Attribute>> {
    let bad = |detail: String| Error::File { file: path.display().to_string(), detail };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let raw: BTreeMap<String, Vec<String>> = serde_json::from_str(&text)
        .map_err(|e| bad(format!("expected {{\"attribute\": [\"phrase\", ...], ...}}: {e}")))?;
    if raw.is_empty() {
        return Err(bad("no attributes".into()));
    }
    raw.into_iter()
        .map(|(name, values)| {
            if values.len() < 2 || values.iter().any(|v| v.trim().is_empty()) {
                return Err(bad(format!("attribute '{name}' needs at least two non-empty phrases")));
            }
            Ok(Attribute { name, values })
        })
        .collect()
}

/// One counterfactual caption per other phrase of each attribute whose phrase
/// `caption` contains (as whole words; the longest phrase when several match).
fn perturb(caption: &str, attributes: &[Attribute]) -> Vec<Perturbation> {
    let mut out = Vec::new();
    for (a, attribute) in attributes.iter().enumerate() {
        let found = attribute
            .values
            .iter()
            .enumerate()
            .filter_map(|(v, phrase)| find_words(caption, phrase).map(|at| (v, at, phrase.len())))
            .max_by_key(|&(_, _, len)| len);
        if let Some((from, at, len)) = found {
            for (to, phrase) in attribute.values.iter().enumerate().filter(|&(to, _)| to != from) {
                let caption = format!("{}{}{}", &caption[..at], phrase, &caption[at + len..]);
                out.push(Perturbation { attribute: a, from, to, caption });
            }
        }
    }
    out
}

/// The byte offset of `phrase` in `text` as whole words (case-insensitive).
fn find_words(text: &str, phrase: &str) -> Option<usize> {
    let (lower, needle) = (text.to_lowercase(), phrase.to_lowercase());
    if lower.len() != text.len() {
        return None; // offsets would not map back onto `text`
    }
    let word = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
    lower
        .match_indices(&needle)
        .map(|(at, _)| at)
        .find(|&at| !word(lower[..at].chars().next_back()) && !word(lower[at + needle.len()..].chars().next()))
}

/// A CSV's rows as fields: commas separate, double quotes enclose a field (a
/// doubled quote inside is one quote). Every row must have the header's width.
pub fn read_csv(path: &Path) -> Result<Vec<Vec<String>>> {
    let bad = |detail: String| Error::File { file: path.display().to_string(), detail };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let mut rows = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let mut fields = vec![String::new()];
        let mut quoted = false;
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '"' if quoted && chars.peek() == Some(&'"') => {
                    chars.next();
                    fields.last_mut().expect("one field").push('"');
                }
                '"' => quoted = !quoted,
                ',' if !quoted => fields.push(String::new()),
                _ => fields.last_mut().expect("one field").push(c),
            }
        }
        if quoted {
            return Err(bad(format!("line {}: unclosed quote", n + 1)));
        }
        if let Some(width) = rows.first().map(Vec::len) {
            if fields.len() != width {
                return Err(bad(format!("line {}: {} fields, the header has {width}", n + 1, fields.len())));
            }
        }
        rows.push(fields);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::WorldConfig;

    fn attributes() -> Vec<Attribute> {
        let attr = |name: &str, values: &[&str]| Attribute {
            name: name.into(),
            values: values.iter().map(|v| v.to_string()).collect(),
        };
        vec![attr("background", &["on water", "on grass", "in a forest"]), attr("colour", &["red", "green"])]
    }

    #[test]
    fn a_caption_is_perturbed_in_each_attribute_it_states() {
        let p = perturb("A red bird on water, flying", &attributes());
        let captions: Vec<&str> = p.iter().map(|p| p.caption.as_str()).collect();
        assert_eq!(
            captions,
            ["A red bird on grass, flying", "A red bird in a forest, flying", "A green bird on water, flying"]
        );
        assert_eq!((p[0].attribute, p[0].from, p[0].to), (0, 0, 1));
        assert_eq!((p[2].attribute, p[2].from, p[2].to), (1, 0, 1));
        // Whole words only: "reddish" is not "red", and an absent attribute is not perturbed.
        assert!(perturb("a reddish bird", &attributes()).is_empty());
    }

    #[test]
    fn the_csv_reader_handles_quotes_and_refuses_ragged_rows() {
        let dir = std::env::temp_dir().join(format!("foil-source-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let csv = dir.join("meta.csv");
        let lexicon = dir.join("lexicon.json");
        std::fs::write(
            &csv,
            "file,caption,label\na.png,\"a red bird, on water\",landbird\nb.png,a green bird on grass,waterbird\n",
        )
        .unwrap();
        std::fs::write(&lexicon, r#"{"background": ["on water", "on grass"], "colour": ["red", "green"]}"#).unwrap();
        let set = CaptionSet::from_csv(&csv, &lexicon, &[]).unwrap();
        let named = ["waterbird".to_string(), "landbird".to_string()];
        assert_eq!(CaptionSet::from_csv(&csv, &lexicon, &named).unwrap().subjects[1].label, 0);
        assert_eq!(set.classes, ["landbird", "waterbird"]);
        assert_eq!(set.subjects[0].caption, "a red bird, on water");
        assert_eq!(set.subjects[1].label, 1);
        assert_eq!(set.subjects[0].image, RealImage::File(dir.join("a.png")));
        assert_eq!(set.pairs().count(), 4);
        std::fs::write(&csv, "file,caption,label\na.png,a bird\n").unwrap();
        assert!(CaptionSet::from_csv(&csv, &lexicon, &[]).unwrap_err().to_string().contains("2 fields"));
        std::fs::write(&lexicon, r#"{"background": ["on water"]}"#).unwrap();
        assert!(CaptionSet::from_csv(&csv, &lexicon, &[]).unwrap_err().to_string().contains("two"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn world_captions_change_one_factor_and_keep_the_wording() {
        let world = World::new(WorldConfig::default());
        let set = CaptionSet::from_world(&world, 5, 3);
        assert_eq!(set.attributes.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(), FACTORS[1..]);
        let per_subject: usize = set.attributes.iter().map(|a| a.values.len() - 1).sum();
        for subject in &set.subjects {
            assert_eq!(subject.perturbations.len(), per_subject);
            let RealImage::Scene(scene) = &subject.image else { panic!("a world subject has a scene") };
            for p in &subject.perturbations {
                let f = p.attribute + 1;
                assert_eq!(p.from, scene.values[f]);
                assert_eq!(p.caption, world.caption(&scene.with(f, p.to)));
                assert_ne!(p.caption, subject.caption);
            }
        }
    }
}
