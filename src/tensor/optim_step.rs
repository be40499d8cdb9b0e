//! The optimizers' fused in-place updates over flat f32 buffers (one backend call, one kernel
//! launch on CUDA, for all of a model's parameters), and the sum of squares behind the global
//! gradient norm. An updated tensor must hold the only reference to its storage: tensors are
//! otherwise immutable, and a clone or reshape elsewhere would see its values change.

use std::sync::Arc;

use super::{Shape, Tensor};
use crate::device::{AdamWStep, BackendStorage, DType, SgdStep, Storage};
use crate::error::{shape_err, Error, Result};

impl Tensor {
    /// One AdamW update (the formula is on `AdamWStep`) of the f32 master weights `self` and the
    /// moments `m` and `v`, in place, with the f32 gradients `grads`: all f32, on one device,
    /// with as many elements as `self`.
    pub fn adamw_step(&mut self, grads: &Tensor, m: &mut Tensor, v: &mut Tensor, step: &AdamWStep) -> Result<()> {
        const OP: &str = "adamw_step";
        self.check_flat(OP, &[grads, m, v])?;
        let p = sole(OP, "the weights", &mut self.storage)?;
        let (m, v) = (sole(OP, "the first moment", &mut m.storage)?, sole(OP, "the second moment", &mut v.storage)?);
        p.adamw_step(&grads.storage, m, v, step)
    }

    /// One SGD update (the formula is on `SgdStep`) of the f32 weights `self` and, when
    /// momentum is in use, its buffer, in place, with the f32 gradients `grads`: all f32, on one
    /// device, with as many elements as `self`.
    pub fn sgd_step(&mut self, grads: &Tensor, momentum: Option<&mut Tensor>, step: &SgdStep) -> Result<()> {
        const OP: &str = "sgd_step";
        let mut others = vec![grads];
        others.extend(momentum.as_deref());
        self.check_flat(OP, &others)?;
        let p = sole(OP, "the weights", &mut self.storage)?;
        let momentum = momentum.map(|b| sole(OP, "the momentum buffer", &mut b.storage)).transpose()?;
        p.sgd_step(&grads.storage, momentum, step)
    }

    /// Σ x² over every element, accumulated in f32, as an f32 scalar (shape []): the squared L2
    /// norm of the whole tensor.
    pub fn sum_squares(&self) -> Result<Tensor> {
        self.check_float("sum_squares")?;
        Ok(Tensor::from_storage(self.storage.sum_squares()?, Shape::new(vec![])))
    }

    /// Checks `self` and `others` are f32 buffers on one device with as many elements each.
    fn check_flat(&self, op: &'static str, others: &[&Tensor]) -> Result<()> {
        if self.dtype() != DType::F32 {
            return Err(Error::DType { op, dtype: self.dtype() });
        }
        self.check_same(op, others)?;
        if let Some(o) = others.iter().find(|o| o.numel() != self.numel()) {
            return shape_err(op, format!("{} elements against the weights' {}", o.numel(), self.numel()));
        }
        Ok(())
    }
}

/// The storage behind `storage` for an in-place update, or an error when another tensor shares it.
fn sole<'a>(op: &'static str, what: &str, storage: &'a mut Arc<Storage>) -> Result<&'a mut Storage> {
    Arc::get_mut(storage).ok_or_else(|| {
        Error::Usage(format!(
            "{op}: {what} share their storage with another tensor; an in-place update needs sole ownership"
        ))
    })
}
