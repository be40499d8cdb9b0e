//! The fused diffusion-scheduler step: the reference for kernels/scheduler.cu, with the same
//! sequence of f32 roundings (see `SchedulerStep`), so both backends agree bit for bit in f32.

use rayon::prelude::*;

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

/// Elements one task computes: enough to amortise a rayon task.
const CHUNK: usize = 1 << 14;

/// The new sample and, with `s.keep_x0`, x0.
pub(crate) fn step(s: &SchedulerStep, inp: &StepInputs) -> (Vec<f32>, Option<Vec<f32>>) {
    let n = inp.x.len();
    let mut out = vec![0.0f32; n];
    let mut x0 = if s.keep_x0 { Some(vec![0.0f32; n]) } else { None };
    let run = |start: usize, out: &mut [f32], x0: Option<&mut [f32]>| {
        #[cfg(target_arch = "x86_64")]
        if super::has_avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA (checked on the line above).
            return unsafe { elements_fma(s, inp, start, out, x0) };
        }
        elements(s, inp, start, out, x0)
    };
    match x0.as_mut() {
        Some(x0) => out
            .par_chunks_mut(CHUNK)
            .zip(x0.par_chunks_mut(CHUNK))
            .enumerate()
            .for_each(|(c, (o, p))| run(c * CHUNK, o, Some(p))),
        None => out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, o)| run(c * CHUNK, o, None)),
    }
    (out, x0)
}

/// Elements `start..start + out.len()` of the step.
#[inline(always)]
fn elements(s: &SchedulerStep, inp: &StepInputs, start: usize, out: &mut [f32], mut x0: Option<&mut [f32]>) {
    for (k, o) in out.iter_mut().enumerate() {
        let (v, p) = element(s, inp, start + k);
        *o = v;
        if let Some(x0) = x0.as_deref_mut() {
            x0[k] = p;
        }
    }
}

/// `elements` with FMA instructions: without them every `f32::mul_add` is a call
/// into libm's software fmaf (the same correctly rounded result, 20× slower).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn elements_fma(s: &SchedulerStep, inp: &StepInputs, start: usize, out: &mut [f32], x0: Option<&mut [f32]>) {
    elements(s, inp, start, out, x0)
}
