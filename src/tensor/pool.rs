//! Pooling.

use super::{Shape, Tensor};
use crate::device::{BackendStorage, MaxPool2dParams};
use crate::error::{shape_err, Result};

impl Tensor {
    /// Max pooling of the last two dimensions over `kernel`×`kernel` windows at
    /// `stride`, with `padding` on each side that never wins (-inf), as PyTorch's
    /// `max_pool2d(x, kernel, stride, padding)` (dilation 1, floor mode). As in
    /// PyTorch, `padding` may be at most `kernel / 2`.
    pub fn max_pool2d(&self, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
        self.check_float("max_pool2d")?;
        let d = self.dims();
        if d.len() < 2 {
            return shape_err("max_pool2d", format!("input {} needs two spatial dimensions", self.shape));
        }
        if kernel == 0 || stride == 0 || padding > kernel / 2 {
            return shape_err(
                "max_pool2d",
                format!("kernel {kernel}, stride {stride}, padding {padding}: need kernel, stride ≥ 1 and padding ≤ kernel / 2"),
            );
        }
        let (h, w) = (d[d.len() - 2], d[d.len() - 1]);
        if h == 0 || w == 0 {
            return shape_err("max_pool2d", format!("input {} has an empty spatial dimension", self.shape));
        }
        if h + 2 * padding < kernel || w + 2 * padding < kernel {
            return shape_err("max_pool2d", format!("kernel {kernel} is larger than the padded input {}", self.shape));
        }
        let (h_out, w_out) = ((h + 2 * padding - kernel) / stride + 1, (w + 2 * padding - kernel) / stride + 1);
        let planes = d[..d.len() - 2].iter().product();
        let params = MaxPool2dParams { planes, h, w, kernel, stride, padding, h_out, w_out };
        let mut out = d.to_vec();
        out[d.len() - 2] = h_out;
        out[d.len() - 1] = w_out;
        Ok(Tensor::from_storage(self.storage.max_pool2d(&params)?, Shape::new(out)))
    }
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
