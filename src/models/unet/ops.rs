//! Ops the diffusers models need that the device contract lacks, composed from
//! tensor ops: zero padding on the right and bottom, and nearest resizing to an
//! odd size.

use crate::error::{shape_err, Result};
use crate::tensor::Tensor;

/// (n, c, h, w) padded with one row of zeros at the bottom and one column at
/// the right, as F.pad(x, (0, 1, 0, 1)).
pub(crate) fn pad_right_bottom(x: &Tensor) -> Result<Tensor> {
    let &[n, c, h, w] = x.dims() else {
        return shape_err("pad_right_bottom", format!("input {} is not (n, c, h, w)", x.shape()));
    };
    let column = Tensor::zeros([n, c, h, 1], x.dtype(), &x.device())?;
    let x = Tensor::cat(&[x, &column], 3)?;
    let row = Tensor::zeros([n, c, 1, w + 1], x.dtype(), &x.device())?;
    Tensor::cat(&[&x, &row], 2)
}

/// Nearest-neighbour resize of (n, c, h, w) to `size`, as F.interpolate(x,
/// size, mode="nearest"), for the sizes a UNet meets: twice the input, or one
/// less than that in a dimension (an odd-sized skip connection), which is the
/// ×2 upsampling cropped.
pub(crate) fn resize_nearest(x: &Tensor, size: (usize, usize)) -> Result<Tensor> {
    let &[_, _, h, w] = x.dims() else {
        return shape_err("resize_nearest", format!("input {} is not (n, c, h, w)", x.shape()));
    };
    if !is_cropped_doubling(h, size.0) || !is_cropped_doubling(w, size.1) {
        return shape_err(
            "resize_nearest",
            format!(
                "nearest resizing from {h}x{w} to {}x{} is not supported (only to twice the size, or one less)",
                size.0, size.1
            ),
        );
    }
    let up = x.upsample_nearest2x()?;
    let up = if size.0 < 2 * h { up.narrow(2, 0, size.0)? } else { up };
    if size.1 < 2 * w {
        up.narrow(3, 0, size.1)
    } else {
        Ok(up)
    }
}

/// Whether PyTorch's nearest interpolation from `from` to `to` picks source
/// index i / 2 for every output index i, i.e. equals ×2 upsampling cropped to
/// `to`. PyTorch computes the source index as floor(i · (from / to)) in f32.
fn is_cropped_doubling(from: usize, to: usize) -> bool {
    if to == 0 || to > 2 * from || to + 1 < 2 * from {
        return false;
    }
    let scale = from as f32 / to as f32;
    (0..to).all(|i| ((i as f32 * scale).floor() as usize).min(from - 1) == i / 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Device;

    #[test]
    fn odd_targets_are_cropped_doublings() {
        assert!(is_cropped_doubling(4, 8));
        assert!(is_cropped_doubling(4, 7));
        assert!(is_cropped_doubling(1, 1));
        assert!(!is_cropped_doubling(3, 7));
        assert!(!is_cropped_doubling(4, 9));
        assert!(!is_cropped_doubling(4, 5));
    }

    #[test]
    fn pad_and_resize() {
        let dev = Device::Cpu;
        let x = Tensor::from_f32(vec![-40.0, -3.5, 0.25, 25.0], [1, 1, 2, 2], &dev).unwrap();
        let p = pad_right_bottom(&x).unwrap();
        assert_eq!(p.dims(), [1, 1, 3, 3]);
        assert_eq!(p.to_vec_f32().unwrap(), [-40.0, -3.5, 0.0, 0.25, 25.0, 0.0, 0.0, 0.0, 0.0]);
        let r = resize_nearest(&x, (3, 4)).unwrap();
        let want = [-40.0, -40.0, -3.5, -3.5, -40.0, -40.0, -3.5, -3.5, 0.25, 0.25, 25.0, 25.0];
        assert_eq!(r.to_vec_f32().unwrap(), want);
        assert!(resize_nearest(&x, (5, 4)).unwrap_err().to_string().contains("2x2 to 5x4"));
    }
}
