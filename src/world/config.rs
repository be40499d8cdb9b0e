//! A world's config (JSON): the values of each factor, the words captions use
//! for them, the image size, which factor is the label, and which factor the
//! training split ties to the label and how strongly (Waterbirds-style bias).
//!
//! ```json
//! { "size": 32, "label": "shape", "tie": { "factor": "background", "strength": 0.95 },
//!   "factors": { "shape": ["circle", "square", "triangle", "star"], "background": ["water", "grass"] },
//!   "words": { "water": ["on water", "over the water"] } }
//! ```
//! Factors left out keep their default values; values are the renderer's names.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::scene::FACTORS;
use crate::error::{Error, Result};

/// Every value the renderer draws, per factor, with its default caption words.
pub(super) const KNOWN: [&[(&str, &[&str])]; FACTORS.len()] = [
    &[("circle", &["circle"]), ("square", &["square"]), ("triangle", &["triangle"]), ("star", &["star"])],
    &[
        ("red", &["red"]),
        ("green", &["green"]),
        ("blue", &["blue"]),
        ("yellow", &["yellow"]),
        ("purple", &["purple"]),
        ("orange", &["orange"]),
    ],
    &[
        ("water", &["on water", "over the water"]),
        ("grass", &["on grass", "on the grass"]),
        ("sand", &["on sand", "on the sand"]),
        ("sky", &["in the sky", "against the sky"]),
    ],
    &[("small", &["small", "little"]), ("large", &["large", "big"])],
    &[("left", &["on the left"]), ("center", &["in the middle"]), ("right", &["on the right"])],
];

/// The training split's bias: `factor` takes the value tied to the label
/// (value index = label index modulo its value count) with probability `strength`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tie {
    pub factor: String,
    pub strength: f64,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_size")]
    size: usize,
    #[serde(default = "default_label")]
    label: String,
    tie: Option<Tie>,
    #[serde(default)]
    factors: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    words: BTreeMap<String, Vec<String>>,
}

fn default_size() -> usize {
    32
}

fn default_label() -> String {
    "shape".into()
}

/// A checked config: per factor (in [`FACTORS`] order) its values' names and words.
#[derive(Clone, Debug, PartialEq)]
pub struct WorldConfig {
    pub size: usize,
    pub label: usize,
    pub tie: Option<(usize, f64)>,
    pub values: Vec<Vec<String>>,
    pub words: Vec<Vec<Vec<String>>>,
}

impl Default for WorldConfig {
    /// The shipped world: every value, 32×32, background tied to shape at 0.95.
    fn default() -> WorldConfig {
        let tie = Some(Tie { factor: "background".into(), strength: 0.95 });
        let raw = RawConfig { size: 32, label: default_label(), tie, factors: BTreeMap::new(), words: BTreeMap::new() };
        WorldConfig::check(raw).expect("the default world is valid")
    }
}

impl WorldConfig {
    pub fn from_file(path: &Path) -> Result<WorldConfig> {
        let bad = |detail: String| Error::File { file: path.display().to_string(), detail };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        WorldConfig::from_json(&text).map_err(|e| match e {
            Error::Usage(detail) => bad(detail),
            other => other,
        })
    }

    pub fn from_json(text: &str) -> Result<WorldConfig> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| Error::Usage(format!("world config: {e}")))?;
        WorldConfig::check(raw)
    }

    fn check(raw: RawConfig) -> Result<WorldConfig> {
        let usage = |m: String| Err(Error::Usage(format!("world config: {m}")));
        let factor = |name: &str| FACTORS.iter().position(|f| *f == name);
        for name in raw.factors.keys() {
            if factor(name).is_none() {
                return usage(format!("unknown factor '{name}' (factors: {})", FACTORS.join(", ")));
            }
        }
        let mut values = vec![];
        let mut words = vec![];
        for (f, known) in FACTORS.iter().zip(KNOWN) {
            let chosen: Vec<String> = match raw.factors.get(*f) {
                Some(v) => v.clone(),
                None => known.iter().map(|(n, _)| n.to_string()).collect(),
            };
            if chosen.len() < 2 && *f == raw.label {
                return usage(format!("the label '{f}' needs at least two values"));
            }
            if chosen.is_empty() {
                return usage(format!("factor '{f}' has no values"));
            }
            let mut w = vec![];
            for (i, v) in chosen.iter().enumerate() {
                let Some((_, default)) = known.iter().find(|(n, _)| n == v) else {
                    let names: Vec<&str> = known.iter().map(|(n, _)| *n).collect();
                    return usage(format!("'{v}' is not a {f} foil draws ({})", names.join(", ")));
                };
                if chosen[..i].contains(v) {
                    return usage(format!("{f} value '{v}' is listed twice"));
                }
                w.push(match raw.words.get(v) {
                    Some(phrases) if !phrases.is_empty() => phrases.clone(),
                    Some(_) => return usage(format!("no words for '{v}'")),
                    None => default.iter().map(|s| s.to_string()).collect(),
                });
            }
            values.push(chosen);
            words.push(w);
        }
        for v in raw.words.keys() {
            if !KNOWN.iter().any(|k| k.iter().any(|(n, _)| n == v)) {
                return usage(format!("words for '{v}', which is no factor's value"));
            }
        }
        let Some(label) = factor(&raw.label) else {
            return usage(format!("unknown label factor '{}'", raw.label));
        };
        let tie = match raw.tie {
            None => None,
            Some(t) => {
                let Some(f) = factor(&t.factor) else { return usage(format!("unknown tied factor '{}'", t.factor)) };
                if f == label {
                    return usage("the tied factor cannot be the label itself".into());
                }
                if !(0.0..=1.0).contains(&t.strength) {
                    return usage(format!("tie strength {} is outside [0, 1]", t.strength));
                }
                Some((f, t.strength))
            }
        };
        if !(8..=256).contains(&raw.size) {
            return usage(format!("size {} is outside 8..=256", raw.size));
        }
        Ok(WorldConfig { size: raw.size, label, tie, values, words })
    }
}
