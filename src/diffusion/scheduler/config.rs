//! scheduler_config.json as diffusers writes it. Every field is optional: a field the file
//! leaves out takes the default of the scheduler class it is loaded into, as diffusers'
//! `from_config` does, so one file serves every scheduler kind.

use std::path::Path;

use serde::{Deserialize, Deserializer};

use super::schedule;
use crate::error::{file_err, Error, Result};

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,
    pub num_train_timesteps: Option<usize>,
    #[serde(deserialize_with = "float")]
    pub beta_start: Option<f64>,
    #[serde(deserialize_with = "float")]
    pub beta_end: Option<f64>,
    pub beta_schedule: Option<String>,
    pub trained_betas: Option<Vec<f64>>,
    pub prediction_type: Option<String>,
    pub timestep_spacing: Option<String>,
    pub steps_offset: Option<i64>,
    pub clip_sample: Option<bool>,
    #[serde(deserialize_with = "float")]
    pub clip_sample_range: Option<f64>,
    pub set_alpha_to_one: Option<bool>,
    pub skip_prk_steps: Option<bool>,
    pub variance_type: Option<String>,
    pub rescale_betas_zero_snr: Option<bool>,
    pub thresholding: Option<bool>,
    pub interpolation_type: Option<String>,
    pub timestep_type: Option<String>,
    pub use_karras_sigmas: Option<bool>,
    pub use_exponential_sigmas: Option<bool>,
    pub use_beta_sigmas: Option<bool>,
    pub use_lu_lambdas: Option<bool>,
    pub use_flow_sigmas: Option<bool>,
    #[serde(deserialize_with = "float")]
    pub sigma_min: Option<f64>,
    #[serde(deserialize_with = "float")]
    pub sigma_max: Option<f64>,
    pub final_sigmas_type: Option<String>,
    pub solver_order: Option<usize>,
    pub algorithm_type: Option<String>,
    pub solver_type: Option<String>,
    pub lower_order_final: Option<bool>,
    pub euler_at_final: Option<bool>,
    #[serde(deserialize_with = "float")]
    pub lambda_min_clipped: Option<f64>,
    /// DDIM's η (0: deterministic, 1: DDPM-like). Not a diffusers config field (diffusers
    /// takes it as a pipeline argument); set it here before `build`.
    #[serde(deserialize_with = "float")]
    pub eta: Option<f64>,
    /// Where the config came from, named in errors.
    #[serde(skip)]
    pub source: String,
}

/// A float that may also be written as Python's json writes non-finite values.
fn float<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Value {
        Number(f64),
        Word(String),
    }
    Ok(match Option::<Value>::deserialize(d)? {
        None => None,
        Some(Value::Number(v)) => Some(v),
        Some(Value::Word(w)) => Some(match w.as_str() {
            "Infinity" => f64::INFINITY,
            "-Infinity" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            other => return Err(serde::de::Error::custom(format!("expected a number, found \"{other}\""))),
        }),
    })
}

/// `text` with the bare NaN / Infinity / -Infinity that Python's json module writes (and JSON
/// does not allow) quoted, so serde reads them as strings that `float` turns back into numbers.
fn quote_non_finite(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            in_string = escaped || c != '"';
            escaped = !escaped && c == '\\';
        } else if c == '"' {
            in_string = true;
        } else if let Some(word) = ["-Infinity", "Infinity", "NaN"].into_iter().find(|w| rest.starts_with(w)) {
            out.push('"');
            out.push_str(word);
            out.push('"');
            rest = &rest[word.len()..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// How the model output is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Prediction {
    /// The noise ε.
    Epsilon,
    /// The clean sample x0.
    Sample,
    /// The velocity v = α·ε − σ·x0 (Salimans & Ho 2022; Stable Diffusion 2's 768 models).
    V,
}

/// How inference timesteps are spread over the training ones (Table 2 of "Common Diffusion
/// Noise Schedules and Sample Steps are Flawed").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Spacing {
    Leading,
    Trailing,
    Linspace,
}

pub(crate) const SPACINGS: [(&str, Spacing); 3] =
    [("leading", Spacing::Leading), ("trailing", Spacing::Trailing), ("linspace", Spacing::Linspace)];

/// The value a sigma schedule ends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FinalSigma {
    Zero,
    SigmaMin,
}

pub(crate) const FINAL_SIGMAS: [(&str, FinalSigma); 2] =
    [("zero", FinalSigma::Zero), ("sigma_min", FinalSigma::SigmaMin)];

impl SchedulerConfig {
    /// Reads scheduler_config.json (or any file of that format).
    pub fn from_file(path: &Path) -> Result<SchedulerConfig> {
        let text = std::fs::read_to_string(path).or_else(|e| file_err(path, e.to_string()))?;
        SchedulerConfig::from_json(&text, &path.display().to_string())
    }

    /// Parses the JSON text of a scheduler config; `source` names it in errors.
    pub fn from_json(text: &str, source: &str) -> Result<SchedulerConfig> {
        let mut config: SchedulerConfig = serde_json::from_str(&quote_non_finite(text))
            .map_err(|e| Error::File { file: source.to_string(), detail: format!("not a scheduler config: {e}") })?;
        config.source = source.to_string();
        Ok(config)
    }

