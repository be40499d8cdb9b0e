//! config.json of a diffusers model: a reader with diffusers' defaults and
//! one-line errors naming the file and the key, and the UNet's configuration
//! resolved per block (diffusers' head-count quirk included). Options this
//! implementation does not support are rejected by name.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{file_err, Result};

/// The keys of one config.json; null counts as absent (diffusers' default).
pub(crate) struct JsonConfig {
    path: PathBuf,
    map: Map<String, Value>,
}

impl JsonConfig {
    pub(crate) fn open(path: &Path) -> Result<JsonConfig> {
        let text = std::fs::read_to_string(path).or_else(|e| file_err(path, format!("cannot read: {e}")))?;
        match serde_json::from_str(&text) {
            Ok(Value::Object(map)) => Ok(JsonConfig { path: path.to_path_buf(), map }),
            Ok(_) => file_err(path, "not a JSON object"),
            Err(e) => file_err(path, format!("invalid JSON: {e}")),
        }
    }

    pub(crate) fn error<T>(&self, detail: impl Into<String>) -> Result<T> {
        file_err(&self.path, detail)
    }

    fn value(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn wrong<T>(&self, key: &str, want: &str) -> Result<T> {
        let got = self.value(key).map(|v| v.to_string()).unwrap_or_default();
        self.error(format!("'{key}' must be {want}, not {got}"))
    }

    pub(crate) fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        match self.value(key) {
            None => Ok(default),
            Some(v) => match v.as_u64() {
                Some(n) => Ok(n as usize),
                None => self.wrong(key, "a non-negative integer"),
            },
        }
    }

    pub(crate) fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.value(key) {
            None => Ok(default),
            Some(v) => match v.as_f64() {
                Some(x) => Ok(x),
                None => self.wrong(key, "a number"),
            },
        }
    }

    pub(crate) fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.value(key) {
            None => Ok(default),
            Some(v) => match v.as_bool() {
                Some(b) => Ok(b),
                None => self.wrong(key, "true or false"),
            },
        }
    }

    pub(crate) fn usize_list_or(&self, key: &str, default: &[usize]) -> Result<Vec<usize>> {
        match self.value(key) {
            None => Ok(default.to_vec()),
            Some(Value::Array(items)) => match items.iter().map(|v| v.as_u64().map(|n| n as usize)).collect() {
                Some(list) => Ok(list),
                None => self.wrong(key, "a list of non-negative integers"),
            },
            Some(_) => self.wrong(key, "a list of non-negative integers"),
        }
    }

    pub(crate) fn str_list_or(&self, key: &str, default: &[&str]) -> Result<Vec<String>> {
        match self.value(key) {
            None => Ok(default.iter().map(|s| s.to_string()).collect()),
            Some(Value::Array(items)) => match items.iter().map(|v| v.as_str().map(str::to_string)).collect() {
                Some(list) => Ok(list),
                None => self.wrong(key, "a list of strings"),
            },
            Some(_) => self.wrong(key, "a list of strings"),
        }
    }

    /// An integer for every block, or a list of `blocks` integers; None when null.
    pub(crate) fn per_block(&self, key: &str, blocks: usize) -> Result<Option<Vec<usize>>> {
        let want = format!("an integer or a list of {blocks} integers");
        match self.value(key) {
            None => Ok(None),
            Some(Value::Array(items)) if items.len() == blocks => {
                match items.iter().map(|v| v.as_u64().map(|n| n as usize)).collect() {
                    Some(list) => Ok(Some(list)),
                    None => self.wrong(key, &want),
                }
            }
            Some(v) => match v.as_u64() {
                Some(n) => Ok(Some(vec![n as usize; blocks])),
                None => self.wrong(key, &want),
            },
        }
    }

    /// An error naming `key` unless its value is absent, null, or one that
    /// `is_default` accepts (the value diffusers behaves the same with).
    pub(crate) fn reject_unless(&self, key: &str, is_default: impl Fn(&Value) -> bool) -> Result<()> {
        match self.value(key) {
            Some(v) if !is_default(v) => self.error(format!("unsupported option {key} = {v}")),
            _ => Ok(()),
        }
    }

    /// An error naming `key` unless it is absent or null.
    pub(crate) fn reject_set(&self, key: &str) -> Result<()> {
        self.reject_unless(key, |_| false)
    }

    /// Checks the activation is SiLU, the only one these models use.
    pub(crate) fn require_silu(&self, key: &str) -> Result<()> {
        self.reject_unless(key, |v| matches!(v.as_str(), Some("silu" | "swish")))
    }
}

