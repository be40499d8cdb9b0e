//! Layout ops: permute and transpose (a strided gather), concatenation, split
//! and narrow (rectangular copies).

use super::graph::{Link, Op};
use super::{Shape, Tensor};
use crate::device::{BackendStorage, Copy2d, MAX_DIMS};
use crate::error::{shape_err, Result};

impl Tensor {
    /// Dimensions reordered: output dimension i is input dimension `perm[i]`.
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        let rank = self.rank();
        let mut seen = vec![false; rank];
        if perm.len() != rank || perm.iter().any(|&p| p >= rank || std::mem::replace(&mut seen[p], true)) {
            return shape_err("permute", format!("{perm:?} is not a permutation of the dimensions of {}", self.shape));
        }
        if perm.iter().enumerate().all(|(i, &p)| i == p) {
            return Ok(self.clone());
        }
        let (dims, strides) = (self.dims(), self.shape.strides());
        let out: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
        // Merge output dimensions that stay contiguous in the input.
        let (mut cd, mut cs): (Vec<usize>, Vec<usize>) = (vec![], vec![]);
        for &p in perm.iter().filter(|&&p| dims[p] != 1) {
            match (cd.last_mut(), cs.last_mut()) {
                (Some(d), Some(s)) if *s == strides[p] * dims[p] => {
                    *d *= dims[p];
                    *s = strides[p];
                }
                _ => {
                    cd.push(dims[p]);
                    cs.push(strides[p]);
                }
            }
        }
        if cd.is_empty() {
            return self.reshape(out);
        }
        if cd.len() > MAX_DIMS {
            return shape_err("permute", format!("{perm:?} of {} needs more than {MAX_DIMS} dimensions", self.shape));
        }
        let out = Tensor::from_storage(self.storage.copy_strided(&cd, &cs)?, Shape::new(out));
        Ok(out.recorded(&[self], |_| Op::Permute { x: Link::to(self), perm: perm.to_vec() }))
    }

    /// The tensor repeated along its size-1 dimensions (and new leading ones) to
    /// `dims`, as NumPy's broadcast_to, made contiguous.
    pub fn broadcast_to(&self, dims: &[usize]) -> Result<Tensor> {
        let (rank, own) = (dims.len(), self.dims());
        if own.len() > rank || own.iter().rev().zip(dims.iter().rev()).any(|(&a, &b)| a != b && a != 1) {
            return shape_err("broadcast_to", format!("{} does not broadcast to {dims:?}", self.shape));
        }
        if own == dims {
            return Ok(self.clone());
        }
        let lead = rank - own.len();
        let strides = self.shape.strides();
        let (mut cd, mut cs): (Vec<usize>, Vec<usize>) = (vec![], vec![]);
        for (d, &n) in dims.iter().enumerate() {
            let s = if d < lead || own[d - lead] == 1 { 0 } else { strides[d - lead] };
            match (cd.last_mut(), cs.last_mut()) {
                (Some(pd), Some(ps)) if *ps == s * n => {
                    *pd *= n;
                    *ps = s;
                }
                _ if n == 1 => {}
                _ => {
                    cd.push(n);
                    cs.push(s);
                }
            }
        }
        if cd.is_empty() {
            return self.reshape(dims);
        }
        if cd.len() > MAX_DIMS {
            return shape_err(
                "broadcast_to",
                format!("{} to {dims:?} needs more than {MAX_DIMS} dimensions", self.shape),
            );
        }
        let out = Tensor::from_storage(self.storage.copy_strided(&cd, &cs)?, Shape::new(dims));
        Ok(out.recorded(&[self], |_| Op::BroadcastTo { x: Link::to(self) }))
    }

    /// Swaps two dimensions.
    pub fn transpose(&self, a: usize, b: usize) -> Result<Tensor> {
        if a >= self.rank() || b >= self.rank() {
            return shape_err("transpose", format!("dimensions {a} and {b} of {}", self.shape));
        }
        let mut perm: Vec<usize> = (0..self.rank()).collect();
        perm.swap(a, b);
        self.permute(&perm)
    }

    /// Tensors joined along `axis`; all other dimensions must match.
    pub fn cat(parts: &[&Tensor], axis: usize) -> Result<Tensor> {
        let Some(first) = parts.first() else {
            return shape_err("cat", "no tensors to concatenate");
        };
        first.check_same("cat", &parts[1..])?;
        let rank = first.rank();
        if axis >= rank {
            return shape_err("cat", format!("axis {axis} of {}", first.shape));
        }
        for p in parts {
            let same = p.rank() == rank && (0..rank).all(|d| d == axis || p.dims()[d] == first.dims()[d]);
            if !same {
                return shape_err("cat", format!("{} and {} differ off axis {axis}", first.shape, p.shape));
            }
        }
        let (outer, _, inner) = first.shape.split_at_axis(axis);
        let total: usize = parts.iter().map(|p| p.dims()[axis]).sum();
        let mut dims = first.dims().to_vec();
        dims[axis] = total;
        let mut out = first.storage.zeros_like(outer * total * inner, first.dtype())?;
        let mut offset = 0;
        for p in parts {
            let cols = p.dims()[axis] * inner;
            let copy = Copy2d {
                rows: outer,
                cols,
                src_pitch: cols,
                dst_pitch: total * inner,
                src_offset: 0,
                dst_offset: offset,
            };
            p.storage.copy2d_into(&mut out, copy)?;
            offset += cols;
        }
        let out = Tensor::from_storage(out, Shape::new(dims));
        Ok(out.recorded(parts, |_| Op::Cat { parts: parts.iter().map(|&p| Link::to(p)).collect(), axis }))
    }

    /// `len` entries of `axis` from `start`, as a new contiguous tensor.
    pub fn narrow(&self, axis: usize, start: usize, len: usize) -> Result<Tensor> {
        if axis >= self.rank() || start + len > self.dims()[axis] {
            return shape_err("narrow", format!("{start}..{} of axis {axis} of {}", start + len, self.shape));
        }
        let (outer, size, inner) = self.shape.split_at_axis(axis);
        let mut dims = self.dims().to_vec();
        dims[axis] = len;
        let mut out = self.storage.zeros_like(outer * len * inner, self.dtype())?;
        let copy = Copy2d {
            rows: outer,
            cols: len * inner,
            src_pitch: size * inner,
            dst_pitch: len * inner,
            src_offset: start * inner,
            dst_offset: 0,
        };
        self.storage.copy2d_into(&mut out, copy)?;
        let out = Tensor::from_storage(out, Shape::new(dims));
        Ok(out.recorded(&[self], |_| Op::Narrow { x: Link::to(self), axis, start }))
    }

    /// Consecutive pieces of `axis` with the given sizes, which must add up to it.
    pub fn split(&self, sizes: &[usize], axis: usize) -> Result<Vec<Tensor>> {
        if axis >= self.rank() || sizes.iter().sum::<usize>() != self.dims()[axis] {
            return shape_err("split", format!("sizes {sizes:?} along axis {axis} of {}", self.shape));
        }
        let mut start = 0;
        sizes
            .iter()
            .map(|&len| {
                let t = self.narrow(axis, start, len);
                start += len;
                t
            })
            .collect()
    }
}
