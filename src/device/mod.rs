//! The device layer: the backend contract, the CPU backend (reference and
//! fallback) and the CUDA backend, and `Storage`, which holds a buffer on either
//! and dispatches every op of the contract to its backend.

pub mod contract;
pub mod cpu;
pub mod cuda;
mod dtype;

use std::fmt;
use std::sync::Arc;

pub use contract::*;
pub use cpu::CpuStorage;
pub use cuda::{CudaDevice, CudaStorage};
pub use dtype::DType;

use crate::error::{Error, Result};

/// Where a tensor lives.
#[derive(Clone)]
pub enum Device {
    Cpu,
    Cuda(Arc<CudaDevice>),
}

impl Device {
    /// The CUDA device `ordinal`, or an error that says in one line why there is none.
    pub fn cuda(ordinal: usize) -> Result<Device> {
        Ok(Device::Cuda(CudaDevice::open(ordinal)?))
    }

    /// The first GPU when one is usable, else the CPU together with the reason.
    pub fn best() -> (Device, Option<String>) {
        match Device::cuda(0) {
            Ok(dev) => (dev, None),
            Err(e) => (Device::Cpu, Some(e.to_string())),
        }
    }

    pub fn is_cuda(&self) -> bool {
        matches!(self, Device::Cuda(_))
    }

