//! The CLIP text encoder, transformers' CLIPTextModel: token and position
//! embeddings, pre-norm transformer layers with causal self-attention, and a
//! final layer norm. Loaded from a transformers folder (config.json and the
//! safetensors weights) under the public names, with or without the
//! `text_model.` prefix (transformers 4.x and the published Stable Diffusion
//! text encoders store it; transformers 5 saves without it).

use std::path::Path;

use serde::Deserialize;

use crate::device::{DType, Device};
use crate::error::{file_err, shape_err, Result};
use crate::nn::{Embedding, LayerNorm, Linear, Weights};
use crate::tensor::Tensor;

/// The fields of transformers' CLIPTextConfig the encoder needs; a missing
/// field takes transformers' default.
#[derive(Clone, Debug, Deserialize)]
pub struct ClipTextConfig {
    #[serde(default = "defaults::vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "defaults::hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "defaults::intermediate_size")]
    pub intermediate_size: usize,
    #[serde(default = "defaults::num_hidden_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "defaults::num_attention_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "defaults::max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default = "defaults::hidden_act")]
    pub hidden_act: String,
    #[serde(default = "defaults::layer_norm_eps")]
    pub layer_norm_eps: f64,
}

/// CLIPTextConfig's defaults (OpenAI's ViT-B/32 text tower).
mod defaults {
    pub fn vocab_size() -> usize {
        49408
    }
    pub fn hidden_size() -> usize {
        512
    }
    pub fn intermediate_size() -> usize {
        2048
    }
    pub fn num_hidden_layers() -> usize {
        12
    }
    pub fn num_attention_heads() -> usize {
        8
    }
    pub fn max_position_embeddings() -> usize {
        77
    }
    pub fn hidden_act() -> String {
        "quick_gelu".into()
    }
    pub fn layer_norm_eps() -> f64 {
        1e-5
    }
}

/// The MLP activations CLIP text encoders use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Activation {
    /// x·sigmoid(1.702·x): OpenAI's CLIP (Stable Diffusion 1.x).
    QuickGelu,
    /// Exact (erf) GELU: OpenCLIP's ViT-H (Stable Diffusion 2.x).
    Gelu,
}

impl ClipTextConfig {
    /// Reads and checks `path` (a config.json).
    pub fn from_file(path: &Path) -> Result<ClipTextConfig> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => return file_err(path, e.to_string()),
        };
        let config: ClipTextConfig = match serde_json::from_str(&text) {
            Ok(c) => c,
            Err(e) => return file_err(path, format!("not a CLIPTextConfig: {e}")),
        };
        config.activation(path)?;
        let heads = config.num_attention_heads;
        if heads == 0 || !config.hidden_size.is_multiple_of(heads) {
            return file_err(
                path,
                format!("hidden_size {} does not split into {heads} attention heads", config.hidden_size),
            );
        }
        Ok(config)
    }

    fn activation(&self, path: &Path) -> Result<Activation> {
        match self.hidden_act.as_str() {
            "quick_gelu" => Ok(Activation::QuickGelu),
            "gelu" => Ok(Activation::Gelu),
            other => file_err(path, format!("hidden_act '{other}' is not supported (quick_gelu or gelu)")),
        }
    }
}

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
}

impl Attention {
    fn load(w: &Weights, hidden: usize, heads: usize) -> Result<Attention> {
        Ok(Attention {
            q: Linear::load(&w.pp("q_proj"), hidden, hidden, true)?,
            k: Linear::load(&w.pp("k_proj"), hidden, hidden, true)?,
            v: Linear::load(&w.pp("v_proj"), hidden, hidden, true)?,
            out: Linear::load(&w.pp("out_proj"), hidden, hidden, true)?,
            heads,
        })
    }

    /// Causal self-attention over (batch, seq, hidden).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, s, hidden) = (x.dims()[0], x.dims()[1], x.dims()[2]);
        let head_dim = hidden / self.heads;
        let split = |t: Tensor| t.reshape([b, s, self.heads, head_dim])?.permute(&[0, 2, 1, 3]);
        let (q, k, v) = (split(self.q.forward(x)?)?, split(self.k.forward(x)?)?, split(self.v.forward(x)?)?);
        let o = q.attention(&k, &v, None, true, None)?;
        self.out.forward(&o.permute(&[0, 2, 1, 3])?.reshape([b, s, hidden])?)
    }
}

struct EncoderLayer {
    norm1: LayerNorm,
    attention: Attention,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    activation: Activation,
}

