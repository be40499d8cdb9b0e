//! The CPU backend: the reference every CUDA kernel is tested against, and the
//! fallback when there is no GPU. Float ops compute in f32 (f16 and bf16 inputs
//! are widened and the result narrowed back), parallel with rayon.

mod attention;
mod attention_grad;
pub mod conv;
mod conv_grad;
mod elementwise;
mod elementwise_grad;
mod embedding_grad;
pub mod gemm;
mod layout;
mod matmul;
mod norm;
mod optim;
mod pool;
mod reduce;
mod scheduler;
mod vexp;

mod loss;
mod norm_grad;

use std::borrow::Cow;

use half::slice::HalfFloatSliceExt;
use half::vec::HalfFloatVecExt;
use half::{bf16, f16};

use super::contract::*;
use super::{DType, HostData};
use crate::error::{Error, Result};

/// Whether the AVX2 + FMA builds of the hot loops can run here (std caches the CPUID probe).
pub(crate) fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    return is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The vector instructions the hot loops use on this CPU.
pub fn simd_description() -> &'static str {
    if has_avx2_fma() {
        "AVX2 + FMA"
    } else {
        "portable (no AVX2/FMA kernels on this CPU)"
    }
}

/// Below this many elements an elementwise op runs on one thread: rayon's
/// fork-join costs more than it saves.
pub(crate) const PAR_MIN: usize = 1 << 14;

#[derive(Clone, Debug, PartialEq)]
pub enum CpuStorage {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    U32(Vec<u32>),
}

impl CpuStorage {
    pub fn from_host(data: HostData) -> CpuStorage {
        match data {
            HostData::F32(v) => CpuStorage::F32(v),
            HostData::F16(v) => CpuStorage::F16(v),
            HostData::BF16(v) => CpuStorage::BF16(v),
            HostData::U32(v) => CpuStorage::U32(v),
        }
    }

    pub fn to_host(&self) -> HostData {
        match self {
            CpuStorage::F32(v) => HostData::F32(v.clone()),
            CpuStorage::F16(v) => HostData::F16(v.clone()),
            CpuStorage::BF16(v) => HostData::BF16(v.clone()),
            CpuStorage::U32(v) => HostData::U32(v.clone()),
        }
    }

    /// The values as f32, borrowed when they already are.
    fn f32s(&self, op: &'static str) -> Result<Cow<'_, [f32]>> {
        match self {
            CpuStorage::F32(v) => Ok(Cow::Borrowed(v)),
            CpuStorage::F16(v) => Ok(Cow::Owned(v.to_f32_vec())),
            CpuStorage::BF16(v) => Ok(Cow::Owned(v.to_f32_vec())),
            CpuStorage::U32(_) => Err(Error::DType { op, dtype: DType::U32 }),
        }
    }

    /// f32 results narrowed to `dtype` (a float dtype).
    fn from_f32(values: Vec<f32>, dtype: DType) -> CpuStorage {
        match dtype {
            DType::F16 => CpuStorage::F16(Vec::from_f32_slice(&values)),
            DType::BF16 => CpuStorage::BF16(Vec::from_f32_slice(&values)),
            _ => CpuStorage::F32(values),
        }
    }

    fn u32s(&self, op: &'static str) -> Result<&[u32]> {
        match self {
            CpuStorage::U32(v) => Ok(v),
            other => Err(Error::DType { op, dtype: other.dtype() }),
        }
    }

    /// Applies `f` to the f32 view of `self` and returns the result in `self`'s dtype.
    fn map_f32(&self, op: &'static str, f: impl FnOnce(&[f32]) -> Vec<f32>) -> Result<CpuStorage> {
        let x = self.f32s(op)?;
        Ok(CpuStorage::from_f32(f(&x), self.dtype()))
    }
}

impl BackendStorage for CpuStorage {
    fn dtype(&self) -> DType {
        match self {
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::F16(_) => DType::F16,
            CpuStorage::BF16(_) => DType::BF16,
            CpuStorage::U32(_) => DType::U32,
        }
    }

