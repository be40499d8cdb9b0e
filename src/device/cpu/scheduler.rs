//! The fused diffusion-scheduler step: the reference for kernels/scheduler.cu, with the same
//! sequence of f32 roundings (see `SchedulerStep`), so both backends agree bit for bit in f32.

use rayon::prelude::*;

use super::PAR_MIN;
use crate::device::contract::SchedulerStep;

/// The step's inputs as f32 slices: `model` holds n values, or 2n ([uncond; cond]) with guidance.
pub(crate) struct StepInputs<'a> {
    pub x: &'a [f32],
    pub model: &'a [f32],
    pub noise: Option<&'a [f32]>,
    pub prev_x0: Option<&'a [f32]>,
}

/// Element i of the step: (new sample, x0).
#[inline(always)]
fn element(s: &SchedulerStep, inp: &StepInputs, i: usize) -> (f32, f32) {
    let x = inp.x[i];
    let m = match s.guidance {
        Some(g) => {
            let (u, c) = (inp.model[i], inp.model[inp.x.len() + i]);
            g.mul_add(c - u, u)
        }
        None => inp.model[i],
    };
    let mut x0 = s.x0_x.mul_add(x, s.x0_m * m);
    if let Some(clip) = s.clip {
        x0 = x0.max(-clip).min(clip);
    }
    let eps = s.eps_x.mul_add(x, s.eps_m * m);
    let mut out = s.out_eps.mul_add(eps, s.out_x0 * x0);
    out = s.out_x.mul_add(x, out);
    if let Some(n) = inp.noise {
        out = s.out_noise.mul_add(n[i], out);
    }
    if let Some(p) = inp.prev_x0 {
        out = s.out_prev.mul_add(p[i], out);
    }
    (out, x0)
}

/// The new sample and, with `s.keep_x0`, x0.
pub(crate) fn step(s: &SchedulerStep, inp: &StepInputs) -> (Vec<f32>, Option<Vec<f32>>) {
    let n = inp.x.len();
    let mut out = vec![0.0f32; n];
    if s.keep_x0 {
        let mut x0 = vec![0.0f32; n];
        out.par_iter_mut().zip(x0.par_iter_mut()).with_min_len(PAR_MIN).enumerate().for_each(|(i, (o, p))| {
            (*o, *p) = element(s, inp, i);
        });
        (out, Some(x0))
    } else {
        out.par_iter_mut().with_min_len(PAR_MIN).enumerate().for_each(|(i, o)| *o = element(s, inp, i).0);
        (out, None)
    }
}
