//! Matrix multiplication.

use super::graph::Op;
use super::{Shape, Tensor};
use crate::device::{BackendStorage, MatmulShape};
use crate::error::{shape_err, Result};

impl Tensor {
    /// self · rhs over the last two dimensions, batched over the rest.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.matmul_t(rhs, false, false)
    }

    /// op(self) · op(rhs), where op transposes the last two dimensions when asked
    /// (without copying). Leading dimensions are the batch: equal, or absent or
    /// all 1 on one side, which then is shared across the batch (a weight).
    pub fn matmul_t(&self, rhs: &Tensor, trans_a: bool, trans_b: bool) -> Result<Tensor> {
        self.check_float("matmul")?;
        self.check_same("matmul", &[rhs])?;
        let (a, b) = (self.dims(), rhs.dims());
        if a.len() < 2 || b.len() < 2 {
            return shape_err("matmul", format!("operands need two dimensions, got {} and {}", self.shape, rhs.shape));
        }
        let (ra, ca) = (a[a.len() - 2], a[a.len() - 1]);
        let (rb, cb) = (b[b.len() - 2], b[b.len() - 1]);
        let (m, k) = if trans_a { (ca, ra) } else { (ra, ca) };
        let (kb, n) = if trans_b { (cb, rb) } else { (rb, cb) };
        if k != kb {
            return shape_err(
                "matmul",
                format!("inner dimensions differ: {} · {} (transposed: {trans_a}, {trans_b})", self.shape, rhs.shape),
            );
        }
        let (batch_a, batch_b) = (&a[..a.len() - 2], &b[..b.len() - 2]);
        let (na, nb): (usize, usize) = (batch_a.iter().product(), batch_b.iter().product());
        let batch_dims = if batch_a == batch_b || nb == 1 {
            batch_a
        } else if na == 1 {
            batch_b
        } else {
            return shape_err("matmul", format!("batch dimensions of {} and {} differ", self.shape, rhs.shape));
        };
        let batch = na.max(nb);
        let shape = MatmulShape {
            batch,
            m,
            n,
            k,
            trans_a,
            trans_b,
            a_batch_stride: if na == 1 { 0 } else { m * k },
            b_batch_stride: if nb == 1 { 0 } else { k * n },
        };
        let out = Shape::new([batch_dims, &[m, n]].concat());
        let out = Tensor::from_storage(self.storage.matmul(&rhs.storage, &shape)?, out);
        Ok(out.recorded(&[self, rhs], |_| Op::Matmul { a: self.clone(), b: rhs.clone(), trans_a, trans_b }))
    }
}
