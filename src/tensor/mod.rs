//! The tensor layer: a shape and a dtype over a contiguous storage on a device.
//! Every op is defined once here (shape checks, output shape) and computed by
//! the backend of the device the tensor lives on. Tensors are immutable and
//! cheap to clone: ops return new tensors, reshapes share storage.

pub(crate) mod atomic_file;
mod attention_grad;
mod conv_grad;
mod elementwise;
mod elementwise_grad;
pub mod graph;
pub mod image;
mod layout;
mod linalg;
mod nn;
mod optim_step;
mod pool;
pub mod random;
mod reduce;
pub mod safetensors;
mod scheduler_step;
mod shape;

mod loss;
mod norm_grad;
pub use norm_grad::BatchNormTrain;

use std::sync::Arc;

pub use atomic_file::write_text_atomically;
pub use nn::Conv2dOptions;
pub use random::Rng;
pub use shape::Shape;

use crate::device::{BackendStorage, DType, Device, HostData, Storage};
use crate::error::{shape_err, Error, Result};

#[derive(Clone)]
pub struct Tensor {
    storage: Arc<Storage>,
    shape: Shape,
    /// How autograd reaches this tensor: None unless it is tracked (see graph.rs).
    node: Option<Arc<graph::Node>>,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({}, {}, {})", self.shape, self.dtype(), self.device())
    }
}

impl Tensor {
    fn from_storage(storage: Storage, shape: Shape) -> Tensor {
        Tensor { storage: Arc::new(storage), shape, node: None }
    }

    /// A tensor of the given host data; its dtype is the data's.
    pub fn from_host(data: HostData, shape: impl Into<Shape>, device: &Device) -> Result<Tensor> {
        let shape = shape.into();
        if data.len() != shape.numel() {
            return shape_err("from_host", format!("{} values for shape {shape}", data.len()));
        }
        Ok(Tensor::from_storage(Storage::from_host(data, device)?, shape))
    }

    pub fn from_f32(data: Vec<f32>, shape: impl Into<Shape>, device: &Device) -> Result<Tensor> {
        Tensor::from_host(HostData::F32(data), shape, device)
    }

    pub fn from_u32(data: Vec<u32>, shape: impl Into<Shape>, device: &Device) -> Result<Tensor> {
        Tensor::from_host(HostData::U32(data), shape, device)
    }

    pub fn zeros(shape: impl Into<Shape>, dtype: DType, device: &Device) -> Result<Tensor> {
        let shape = shape.into();
        let data = match dtype {
            DType::F32 => HostData::F32(vec![0.0; shape.numel()]),
            DType::F16 => HostData::F16(vec![half::f16::ZERO; shape.numel()]),
            DType::BF16 => HostData::BF16(vec![half::bf16::ZERO; shape.numel()]),
            DType::U32 => HostData::U32(vec![0; shape.numel()]),
        };
        Tensor::from_host(data, shape, device)
    }

    /// Standard-normal values from `rng`, generated on the host so every backend
    /// sees the same numbers for the same seed.
    pub fn randn(shape: impl Into<Shape>, rng: &mut Rng, device: &Device) -> Result<Tensor> {
        let shape = shape.into();
        let data = (0..shape.numel()).map(|_| rng.normal()).collect();
        Tensor::from_f32(data, shape, device)
    }

    /// Uniform values in [lo, hi) from `rng`.
    pub fn rand_uniform(shape: impl Into<Shape>, lo: f32, hi: f32, rng: &mut Rng, device: &Device) -> Result<Tensor> {
        let shape = shape.into();
        let data = (0..shape.numel()).map(|_| lo + (hi - lo) * rng.uniform()).collect();
        Tensor::from_f32(data, shape, device)
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }

    pub fn rank(&self) -> usize {
        self.shape.rank()
    }

    pub fn numel(&self) -> usize {
        self.shape.numel()
    }

    pub fn dtype(&self) -> DType {
        self.storage.dtype()
    }

    pub fn device(&self) -> Device {
        self.storage.device()
    }

    /// The buffer behind the tensor, for code that calls a backend directly
    /// (the benchmarks' cuBLAS and copy-bandwidth references).
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The values on the host, in the tensor's dtype.
    pub fn to_host(&self) -> Result<HostData> {
        self.storage.to_host()
    }

    /// The values as f32 on the host, whatever the dtype.
    pub fn to_vec_f32(&self) -> Result<Vec<f32>> {
        match self.to_dtype(DType::F32)?.to_host()? {
            HostData::F32(v) => Ok(v),
            _ => unreachable!("to_dtype(F32) returns f32 data"),
        }
    }

    pub fn to_vec_u32(&self) -> Result<Vec<u32>> {
        match self.to_host()? {
            HostData::U32(v) => Ok(v),
            _ => Err(Error::DType { op: "to_vec_u32", dtype: self.dtype() }),
        }
    }

    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        if self.device().same(device) {
            return Ok(self.clone());
        }
        Tensor::from_host(self.to_host()?, self.shape.clone(), device)
    }

    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        let out = Tensor::from_storage(self.storage.to_dtype(dtype)?, self.shape.clone());
        Ok(out.recorded(&[self], |_| graph::Op::ToDtype { x: graph::Link::to(self) }))
    }

    /// The same values under another shape of as many elements; shares storage.
    /// One dimension may be `usize::MAX`, meaning "whatever is left".
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let mut dims = shape.into().dims().to_vec();
        let known: usize = dims.iter().filter(|&&d| d != usize::MAX).product();
        let holes = dims.iter().filter(|&&d| d == usize::MAX).count();
        if holes > 1 || (holes == 1 && (known == 0 || !self.numel().is_multiple_of(known))) {
            return shape_err("reshape", format!("cannot infer a dimension of {dims:?} from {}", self.shape));
        }
        for d in dims.iter_mut().filter(|d| **d == usize::MAX) {
            *d = self.numel() / known;
        }
        let shape = Shape::new(dims);
        if shape.numel() != self.numel() {
            return shape_err("reshape", format!("{} to {shape}: element counts differ", self.shape));
        }
        let out = Tensor { storage: self.storage.clone(), shape, node: None };
        Ok(out.recorded(&[self], |_| graph::Op::Reshape { x: graph::Link::to(self) }))
    }

    /// Checks that every tensor shares `self`'s device and dtype.
    pub(crate) fn check_same(&self, op: &'static str, others: &[&Tensor]) -> Result<()> {
        for o in others {
            if !self.device().same(&o.device()) {
                return Err(Error::DeviceMismatch { op, lhs: self.device().to_string(), rhs: o.device().to_string() });
            }
            if o.dtype() != self.dtype() {
                return shape_err(op, format!("dtypes differ: {} and {}", self.dtype(), o.dtype()));
            }
        }
        Ok(())
    }

    pub(crate) fn check_float(&self, op: &'static str) -> Result<()> {
        if self.dtype().is_float() {
            Ok(())
        } else {
            Err(Error::DType { op, dtype: self.dtype() })
        }
    }
}