    fn len(&self) -> usize {
        match self {
            CpuStorage::F32(v) => v.len(),
            CpuStorage::F16(v) => v.len(),
            CpuStorage::BF16(v) => v.len(),
            CpuStorage::U32(v) => v.len(),
        }
    }

    fn zeros_like(&self, len: usize, dtype: DType) -> Result<Self> {
        Ok(match dtype {
            DType::F32 => CpuStorage::F32(vec![0.0; len]),
            DType::F16 => CpuStorage::F16(vec![f16::ZERO; len]),
            DType::BF16 => CpuStorage::BF16(vec![bf16::ZERO; len]),
            DType::U32 => CpuStorage::U32(vec![0; len]),
        })
    }

    fn to_dtype(&self, dtype: DType) -> Result<Self> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        Ok(match (self, dtype) {
            (CpuStorage::U32(v), _) => CpuStorage::from_f32(v.iter().map(|&x| x as f32).collect(), dtype),
            // Float to index truncates toward zero and saturates, as Rust's `as` does.
            (_, DType::U32) => CpuStorage::U32(self.f32s("to_dtype")?.iter().map(|&x| x as u32).collect()),
            _ => CpuStorage::from_f32(self.f32s("to_dtype")?.into_owned(), dtype),
        })
    }

    fn unary(&self, op: UnaryOp) -> Result<Self> {
        self.map_f32("unary", |x| elementwise::unary(op, x))
    }

    fn scale(&self, factor: f32) -> Result<Self> {
        self.map_f32("scale", |x| elementwise::scale(x, factor))
    }

    fn clamp(&self, lo: f32, hi: f32) -> Result<Self> {
        self.map_f32("clamp", |x| elementwise::clamp(x, lo, hi))
    }

    fn geglu(&self, rows: usize, d: usize) -> Result<Self> {
        self.map_f32("geglu", |x| elementwise::geglu(x, rows, d))
    }

    fn binary(&self, op: BinaryOp, rhs: &Self, layout: &BroadcastLayout) -> Result<Self> {
        let (a, b) = (self.f32s("binary")?, rhs.f32s("binary")?);
        Ok(CpuStorage::from_f32(elementwise::binary(op, &a, &b, layout), self.dtype()))
    }

    fn reduce(&self, op: ReduceOp, shape: ReduceShape) -> Result<Self> {
        let x = self.f32s("reduce")?;
        Ok(match op {
            ReduceOp::ArgMax => CpuStorage::U32(reduce::argmax(&x, shape)),
            _ => CpuStorage::from_f32(reduce::reduce(op, &x, shape), self.dtype()),
        })
    }

    fn softmax(&self, rows: usize, cols: usize, log: bool) -> Result<Self> {
        self.map_f32("softmax", |x| reduce::softmax(x, rows, cols, log))
    }

    fn matmul(&self, rhs: &Self, s: &MatmulShape) -> Result<Self> {
        let (a, b) = (self.f32s("matmul")?, rhs.f32s("matmul")?);
        Ok(CpuStorage::from_f32(matmul::batched(&a, &b, s), self.dtype()))
    }

    fn layer_norm(&self, weight: &Self, bias: &Self, rows: usize, cols: usize, eps: f32) -> Result<Self> {
        let (w, b) = (weight.f32s("layer_norm")?, bias.f32s("layer_norm")?);
        self.map_f32("layer_norm", |x| norm::layer_norm(x, &w, &b, rows, cols, eps))
    }

    fn group_norm(&self, weight: &Self, bias: &Self, shape: GroupNormShape) -> Result<Self> {
        let (w, b) = (weight.f32s("group_norm")?, bias.f32s("group_norm")?);
        self.map_f32("group_norm", |x| norm::group_norm(x, &w, &b, shape))
    }

    fn conv2d(&self, weight: &Self, bias: Option<&Self>, params: &Conv2dParams) -> Result<Self> {
        let w = weight.f32s("conv2d")?;
        let b = bias.map(|b| b.f32s("conv2d")).transpose()?;
        self.map_f32("conv2d", |x| conv::conv2d(x, &w, b.as_deref(), params))
    }

