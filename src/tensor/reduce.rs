//! Reductions over one axis, softmax and log-softmax.

use super::graph::{Link, Op};
use super::{Shape, Tensor};
use crate::device::{BackendStorage, ReduceOp, ReduceShape};
use crate::error::{shape_err, Result};

impl Tensor {
    fn reduce(&self, op: ReduceOp, axis: isize, keepdim: bool) -> Result<Tensor> {
        self.check_float("reduce")?;
        let a = self.shape.axis("reduce", axis)?;
        let (outer, len, inner) = self.shape.split_at_axis(a);
        if len == 0 && op != ReduceOp::Sum {
            return shape_err("reduce", format!("{op:?} over an empty axis of {}", self.shape));
        }
        let mut dims = self.dims().to_vec();
        if keepdim {
            dims[a] = 1;
        } else {
            dims.remove(a);
        }
        let storage = self.storage.reduce(op, ReduceShape { outer, len, inner })?;
        let out = Tensor::from_storage(storage, Shape::new(dims));
        Ok(match op {
            ReduceOp::Sum => out.recorded(&[self], |_| Op::Sum { x: Link::to(self), axis: a }),
            ReduceOp::Mean => out.recorded(&[self], |_| Op::Mean { x: Link::to(self), axis: a }),
            ReduceOp::Max => out.recorded(&[self], |_| Op::NotDifferentiable { op: "max", x: Link::to(self) }),
            ReduceOp::ArgMax => out,
        })
    }

    pub fn sum(&self, axis: isize, keepdim: bool) -> Result<Tensor> {
        self.reduce(ReduceOp::Sum, axis, keepdim)
    }

    pub fn mean(&self, axis: isize, keepdim: bool) -> Result<Tensor> {
        self.reduce(ReduceOp::Mean, axis, keepdim)
    }

    pub fn max(&self, axis: isize, keepdim: bool) -> Result<Tensor> {
        self.reduce(ReduceOp::Max, axis, keepdim)
    }

    /// Index of the first maximum along `axis`, as u32.
    pub fn argmax(&self, axis: isize, keepdim: bool) -> Result<Tensor> {
        self.reduce(ReduceOp::ArgMax, axis, keepdim)
    }

    fn softmax_impl(&self, axis: isize, log: bool) -> Result<Tensor> {
        self.check_float("softmax")?;
        let a = self.shape.axis("softmax", axis)?;
        let last = self.rank() - 1;
        if a != last {
            return self.transpose(a, last)?.softmax_impl(-1, log)?.transpose(a, last);
        }
        let cols = self.dims()[last];
        let rows = self.numel() / cols.max(1);
        let out = Tensor::from_storage(self.storage.softmax(rows, cols, log)?, self.shape.clone());
        Ok(out.recorded(&[self], |y| Op::Softmax { out: y.clone(), log }))
    }

    pub fn softmax(&self, axis: isize) -> Result<Tensor> {
        self.softmax_impl(axis, false)
    }

    pub fn log_softmax(&self, axis: isize) -> Result<Tensor> {
        self.softmax_impl(axis, true)
    }
}
