//! The neural-network ops: normalisations, convolution, attention, nearest
//! upsampling and embedding lookup.

use super::graph::{Link, Op};
use super::{Shape, Tensor};
use crate::device::{AttentionParams, BackendStorage, Conv2dParams, DType, GroupNormShape};
use crate::error::{shape_err, Result};

/// Stride, padding, dilation and groups of a 2-D convolution, as in PyTorch's Conv2d.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dOptions {
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
    pub groups: usize,
}

impl Default for Conv2dOptions {
    fn default() -> Self {
        Conv2dOptions { stride: (1, 1), padding: (0, 0), dilation: (1, 1), groups: 1 }
    }
}

impl Tensor {
    /// Layer norm over the last dimension, with weight and bias of that length.
    pub fn layer_norm(&self, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
        self.check_float("layer_norm")?;
        self.check_same("layer_norm", &[weight, bias])?;
        let cols = *self.dims().last().unwrap_or(&1);
        if weight.dims() != [cols] || bias.dims() != [cols] {
            return shape_err(
                "layer_norm",
                format!("weight {} and bias {} must be ({cols},) for input {}", weight.shape, bias.shape, self.shape),
            );
        }
        let rows = self.numel() / cols.max(1);
        let out = self.storage.layer_norm(&weight.storage, &bias.storage, rows, cols, eps)?;
        let out = Tensor::from_storage(out, self.shape.clone());
        Ok(out.recorded(&[self, weight, bias], |_| Op::LayerNorm {
            x: self.clone(),
            weight: weight.clone(),
            bias: bias.clone(),
            eps,
        }))
    }

    /// Group norm of (n, c, ...) with per-channel weight and bias, as PyTorch's GroupNorm.
    pub fn group_norm(&self, groups: usize, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
        self.check_float("group_norm")?;
        self.check_same("group_norm", &[weight, bias])?;
        let d = self.dims();
        if d.len() < 2 {
            return shape_err("group_norm", format!("input {} needs (n, c, ...)", self.shape));
        }
        let (n, c) = (d[0], d[1]);
        if groups == 0 || c % groups != 0 {
            return shape_err("group_norm", format!("{c} channels do not split into {groups} groups"));
        }
        if weight.dims() != [c] || bias.dims() != [c] {
            return shape_err("group_norm", format!("weight {} and bias {} must be ({c},)", weight.shape, bias.shape));
        }
        let shape = GroupNormShape { n, c, spatial: d[2..].iter().product(), groups, eps };
        let out = self.storage.group_norm(&weight.storage, &bias.storage, shape)?;
        let out = Tensor::from_storage(out, self.shape.clone());
        Ok(out.recorded(&[self, weight, bias], |_| Op::GroupNorm {
            x: self.clone(),
            weight: weight.clone(),
            bias: bias.clone(),
            groups,
            eps,
        }))
    }

    /// 2-D convolution of (n, c_in, h, w) by (c_out, c_in / groups, kh, kw), plus
    /// an optional (c_out,) bias.
    pub fn conv2d(&self, weight: &Tensor, bias: Option<&Tensor>, opt: Conv2dOptions) -> Result<Tensor> {
        self.check_float("conv2d")?;
        self.check_same("conv2d", &[weight])?;
        let p = conv2d_params("conv2d", self.dims(), weight.dims(), opt)?;
        if let Some(b) = bias {
            self.check_same("conv2d", &[b])?;
            if b.dims() != [p.c_out] {
                return shape_err("conv2d", format!("bias {} must be ({},)", b.shape, p.c_out));
            }
        }
        let out = self.storage.conv2d(&weight.storage, bias.map(|b| b.storage.as_ref()), &p)?;
        let out = Tensor::from_storage(out, Shape::new([p.n, p.c_out, p.h_out, p.w_out]));
        let inputs = [Some(self), Some(weight), bias].into_iter().flatten().collect::<Vec<_>>();
        Ok(out.recorded(&inputs, |_| Op::Conv2d {
            x: self.clone(),
            weight: weight.clone(),
            bias: bias.cloned(),
            options: opt,
        }))
    }

    /// Nearest-neighbour ×2 upsampling of the last two dimensions.
    pub fn upsample_nearest2x(&self) -> Result<Tensor> {
        let d = self.dims();
        if d.len() < 2 {
            return shape_err("upsample_nearest2x", format!("input {} needs two spatial dimensions", self.shape));
        }
        let (h, w) = (d[d.len() - 2], d[d.len() - 1]);
        let planes = self.numel() / (h * w).max(1);
        let mut out = d.to_vec();
        out[d.len() - 2] *= 2;
        out[d.len() - 1] *= 2;
        let out = Tensor::from_storage(self.storage.upsample_nearest2x(planes, h, w)?, Shape::new(out));
        Ok(out.recorded(&[self], |_| Op::UpsampleNearest2x { x: Link::to(self) }))
    }

    /// Rows of the (vocab, dim) table `self` picked by the u32 `ids`: shape ids.dims + (dim,).
    pub fn embedding(&self, ids: &Tensor) -> Result<Tensor> {
        if self.rank() != 2 {
            return shape_err("embedding", format!("table {} must be (vocab, dim)", self.shape));
        }
        if ids.dtype() != DType::U32 {
            return shape_err("embedding", format!("ids must be u32, not {}", ids.dtype()));
        }
        let dim = self.dims()[1];
        let out = Shape::new([ids.dims(), &[dim]].concat());
        let out = Tensor::from_storage(self.storage.embedding(&ids.storage, dim)?, out);
        Ok(out.recorded(&[self], |_| Op::Embedding { table: Link::to(self), ids: ids.detach() }))
    }

