//! Backward passes of layer, group and batch norm, and batch norm's training-mode forward.
//! Each backward returns (dx, dweight, dbias) in the input's dtype.

use super::graph::Op;
use super::{Shape, Tensor};
use crate::device::{BackendStorage, BatchNormShape, DType, GroupNormShape, Storage};
use crate::error::{shape_err, Error, Result};

/// Batch norm's training-mode forward: the output and the batch statistics that normalised it.
pub struct BatchNormTrain {
    pub out: Tensor,
    /// Per-channel mean, f32 (c,).
    pub mean: Tensor,
    /// Per-channel biased variance (÷ n·spatial), f32 (c,): the one that normalises. PyTorch's
    /// running statistics take the unbiased one, var·m/(m − 1).
    pub var: Tensor,
}

impl Tensor {
    /// Checks that `t` is on `self`'s device with the given dtype and dims; `what` names it.
    pub(super) fn check_operand(
        &self,
        op: &'static str,
        what: &str,
        t: &Tensor,
        dtype: DType,
        dims: &[usize],
    ) -> Result<()> {
        if !self.device().same(&t.device()) {
            return Err(Error::DeviceMismatch { op, lhs: self.device().to_string(), rhs: t.device().to_string() });
        }
        if t.dtype() != dtype || t.dims() != dims {
            return shape_err(
                op,
                format!("{what} is {} {}, expected {dtype} {}", t.dtype(), t.shape, Shape::new(dims)),
            );
        }
        Ok(())
    }

    /// (n, c, spatial) of an (n, c, ...) input.
    fn batch_channels(&self, op: &'static str) -> Result<(usize, usize, usize)> {
        let d = self.dims();
        if d.len() < 2 {
            return shape_err(op, format!("input {} needs (n, c, ...)", self.shape));
        }
        Ok((d[0], d[1], d[2..].iter().product()))
    }

    /// (dx, dweight, dbias) as tensors: dx of `self`'s shape, the parameter gradients (len,).
    fn norm_grads(&self, (dx, dw, db): (Storage, Storage, Storage), len: usize) -> (Tensor, Tensor, Tensor) {
        (
            Tensor::from_storage(dx, self.shape.clone()),
            Tensor::from_storage(dw, Shape::new([len])),
            Tensor::from_storage(db, Shape::new([len])),
        )
    }

    /// (dx, dweight, dbias) of `x.layer_norm(weight, bias, eps)` (x = `self`) for the upstream
    /// gradient `grad_out`; the row statistics are recomputed from x.
    pub fn layer_norm_backward(
        &self,
        weight: &Tensor,
        grad_out: &Tensor,
        eps: f32,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let op = "layer_norm_backward";
        self.check_float(op)?;
        self.check_same(op, &[weight, grad_out])?;
        let cols = *self.dims().last().unwrap_or(&1);
        if weight.dims() != [cols] || grad_out.dims() != self.dims() {
            return shape_err(
                op,
                format!(
                    "weight {} must be ({cols},) and grad_out {} match x {}",
                    weight.shape, grad_out.shape, self.shape
                ),
            );
        }
        let rows = self.numel() / cols.max(1);
        let grads = self.storage.layer_norm_backward(&weight.storage, &grad_out.storage, rows, cols, eps)?;
        Ok(self.norm_grads(grads, cols))
    }

    /// (dx, dweight, dbias) of `x.group_norm(groups, weight, bias, eps)` (x = `self`, (n, c, ...))
    /// for the upstream gradient `grad_out`.
    pub fn group_norm_backward(
        &self,
        groups: usize,
        weight: &Tensor,
        grad_out: &Tensor,
        eps: f32,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let op = "group_norm_backward";
        self.check_float(op)?;
        self.check_same(op, &[weight, grad_out])?;
        let (n, c, spatial) = self.batch_channels(op)?;
        if groups == 0 || c % groups != 0 {
            return shape_err(op, format!("{c} channels do not split into {groups} groups"));
        }
        if weight.dims() != [c] || grad_out.dims() != self.dims() {
            return shape_err(
                op,
                format!(
                    "weight {} must be ({c},) and grad_out {} match x {}",
                    weight.shape, grad_out.shape, self.shape
                ),
            );
        }
        let shape = GroupNormShape { n, c, spatial, groups, eps };
        let grads = self.storage.group_norm_backward(&weight.storage, &grad_out.storage, shape)?;
        Ok(self.norm_grads(grads, c))
    }

    /// The shape of batch norm over `self` (n, c, ...), which needs two values a channel at least
    /// (as in PyTorch's training mode: one value has no variance to normalise by).
    fn batch_norm_shape(&self, op: &'static str, same: &[&Tensor], eps: f32) -> Result<BatchNormShape> {
        self.check_float(op)?;
        self.check_same(op, same)?;
        let (n, c, spatial) = self.batch_channels(op)?;
        if n * spatial < 2 {
            return shape_err(op, format!("input {}: training needs more than one value per channel", self.shape));
        }
        Ok(BatchNormShape { n, c, spatial, eps })
    }

    /// Batch norm of (n, c, ...) in training mode, as PyTorch's BatchNorm in `train()`: each channel
    /// is normalised by the mean and biased variance of its n·spatial values in this batch, then
    /// scaled by `weight` and shifted by `bias` ((c,) each). The statistics are f32 whatever the
    /// input's dtype; updating running statistics is the caller's.
    pub fn batch_norm_train(&self, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<BatchNormTrain> {
        let op = "batch_norm_train";
        let shape = self.batch_norm_shape(op, &[weight, bias], eps)?;
        if weight.dims() != [shape.c] || bias.dims() != [shape.c] {
            return shape_err(op, format!("weight {} and bias {} must be ({},)", weight.shape, bias.shape, shape.c));
        }
        let (out, mean, var) = self.storage.batch_norm_train(&weight.storage, &bias.storage, shape)?;
        let (mean, var) =
            (Tensor::from_storage(mean, Shape::new([shape.c])), Tensor::from_storage(var, Shape::new([shape.c])));
        let out = Tensor::from_storage(out, self.shape.clone()).recorded(&[self, weight, bias], |_| Op::BatchNorm {
            x: self.clone(),
            weight: weight.clone(),
            bias: bias.clone(),
            mean: mean.clone(),
            var: var.clone(),
            eps,
        });
        Ok(BatchNormTrain { out, mean, var })
    }

    /// (dx, dweight, dbias) of `batch_norm_train` (x = `self`) through the batch statistics, for the
    /// upstream gradient `grad_out`, given the `mean` and `var` it returned.
    pub fn batch_norm_backward(
        &self,
        weight: &Tensor,
        grad_out: &Tensor,
        mean: &Tensor,
        var: &Tensor,
        eps: f32,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let op = "batch_norm_backward";
        let shape = self.batch_norm_shape(op, &[weight, grad_out], eps)?;
        if weight.dims() != [shape.c] || grad_out.dims() != self.dims() {
            return shape_err(
                op,
                format!(
                    "weight {} must be ({},) and grad_out {} match x {}",
                    weight.shape, shape.c, grad_out.shape, self.shape
                ),
            );
        }
        self.check_operand(op, "mean", mean, DType::F32, &[shape.c])?;
        self.check_operand(op, "var", var, DType::F32, &[shape.c])?;
        let grads =
            self.storage.batch_norm_backward(&weight.storage, &grad_out.storage, &mean.storage, &var.storage, shape)?;
        Ok(self.norm_grads(grads, shape.c))
    }
}