    pub fn same(&self, other: &Device) -> bool {
        match (self, other) {
            (Device::Cpu, Device::Cpu) => true,
            (Device::Cuda(a), Device::Cuda(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// Blocks until queued work on the device has finished.
    pub fn synchronize(&self) -> Result<()> {
        match self {
            Device::Cpu => Ok(()),
            Device::Cuda(d) => d.synchronize(),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(d) => write!(f, "cuda:{}", d.ordinal()),
        }
    }
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Host-side data of one dtype, to move into or out of a storage.
#[derive(Clone, Debug, PartialEq)]
pub enum HostData {
    F32(Vec<f32>),
    F16(Vec<half::f16>),
    BF16(Vec<half::bf16>),
    U32(Vec<u32>),
}

impl HostData {
    pub fn dtype(&self) -> DType {
        match self {
            HostData::F32(_) => DType::F32,
            HostData::F16(_) => DType::F16,
            HostData::BF16(_) => DType::BF16,
            HostData::U32(_) => DType::U32,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            HostData::F32(v) => v.len(),
            HostData::F16(v) => v.len(),
            HostData::BF16(v) => v.len(),
            HostData::U32(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A contiguous buffer on one device.
pub enum Storage {
    Cpu(CpuStorage),
    Cuda(CudaStorage),
}

impl Storage {
    pub fn from_host(data: HostData, device: &Device) -> Result<Storage> {
        match device {
            Device::Cpu => Ok(Storage::Cpu(CpuStorage::from_host(data))),
            Device::Cuda(d) => Ok(Storage::Cuda(d.upload(&data)?)),
        }
    }

    pub fn to_host(&self) -> Result<HostData> {
        match self {
            Storage::Cpu(s) => Ok(s.to_host()),
            Storage::Cuda(s) => s.download(),
        }
    }

    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Cuda(s) => Device::Cuda(s.device().clone()),
        }
    }
}

/// Unwraps same-backend operands, or reports the mismatch.
macro_rules! same_backend {
    ($op:expr, $self:expr, $other:expr, |$a:ident, $b:ident| $cpu:expr, $cuda:expr) => {
        match ($self, $other) {
            (Storage::Cpu($a), Storage::Cpu($b)) => $cpu.map(Storage::Cpu),
            (Storage::Cuda($a), Storage::Cuda($b)) => $cuda.map(Storage::Cuda),
            (l, r) => Err(Error::DeviceMismatch { op: $op, lhs: l.device().to_string(), rhs: r.device().to_string() }),
        }
    };
}

macro_rules! each_backend {
    ($self:expr, |$s:ident| $body:expr) => {
        match $self {
            Storage::Cpu($s) => $body.map(Storage::Cpu),
            Storage::Cuda($s) => $body.map(Storage::Cuda),
        }
    };
}

fn mismatch(op: &'static str, parts: &[&Storage]) -> Error {
    Error::DeviceMismatch {
        op,
        lhs: parts[0].device().to_string(),
        rhs: parts
            .iter()
            .map(|p| p.device().to_string())
            .find(|d| *d != parts[0].device().to_string())
            .unwrap_or_default(),
    }
}

/// An optional CPU operand: None when it is on another backend.
fn cpu_operand(s: Option<&Storage>) -> Option<Option<&CpuStorage>> {
    match s {
        None => Some(None),
        Some(Storage::Cpu(c)) => Some(Some(c)),
        Some(_) => None,
    }
}

/// An optional CUDA operand: None when it is on another backend.
fn cuda_operand(s: Option<&Storage>) -> Option<Option<&CudaStorage>> {
    match s {
        None => Some(None),
        Some(Storage::Cuda(c)) => Some(Some(c)),
        Some(_) => None,
    }
}

impl BackendStorage for Storage {
    fn dtype(&self) -> DType {
        match self {
            Storage::Cpu(s) => s.dtype(),
            Storage::Cuda(s) => s.dtype(),
        }
    }

    fn len(&self) -> usize {
        match self {
            Storage::Cpu(s) => s.len(),
            Storage::Cuda(s) => s.len(),
        }
    }

    fn zeros_like(&self, len: usize, dtype: DType) -> Result<Self> {
        each_backend!(self, |s| s.zeros_like(len, dtype))
    }

    fn to_dtype(&self, dtype: DType) -> Result<Self> {
        each_backend!(self, |s| s.to_dtype(dtype))
    }

    fn unary(&self, op: UnaryOp) -> Result<Self> {
        each_backend!(self, |s| s.unary(op))
    }

    fn scale(&self, factor: f32) -> Result<Self> {
        each_backend!(self, |s| s.scale(factor))
    }

    fn clamp(&self, lo: f32, hi: f32) -> Result<Self> {
        each_backend!(self, |s| s.clamp(lo, hi))
    }

    fn geglu(&self, rows: usize, d: usize) -> Result<Self> {
        each_backend!(self, |s| s.geglu(rows, d))
    }

    fn binary(&self, op: BinaryOp, rhs: &Self, layout: &BroadcastLayout) -> Result<Self> {
        same_backend!("binary", self, rhs, |a, b| a.binary(op, b, layout), a.binary(op, b, layout))
    }

    fn reduce(&self, op: ReduceOp, shape: ReduceShape) -> Result<Self> {
        each_backend!(self, |s| s.reduce(op, shape))
    }

    fn softmax(&self, rows: usize, cols: usize, log: bool) -> Result<Self> {
        each_backend!(self, |s| s.softmax(rows, cols, log))
    }

    fn matmul(&self, rhs: &Self, shape: &MatmulShape) -> Result<Self> {
        same_backend!("matmul", self, rhs, |a, b| a.matmul(b, shape), a.matmul(b, shape))
    }

    fn layer_norm(&self, weight: &Self, bias: &Self, rows: usize, cols: usize, eps: f32) -> Result<Self> {
        match (self, weight, bias) {
            (Storage::Cpu(x), Storage::Cpu(w), Storage::Cpu(b)) => {
                x.layer_norm(w, b, rows, cols, eps).map(Storage::Cpu)
            }
            (Storage::Cuda(x), Storage::Cuda(w), Storage::Cuda(b)) => {
                x.layer_norm(w, b, rows, cols, eps).map(Storage::Cuda)
            }
            _ => Err(mismatch("layer_norm", &[self, weight, bias])),
        }
    }

    fn group_norm(&self, weight: &Self, bias: &Self, shape: GroupNormShape) -> Result<Self> {
        match (self, weight, bias) {
            (Storage::Cpu(x), Storage::Cpu(w), Storage::Cpu(b)) => x.group_norm(w, b, shape).map(Storage::Cpu),
            (Storage::Cuda(x), Storage::Cuda(w), Storage::Cuda(b)) => x.group_norm(w, b, shape).map(Storage::Cuda),
            _ => Err(mismatch("group_norm", &[self, weight, bias])),
        }
    }

    fn conv2d(&self, weight: &Self, bias: Option<&Self>, params: &Conv2dParams) -> Result<Self> {
        match (self, weight, bias) {
            (Storage::Cpu(x), Storage::Cpu(w), None) => x.conv2d(w, None, params).map(Storage::Cpu),
            (Storage::Cpu(x), Storage::Cpu(w), Some(Storage::Cpu(b))) => x.conv2d(w, Some(b), params).map(Storage::Cpu),
            (Storage::Cuda(x), Storage::Cuda(w), None) => x.conv2d(w, None, params).map(Storage::Cuda),
            (Storage::Cuda(x), Storage::Cuda(w), Some(Storage::Cuda(b))) => {
                x.conv2d(w, Some(b), params).map(Storage::Cuda)
            }
            _ => {
                let mut parts = vec![self, weight];
                parts.extend(bias);
                Err(mismatch("conv2d", &parts))
            }
        }
    }

    fn upsample_nearest2x(&self, planes: usize, h: usize, w: usize) -> Result<Self> {
        each_backend!(self, |s| s.upsample_nearest2x(planes, h, w))
    }

    fn copy_strided(&self, dims: &[usize], strides: &[usize]) -> Result<Self> {
        each_backend!(self, |s| s.copy_strided(dims, strides))
    }

    fn copy2d_into(&self, dst: &mut Self, copy: Copy2d) -> Result<()> {
        match (self, dst) {
            (Storage::Cpu(s), Storage::Cpu(d)) => s.copy2d_into(d, copy),
            (Storage::Cuda(s), Storage::Cuda(d)) => s.copy2d_into(d, copy),
            (s, d) => {
                Err(Error::DeviceMismatch { op: "copy2d", lhs: s.device().to_string(), rhs: d.device().to_string() })
            }
        }
    }

    fn embedding(&self, ids: &Self, dim: usize) -> Result<Self> {
        same_backend!("embedding", self, ids, |t, i| t.embedding(i, dim), t.embedding(i, dim))
    }

    fn attention(&self, k: &Self, v: &Self, mask: Option<&Self>, params: &AttentionParams) -> Result<Self> {
        match (self, k, v, mask) {
            (Storage::Cpu(q), Storage::Cpu(k), Storage::Cpu(v), None) => {
                q.attention(k, v, None, params).map(Storage::Cpu)
            }
            (Storage::Cpu(q), Storage::Cpu(k), Storage::Cpu(v), Some(Storage::Cpu(m))) => {
                q.attention(k, v, Some(m), params).map(Storage::Cpu)
            }
            (Storage::Cuda(q), Storage::Cuda(k), Storage::Cuda(v), None) => {
                q.attention(k, v, None, params).map(Storage::Cuda)
            }
            (Storage::Cuda(q), Storage::Cuda(k), Storage::Cuda(v), Some(Storage::Cuda(m))) => {
                q.attention(k, v, Some(m), params).map(Storage::Cuda)
            }
            _ => {
                let mut parts = vec![self, k, v];
                parts.extend(mask);
                Err(mismatch("attention", &parts))
            }
        }
    }

    fn max_pool2d(&self, params: &MaxPool2dParams) -> Result<Self> {
        each_backend!(self, |s| s.max_pool2d(params))
    }

    fn scheduler_step(
        &self,
        model_out: &Self,
        noise: Option<&Self>,
        prev_x0: Option<&Self>,
        step: &SchedulerStep,
    ) -> Result<(Self, Option<Self>)> {
        match (self, model_out) {
            (Storage::Cpu(x), Storage::Cpu(m)) => {
                if let (Some(n), Some(p)) = (cpu_operand(noise), cpu_operand(prev_x0)) {
                    let (out, x0) = x.scheduler_step(m, n, p, step)?;
                    return Ok((Storage::Cpu(out), x0.map(Storage::Cpu)));
                }
            }
            (Storage::Cuda(x), Storage::Cuda(m)) => {
                if let (Some(n), Some(p)) = (cuda_operand(noise), cuda_operand(prev_x0)) {
                    let (out, x0) = x.scheduler_step(m, n, p, step)?;
                    return Ok((Storage::Cuda(out), x0.map(Storage::Cuda)));
                }
            }
            _ => {}
        }
        let mut parts = vec![self, model_out];
        parts.extend(noise);
        parts.extend(prev_x0);
        Err(mismatch("scheduler_step", &parts))
    }

    fn adamw_step(&mut self, grads: &Self, m: &mut Self, v: &mut Self, step: &AdamWStep) -> Result<()> {
        match (&mut *self, grads, &mut *m, &mut *v) {
            (Storage::Cpu(p), Storage::Cpu(g), Storage::Cpu(m), Storage::Cpu(v)) => p.adamw_step(g, m, v, step),
            (Storage::Cuda(p), Storage::Cuda(g), Storage::Cuda(m), Storage::Cuda(v)) => p.adamw_step(g, m, v, step),
            _ => Err(mismatch("adamw_step", &[&*self, grads, &*m, &*v])),
        }
    }

    fn sgd_step(&mut self, grads: &Self, momentum: Option<&mut Self>, step: &SgdStep) -> Result<()> {
        match (&mut *self, grads, momentum) {
            (Storage::Cpu(p), Storage::Cpu(g), None) => p.sgd_step(g, None, step),
            (Storage::Cpu(p), Storage::Cpu(g), Some(Storage::Cpu(b))) => p.sgd_step(g, Some(b), step),
            (Storage::Cuda(p), Storage::Cuda(g), None) => p.sgd_step(g, None, step),
            (Storage::Cuda(p), Storage::Cuda(g), Some(Storage::Cuda(b))) => p.sgd_step(g, Some(b), step),
            (_, _, b) => {
                let mut parts = vec![&*self, grads];
                parts.extend(b.map(|b| &*b));
                Err(mismatch("sgd_step", &parts))
            }
        }
    }

    fn sum_squares(&self) -> Result<Self> {
        each_backend!(self, |s| s.sum_squares())
    }

    fn attention_backward(
        &self,
        k: &Self,
        v: &Self,
        mask: Option<&Self>,
        grad_out: &Self,
        params: &AttentionParams,
    ) -> Result<(Self, Self, Self)> {
        match (self, k, v, grad_out) {
            (Storage::Cpu(q), Storage::Cpu(k), Storage::Cpu(v), Storage::Cpu(g)) => {
                if let Some(m) = cpu_operand(mask) {
                    let (dq, dk, dv) = q.attention_backward(k, v, m, g, params)?;
                    return Ok((Storage::Cpu(dq), Storage::Cpu(dk), Storage::Cpu(dv)));
                }
            }
            (Storage::Cuda(q), Storage::Cuda(k), Storage::Cuda(v), Storage::Cuda(g)) => {
                if let Some(m) = cuda_operand(mask) {
                    let (dq, dk, dv) = q.attention_backward(k, v, m, g, params)?;
                    return Ok((Storage::Cuda(dq), Storage::Cuda(dk), Storage::Cuda(dv)));
                }
            }
            _ => {}
        }
        let mut parts = vec![self, k, v, grad_out];
        parts.extend(mask);
        Err(mismatch("attention_backward", &parts))
    }

    fn embedding_backward(&self, ids: &Self, vocab: usize, dim: usize) -> Result<Self> {
        same_backend!(
            "embedding_backward",
            self,
            ids,
            |g, i| g.embedding_backward(i, vocab, dim),
            g.embedding_backward(i, vocab, dim)
        )
    }

    fn activation_backward(&self, op: UnaryOp, grad_out: &Self) -> Result<Self> {
        same_backend!(
            "activation_backward",
            self,
            grad_out,
            |x, g| x.activation_backward(op, g),
            x.activation_backward(op, g)
        )
    }

    fn clamp_backward(&self, lo: f32, hi: f32, grad_out: &Self) -> Result<Self> {
        same_backend!("clamp_backward", self, grad_out, |x, g| x.clamp_backward(lo, hi, g), x.clamp_backward(lo, hi, g))
    }

    fn geglu_backward(&self, grad_out: &Self, rows: usize, d: usize) -> Result<Self> {
        same_backend!(
            "geglu_backward",
            self,
            grad_out,
            |x, g| x.geglu_backward(g, rows, d),
            x.geglu_backward(g, rows, d)
        )
    }

    fn layer_norm_backward(
        &self,
        weight: &Self,
        grad_out: &Self,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<(Self, Self, Self)> {
        match (self, weight, grad_out) {
            (Storage::Cpu(x), Storage::Cpu(w), Storage::Cpu(g)) => x
                .layer_norm_backward(w, g, rows, cols, eps)
                .map(|(a, b, c)| (Storage::Cpu(a), Storage::Cpu(b), Storage::Cpu(c))),
            (Storage::Cuda(x), Storage::Cuda(w), Storage::Cuda(g)) => x
                .layer_norm_backward(w, g, rows, cols, eps)
                .map(|(a, b, c)| (Storage::Cuda(a), Storage::Cuda(b), Storage::Cuda(c))),
            _ => Err(mismatch("layer_norm_backward", &[self, weight, grad_out])),
        }
    }

    fn group_norm_backward(&self, weight: &Self, grad_out: &Self, shape: GroupNormShape) -> Result<(Self, Self, Self)> {
        match (self, weight, grad_out) {
            (Storage::Cpu(x), Storage::Cpu(w), Storage::Cpu(g)) => {
                x.group_norm_backward(w, g, shape).map(|(a, b, c)| (Storage::Cpu(a), Storage::Cpu(b), Storage::Cpu(c)))
            }
            (Storage::Cuda(x), Storage::Cuda(w), Storage::Cuda(g)) => x
                .group_norm_backward(w, g, shape)
                .map(|(a, b, c)| (Storage::Cuda(a), Storage::Cuda(b), Storage::Cuda(c))),
            _ => Err(mismatch("group_norm_backward", &[self, weight, grad_out])),
        }
    }

    fn batch_norm_train(&self, weight: &Self, bias: &Self, shape: BatchNormShape) -> Result<(Self, Self, Self)> {
        match (self, weight, bias) {
            (Storage::Cpu(x), Storage::Cpu(w), Storage::Cpu(b)) => {
                x.batch_norm_train(w, b, shape).map(|(a, b, c)| (Storage::Cpu(a), Storage::Cpu(b), Storage::Cpu(c)))
            }
            (Storage::Cuda(x), Storage::Cuda(w), Storage::Cuda(b)) => {
                x.batch_norm_train(w, b, shape).map(|(a, b, c)| (Storage::Cuda(a), Storage::Cuda(b), Storage::Cuda(c)))
            }
            _ => Err(mismatch("batch_norm_train", &[self, weight, bias])),
        }
    }

    fn batch_norm_backward(
        &self,
        weight: &Self,
        grad_out: &Self,
        mean: &Self,
        var: &Self,
        shape: BatchNormShape,
    ) -> Result<(Self, Self, Self)> {
        match (self, weight, grad_out, mean, var) {
            (Storage::Cpu(x), Storage::Cpu(w), Storage::Cpu(g), Storage::Cpu(m), Storage::Cpu(v)) => x
                .batch_norm_backward(w, g, m, v, shape)
                .map(|(a, b, c)| (Storage::Cpu(a), Storage::Cpu(b), Storage::Cpu(c))),
            (Storage::Cuda(x), Storage::Cuda(w), Storage::Cuda(g), Storage::Cuda(m), Storage::Cuda(v)) => x
                .batch_norm_backward(w, g, m, v, shape)
                .map(|(a, b, c)| (Storage::Cuda(a), Storage::Cuda(b), Storage::Cuda(c))),
            _ => Err(mismatch("batch_norm_backward", &[self, weight, grad_out, mean, var])),
        }
    }

    fn softmax_backward(&self, grad_out: &Self, rows: usize, cols: usize, log: bool) -> Result<Self> {
        same_backend!(
            "softmax_backward",
            self,
            grad_out,
            |y, g| y.softmax_backward(g, rows, cols, log),
            y.softmax_backward(g, rows, cols, log)
        )
    }

    fn cross_entropy(&self, labels: &Self, rows: usize, classes: usize, smoothing: f32) -> Result<Self> {
        same_backend!(
            "cross_entropy",
            self,
            labels,
            |z, l| z.cross_entropy(l, rows, classes, smoothing),
            z.cross_entropy(l, rows, classes, smoothing)
        )
    }

    fn cross_entropy_backward(
        &self,
        labels: &Self,
        grad_rows: &Self,
        rows: usize,
        classes: usize,
        smoothing: f32,
    ) -> Result<Self> {
        match (self, labels, grad_rows) {
            (Storage::Cpu(z), Storage::Cpu(l), Storage::Cpu(g)) => {
                z.cross_entropy_backward(l, g, rows, classes, smoothing).map(Storage::Cpu)
            }
            (Storage::Cuda(z), Storage::Cuda(l), Storage::Cuda(g)) => {
                z.cross_entropy_backward(l, g, rows, classes, smoothing).map(Storage::Cuda)
            }
            _ => Err(mismatch("cross_entropy_backward", &[self, labels, grad_rows])),
        }
    }

    fn conv2d_input_grad(&self, weight: &Self, params: &Conv2dParams) -> Result<Self> {
        same_backend!(
            "conv2d_input_grad",
            self,
            weight,
            |g, w| g.conv2d_input_grad(w, params),
            g.conv2d_input_grad(w, params)
        )
    }

    fn conv2d_weight_grad(&self, input: &Self, params: &Conv2dParams) -> Result<Self> {
        same_backend!(
            "conv2d_weight_grad",
            self,
            input,
            |g, x| g.conv2d_weight_grad(x, params),
            g.conv2d_weight_grad(x, params)
        )
    }

    fn max_pool2d_backward(&self, input: &Self, params: &MaxPool2dParams) -> Result<Self> {
        same_backend!(
            "max_pool2d_backward",
            self,
            input,
            |g, x| g.max_pool2d_backward(x, params),
            g.max_pool2d_backward(x, params)
        )
    }

    fn avg_pool2d(&self, params: &AvgPool2dParams) -> Result<Self> {
        each_backend!(self, |s| s.avg_pool2d(params))
    }

    fn avg_pool2d_backward(&self, params: &AvgPool2dParams) -> Result<Self> {
        each_backend!(self, |s| s.avg_pool2d_backward(params))
    }

    fn adaptive_avg_pool2d(&self, params: &AdaptivePool2dParams) -> Result<Self> {
        each_backend!(self, |s| s.adaptive_avg_pool2d(params))
    }

    fn adaptive_avg_pool2d_backward(&self, params: &AdaptivePool2dParams) -> Result<Self> {
        each_backend!(self, |s| s.adaptive_avg_pool2d_backward(params))
    }
}