    fn upsample_nearest2x(&self, planes: usize, h: usize, w: usize) -> Result<Self> {
        Ok(match self {
            CpuStorage::F32(v) => CpuStorage::F32(layout::upsample_nearest2x(v, planes, h, w)),
            CpuStorage::F16(v) => CpuStorage::F16(layout::upsample_nearest2x(v, planes, h, w)),
            CpuStorage::BF16(v) => CpuStorage::BF16(layout::upsample_nearest2x(v, planes, h, w)),
            CpuStorage::U32(v) => CpuStorage::U32(layout::upsample_nearest2x(v, planes, h, w)),
        })
    }

    fn copy_strided(&self, dims: &[usize], strides: &[usize]) -> Result<Self> {
        Ok(match self {
            CpuStorage::F32(v) => CpuStorage::F32(layout::copy_strided(v, dims, strides)),
            CpuStorage::F16(v) => CpuStorage::F16(layout::copy_strided(v, dims, strides)),
            CpuStorage::BF16(v) => CpuStorage::BF16(layout::copy_strided(v, dims, strides)),
            CpuStorage::U32(v) => CpuStorage::U32(layout::copy_strided(v, dims, strides)),
        })
    }

    fn copy2d_into(&self, dst: &mut Self, c: Copy2d) -> Result<()> {
        match (self, dst) {
            (CpuStorage::F32(s), CpuStorage::F32(d)) => layout::copy2d(s, d, c),
            (CpuStorage::F16(s), CpuStorage::F16(d)) => layout::copy2d(s, d, c),
            (CpuStorage::BF16(s), CpuStorage::BF16(d)) => layout::copy2d(s, d, c),
            (CpuStorage::U32(s), CpuStorage::U32(d)) => layout::copy2d(s, d, c),
            (s, _) => return Err(Error::DType { op: "copy2d", dtype: s.dtype() }),
        }
        Ok(())
    }

    fn embedding(&self, ids: &Self, dim: usize) -> Result<Self> {
        let ids = ids.u32s("embedding")?;
        Ok(match self {
            CpuStorage::F32(t) => CpuStorage::F32(layout::embedding(t, ids, dim)?),
            CpuStorage::F16(t) => CpuStorage::F16(layout::embedding(t, ids, dim)?),
            CpuStorage::BF16(t) => CpuStorage::BF16(layout::embedding(t, ids, dim)?),
            CpuStorage::U32(_) => return Err(Error::DType { op: "embedding", dtype: DType::U32 }),
        })
    }

    fn attention(&self, k: &Self, v: &Self, mask: Option<&Self>, p: &AttentionParams) -> Result<Self> {
        let (kk, vv) = (k.f32s("attention")?, v.f32s("attention")?);
        let m = mask.map(|m| m.f32s("attention")).transpose()?;
        self.map_f32("attention", |q| attention::attention(q, &kk, &vv, m.as_deref(), p))
    }

    fn max_pool2d(&self, p: &MaxPool2dParams) -> Result<Self> {
        self.map_f32("max_pool2d", |x| pool::max_pool2d(x, p))
    }

    fn scheduler_step(
        &self,
        model_out: &Self,
        noise: Option<&Self>,
        prev_x0: Option<&Self>,
        step: &SchedulerStep,
    ) -> Result<(Self, Option<Self>)> {
        let (x, model) = (self.f32s("scheduler_step")?, model_out.f32s("scheduler_step")?);
        let noise = noise.map(|t| t.f32s("scheduler_step")).transpose()?;
        let prev_x0 = prev_x0.map(|t| t.f32s("scheduler_step")).transpose()?;
        let inputs =
            scheduler::StepInputs { x: &x, model: &model, noise: noise.as_deref(), prev_x0: prev_x0.as_deref() };
        let (out, x0) = scheduler::step(step, &inputs);
        Ok((CpuStorage::from_f32(out, self.dtype()), x0.map(|v| CpuStorage::from_f32(v, self.dtype()))))
    }

