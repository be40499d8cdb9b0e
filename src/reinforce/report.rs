//! The loop's report: report.json (for programs) and report.md (for people),
//! and the short table the terminal shows at the end.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::evaluate::Evaluation;
use super::Variant;
use crate::probe::folder::CaptionSource;
use crate::probe::images::GenerationConfig;
use crate::probe::score::Weakness;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Baselines {
    pub random_attributes: Variant,
    pub group_balanced: Option<Variant>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvaluationReport {
    pub before: Evaluation,
    pub after: Variant,
    pub baselines: Baselines,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub command: String,
    pub seed: u64,
    pub device: String,
    pub classifier: PathBuf,
    pub generator: PathBuf,
    pub source: CaptionSource,
    pub generation: GenerationConfig,
    /// Every attribute the probe perturbed, worst first.
    pub weaknesses: Vec<Weakness>,
    pub reinforced: Vec<String>,
    /// The same probe images, scored by the reinforced classifier.
    pub weaknesses_after: Vec<Weakness>,
    pub evaluation: EvaluationReport,
    /// The fraction of the worst-group gap to the group-balanced bound that the loop closed.
    pub gap_closed: Option<f32>,
    pub images_generated: usize,
    pub fine_tune_steps: usize,
    pub probe_seconds: f64,
    pub reinforce_seconds: f64,
}

impl Report {
    /// (after − before) / (bound − before) of the worst-group accuracy, where the bound exceeds before.
    pub fn gap_closed(before: &Evaluation, after: &Evaluation, bound: Option<&Evaluation>) -> Option<f32> {
        let bound = bound?;
        let gap = bound.worst_group_accuracy - before.worst_group_accuracy;
        (gap > 0.0).then(|| (after.worst_group_accuracy - before.worst_group_accuracy) / gap)
    }

    fn rows(&self) -> Vec<(&'static str, &Evaluation, Option<usize>)> {
        let e = &self.evaluation;
        let mut rows = vec![
            ("before", &e.before, None),
            ("after (the loop)", &e.after.evaluation, Some(e.after.chosen_step)),
            (
                "baseline: random attributes",
                &e.baselines.random_attributes.evaluation,
                Some(e.baselines.random_attributes.chosen_step),
            ),
        ];
        if let Some(b) = &e.baselines.group_balanced {
            rows.push(("bound: group-balanced real data", &b.evaluation, Some(b.chosen_step)));
        }
        rows
    }

    /// The table the terminal shows at the end of `foil run`.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "weaknesses (flip rate of the classifier's prediction, 95% CI):");
        for w in self.weaknesses.iter().take(5) {
            let after = self.weaknesses_after.iter().find(|a| a.factor == w.factor).map(|a| a.stats.flip_rate);
            let _ = writeln!(
                out,
                "  {:<12} {:>5.1}% [{:>5.1}, {:>5.1}]  after reinforcing {}",
                w.factor,
                100.0 * w.stats.flip_rate,
                100.0 * w.stats.ci95[0],
                100.0 * w.stats.ci95[1],
                after.map_or("-".into(), |a| format!("{:.1}%", 100.0 * a))
            );
        }
        let _ = writeln!(out, "held-out real data:                average  worst group");
        for (name, e, _) in self.rows() {
            let _ = writeln!(
                out,
                "  {name:<31} {:>6.1}%  {:>6.1}%",
                100.0 * e.average_accuracy,
                100.0 * e.worst_group_accuracy
            );
        }
        if let Some(g) = self.gap_closed {
            let _ = writeln!(out, "the loop {}", gap_sentence(g, ""));
        }
        out
    }

    /// report.md.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let pct = |v: f32| if v.is_nan() { "–".to_string() } else { format!("{:.1}%", 100.0 * v) };
        let _ = writeln!(md, "# foil: probe, then reinforce\n");
        let source = match &self.source {
            CaptionSource::World { config } => format!(
                "the world {}",
                config.as_ref().map_or("(shipped default)".into(), |c| format!("`{}`", c.display()))
            ),
            CaptionSource::Csv { captions, lexicon, .. } => {
                format!("captions `{}` with lexicon `{}`", captions.display(), lexicon.display())
            }
        };
        let _ = writeln!(
            md,
            "Classifier `{}`, generator `{}`, captions from {source}. {} images generated ({}, {} steps, guidance {}), \
             seed {}, on {}. Probe {:.0} s, reinforce {:.0} s.\n\n```sh\n{}\n```\n",
            self.classifier.display(),
            self.generator.display(),
            self.images_generated,
            match self.generation.strength {
                Some(s) => format!("image-to-image at strength {s}"),
                None => "text-to-image, the two images of a pair from the same noise".into(),
            },
            self.generation.steps,
            self.generation.guidance,
            self.seed,
            self.device,
            self.probe_seconds,
            self.reinforce_seconds,
            self.command
        );
        let _ = writeln!(md, "## 1. What the probe found\n");
        let _ = writeln!(
            md,
            "Each caption was changed in one attribute at a time and both images were classified. The flip rate \
             counts pairs whose prediction changed, among pairs whose factual image the classifier got right \
             (the others are counted apart); intervals are 95% (Wilson for rates, bootstrap for the drop).\n"
        );
        let _ = writeln!(md, "| rank | attribute | flip rate [95% CI] | accuracy factual | accuracy counterfactual | drop in p(true class) | pairs | factual wrong |");
        let _ = writeln!(md, "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
        for (i, w) in self.weaknesses.iter().enumerate() {
            let s = &w.stats;
            let _ = writeln!(
                md,
                "| {} | {} | {} [{}, {}] | {} | {} | {:.3} [{:.3}, {:.3}] | {} | {} |",
                i + 1,
                w.factor,
                pct(s.flip_rate),
                pct(s.ci95[0]),
                pct(s.ci95[1]),
                pct(s.accuracy_factual),
                pct(s.accuracy_counterfactual),
                s.probability_drop,
                s.probability_drop_ci95[0],
                s.probability_drop_ci95[1],
                s.pairs,
                s.factual_wrong
            );
        }
        if let Some(top) = self.weaknesses.first() {
            let _ = writeln!(md, "\nBy the value `{}` was changed to:\n", top.factor);
            let _ = writeln!(md, "| to | flip rate [95% CI] | pairs |\n| --- | ---: | ---: |");
            for (value, s) in &top.by_value {
                if s.pairs > 0 {
                    let _ = writeln!(
                        md,
                        "| {value} | {} [{}, {}] | {} |",
                        pct(s.flip_rate),
                        pct(s.ci95[0]),
                        pct(s.ci95[1]),
                        s.pairs
                    );
                }
            }
            let _ =
                writeln!(md, "\nWorst flips first (factual | counterfactual, prediction and confidence under each):\n");
            for w in self.weaknesses.iter().take(3) {
                let _ = writeln!(md, "![{0}](grid-{0}.png)", w.factor);
            }
        }
        let _ = writeln!(md, "\n## 2. Reinforcing\n");
        let e = &self.evaluation;
        let _ = writeln!(
            md,
            "Fine-tuned on counterfactuals of **{}** labelled with the true class, mixed with original training \
             data; up to {} steps, the step kept chosen on held-out counterfactuals ({} kept, held-out accuracy {}). \
             The baselines had the same budget of images and steps.\n",
            self.reinforced.join(", "),
            self.fine_tune_steps,
            e.after.chosen_step,
            pct(e.after.held_out_accuracy)
        );
        let _ = writeln!(md, "## 3. On held-out real data with ground truth\n");
        let _ = writeln!(
            md,
            "| classifier | average accuracy | worst-group accuracy | steps kept |\n| --- | ---: | ---: | ---: |"
        );
        for (name, ev, step) in self.rows() {
            let _ = writeln!(
                md,
                "| {name} | {} | {} | {} |",
                pct(ev.average_accuracy),
                pct(ev.worst_group_accuracy),
                step.map_or("–".into(), |s| s.to_string())
            );
        }
        if let Some(g) = self.gap_closed {
            let _ = writeln!(md, "\nThe loop {}.", gap_sentence(g, "**"));
        }
        let _ = writeln!(
            md,
            "\nPer group (before → after):\n\n| group | images | before | after |\n| --- | ---: | ---: | ---: |"
        );
        for ((name, acc, n), (_, after, _)) in e.before.groups.iter().zip(&e.after.evaluation.groups) {
            let _ = writeln!(md, "| {name} | {n} | {} | {} |", pct(*acc), pct(*after));
        }
        let _ = writeln!(md, "\n## 4. The probe again, with the reinforced classifier\n");
        let _ = writeln!(md, "| attribute | flip rate before | after |\n| --- | ---: | ---: |");
        for w in &self.weaknesses {
            let after = self.weaknesses_after.iter().find(|a| a.factor == w.factor);
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                w.factor,
                pct(w.stats.flip_rate),
                after.map_or("–".into(), |a| pct(a.stats.flip_rate))
            );
        }
        md
    }
}

/// "closed N% of the worst-group gap…", the number between `strong` marks; a
/// loop past the bound (its fine-tuning budget is the same, so it can be) says so.
fn gap_sentence(gap_closed: f32, strong: &str) -> String {
    let past = if gap_closed > 1.0 { ", going past the bound" } else { "" };
    format!(
        "closed {strong}{:.0}%{strong} of the worst-group gap to the group-balanced bound{past}",
        100.0 * gap_closed
    )
}
