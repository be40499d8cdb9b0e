//! Activations, scaling, clamping, GEGLU, and binary arithmetic with NumPy broadcasting.

use super::graph::{Link, Op};
use super::{Shape, Tensor};
use crate::device::{BackendStorage, BinaryOp, BroadcastLayout, UnaryOp, MAX_DIMS};
use crate::error::{shape_err, Error, Result};

/// The broadcast output shape of `a` and `b` and the collapsed layout the
/// backends iterate: size-1 dimensions dropped, runs that are contiguous in
/// both operands merged, so most cases become one or two dimensions.
pub(crate) fn broadcast_layout(op: &'static str, a: &Shape, b: &Shape) -> Result<(Shape, BroadcastLayout)> {
    let rank = a.rank().max(b.rank());
    let pad = |s: &Shape| -> (Vec<usize>, Vec<usize>) {
        let lead = rank - s.rank();
        let dims = [vec![1; lead], s.dims().to_vec()].concat();
        let strides = [vec![0; lead], s.strides()].concat();
        (dims, strides)
    };
    let ((da, sa), (db, sb)) = (pad(a), pad(b));
    let mut out = Vec::with_capacity(rank);
    let mut layout = BroadcastLayout { dims: vec![], lhs_strides: vec![], rhs_strides: vec![] };
    for d in 0..rank {
        let n = match (da[d], db[d]) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return shape_err(op, format!("shapes {a} and {b} do not broadcast")),
        };
        out.push(n);
        if n == 1 {
            continue;
        }
        let (ls, rs) = (if da[d] == 1 { 0 } else { sa[d] }, if db[d] == 1 { 0 } else { sb[d] });
        let l = &mut layout;
        let last = l.dims.len().wrapping_sub(1);
        if !l.dims.is_empty() && l.lhs_strides[last] == ls * n && l.rhs_strides[last] == rs * n {
            l.dims[last] *= n;
            l.lhs_strides[last] = ls;
            l.rhs_strides[last] = rs;
        } else {
            l.dims.push(n);
            l.lhs_strides.push(ls);
            l.rhs_strides.push(rs);
        }
    }
    if layout.dims.is_empty() {
        layout = BroadcastLayout { dims: vec![1], lhs_strides: vec![0], rhs_strides: vec![0] };
    }
    if layout.dims.len() > MAX_DIMS {
        return shape_err(op, format!("broadcasting {a} with {b} needs more than {MAX_DIMS} dimensions"));
    }
    Ok((Shape::new(out), layout))
}

impl Tensor {
    fn unary(&self, op: UnaryOp) -> Result<Tensor> {
        self.check_float("activation")?;
        let out = Tensor::from_storage(self.storage.unary(op)?, self.shape.clone());
        Ok(out.recorded(&[self], |y| match op {
            UnaryOp::Relu => Op::Relu { x: Link::to(self), out: y.clone() },
            _ => Op::Unary { x: self.clone(), op },
        }))
    }

