//! The softmax backward, and cross-entropy with label smoothing and its backward.

use super::graph::Op;
use super::{Shape, Tensor};
use crate::device::{BackendStorage, DType};
use crate::error::{shape_err, Error, Result};

impl Tensor {
    /// dx of softmax (or, with `log`, log-softmax) over the last axis, from its output y = `self`
    /// and the upstream gradient `grad_out`: y·(g − Σ g·y), or g − exp(y)·Σ g.
    pub fn softmax_backward(&self, grad_out: &Tensor, log: bool) -> Result<Tensor> {
        let op = "softmax_backward";
        self.check_float(op)?;
        self.check_same(op, &[grad_out])?;
        let Some(&cols) = self.dims().last() else {
            return shape_err(op, "a scalar has no axis to take softmax over");
        };
        if grad_out.dims() != self.dims() {
            return shape_err(op, format!("grad_out {} must match y {}", grad_out.shape, self.shape));
        }
        let rows = self.numel() / cols.max(1);
        let dx = self.storage.softmax_backward(&grad_out.storage, rows, cols, log)?;
        Ok(Tensor::from_storage(dx, self.shape.clone()))
    }

    /// (rows, classes) of logits `self` with u32 `labels` (rows,) and smoothing ε in [0, 1].
    fn cross_entropy_shape(&self, op: &'static str, labels: &Tensor, smoothing: f32) -> Result<(usize, usize)> {
        self.check_float(op)?;
        let &[rows, classes] = self.dims() else {
            return shape_err(op, format!("logits {} must be (rows, classes)", self.shape));
        };
        if classes == 0 {
            return shape_err(op, format!("logits {} have no classes", self.shape));
        }
        self.check_operand(op, "labels", labels, DType::U32, &[rows])?;
        if !(0.0..=1.0).contains(&smoothing) {
            return Err(Error::Usage(format!("{op}: label smoothing {smoothing} is outside [0, 1]")));
        }
        Ok((rows, classes))
    }

    /// PyTorch's `F.cross_entropy(logits, labels, reduction='none', label_smoothing=ε)` of
    /// (rows, classes) logits `self` and u32 labels (rows,): per row, (1−ε)·(−log p_label) +
    /// ε·mean_j(−log p_j), as f32 (rows,). A label ≥ classes is an error on the CPU; on a GPU the
    /// labels are not read back to check, and such a row's loss is NaN.
    pub fn cross_entropy(&self, labels: &Tensor, smoothing: f32) -> Result<Tensor> {
        let (rows, classes) = self.cross_entropy_shape("cross_entropy", labels, smoothing)?;
        let loss = self.storage.cross_entropy(&labels.storage, rows, classes, smoothing)?;
        let loss = Tensor::from_storage(loss, Shape::new([rows]));
        Ok(loss.recorded(&[self], |_| Op::CrossEntropy { logits: self.clone(), labels: labels.detach(), smoothing }))
    }

    /// dlogits of `cross_entropy` for the f32 upstream gradient of each row's loss `grad_rows`
    /// (rows,): grad_rows[r]·(softmax − ((1−ε)·onehot(label) + ε/classes)), in the logits' dtype.
    /// Out-of-range labels as in `cross_entropy` (a GPU gives the row NaN).
    pub fn cross_entropy_backward(&self, labels: &Tensor, grad_rows: &Tensor, smoothing: f32) -> Result<Tensor> {
        let op = "cross_entropy_backward";
        let (rows, classes) = self.cross_entropy_shape(op, labels, smoothing)?;
        self.check_operand(op, "grad_rows", grad_rows, DType::F32, &[rows])?;
        let dz = self.storage.cross_entropy_backward(&labels.storage, &grad_rows.storage, rows, classes, smoothing)?;
        Ok(Tensor::from_storage(dz, self.shape.clone()))
    }
}