/// The kind of a UNet down or up block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BlockKind {
    /// ResNets only (DownBlock2D, UpBlock2D).
    Plain,
    /// ResNets each followed by a Transformer2DModel (CrossAttnDownBlock2D, CrossAttnUpBlock2D).
    CrossAttention,
}

/// One level of the UNet, as diffusers builds its down block (the up block of
/// the same level is configured from the reversed lists).
#[derive(Clone, Debug)]
pub(crate) struct LevelConfig {
    pub channels: usize,
    pub layers: usize,
    pub transformer_layers: usize,
    pub heads: usize,
    pub cross_attention_dim: usize,
}

/// UNet2DConditionModel's config.json, checked and resolved per block.
#[derive(Clone, Debug)]
pub(crate) struct UNetConfig {
    pub(crate) sample_size: Option<usize>,
    pub(crate) in_channels: usize,
    pub(crate) out_channels: usize,
    pub(crate) center_input_sample: bool,
    pub(crate) flip_sin_to_cos: bool,
    pub(crate) freq_shift: f32,
    pub(crate) down_kinds: Vec<BlockKind>,
    pub(crate) up_kinds: Vec<BlockKind>,
    pub(crate) mid_block: bool,
    pub(crate) levels: Vec<LevelConfig>,
    pub(crate) downsample_padding: usize,
    pub(crate) mid_block_scale_factor: f32,
    pub(crate) norm_num_groups: usize,
    pub(crate) norm_eps: f32,
    pub(crate) use_linear_projection: bool,
    pub(crate) time_embed_dim: usize,
    pub(crate) conv_in_kernel: usize,
    pub(crate) conv_out_kernel: usize,
}

const SD1_DOWN: [&str; 4] = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"];
const SD1_UP: [&str; 4] = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"];

impl UNetConfig {
    /// The configuration in `path` (a UNet folder's config.json).
    pub(crate) fn open(path: &Path) -> Result<UNetConfig> {
        UNetConfig::from_json(&JsonConfig::open(path)?)
    }