impl EncoderLayer {
    fn load(w: &Weights, c: &ClipTextConfig, activation: Activation) -> Result<EncoderLayer> {
        let (hidden, eps) = (c.hidden_size, c.layer_norm_eps as f32);
        Ok(EncoderLayer {
            norm1: LayerNorm::load(&w.pp("layer_norm1"), hidden, eps)?,
            attention: Attention::load(&w.pp("self_attn"), hidden, c.num_attention_heads)?,
            norm2: LayerNorm::load(&w.pp("layer_norm2"), hidden, eps)?,
            fc1: Linear::load(&w.pp("mlp.fc1"), hidden, c.intermediate_size, true)?,
            fc2: Linear::load(&w.pp("mlp.fc2"), c.intermediate_size, hidden, true)?,
            activation,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.add(&self.attention.forward(&self.norm1.forward(x)?)?)?;
        let h = self.fc1.forward(&self.norm2.forward(&x)?)?;
        let h = match self.activation {
            Activation::QuickGelu => h.quick_gelu()?,
            Activation::Gelu => h.gelu()?,
        };
        x.add(&self.fc2.forward(&h)?)
    }
}

/// transformers' CLIPTextModel, computing in the dtype it was loaded as.
pub struct ClipTextModel {
    config: ClipTextConfig,
    token_embedding: Embedding,
    /// (max_position_embeddings, hidden_size).
    position_embedding: Tensor,
    layers: Vec<EncoderLayer>,
    final_norm: LayerNorm,
}

impl ClipTextModel {
    /// The encoder of a transformers folder: `dir/config.json` and the
    /// safetensors weights in `dir`, converted to `dtype` on `device`. Every
    /// tensor of the checkpoint must be used.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<ClipTextModel> {
        // The config first: a missing or wrong folder is reported as its config.json.
        let config_path = dir.join("config.json");
        let config = ClipTextConfig::from_file(&config_path)?;
        ClipTextModel::build(&config_path, config, Weights::open_dir(dir, dtype, device)?)
    }

    /// The encoder of the transformers `config_path` with weights `root`
    /// (tensors in memory under transformers' names, for training).
    pub fn from_weights(config_path: &Path, root: Weights) -> Result<ClipTextModel> {
        ClipTextModel::build(config_path, ClipTextConfig::from_file(config_path)?, root)
    }

    fn build(config_path: &Path, config: ClipTextConfig, root: Weights) -> Result<ClipTextModel> {
        let activation = config.activation(config_path)?;
        let w = if root.contains("text_model.embeddings.token_embedding.weight") {
            root.pp("text_model")
        } else {
            root.clone()
        };
        let (hidden, eps) = (config.hidden_size, config.layer_norm_eps as f32);
        let emb = w.pp("embeddings");
        let token_embedding = Embedding::load(&emb.pp("token_embedding"), config.vocab_size, hidden)?;
        let position_embedding = emb.get("position_embedding.weight", &[config.max_position_embeddings, hidden])?;
        // A buffer of 0..max_position_embeddings that older transformers saved; positions are implicit here.
        if emb.contains("position_ids") {
            emb.ignore("position_ids");
        }
        let layers = (0..config.num_hidden_layers)
            .map(|i| EncoderLayer::load(&w.pp("encoder.layers").pp(i), &config, activation))
            .collect::<Result<Vec<_>>>()?;
        let final_norm = LayerNorm::load(&w.pp("final_layer_norm"), hidden, eps)?;
        root.check_all_used()?;
        Ok(ClipTextModel { config, token_embedding, position_embedding, layers, final_norm })
    }

    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    /// last_hidden_state (batch, seq, hidden) of token ids (batch, seq), u32,
    /// seq ≤ max_position_embeddings: causal attention over the whole sequence
    /// (padding included, as transformers without an attention mask), then the
    /// final layer norm.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        if ids.dtype() != DType::U32 || ids.rank() != 2 {
            return shape_err("clip_text", format!("ids must be (batch, seq) u32, got {:?}", ids));
        }
        let seq = ids.dims()[1];
        if seq > c.max_position_embeddings {
            return shape_err("clip_text", format!("{seq} tokens exceed {} positions", c.max_position_embeddings));
        }
        if let Some(bad) = ids.to_vec_u32()?.into_iter().find(|&id| id as usize >= c.vocab_size) {
            return shape_err(
                "clip_text",
                format!("token id {bad} is out of range for a vocabulary of {}", c.vocab_size),
            );
        }
        let positions = self.position_embedding.narrow(0, 0, seq)?;
        let mut x = self.token_embedding.forward(ids)?.add(&positions)?;
        for layer in &self.layers {
            x = layer.forward(&x)?;
        }
        self.final_norm.forward(&x)
    }
}
