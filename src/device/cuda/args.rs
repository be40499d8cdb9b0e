//! `#[repr(C)]` mirrors of the by-value kernel argument structs in
//! kernels/common.cuh: the layouts must match field for field.

use cudarc::driver::DeviceRepr;

use crate::device::contract::{AdamWStep, SgdStep};
use crate::device::contract::{AttentionParams, BroadcastLayout, Conv2dParams, SchedulerStep, MAX_DIMS};
use crate::error::{Error, Result};

/// Checks a size fits the kernels' u32 indexing.
pub(crate) fn u32_of(what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Cuda(format!("{what} = {v} exceeds the kernels' 32-bit indexing")))
}

fn fill(what: &str, dst: &mut [u32; MAX_DIMS], src: &[usize]) -> Result<()> {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = u32_of(what, s)?;
    }
    Ok(())
}

fn check_rank(rank: usize) -> Result<u32> {
    if rank > MAX_DIMS {
        return Err(Error::Cuda(format!("{rank} dimensions after collapsing; kernels take at most {MAX_DIMS}")));
    }
    Ok(rank as u32)
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct BroadcastArgs {
    rank: u32,
    dims: [u32; MAX_DIMS],
    lhs_strides: [u32; MAX_DIMS],
    rhs_strides: [u32; MAX_DIMS],
}
// SAFETY: plain-old-data with the C layout of the kernel parameter.
unsafe impl DeviceRepr for BroadcastArgs {}

impl BroadcastArgs {
    pub(crate) fn new(l: &BroadcastLayout) -> Result<Self> {
        let mut a = BroadcastArgs { rank: check_rank(l.dims.len())?, ..Default::default() };
        fill("dim", &mut a.dims, &l.dims)?;
        fill("stride", &mut a.lhs_strides, &l.lhs_strides)?;
        fill("stride", &mut a.rhs_strides, &l.rhs_strides)?;
        Ok(a)
    }
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct StridedArgs {
    rank: u32,
    dims: [u32; MAX_DIMS],
    strides: [u32; MAX_DIMS],
}
// SAFETY: plain-old-data with the C layout of the kernel parameter.
unsafe impl DeviceRepr for StridedArgs {}

impl StridedArgs {
    pub(crate) fn new(dims: &[usize], strides: &[usize]) -> Result<Self> {
        let mut a = StridedArgs { rank: check_rank(dims.len())?, ..Default::default() };
        fill("dim", &mut a.dims, dims)?;
        fill("stride", &mut a.strides, strides)?;
        Ok(a)
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Conv2dArgs {
    n: u32,
    c_in: u32,
    h: u32,
    w: u32,
    c_out: u32,
    kh: u32,
    kw: u32,
    stride_h: u32,
    stride_w: u32,
    pad_h: u32,
    pad_w: u32,
    dil_h: u32,
    dil_w: u32,
    groups: u32,
    h_out: u32,
    w_out: u32,
    has_bias: u32,
}
// SAFETY: plain-old-data with the C layout of the kernel parameter.
unsafe impl DeviceRepr for Conv2dArgs {}

impl Conv2dArgs {
    pub(crate) fn new(p: &Conv2dParams, has_bias: bool) -> Result<Self> {
        let u = |v| u32_of("conv2d size", v);
        Ok(Conv2dArgs {
            n: u(p.n)?,
            c_in: u(p.c_in)?,
            h: u(p.h)?,
            w: u(p.w)?,
            c_out: u(p.c_out)?,
            kh: u(p.kh)?,
            kw: u(p.kw)?,
            stride_h: u(p.stride.0)?,
            stride_w: u(p.stride.1)?,
            pad_h: u(p.padding.0)?,
            pad_w: u(p.padding.1)?,
            dil_h: u(p.dilation.0)?,
            dil_w: u(p.dilation.1)?,
            groups: u(p.groups)?,
            h_out: u(p.h_out)?,
            w_out: u(p.w_out)?,
            has_bias: has_bias as u32,
        })
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct AttentionArgs {
    batch: u32,
    heads: u32,
    q_len: u32,
    kv_len: u32,
    head_dim: u32,
    scale: f32,
    causal: u32,
    has_mask: u32,
    mask_strides: [u32; 4],
}
// SAFETY: plain-old-data with the C layout of the kernel parameter.
unsafe impl DeviceRepr for AttentionArgs {}

impl AttentionArgs {
    pub(crate) fn new(p: &AttentionParams, has_mask: bool) -> Result<Self> {
        let u = |v| u32_of("attention size", v);
        let mut mask_strides = [0u32; 4];
        for (d, &s) in mask_strides.iter_mut().zip(&p.mask_strides) {
            *d = u(s)?;
        }
        Ok(AttentionArgs {
            batch: u(p.batch)?,
            heads: u(p.heads)?,
            q_len: u(p.q_len)?,
            kv_len: u(p.kv_len)?,
            head_dim: u(p.head_dim)?,
            scale: p.scale,
            causal: p.causal as u32,
            has_mask: has_mask as u32,
            mask_strides,
        })
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct SchedulerStepArgs {
    x0_x: f32,
    x0_m: f32,
    clip: f32,
    eps_x: f32,
    eps_m: f32,
    out_x0: f32,
    out_eps: f32,
    out_x: f32,
    out_noise: f32,
    out_prev: f32,
    guidance: f32,
    has_clip: u32,
    has_guidance: u32,
    has_noise: u32,
    has_prev: u32,
    keep_x0: u32,
}
// SAFETY: plain-old-data with the C layout of the kernel parameter.
unsafe impl DeviceRepr for SchedulerStepArgs {}

impl SchedulerStepArgs {
    pub(crate) fn new(s: &SchedulerStep, has_noise: bool, has_prev: bool) -> Self {
        SchedulerStepArgs {
            x0_x: s.x0_x,
            x0_m: s.x0_m,
            clip: s.clip.unwrap_or(0.0),
            eps_x: s.eps_x,
            eps_m: s.eps_m,
            out_x0: s.out_x0,
            out_eps: s.out_eps,
            out_x: s.out_x,
            out_noise: s.out_noise,
            out_prev: s.out_prev,
            guidance: s.guidance.unwrap_or(0.0),
            has_clip: s.clip.is_some() as u32,
            has_guidance: s.guidance.is_some() as u32,
            has_noise: has_noise as u32,
            has_prev: has_prev as u32,
            keep_x0: s.keep_x0 as u32,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct AdamWArgs {
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    bias_correction1: f32,
    bias_correction2_sqrt: f32,
    grad_scale: f32,
}
// SAFETY: plain-old-data with the C layout of the kernel parameter.
unsafe impl DeviceRepr for AdamWArgs {}
const _: () = assert!(std::mem::size_of::<AdamWArgs>() == 32, "AdamWArgs in kernels/common.cuh is 32 bytes");

impl AdamWArgs {
    pub(crate) fn new(s: &AdamWStep) -> Self {
        AdamWArgs {
            lr: s.lr,
            beta1: s.beta1,
            beta2: s.beta2,
            eps: s.eps,
            weight_decay: s.weight_decay,
            bias_correction1: s.bias_correction1,
            bias_correction2_sqrt: s.bias_correction2_sqrt,
            grad_scale: s.grad_scale,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct SgdArgs {
    lr: f32,
    momentum: f32,
    weight_decay: f32,
    grad_scale: f32,
    nesterov: u32,
    first_step: u32,
    has_momentum: u32,
}
// SAFETY: plain-old-data with the C layout of the kernel parameter.
unsafe impl DeviceRepr for SgdArgs {}
const _: () = assert!(std::mem::size_of::<SgdArgs>() == 28, "SgdArgs in kernels/common.cuh is 28 bytes");

impl SgdArgs {
    pub(crate) fn new(s: &SgdStep, has_momentum: bool) -> Self {
        SgdArgs {
            lr: s.lr,
            momentum: s.momentum,
            weight_decay: s.weight_decay,
            grad_scale: s.grad_scale,
            nesterov: s.nesterov as u32,
            first_step: s.first_step as u32,
            has_momentum: has_momentum as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sizes of the C structs in kernels/common.cuh, which tests/kernels.rs
    /// also checks against the compiled PTX.
    #[test]
    fn layouts_match_the_c_structs() {
        assert_eq!(std::mem::size_of::<BroadcastArgs>(), 76);
        assert_eq!(std::mem::size_of::<StridedArgs>(), 52);
        assert_eq!(std::mem::size_of::<Conv2dArgs>(), 68);
        assert_eq!(std::mem::size_of::<AttentionArgs>(), 48);
        assert_eq!(std::mem::size_of::<SchedulerStepArgs>(), 64);
    }
}