    fn adamw_step(&mut self, grads: &Self, m: &mut Self, v: &mut Self, step: &AdamWStep) -> Result<()> {
        optim::adamw_step(self, grads, m, v, step)
    }

    fn sgd_step(&mut self, grads: &Self, momentum: Option<&mut Self>, step: &SgdStep) -> Result<()> {
        optim::sgd_step(self, grads, momentum, step)
    }

    fn sum_squares(&self) -> Result<Self> {
        optim::sum_squares(self)
    }

    fn attention_backward(
        &self,
        k: &Self,
        v: &Self,
        mask: Option<&Self>,
        grad_out: &Self,
        p: &AttentionParams,
    ) -> Result<(Self, Self, Self)> {
        let op = "attention_backward";
        let (q, k, v, g) = (self.f32s(op)?, k.f32s(op)?, v.f32s(op)?, grad_out.f32s(op)?);
        let mask = mask.map(|m| m.f32s(op)).transpose()?;
        let inputs = attention_grad::AttentionInputs { q: &q, k: &k, v: &v, mask: mask.as_deref(), grad_out: &g };
        let (dq, dk, dv) = attention_grad::attention_backward(&inputs, p);
        let dtype = self.dtype();
        Ok((CpuStorage::from_f32(dq, dtype), CpuStorage::from_f32(dk, dtype), CpuStorage::from_f32(dv, dtype)))
    }

    fn embedding_backward(&self, ids: &Self, vocab: usize, dim: usize) -> Result<Self> {
        let ids = ids.u32s("embedding_backward ids")?;
        let grad = self.f32s("embedding_backward")?;
        Ok(CpuStorage::from_f32(embedding_grad::embedding_backward(&grad, ids, vocab, dim)?, self.dtype()))
    }

    fn activation_backward(&self, op: UnaryOp, grad_out: &Self) -> Result<Self> {
        let g = grad_out.f32s("activation_backward")?;
        self.map_f32("activation_backward", |x| elementwise_grad::activation_backward(op, x, &g))
    }

    fn clamp_backward(&self, lo: f32, hi: f32, grad_out: &Self) -> Result<Self> {
        let g = grad_out.f32s("clamp_backward")?;
        self.map_f32("clamp_backward", |x| elementwise_grad::clamp_backward(x, &g, lo, hi))
    }

    fn geglu_backward(&self, grad_out: &Self, rows: usize, d: usize) -> Result<Self> {
        let g = grad_out.f32s("geglu_backward")?;
        self.map_f32("geglu_backward", |x| elementwise_grad::geglu_backward(x, &g, rows, d))
    }