    pub(crate) fn from_json(c: &JsonConfig) -> Result<UNetConfig> {
        reject_unsupported(c)?;
        let down_types = c.str_list_or("down_block_types", &SD1_DOWN)?;
        let up_types = c.str_list_or("up_block_types", &SD1_UP)?;
        let down_kinds = down_types
            .iter()
            .map(|t| match t.as_str() {
                "DownBlock2D" => Ok(BlockKind::Plain),
                "CrossAttnDownBlock2D" => Ok(BlockKind::CrossAttention),
                other => c.error(format!("unsupported down block type '{other}' in down_block_types")),
            })
            .collect::<Result<Vec<_>>>()?;
        let up_kinds = up_types
            .iter()
            .map(|t| match t.as_str() {
                "UpBlock2D" => Ok(BlockKind::Plain),
                "CrossAttnUpBlock2D" => Ok(BlockKind::CrossAttention),
                other => c.error(format!("unsupported up block type '{other}' in up_block_types")),
            })
            .collect::<Result<Vec<_>>>()?;
        // Absent means diffusers' default (the cross-attention mid-block); null means none.
        let mid_block = match c.map.get("mid_block_type") {
            None => true,
            Some(Value::Null) => false,
            Some(Value::String(s)) if s == "UNetMidBlock2DCrossAttn" => true,
            Some(other) => return c.error(format!("unsupported mid_block_type {other}")),
        };

        let blocks = down_kinds.len();
        let channels = c.usize_list_or("block_out_channels", &[320, 640, 1280, 1280])?;
        if blocks == 0 || up_kinds.len() != blocks || channels.len() != blocks {
            return c.error(format!(
                "down_block_types ({blocks}), up_block_types ({}) and block_out_channels ({}) must have the same nonzero length",
                up_kinds.len(),
                channels.len()
            ));
        }
        let per_block = |key: &str, default: usize| -> Result<Vec<usize>> {
            Ok(c.per_block(key, blocks)?.unwrap_or_else(|| vec![default; blocks]))
        };
        let layers = per_block("layers_per_block", 2)?;
        let transformer_layers = per_block("transformer_layers_per_block", 1)?;
        let cross_attention_dim = per_block("cross_attention_dim", 1280)?;
        let head_dims = per_block("attention_head_dim", 8)?;
        // diffusers' naming quirk: without num_attention_heads, attention_head_dim is the head count.
        let heads = c.per_block("num_attention_heads", blocks)?.unwrap_or(head_dims);
        let levels: Vec<LevelConfig> = (0..blocks)
            .map(|i| LevelConfig {
                channels: channels[i],
                layers: layers[i],
                transformer_layers: transformer_layers[i],
                heads: heads[i],
                cross_attention_dim: cross_attention_dim[i],
            })
            .collect();
        let norm_num_groups = c.usize_or("norm_num_groups", 32)?;
        for level in &levels {
            if level.channels == 0 || level.heads == 0 || level.heads > level.channels {
                return c.error(format!("{} channels with {} attention heads", level.channels, level.heads));
            }
            if norm_num_groups == 0 || level.channels % norm_num_groups != 0 {
                return c.error(format!("{} channels do not split into {norm_num_groups} groups", level.channels));
            }
        }
        let kernel = |key: &str| -> Result<usize> {
            let k = c.usize_or(key, 3)?;
            if k % 2 == 1 {
                Ok(k)
            } else {
                c.error(format!("'{key}' must be odd, not {k}"))
            }
        };
        Ok(UNetConfig {
            sample_size: sample_size(c)?,
            in_channels: c.usize_or("in_channels", 4)?,
            out_channels: c.usize_or("out_channels", 4)?,
            center_input_sample: c.bool_or("center_input_sample", false)?,
            flip_sin_to_cos: c.bool_or("flip_sin_to_cos", true)?,
            freq_shift: c.f64_or("freq_shift", 0.0)? as f32,
            down_kinds,
            up_kinds,
            mid_block,
            time_embed_dim: c.usize_or("time_embedding_dim", 4 * levels[0].channels)?,
            levels,
            downsample_padding: c.usize_or("downsample_padding", 1)?,
            mid_block_scale_factor: c.f64_or("mid_block_scale_factor", 1.0)? as f32,
            norm_num_groups,
            norm_eps: c.f64_or("norm_eps", 1e-5)? as f32,
            use_linear_projection: c.bool_or("use_linear_projection", false)?,
            conv_in_kernel: kernel("conv_in_kernel")?,
            conv_out_kernel: kernel("conv_out_kernel")?,
        })
    }
}

/// An int, or [h, w] with h == w; null is None.
fn sample_size(c: &JsonConfig) -> Result<Option<usize>> {
    match c.value("sample_size") {
        None => Ok(None),
        Some(v) if v.is_u64() => Ok(v.as_u64().map(|n| n as usize)),
        Some(_) => match c.usize_list_or("sample_size", &[])?.as_slice() {
            [h, w] if h == w => Ok(Some(*h)),
            _ => c.wrong("sample_size", "an integer or a square [h, w]"),
        },
    }
}

