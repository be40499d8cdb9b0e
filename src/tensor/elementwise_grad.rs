//! The backward ops of the elementwise activations, clamp and GEGLU: dx from the forward's
//! input x (`self`) and the upstream gradient, for the autograd engine to call.

use super::Tensor;
use crate::device::{BackendStorage, UnaryOp};
use crate::error::{shape_err, Error, Result};

impl Tensor {
    /// Checks of a backward op whose upstream gradient must have x's shape.
    fn check_grad_like(&self, op: &'static str, grad_out: &Tensor) -> Result<()> {
        self.check_float(op)?;
        self.check_same(op, &[grad_out])?;
        if grad_out.dims() != self.dims() {
            return shape_err(op, format!("grad_out {} must have the input's shape {}", grad_out.shape, self.shape));
        }
        Ok(())
    }

    /// dx of `x.silu()`, `gelu()`, `gelu_tanh()`, `quick_gelu()` or `relu()` (x is `self`)
    /// for the upstream gradient `grad_out`; relu'(0) = 0, as PyTorch.
    pub fn activation_backward(&self, op: UnaryOp, grad_out: &Tensor) -> Result<Tensor> {
        self.check_grad_like("activation_backward", grad_out)?;
        Ok(Tensor::from_storage(self.storage.activation_backward(op, &grad_out.storage)?, self.shape.clone()))
    }

    /// dx of `x.clamp(lo, hi)` (x is `self`): `grad_out` where lo ≤ x ≤ hi, bounds included as
    /// PyTorch does, else 0.
    pub fn clamp_backward(&self, lo: f32, hi: f32, grad_out: &Tensor) -> Result<Tensor> {
        self.check_grad_like("clamp_backward", grad_out)?;
        if lo.is_nan() || hi.is_nan() {
            return Err(Error::Usage(format!("clamp_backward: bounds must be numbers, got [{lo}, {hi}]")));
        }
        Ok(Tensor::from_storage(self.storage.clamp_backward(lo, hi, &grad_out.storage)?, self.shape.clone()))
    }

    /// dx (…, 2·d) of `x.geglu()` (x is `self`) for the (…, d) upstream gradient `grad_out`.
    pub fn geglu_backward(&self, grad_out: &Tensor) -> Result<Tensor> {
        let op = "geglu_backward";
        self.check_float(op)?;
        self.check_same(op, &[grad_out])?;
        let Some((&last, lead)) = self.dims().split_last() else {
            return shape_err(op, "a scalar has no last axis to halve");
        };
        if last % 2 != 0 {
            return shape_err(op, format!("last axis of {} is odd, so it does not halve", self.shape));
        }
        let (rows, d) = (lead.iter().product(), last / 2);
        if grad_out.dims() != [lead, &[d]].concat() {
            return shape_err(
                op,
                format!("grad_out {} must be the input {} with its last axis halved", grad_out.shape, self.shape),
            );
        }
        Ok(Tensor::from_storage(self.storage.geglu_backward(&grad_out.storage, rows, d)?, self.shape.clone()))
    }
}
