//! The probe's measures, from the classifier's probabilities on factual and
//! counterfactual images: per attribute (and per value it was changed to),
//! accuracy on each side, the flip rate (the prediction changed between the two
//! images of a pair, among pairs whose factual image the classifier gets
//! right), and the mean drop in the true class's probability, each with a 95%
//! interval. Attributes rank by flip rate: the top ones are the weaknesses.

use serde::{Deserialize, Serialize};

use super::images::argmax;
use super::source::CaptionSet;
use super::stats::{bootstrap_mean, mean, wilson};
use crate::tensor::Rng;

/// The classifier on one pair.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairScore {
    pub subject: usize,
    pub attribute: usize,
    pub from: usize,
    pub to: usize,
    pub label: usize,
    pub factual_prediction: usize,
    pub factual_confidence: f32,
    pub factual_true_probability: f32,
    pub counterfactual_prediction: usize,
    pub counterfactual_confidence: f32,
    pub counterfactual_true_probability: f32,
}

impl PairScore {
    pub fn factual_correct(&self) -> bool {
        self.factual_prediction == self.label
    }

    pub fn flipped(&self) -> bool {
        self.factual_prediction != self.counterfactual_prediction
    }

    /// The drop in the true class's probability from the factual to the counterfactual image.
    pub fn drop(&self) -> f32 {
        self.factual_true_probability - self.counterfactual_true_probability
    }
}

/// The measures of a set of pairs (one attribute, or one value of it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairStats {
    pub pairs: usize,
    pub accuracy_factual: f32,
    pub accuracy_counterfactual: f32,
    /// Pairs whose factual image the classifier gets wrong: reported, not in the flip rate.
    pub factual_wrong: usize,
    pub flip_rate: f32,
    pub ci95: [f32; 2],
    pub probability_drop: f32,
    pub probability_drop_ci95: [f32; 2],
}

/// One attribute's measures, and those of each value it was changed to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Weakness {
    pub factor: String,
    #[serde(flatten)]
    pub stats: PairStats,
    pub by_value: Vec<(String, PairStats)>,
}

/// Every pair's score, in the caption set's pair order.
pub fn score_pairs(set: &CaptionSet, factual: &[Vec<f32>], counterfactual: &[Vec<f32>]) -> Vec<PairScore> {
    set.pairs()
        .zip(counterfactual)
        .map(|((s, p), cf)| {
            let f = &factual[s];
            let label = set.subjects[s].label;
            let (fp, cp) = (argmax(f), argmax(cf));
            PairScore {
                subject: s,
                attribute: p.attribute,
                from: p.from,
                to: p.to,
                label,
                factual_prediction: fp,
                factual_confidence: f[fp],
                factual_true_probability: f[label],
                counterfactual_prediction: cp,
                counterfactual_confidence: cf[cp],
                counterfactual_true_probability: cf[label],
            }
        })
        .collect()
}

/// The measures of `pairs`; `rng` draws the bootstrap.
pub fn pair_stats(pairs: &[&PairScore], rng: &mut Rng) -> PairStats {
    let n = pairs.len();
    let rate = |hits: usize, of: usize| if of == 0 { f32::NAN } else { hits as f32 / of as f32 };
    let right: Vec<&&PairScore> = pairs.iter().filter(|p| p.factual_correct()).collect();
    let flips = right.iter().filter(|p| p.flipped()).count();
    let drops: Vec<f32> = right.iter().map(|p| p.drop()).collect();
    PairStats {
        pairs: n,
        accuracy_factual: rate(right.len(), n),
        accuracy_counterfactual: rate(pairs.iter().filter(|p| p.counterfactual_prediction == p.label).count(), n),
        factual_wrong: n - right.len(),
        flip_rate: rate(flips, right.len()),
        ci95: wilson(flips, right.len()),
        probability_drop: mean(&drops),
        probability_drop_ci95: bootstrap_mean(&drops, 1000, rng),
    }
}

/// Every attribute's measures, worst first: by flip rate, then by probability drop.
pub fn weaknesses(set: &CaptionSet, scores: &[PairScore], seed: u64) -> Vec<Weakness> {
    let mut rng = Rng::new(seed);
    let mut out: Vec<Weakness> = set
        .attributes
        .iter()
        .enumerate()
        .map(|(a, attribute)| {
            let mine: Vec<&PairScore> = scores.iter().filter(|p| p.attribute == a).collect();
            let by_value = attribute
                .values
                .iter()
                .enumerate()
                .map(|(v, name)| {
                    let to: Vec<&PairScore> = mine.iter().copied().filter(|p| p.to == v).collect();
                    (name.clone(), pair_stats(&to, &mut rng))
                })
                .collect();
            Weakness { factor: attribute.name.clone(), stats: pair_stats(&mine, &mut rng), by_value }
        })
        .collect();
    let key = |w: &Weakness| (nan_low(w.stats.flip_rate), nan_low(w.stats.probability_drop));
    out.sort_by(|a, b| key(b).partial_cmp(&key(a)).unwrap_or(std::cmp::Ordering::Equal));
    out
}