    /// softmax(q·kᵀ·scale + mask)·v for q (batch, heads, q_len, d) and k, v
    /// (batch, heads, kv_len, d). The optional additive mask broadcasts to
    /// (batch, heads, q_len, kv_len), e.g. (batch, 1, 1, kv_len) for padding;
    /// `causal` masks keys after the query (top-left aligned). `scale` defaults
    /// to 1/sqrt(d).
    pub fn attention(
        &self,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        causal: bool,
        scale: Option<f32>,
    ) -> Result<Tensor> {
        let (params, mask) = self.attention_params("attention", k, v, mask, causal, scale)?;
        let out = self.storage.attention(&k.storage, &v.storage, mask.as_ref().map(|m| m.storage.as_ref()), &params)?;
        let out = Tensor::from_storage(out, self.shape.clone());
        Ok(out.recorded(&[self, k, v], |_| Op::Attention {
            q: self.clone(),
            k: k.clone(),
            v: v.clone(),
            mask: mask.as_ref().map(Tensor::detach),
            causal,
            scale: params.scale,
        }))
    }

    /// The checks of attention with q = `self` (also of its backward, as `op`): the backend
    /// parameters, and the mask as f32.
    pub(super) fn attention_params(
        &self,
        op: &'static str,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        causal: bool,
        scale: Option<f32>,
    ) -> Result<(AttentionParams, Option<Tensor>)> {
        self.check_float(op)?;
        self.check_same(op, &[k, v])?;
        let (q, kd, vd) = (self.dims(), k.dims(), v.dims());
        if q.len() != 4 || kd.len() != 4 || kd != vd || q[0] != kd[0] || q[1] != kd[1] || q[3] != kd[3] {
            return shape_err(
                op,
                format!(
                    "q {}, k {}, v {} must be (batch, heads, seq, d) with matching batch, heads and d",
                    self.shape, k.shape, v.shape
                ),
            );
        }
        let mut params = AttentionParams {
            batch: q[0],
            heads: q[1],
            q_len: q[2],
            kv_len: kd[2],
            head_dim: q[3],
            scale: scale.unwrap_or(1.0 / (q[3] as f32).sqrt()),
            causal,
            mask_strides: [0; 4],
        };
        let mask = match mask {
            Some(m) => {
                if !m.device().same(&self.device()) || m.rank() != 4 {
                    return shape_err(op, format!("mask {} must be 4-D on the inputs' device", m.shape));
                }
                let full = [q[0], q[1], q[2], kd[2]];
                let strides = m.shape.strides();
                for d in 0..4 {
                    match m.dims()[d] {
                        1 => params.mask_strides[d] = 0,
                        s if s == full[d] => params.mask_strides[d] = strides[d],
                        _ => {
                            return shape_err(op, format!("mask {} does not broadcast to {full:?}", m.shape));
                        }
                    }
                }
                Some(m.to_dtype(DType::F32)?)
            }
            None => None,
        };
        Ok((params, mask))
    }

    /// An additive (batch, 1, 1, max_len) padding mask: 0 for the first
    /// `lengths[b]` keys, -inf after.
    pub fn padding_mask(lengths: &[usize], max_len: usize, device: &crate::device::Device) -> Result<Tensor> {
        let data = lengths
            .iter()
            .flat_map(|&l| (0..max_len).map(move |j| if j < l { 0.0 } else { f32::NEG_INFINITY }))
            .collect();
        Tensor::from_f32(data, [lengths.len(), 1, 1, max_len], device)
    }
}

/// The checked description of an input of dims `x` convolved by a weight of dims `w` under
/// `opt`: what conv2d and its gradients (tensor/conv_grad.rs) compute from.
pub(super) fn conv2d_params(op: &'static str, x: &[usize], w: &[usize], opt: Conv2dOptions) -> Result<Conv2dParams> {
    let (xs, ws) = (Shape::new(x), Shape::new(w));
    if x.len() != 4 || w.len() != 4 {
        return shape_err(op, format!("input {xs} and weight {ws} must both be 4-D"));
    }
    let g = opt.groups;
    if g == 0 || !x[1].is_multiple_of(g) || !w[0].is_multiple_of(g) || w[1] * g != x[1] {
        return shape_err(op, format!("input {xs} and weight {ws} do not match with {g} groups"));
    }
    if opt.stride.0 == 0 || opt.stride.1 == 0 || opt.dilation.0 == 0 || opt.dilation.1 == 0 {
        return shape_err(op, "stride and dilation must be at least 1");
    }
    if w[2] == 0 || w[3] == 0 {
        return shape_err(op, format!("empty kernel {ws}"));
    }
    let out_size = |size: usize, pad: usize, dil: usize, k: usize, stride: usize| {
        let span = dil * (k - 1) + 1;
        (size + 2 * pad >= span).then(|| (size + 2 * pad - span) / stride + 1)
    };
    let (Some(h_out), Some(w_out)) = (
        out_size(x[2], opt.padding.0, opt.dilation.0, w[2], opt.stride.0),
        out_size(x[3], opt.padding.1, opt.dilation.1, w[3], opt.stride.1),
    ) else {
        return shape_err(op, format!("kernel {ws} is larger than the padded input {xs}"));
    };
    Ok(Conv2dParams {
        n: x[0],
        c_in: x[1],
        h: x[2],
        w: x[3],
        c_out: w[0],
        kh: w[2],
        kw: w[3],
        stride: opt.stride,
        padding: opt.padding,
        dilation: opt.dilation,
        groups: g,
        h_out,
        w_out,
    })
}