    /// An error about this config's option `option`.
    pub(crate) fn error(&self, option: &str, detail: impl std::fmt::Display) -> Error {
        let file = if self.source.is_empty() { "scheduler config".to_string() } else { self.source.clone() };
        Error::File { file, detail: format!("{option}: {detail}") }
    }

    /// The value of the string option `option` (or `default` when absent) among `choices`.
    pub(crate) fn choice<T: Copy>(
        &self,
        option: &str,
        value: &Option<String>,
        default: &str,
        choices: &[(&str, T)],
    ) -> Result<T> {
        let v = value.as_deref().unwrap_or(default);
        choices.iter().find(|(name, _)| *name == v).map(|(_, t)| *t).ok_or_else(|| {
            let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
            self.error(option, format!("\"{v}\" is not supported (supported: {})", names.join(", ")))
        })
    }

    /// Fails when the boolean option `option`, which foil does not implement, is on.
    pub(crate) fn unsupported_flag(&self, option: &str, value: Option<bool>) -> Result<()> {
        match value {
            Some(true) => Err(self.error(option, "true is not supported")),
            _ => Ok(()),
        }
    }

    pub(crate) fn prediction(&self, choices: &[Prediction]) -> Result<Prediction> {
        let all = [("epsilon", Prediction::Epsilon), ("sample", Prediction::Sample), ("v_prediction", Prediction::V)];
        let allowed: Vec<(&str, Prediction)> = all.into_iter().filter(|(_, p)| choices.contains(p)).collect();
        self.choice("prediction_type", &self.prediction_type, "epsilon", &allowed)
    }

    pub(crate) fn num_train(&self) -> Result<usize> {
        match self.num_train_timesteps.unwrap_or(1000) {
            0 => Err(self.error("num_train_timesteps", "must be at least 1")),
            n => Ok(n),
        }
    }

    pub(crate) fn steps_offset(&self) -> i64 {
        self.steps_offset.unwrap_or(0)
    }

    /// The betas of the training schedule in f32, as diffusers builds them (`sigmoid` and
    /// `laplace`, which only DDPM knows, are not supported).
    fn betas(&self) -> Result<Vec<f32>> {
        let n = self.num_train()?;
        if let Some(trained) = &self.trained_betas {
            if trained.len() != n {
                return Err(self.error("trained_betas", format!("{} values for {n} training steps", trained.len())));
            }
            return Ok(trained.iter().map(|&b| b as f32).collect());
        }
        let (start, end) = (self.beta_start.unwrap_or(0.0001), self.beta_end.unwrap_or(0.02));
        #[derive(Clone, Copy)]
        enum Kind {
            Linear,
            ScaledLinear,
            Cosine,
        }
        let kinds =
            [("linear", Kind::Linear), ("scaled_linear", Kind::ScaledLinear), ("squaredcos_cap_v2", Kind::Cosine)];
        Ok(match self.choice("beta_schedule", &self.beta_schedule, "linear", &kinds)? {
            Kind::Linear => schedule::torch_linspace_f32(start, end, n),
            Kind::ScaledLinear => {
                schedule::torch_linspace_f32(start.powf(0.5), end.powf(0.5), n).iter().map(|b| b * b).collect()
            }
            Kind::Cosine => schedule::cosine_betas(n),
        })
    }

    /// ᾱ, the cumulative product of 1 − β over the training steps, in f32. With
    /// rescale_betas_zero_snr the betas are rescaled to zero terminal SNR, and `floor_last`
    /// (the sigma-based schedulers) then lifts the last ᾱ from 0 to 2⁻²⁴ so its sigma is finite.
    pub fn alphas_cumprod(&self, floor_last: bool) -> Result<Vec<f32>> {
        let mut betas = self.betas()?;
        let zero_snr = self.rescale_betas_zero_snr.unwrap_or(false);
        if zero_snr {
            betas = schedule::rescale_zero_terminal_snr(&betas);
        }
        let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
        let mut cumprod = schedule::cumprod_f32(&alphas);
        if zero_snr && floor_last {
            if let Some(last) = cumprod.last_mut() {
                *last = 2f32.powi(-24);
            }
        }
        Ok(cumprod)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_numbers_are_read_outside_strings_only() {
        let text = r#"{"lambda_min_clipped": -Infinity, "sigma_max": Infinity, "_class_name": "NaN \"-Infinity\""}"#;
        let c = SchedulerConfig::from_json(text, "test").unwrap();
        assert_eq!(c.lambda_min_clipped, Some(f64::NEG_INFINITY));
        assert_eq!(c.sigma_max, Some(f64::INFINITY));
        assert_eq!(c.class_name.as_deref(), Some("NaN \"-Infinity\""));
    }

    #[test]
    fn a_bad_option_names_the_file_and_the_option() {
        let c = SchedulerConfig::from_json(r#"{"beta_schedule": "sigmoid"}"#, "x/scheduler_config.json").unwrap();
        let e = c.alphas_cumprod(false).unwrap_err().to_string();
        assert!(e.starts_with("x/scheduler_config.json: beta_schedule: \"sigmoid\""), "{e}");
    }
}