/// The options of UNet2DConditionModel beyond SD 1.x/2.x, rejected by name
/// unless they hold the value that leaves the model as SD builds it.
fn reject_unsupported(c: &JsonConfig) -> Result<()> {
    let is_false = |v: &Value| v.as_bool() == Some(false);
    let is_one = |v: &Value| v.as_f64() == Some(1.0);
    let is_false_everywhere = |v: &Value| match v {
        Value::Bool(b) => !b,
        Value::Array(items) => items.iter().all(|i| i.as_bool() == Some(false)),
        _ => false,
    };
    c.require_silu("act_fn")?;
    c.reject_unless("time_embedding_type", |v| v.as_str() == Some("positional"))?;
    c.reject_unless("resnet_time_scale_shift", |v| v.as_str() == Some("default"))?;
    c.reject_unless("attention_type", |v| v.as_str() == Some("default"))?;
    c.reject_unless("only_cross_attention", is_false_everywhere)?;
    c.reject_unless("mid_block_only_cross_attention", is_false)?;
    c.reject_unless("dual_cross_attention", is_false)?;
    c.reject_unless("class_embeddings_concat", is_false)?;
    c.reject_unless("resnet_skip_time_act", is_false)?;
    c.reject_unless("resnet_out_scale_factor", is_one)?;
    for key in [
        "class_embed_type",
        "num_class_embeds",
        "addition_embed_type",
        "encoder_hid_dim",
        "encoder_hid_dim_type",
        "time_embedding_act_fn",
        "timestep_post_act",
        "time_cond_proj_dim",
        "cross_attention_norm",
        "reverse_transformer_layers_per_block",
    ] {
        c.reject_set(key)?;
    }
    if c.map.get("norm_num_groups") == Some(&Value::Null) {
        return c.error("unsupported option norm_num_groups = null");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<UNetConfig> {
        let dir = std::env::temp_dir().join(format!("foil-unet-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{:x}.json", json.bytes().fold(7u64, |h, b| h.wrapping_mul(31) ^ b as u64)));
        std::fs::write(&path, json).unwrap();
        UNetConfig::open(&path)
    }

    const BASE: &str = r#""block_out_channels": [32, 64], "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "norm_num_groups": 8"#;

    #[test]
    fn head_count_quirk_and_per_block_lists() {
        let c = parse(&format!(r#"{{{BASE}, "attention_head_dim": [2, 4], "layers_per_block": [1, 2]}}"#)).unwrap();
        assert_eq!(c.levels.iter().map(|l| l.heads).collect::<Vec<_>>(), [2, 4]);
        assert_eq!(c.levels.iter().map(|l| l.layers).collect::<Vec<_>>(), [1, 2]);
        let c = parse(&format!(r#"{{{BASE}, "attention_head_dim": 16, "num_attention_heads": 2}}"#)).unwrap();
        assert_eq!(c.levels.iter().map(|l| l.heads).collect::<Vec<_>>(), [2, 2]);
        assert!(c.mid_block);
        let c = parse(&format!(r#"{{{BASE}, "mid_block_type": null}}"#)).unwrap();
        assert!(!c.mid_block);
    }

    #[test]
    fn unsupported_options_are_named() {
        for (extra, named) in [
            (r#""class_embed_type": "timestep""#, "class_embed_type"),
            (r#""addition_embed_type": "text_time""#, "addition_embed_type"),
            (r#""resnet_time_scale_shift": "scale_shift""#, "resnet_time_scale_shift"),
            (r#""only_cross_attention": [false, true]"#, "only_cross_attention"),
            (r#""act_fn": "gelu""#, "act_fn"),
            (r#""mid_block_type": "UNetMidBlock2DSimpleCrossAttn""#, "mid_block_type"),
            (r#""norm_num_groups": null"#, "norm_num_groups"),
            (r#""attention_head_dim": [2, 4, 8]"#, "attention_head_dim"),
        ] {
            let e = parse(&format!("{{{BASE}, {extra}}}")).unwrap_err().to_string();
            assert!(e.contains(named) && e.contains(".json") && !e.contains('\n'), "{e}");
        }
        let e = parse(r#"{"down_block_types": ["AttnDownBlock2D"]}"#).unwrap_err().to_string();
        assert!(e.contains("unsupported down block type 'AttnDownBlock2D'"), "{e}");
    }
}