    fn layer_norm_backward(
        &self,
        weight: &Self,
        grad_out: &Self,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<(Self, Self, Self)> {
        let op = "layer_norm_backward";
        let (x, w, g) = (self.f32s(op)?, weight.f32s(op)?, grad_out.f32s(op)?);
        Ok(self.in_dtype(norm_grad::layer_norm_backward(&x, &w, &g, rows, cols, eps)))
    }

    fn group_norm_backward(&self, weight: &Self, grad_out: &Self, shape: GroupNormShape) -> Result<(Self, Self, Self)> {
        let op = "group_norm_backward";
        let (x, w, g) = (self.f32s(op)?, weight.f32s(op)?, grad_out.f32s(op)?);
        Ok(self.in_dtype(norm_grad::group_norm_backward(&x, &w, &g, shape)))
    }

    fn batch_norm_train(&self, weight: &Self, bias: &Self, shape: BatchNormShape) -> Result<(Self, Self, Self)> {
        let op = "batch_norm_train";
        let (x, w, b) = (self.f32s(op)?, weight.f32s(op)?, bias.f32s(op)?);
        let (out, mean, var) = norm_grad::batch_norm_train(&x, &w, &b, shape);
        Ok((CpuStorage::from_f32(out, self.dtype()), CpuStorage::F32(mean), CpuStorage::F32(var)))
    }

    fn batch_norm_backward(
        &self,
        weight: &Self,
        grad_out: &Self,
        mean: &Self,
        var: &Self,
        shape: BatchNormShape,
    ) -> Result<(Self, Self, Self)> {
        let op = "batch_norm_backward";
        let (x, w, g) = (self.f32s(op)?, weight.f32s(op)?, grad_out.f32s(op)?);
        let (mean, var) = (mean.f32s(op)?, var.f32s(op)?);
        Ok(self.in_dtype(norm_grad::batch_norm_backward(&x, &w, &g, &mean, &var, shape)))
    }

    fn softmax_backward(&self, grad_out: &Self, rows: usize, cols: usize, log: bool) -> Result<Self> {
        let g = grad_out.f32s("softmax_backward")?;
        self.map_f32("softmax_backward", |y| loss::softmax_backward(y, &g, rows, cols, log))
    }

    fn cross_entropy(&self, labels: &Self, _rows: usize, classes: usize, smoothing: f32) -> Result<Self> {
        let (z, labels) = (self.f32s("cross_entropy")?, labels.u32s("cross_entropy")?);
        Ok(CpuStorage::F32(loss::cross_entropy(&z, labels, classes, smoothing)?))
    }

    fn cross_entropy_backward(
        &self,
        labels: &Self,
        grad_rows: &Self,
        _rows: usize,
        classes: usize,
        smoothing: f32,
    ) -> Result<Self> {
        let op = "cross_entropy_backward";
        let (z, labels, grad_rows) = (self.f32s(op)?, labels.u32s(op)?, grad_rows.f32s(op)?);
        let dz = loss::cross_entropy_backward(&z, labels, &grad_rows, classes, smoothing)?;
        Ok(CpuStorage::from_f32(dz, self.dtype()))
    }

    fn conv2d_input_grad(&self, weight: &Self, params: &Conv2dParams) -> Result<Self> {
        let w = weight.f32s("conv2d_input_grad")?;
        self.map_f32("conv2d_input_grad", |dy| conv_grad::input_grad(dy, &w, params))
    }

    fn conv2d_weight_grad(&self, input: &Self, params: &Conv2dParams) -> Result<Self> {
        let x = input.f32s("conv2d_weight_grad")?;
        self.map_f32("conv2d_weight_grad", |dy| conv_grad::weight_grad(dy, &x, params))
    }

    fn max_pool2d_backward(&self, input: &Self, p: &MaxPool2dParams) -> Result<Self> {
        let x = input.f32s("max_pool2d_backward")?;
        self.map_f32("max_pool2d_backward", |dy| pool::max_pool2d_backward(&x, dy, p))
    }

    fn avg_pool2d(&self, p: &AvgPool2dParams) -> Result<Self> {
        self.map_f32("avg_pool2d", |x| pool::avg_pool2d(x, p))
    }

    fn avg_pool2d_backward(&self, p: &AvgPool2dParams) -> Result<Self> {
        self.map_f32("avg_pool2d_backward", |dy| pool::avg_pool2d_backward(dy, p))
    }

    fn adaptive_avg_pool2d(&self, p: &AdaptivePool2dParams) -> Result<Self> {
        self.map_f32("adaptive_avg_pool2d", |x| pool::adaptive_avg_pool2d(x, p))
    }

    fn adaptive_avg_pool2d_backward(&self, p: &AdaptivePool2dParams) -> Result<Self> {
        self.map_f32("adaptive_avg_pool2d_backward", |dy| pool::adaptive_avg_pool2d_backward(dy, p))
    }
}

impl CpuStorage {
    /// Three f32 results (a norm's dx, dweight, dbias) narrowed to `self`'s dtype.
    fn in_dtype(&self, (a, b, c): norm_grad::Outputs) -> (CpuStorage, CpuStorage, CpuStorage) {
        let d = self.dtype();
        (CpuStorage::from_f32(a, d), CpuStorage::from_f32(b, d), CpuStorage::from_f32(c, d))
    }
}
