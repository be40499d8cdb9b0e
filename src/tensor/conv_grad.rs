//! The gradients of conv2d with respect to its input and its weight, the backward ops that
//! autograd calls. The bias gradient is a plain sum of the upstream gradient over (n, h, w).

use super::nn::conv2d_params;
use super::{Conv2dOptions, Shape, Tensor};
use crate::device::{BackendStorage, Conv2dParams};
use crate::error::{shape_err, Result};

impl Tensor {
    /// dL/dx of `x.conv2d(weight, bias, opt)` for an input x of `input_dims` (n, c_in, h, w),
    /// from the upstream gradient `self` (n, c_out, h_out, w_out). Any stride, padding,
    /// dilation and groups the forward takes; the result has `input_dims` and `self`'s dtype.
    pub fn conv2d_input_grad(&self, weight: &Tensor, input_dims: &[usize], opt: Conv2dOptions) -> Result<Tensor> {
        const OP: &str = "conv2d_input_grad";
        self.check_float(OP)?;
        self.check_same(OP, &[weight])?;
        let p = conv2d_params(OP, input_dims, weight.dims(), opt)?;
        self.check_conv_grad_out(OP, &p)?;
        let dx = self.storage.conv2d_input_grad(&weight.storage, &p)?;
        Ok(Tensor::from_storage(dx, Shape::new(input_dims)))
    }

    /// dL/dW of `x.conv2d(weight, bias, opt)` for a weight of `weight_dims`
    /// (c_out, c_in / groups, kh, kw), from the upstream gradient `self` (n, c_out, h_out, w_out)
    /// and the forward's `input` x, summed over the batch; in `self`'s dtype.
    pub fn conv2d_weight_grad(&self, input: &Tensor, weight_dims: &[usize], opt: Conv2dOptions) -> Result<Tensor> {
        const OP: &str = "conv2d_weight_grad";
        self.check_float(OP)?;
        self.check_same(OP, &[input])?;
        let p = conv2d_params(OP, input.dims(), weight_dims, opt)?;
        self.check_conv_grad_out(OP, &p)?;
        let dw = self.storage.conv2d_weight_grad(&input.storage, &p)?;
        Ok(Tensor::from_storage(dw, Shape::new(weight_dims)))
    }

    /// Checks that `self` has the dims of the forward's output.
    fn check_conv_grad_out(&self, op: &'static str, p: &Conv2dParams) -> Result<()> {
        let want = [p.n, p.c_out, p.h_out, p.w_out];
        if self.dims() != want {
            return shape_err(
                op,
                format!("upstream gradient {} must be the conv2d output's {}", self.shape, Shape::new(want)),
            );
        }
        Ok(())
    }
}