    pub fn silu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Silu)
    }

    /// GELU, exact (erf) form.
    pub fn gelu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Gelu)
    }

    /// GELU, tanh approximation.
    pub fn gelu_tanh(&self) -> Result<Tensor> {
        self.unary(UnaryOp::GeluTanh)
    }

    pub fn quick_gelu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::QuickGelu)
    }

    pub fn relu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Relu)
    }

    pub fn scale(&self, factor: f32) -> Result<Tensor> {
        self.check_float("scale")?;
        let out = Tensor::from_storage(self.storage.scale(factor)?, self.shape.clone());
        Ok(out.recorded(&[self], |_| Op::Scale { x: Link::to(self), factor }))
    }

    /// x·a + b elementwise (b broadcast as a one-element tensor of x's dtype).
    pub fn affine(&self, a: f32, b: f32) -> Result<Tensor> {
        let b = Tensor::from_f32(vec![b], [1], &self.device())?.to_dtype(self.dtype())?;
        self.scale(a)?.add(&b)
    }

    /// min(max(x, lo), hi) elementwise, as torch.clamp: NaN stays NaN, and lo > hi gives hi.
    pub fn clamp(&self, lo: f32, hi: f32) -> Result<Tensor> {
        self.check_float("clamp")?;
        if lo.is_nan() || hi.is_nan() {
            return Err(Error::Usage(format!("clamp: bounds must be numbers, got [{lo}, {hi}]")));
        }
        let out = Tensor::from_storage(self.storage.clamp(lo, hi)?, self.shape.clone());
        Ok(out.recorded(&[self], |_| Op::Clamp { x: self.clone(), lo, hi }))
    }

    /// GEGLU of (..., 2·d) into (..., d): h · gelu(g) with [h, g] the two halves of the last
    /// axis and the exact (erf) GELU, as diffusers' GEGLU after its projection.
    pub fn geglu(&self) -> Result<Tensor> {
        self.check_float("geglu")?;
        let Some((&last, lead)) = self.dims().split_last() else {
            return shape_err("geglu", "a scalar has no last axis to halve");
        };
        if last % 2 != 0 {
            return shape_err("geglu", format!("last axis of {} is odd, so it does not halve", self.shape));
        }
        let (rows, d) = (lead.iter().product(), last / 2);
        let dims = [lead, &[d]].concat();
        let out = Tensor::from_storage(self.storage.geglu(rows, d)?, Shape::new(dims));
        Ok(out.recorded(&[self], |_| Op::Geglu { x: self.clone() }))
    }

    fn binary(&self, op: BinaryOp, rhs: &Tensor) -> Result<Tensor> {
        self.check_float("binary")?;
        self.check_same("binary", &[rhs])?;
        let (shape, layout) = broadcast_layout("binary", &self.shape, &rhs.shape)?;
        let out = Tensor::from_storage(self.storage.binary(op, &rhs.storage, &layout)?, shape);
        Ok(out.recorded(&[self, rhs], |_| match op {
            BinaryOp::Add | BinaryOp::Sub => {
                Op::AddSub { lhs: Link::to(self), rhs: Link::to(rhs), sub: op == BinaryOp::Sub }
            }
            BinaryOp::Mul | BinaryOp::Div => Op::MulDiv { lhs: self.clone(), rhs: rhs.clone(), op },
        }))
    }

    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Add, rhs)
    }

    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Sub, rhs)
    }

    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Mul, rhs)
    }

    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Div, rhs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(a: &[usize], b: &[usize]) -> (Vec<usize>, BroadcastLayout) {
        let (s, l) = broadcast_layout("test", &Shape::from(a), &Shape::from(b)).unwrap();
        (s.dims().to_vec(), l)
    }

    #[test]
    fn same_shapes_collapse_to_one_dimension() {
        let (s, l) = layout(&[2, 3, 4], &[2, 3, 4]);
        assert_eq!(s, vec![2, 3, 4]);
        assert_eq!((l.dims, l.lhs_strides, l.rhs_strides), (vec![24], vec![1], vec![1]));
    }

    #[test]
    fn bias_over_leading_dimensions() {
        let (s, l) = layout(&[5, 7, 3], &[3]);
        assert_eq!(s, vec![5, 7, 3]);
        assert_eq!((l.dims, l.lhs_strides, l.rhs_strides), (vec![35, 3], vec![3, 1], vec![0, 1]));
    }

    #[test]
    fn channel_bias_in_nchw() {
        let (_, l) = layout(&[2, 4, 3, 3], &[4, 1, 1]);
        assert_eq!((l.dims, l.lhs_strides, l.rhs_strides), (vec![2, 4, 9], vec![36, 9, 1], vec![0, 1, 0]));
    }

    #[test]
    fn incompatible_shapes_are_an_error() {
        assert!(broadcast_layout("t", &Shape::from([2, 3]), &Shape::from([4])).is_err());
    }
}