/// Ranks a measure with no pairs last.
fn nan_low(v: f32) -> f32 {
    if v.is_nan() {
        f32::NEG_INFINITY
    } else {
        v
    }
}

/// The weaknesses to reinforce: the worst attribute, and every other whose flip
/// rate's interval reaches the worst one's (the probe cannot tell them apart).
pub fn chosen_weaknesses(ranked: &[Weakness]) -> Vec<String> {
    let Some(worst) = ranked.first() else { return vec![] };
    ranked
        .iter()
        .filter(|w| w.stats.ci95[1] >= worst.stats.ci95[0] && w.stats.flip_rate > 0.0)
        .map(|w| w.factor.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::source::{Attribute, Perturbation, RealImage, Subject};

    /// Two attributes over `n` subjects of class 0; changing attribute 0 flips
    /// the classifier's prediction on every third pair, attribute 1 never.
    fn probe(n: usize) -> (CaptionSet, Vec<Vec<f32>>, Vec<Vec<f32>>) {
        let attr = |name: &str| Attribute { name: name.into(), values: vec!["x".into(), "y".into()] };
        let pert = |attribute| Perturbation { attribute, from: 0, to: 1, caption: String::new() };
        let subjects = (0..n)
            .map(|i| Subject {
                caption: format!("{i}"),
                label: 0,
                image: RealImage::File(format!("{i}.png").into()),
                perturbations: vec![pert(0), pert(1)],
            })
            .collect();
        let set =
            CaptionSet { classes: vec!["a".into(), "b".into()], attributes: vec![attr("bg"), attr("size")], subjects };
        let mut rng = Rng::new(9);
        let mut p = |first: bool| {
            let q = 0.55 + 0.4 * rng.uniform();
            if first {
                vec![q, 1.0 - q]
            } else {
                vec![1.0 - q, q]
            }
        };
        let factual: Vec<Vec<f32>> = (0..n).map(|_| p(true)).collect();
        let cf: Vec<Vec<f32>> = (0..n).flat_map(|i| [p(i % 3 != 0), p(true)]).collect();
        (set, factual, cf)
    }

    #[test]
    fn the_attribute_that_flips_the_classifier_ranks_first_with_its_rate() {
        let (set, factual, cf) = probe(60);
        let scores = score_pairs(&set, &factual, &cf);
        assert_eq!(scores.len(), 120);
        let ranked = weaknesses(&set, &scores, 1);
        assert_eq!(ranked[0].factor, "bg");
        assert!((ranked[0].stats.flip_rate - 1.0 / 3.0).abs() < 1e-6);
        assert!(ranked[0].stats.ci95[0] < 1.0 / 3.0 && 1.0 / 3.0 < ranked[0].stats.ci95[1]);
        assert!(ranked[0].stats.probability_drop > 0.0);
        assert_eq!(ranked[1].stats.flip_rate, 0.0);
        assert!(ranked[1].stats.ci95[1] < ranked[0].stats.ci95[0]);
        assert_eq!(chosen_weaknesses(&ranked), ["bg"]);
        assert_eq!(ranked[0].by_value[1].1.pairs, 60);
    }

    #[test]
    fn pairs_the_classifier_already_gets_wrong_are_kept_out_of_the_flip_rate() {
        let (set, mut factual, cf) = probe(30);
        for f in factual.iter_mut().take(10) {
            f.reverse();
        }
        let scores = score_pairs(&set, &factual, &cf);
        let ranked = weaknesses(&set, &scores, 1);
        let bg = ranked.iter().find(|w| w.factor == "bg").unwrap();
        assert_eq!(bg.stats.factual_wrong, 10);
        assert!((bg.stats.accuracy_factual - 20.0 / 30.0).abs() < 1e-6);
        // Among the 20 right ones (subjects 10..30), every third flips: 6 or 7 of them.
        let flips = (10..30).filter(|i| i % 3 == 0).count();
        assert!((bg.stats.flip_rate - flips as f32 / 20.0).abs() < 1e-6);
    }
}
