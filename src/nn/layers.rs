//! The PyTorch layers the models are made of, each loaded from its public
//! names (`weight`, `bias`, `running_mean`, ...) and applied as PyTorch does.

use super::Weights;
use crate::device::{DType, HostData};
use crate::error::{shape_err, Result};
use crate::tensor::{Conv2dOptions, Tensor};

/// nn.Linear: y = x·Wᵀ + b over the last dimension.
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn load(w: &Weights, in_dim: usize, out_dim: usize, bias: bool) -> Result<Linear> {
        let weight = w.get("weight", &[out_dim, in_dim])?;
        let bias = if bias { Some(w.get("bias", &[out_dim])?) } else { None };
        Ok(Linear { weight, bias })
    }

    pub fn out_dim(&self) -> usize {
        self.weight.dims()[0]
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (out_dim, in_dim) = (self.weight.dims()[0], self.weight.dims()[1]);
        let dims = x.dims();
        if dims.last() != Some(&in_dim) {
            return shape_err("linear", format!("input {} for a ({out_dim}, {in_dim}) weight", x.shape()));
        }
        let rows = x.numel() / in_dim;
        let y = x.reshape([rows, in_dim])?.matmul_t(&self.weight, false, true)?;
        let y = match &self.bias {
            Some(b) => y.add(b)?,
            None => y,
        };
        let mut out = dims.to_vec();
        *out.last_mut().expect("checked non-empty") = out_dim;
        y.reshape(out)
    }
}

/// nn.Conv2d with square kernel, stride and padding from the caller (the
/// checkpoint gives the channel counts and the kernel size).
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    options: Conv2dOptions,
}

impl Conv2d {
    /// The convolution stored under `w`, whatever its channels and kernel size.
    pub fn load(w: &Weights, stride: usize, padding: usize, bias: bool) -> Result<Conv2d> {
        let weight = w.get_any("weight")?;
        if weight.rank() != 4 {
            return shape_err("conv2d", format!("weight {} is not (out, in, kh, kw)", weight.shape()));
        }
        let bias = if bias { Some(w.get("bias", &[weight.dims()[0]])?) } else { None };
        let options = Conv2dOptions { stride: (stride, stride), padding: (padding, padding), ..Default::default() };
        Ok(Conv2d { weight, bias, options })
    }

    /// As `load`, checking the weight is (out, in, k, k).
    pub fn load_checked(
        w: &Weights,
        in_ch: usize,
        out_ch: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        bias: bool,
    ) -> Result<Conv2d> {
        w.get("weight", &[out_ch, in_ch, kernel, kernel])?;
        Conv2d::load(w, stride, padding, bias)
    }

    pub fn in_channels(&self) -> usize {
        self.weight.dims()[1]
    }

    pub fn out_channels(&self) -> usize {
        self.weight.dims()[0]
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.conv2d(&self.weight, self.bias.as_ref(), self.options)
    }

    /// This convolution followed by `bn` (eval mode) as one convolution: the
    /// weight scaled per output channel and the shift as the bias, which saves
    /// two full passes over the activations per layer.
    pub fn fold_batch_norm(self, bn: &BatchNorm2d) -> Result<Conv2d> {
        let c = self.out_channels();
        if bn.scale.dims()[0] != c {
            return shape_err(
                "fold_batch_norm",
                format!("{c} output channels and {} norm channels", bn.scale.dims()[0]),
            );
        }
        let weight = self.weight.mul(&bn.scale.reshape([c, 1, 1, 1])?)?;
        let shift = bn.shift.reshape([c])?;
        let bias = match &self.bias {
            Some(b) => b.mul(&bn.scale.reshape([c])?)?.add(&shift)?,
            None => shift,
        };
        Ok(Conv2d { weight, bias: Some(bias), options: self.options })
    }
}

/// nn.LayerNorm over the last dimension.
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    pub fn load(w: &Weights, dim: usize, eps: f32) -> Result<LayerNorm> {
        Ok(LayerNorm { weight: w.get("weight", &[dim])?, bias: w.get("bias", &[dim])?, eps })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.layer_norm(&self.weight, &self.bias, self.eps)
    }
}

/// nn.GroupNorm with an affine weight and bias.
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f32,
}

