//! Pooling over the last two dimensions, and the gradients of each pooling (the backward ops
//! autograd calls).

use super::graph::{Link, Op};
use super::{Shape, Tensor};
use crate::device::{AdaptivePool2dParams, BackendStorage, MaxPool2dParams};
use crate::error::{shape_err, Result};

/// The checked windows of `kernel`×`kernel` pooling at `stride` with `padding` over the last two
/// of `dims`, and the output's dims. As in PyTorch, `padding` may be at most `kernel / 2`.
fn pool_windows(
    op: &'static str,
    dims: &[usize],
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<(MaxPool2dParams, Vec<usize>)> {
    let shape = Shape::new(dims);
    if dims.len() < 2 {
        return shape_err(op, format!("input {shape} needs two spatial dimensions"));
    }
    if kernel == 0 || stride == 0 || padding > kernel / 2 {
        return shape_err(
            op,
            format!(
                "kernel {kernel}, stride {stride}, padding {padding}: need kernel, stride ≥ 1 and padding ≤ kernel / 2"
            ),
        );
    }
    let (h, w) = (dims[dims.len() - 2], dims[dims.len() - 1]);
    if h == 0 || w == 0 {
        return shape_err(op, format!("input {shape} has an empty spatial dimension"));
    }
    if h + 2 * padding < kernel || w + 2 * padding < kernel {
        return shape_err(op, format!("kernel {kernel} is larger than the padded input {shape}"));
    }
    let (h_out, w_out) = ((h + 2 * padding - kernel) / stride + 1, (w + 2 * padding - kernel) / stride + 1);
    let planes = dims[..dims.len() - 2].iter().product();
    let mut out = dims.to_vec();
    out.splice(dims.len() - 2.., [h_out, w_out]);
    Ok((MaxPool2dParams { planes, h, w, kernel, stride, padding, h_out, w_out }, out))
}

impl Tensor {
    /// Max pooling of the last two dimensions over `kernel`×`kernel` windows at
    /// `stride`, with `padding` on each side that never wins (-inf), as PyTorch's
    /// `max_pool2d(x, kernel, stride, padding)` (dilation 1, floor mode). As in
    /// PyTorch, `padding` may be at most `kernel / 2`.
    pub fn max_pool2d(&self, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
        self.check_float("max_pool2d")?;
        let (params, out) = pool_windows("max_pool2d", self.dims(), kernel, stride, padding)?;
        let out = Tensor::from_storage(self.storage.max_pool2d(&params)?, Shape::new(out));
        Ok(out.recorded(&[self], |_| Op::MaxPool2d { x: self.clone(), kernel, stride, padding }))
    }

    /// dL/dx of `input.max_pool2d(kernel, stride, padding)` from the upstream gradient `self`:
    /// each window's gradient goes to the input the forward picked (the first maximum in
    /// row-major window order, as PyTorch), found again from `input`.
    pub fn max_pool2d_backward(&self, input: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
        const OP: &str = "max_pool2d_backward";
        self.check_float(OP)?;
        self.check_same(OP, &[input])?;
        let (params, out) = pool_windows(OP, input.dims(), kernel, stride, padding)?;
        self.check_pool_grad_out(OP, &out)?;
        let dx = self.storage.max_pool2d_backward(&input.storage, &params)?;
        Ok(Tensor::from_storage(dx, input.shape.clone()))
    }

    /// Average pooling of the last two dimensions over `kernel`×`kernel` windows at `stride`,
    /// with `padding` zeros on each side that count in the average: PyTorch's
    /// `avg_pool2d(x, kernel, stride, padding)` with its defaults (count_include_pad, floor
    /// mode), so every window divides by kernel². `padding` may be at most `kernel / 2`.
    pub fn avg_pool2d(&self, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
        self.check_float("avg_pool2d")?;
        let (params, out) = pool_windows("avg_pool2d", self.dims(), kernel, stride, padding)?;
        let out = Tensor::from_storage(self.storage.avg_pool2d(&params)?, Shape::new(out));
        Ok(out.recorded(&[self], |_| Op::AvgPool2d { x: Link::to(self), kernel, stride, padding }))
    }

    /// dL/dx, of `input_dims`, of `x.avg_pool2d(kernel, stride, padding)` from the upstream
    /// gradient `self`.
    pub fn avg_pool2d_backward(
        &self,
        input_dims: &[usize],
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Tensor> {
        const OP: &str = "avg_pool2d_backward";
        self.check_float(OP)?;
        let (params, out) = pool_windows(OP, input_dims, kernel, stride, padding)?;
        self.check_pool_grad_out(OP, &out)?;
        Ok(Tensor::from_storage(self.storage.avg_pool2d_backward(&params)?, Shape::new(input_dims)))
    }

    /// Adaptive average pooling of the last two dimensions to `out_h`×`out_w`, as PyTorch's
    /// `adaptive_avg_pool2d`: output (i, j) averages input rows floor(i·h/out_h) ..
    /// ceil((i+1)·h/out_h) and the columns likewise, so bins overlap when the sizes do not divide.
    pub fn adaptive_avg_pool2d(&self, out_h: usize, out_w: usize) -> Result<Tensor> {
        self.check_float("adaptive_avg_pool2d")?;
        let params = adaptive_bins("adaptive_avg_pool2d", self.dims(), out_h, out_w)?;
        let mut out = self.dims().to_vec();
        out.splice(out.len() - 2.., [out_h, out_w]);
        let out = Tensor::from_storage(self.storage.adaptive_avg_pool2d(&params)?, Shape::new(out));
        Ok(out.recorded(&[self], |_| Op::AdaptiveAvgPool2d { x: Link::to(self) }))
    }

    /// dL/dx, of `input_dims`, of `x.adaptive_avg_pool2d(out_h, out_w)` from the upstream
    /// gradient `self`, whose last two dimensions are (out_h, out_w).
    pub fn adaptive_avg_pool2d_backward(&self, input_dims: &[usize]) -> Result<Tensor> {
        const OP: &str = "adaptive_avg_pool2d_backward";
        self.check_float(OP)?;
        let g = self.dims();
        if g.len() != input_dims.len() || g.len() < 2 || g[..g.len() - 2] != input_dims[..g.len() - 2] {
            return shape_err(
                OP,
                format!("upstream gradient {} does not match the input {}", self.shape, Shape::new(input_dims)),
            );
        }
        let params = adaptive_bins(OP, input_dims, g[g.len() - 2], g[g.len() - 1])?;
        Ok(Tensor::from_storage(self.storage.adaptive_avg_pool2d_backward(&params)?, Shape::new(input_dims)))
    }

    /// Checks that `self` has the dims of the pooling's output.
    fn check_pool_grad_out(&self, op: &'static str, out: &[usize]) -> Result<()> {
        if self.dims() != out {
            return shape_err(
                op,
                format!("upstream gradient {} must be the pooling output's {}", self.shape, Shape::new(out)),
            );
        }
        Ok(())
    }
}

/// The checked bins of adaptive pooling of the last two of `dims` to `out_h`×`out_w`.
fn adaptive_bins(op: &'static str, dims: &[usize], out_h: usize, out_w: usize) -> Result<AdaptivePool2dParams> {
    let shape = Shape::new(dims);
    if dims.len() < 2 {
        return shape_err(op, format!("input {shape} needs two spatial dimensions"));
    }
    let (h, w) = (dims[dims.len() - 2], dims[dims.len() - 1]);
    if h == 0 || w == 0 || out_h == 0 || out_w == 0 {
        return shape_err(op, format!("input {shape} to ({out_h}, {out_w}): no size may be 0"));
    }
    Ok(AdaptivePool2dParams { planes: dims[..dims.len() - 2].iter().product(), h, w, h_out: out_h, w_out: out_w })
}

#[cfg(test)]
mod tests {
    use crate::device::{DType, Device};
    use crate::tensor::{Rng, Tensor};

    /// The plain definition: pad with -inf, then the max of each window, NaN winning.
    fn reference(x: &[f32], planes: usize, h: usize, w: usize, k: usize, s: usize, p: usize) -> Vec<f32> {
        let (hp, wp) = (h + 2 * p, w + 2 * p);
        let mut padded = vec![f32::NEG_INFINITY; planes * hp * wp];
        for c in 0..planes {
            for y in 0..h {
                for x_ in 0..w {
                    padded[(c * hp + y + p) * wp + x_ + p] = x[(c * h + y) * w + x_];
                }
            }
        }
        let (ho, wo) = ((hp - k) / s + 1, (wp - k) / s + 1);
        let mut out = Vec::with_capacity(planes * ho * wo);
        for c in 0..planes {
            for oy in 0..ho {
                for ox in 0..wo {
                    let window = (0..k).flat_map(|i| (0..k).map(move |j| (oy * s + i, ox * s + j)));
                    let m = window.map(|(y, x_)| padded[(c * hp + y) * wp + x_]).fold(f32::NEG_INFINITY, |m, v| {
                        if v > m || v.is_nan() {
                            v
                        } else {
                            m
                        }
                    });
                    out.push(m);
                }
            }
        }
        out
    }

    fn fresh_rng() -> Rng {
        let seed =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        eprintln!("max_pool2d test seed {seed}");
        Rng::new(seed)
    }

    #[test]
    fn matches_the_padded_reference_at_odd_sizes() {
        let mut rng = fresh_rng();
        let dev = Device::Cpu;
        let cases: [(&[usize], usize, usize, usize); 9] = [
            (&[1, 1, 1, 1], 1, 1, 0),
            (&[2, 3, 9, 7], 3, 2, 1),
            (&[1, 5, 8, 8], 3, 2, 1),
            (&[3, 11, 13], 2, 2, 0),
            (&[2, 2, 10, 5], 2, 1, 1),
            (&[1, 4, 17, 19], 5, 3, 2),
            (&[1, 1, 3, 3], 3, 1, 1),
            (&[2, 64, 21, 21], 3, 2, 1),
            (&[1, 3, 4, 6], 4, 4, 0),
        ];
        for (dims, k, s, p) in cases {
            let x = Tensor::randn(dims.to_vec(), &mut rng, &dev).unwrap();
            let got = x.max_pool2d(k, s, p).unwrap();
            let (h, w) = (dims[dims.len() - 2], dims[dims.len() - 1]);
            let planes = x.numel() / (h * w);
            let want = reference(&x.to_vec_f32().unwrap(), planes, h, w, k, s, p);
            let (ho, wo) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
            let mut out_dims = dims.to_vec();
            out_dims.splice(dims.len() - 2.., [ho, wo]);
            assert_eq!(got.dims(), out_dims, "{dims:?} k{k} s{s} p{p}");
            // The max picks an input: exact.
            assert_eq!(got.to_vec_f32().unwrap(), want, "{dims:?} k{k} s{s} p{p}");
        }
    }

    #[test]
    fn nan_wins_and_half_dtypes_are_kept_exactly() {
        let dev = Device::Cpu;
        let x = Tensor::from_f32(vec![1.0, f32::NAN, 3.0, -2.0, 5.0, 0.5, -1.0, 2.0, 4.0], [1, 1, 3, 3], &dev).unwrap();
        let got = x.max_pool2d(2, 1, 0).unwrap().to_vec_f32().unwrap();
        assert!(got[0].is_nan() && got[1].is_nan(), "{got:?}");
        assert_eq!(&got[2..], [5.0, 5.0]);
        let mut rng = fresh_rng();
        let x = Tensor::randn([2, 3, 9, 11], &mut rng, &dev).unwrap();
        for dtype in [DType::F16, DType::BF16] {
            let xd = x.to_dtype(dtype).unwrap();
            let got = xd.max_pool2d(3, 2, 1).unwrap();
            assert_eq!(got.dtype(), dtype);
            let want = xd.to_dtype(DType::F32).unwrap().max_pool2d(3, 2, 1).unwrap().to_dtype(dtype).unwrap();
            assert_eq!(got.to_host().unwrap(), want.to_host().unwrap(), "{dtype:?}");
        }
    }

    #[test]
    fn bad_arguments_are_errors() {
        let dev = Device::Cpu;
        let x = Tensor::from_f32(vec![0.0; 2 * 4 * 4], [2, 4, 4], &dev).unwrap();
        for (k, s, p) in [(0, 1, 0), (3, 0, 1), (3, 2, 2), (7, 1, 1)] {
            assert!(x.max_pool2d(k, s, p).is_err(), "k{k} s{s} p{p}");
        }
        assert!(Tensor::from_f32(vec![0.0; 4], [4], &dev).unwrap().max_pool2d(1, 1, 0).is_err());
        assert!(Tensor::from_u32(vec![0; 4], [2, 2], &dev).unwrap().max_pool2d(1, 1, 0).is_err());
        assert!(Tensor::from_f32(vec![], [2, 0, 4], &dev).unwrap().max_pool2d(2, 2, 1).is_err());
    }
}
