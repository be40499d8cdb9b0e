//! The backward ops of attention and of the embedding lookup: plain functions of the forward's
//! inputs and the upstream gradient, for the autograd engine to call.

use super::{Shape, Tensor};
use crate::device::{BackendStorage, DType};
use crate::error::{shape_err, Result};

impl Tensor {
    /// The gradients (dq, dk, dv) of `q.attention(k, v, mask, causal, scale)` (q is `self`)
    /// for the upstream gradient `grad_out`, shaped as q. The mask gets no gradient; a query
    /// whose keys are all masked gets zeros. CUDA handles head dims up to 160.
    pub fn attention_backward(
        &self,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        causal: bool,
        scale: Option<f32>,
        grad_out: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let op = "attention_backward";
        let (params, mask) = self.attention_params(op, k, v, mask, causal, scale)?;
        self.check_same(op, &[grad_out])?;
        if grad_out.dims() != self.dims() {
            return shape_err(op, format!("grad_out {} must have q's shape {}", grad_out.shape, self.shape));
        }
        let mask = mask.as_ref().map(|m| m.storage.as_ref());
        let (dq, dk, dv) = self.storage.attention_backward(&k.storage, &v.storage, mask, &grad_out.storage, &params)?;
        Ok((
            Tensor::from_storage(dq, self.shape.clone()),
            Tensor::from_storage(dk, k.shape.clone()),
            Tensor::from_storage(dv, v.shape.clone()),
        ))
    }

    /// The (vocab, dim) gradient of an embedding table looked up with the u32 `ids`, from the
    /// lookup's upstream gradient `grad_out` (ids.dims + (dim,)): row `id` sums the gradient
    /// rows of its occurrences. In the dtype of `grad_out`. On the CPU an id ≥ vocab is an
    /// error; CUDA skips it (checking would cost a copy to the host).
    pub fn embedding_backward(grad_out: &Tensor, ids: &Tensor, vocab: usize) -> Result<Tensor> {
        let op = "embedding_backward";
        grad_out.check_float(op)?;
        if ids.dtype() != DType::U32 {
            return shape_err(op, format!("ids must be u32, not {}", ids.dtype()));
        }
        let Some((&dim, lead)) = grad_out.dims().split_last() else {
            return shape_err(op, "grad_out is a scalar, not (ids..., dim)");
        };
        if lead != ids.dims() {
            return shape_err(op, format!("grad_out {} must be ids' shape {} plus (dim,)", grad_out.shape, ids.shape));
        }
        let out = grad_out.storage.embedding_backward(&ids.storage, vocab, dim)?;
        Ok(Tensor::from_storage(out, Shape::new([vocab, dim])))
    }
}