impl GroupNorm {
    pub fn load(w: &Weights, groups: usize, channels: usize, eps: f32) -> Result<GroupNorm> {
        Ok(GroupNorm { weight: w.get("weight", &[channels])?, bias: w.get("bias", &[channels])?, groups, eps })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.group_norm(self.groups, &self.weight, &self.bias, self.eps)
    }
}

/// nn.BatchNorm2d in eval mode, folded at load time into one per-channel
/// scale and shift: y = x·γ/√(var+ε) + (β − mean·γ/√(var+ε)).
pub struct BatchNorm2d {
    scale: Tensor,
    shift: Tensor,
}

impl BatchNorm2d {
    pub fn load(w: &Weights, channels: usize, eps: f32) -> Result<BatchNorm2d> {
        let read = |name: &str| -> Result<Vec<f32>> { w.get(name, &[channels])?.to_dtype(DType::F32)?.to_vec_f32() };
        let (gamma, beta, mean, var) = (read("weight")?, read("bias")?, read("running_mean")?, read("running_var")?);
        if w.contains("num_batches_tracked") {
            w.ignore("num_batches_tracked");
        }
        let scale: Vec<f32> = gamma.iter().zip(&var).map(|(g, v)| g / (v + eps).sqrt()).collect();
        let shift: Vec<f32> = beta.iter().zip(&mean).zip(&scale).map(|((b, m), s)| b - m * s).collect();
        let per_channel = |v: Vec<f32>| -> Result<Tensor> {
            Tensor::from_host(HostData::F32(v), [channels, 1, 1], w.device())?.to_dtype(w.dtype())
        };
        Ok(BatchNorm2d { scale: per_channel(scale)?, shift: per_channel(shift)? })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.mul(&self.scale)?.add(&self.shift)
    }
}

/// nn.Embedding: rows of a (vocab, dim) table.
pub struct Embedding {
    table: Tensor,
}

impl Embedding {
    pub fn load(w: &Weights, vocab: usize, dim: usize) -> Result<Embedding> {
        Ok(Embedding { table: w.get("weight", &[vocab, dim])? })
    }

    /// The table as stored, for sizes read from the checkpoint.
    pub fn load_any(w: &Weights) -> Result<Embedding> {
        let table = w.get_any("weight")?;
        if table.rank() != 2 {
            return shape_err("embedding", format!("table {} is not (vocab, dim)", table.shape()));
        }
        Ok(Embedding { table })
    }

    pub fn dims(&self) -> (usize, usize) {
        (self.table.dims()[0], self.table.dims()[1])
    }

    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        self.table.embedding(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Device;
    use crate::tensor::safetensors::save;
    use crate::tensor::Rng;

    #[test]
    fn folded_batch_norm_equals_conv_then_norm() {
        let dev = Device::Cpu;
        let mut rng = Rng::new(7);
        let t = |shape: &[usize], rng: &mut Rng| Tensor::randn(shape.to_vec(), rng, &dev).unwrap();
        let var = Tensor::rand_uniform([5], 0.5, 2.0, &mut rng, &dev).unwrap();
        let dir = std::env::temp_dir().join(format!("foil-layers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cw, cb, g, b, m) =
            (t(&[5, 3, 3, 3], &mut rng), t(&[5], &mut rng), t(&[5], &mut rng), t(&[5], &mut rng), t(&[5], &mut rng));
        let named = [
            ("c.weight", &cw),
            ("c.bias", &cb),
            ("n.weight", &g),
            ("n.bias", &b),
            ("n.running_mean", &m),
            ("n.running_var", &var),
        ];
        save(dir.join("w.safetensors"), &named).unwrap();
        let w = Weights::open_dir(&dir, DType::F32, &dev).unwrap();
        let conv = Conv2d::load_checked(&w.pp("c"), 3, 5, 3, 2, 1, true).unwrap();
        let bn = BatchNorm2d::load(&w.pp("n"), 5, 1e-5).unwrap();
        let x = t(&[2, 3, 9, 7], &mut rng);
        let want = bn.forward(&conv.forward(&x).unwrap()).unwrap().to_vec_f32().unwrap();
        let got = conv.fold_batch_norm(&bn).unwrap().forward(&x).unwrap().to_vec_f32().unwrap();
        let err = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        let scale = want.iter().map(|a| a.abs()).fold(0f32, f32::max);
        assert!(err <= 1e-5 * scale, "max error {err} of {scale}");
    }
}
