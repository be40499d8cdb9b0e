//! The flat parameter store every optimizer shares: the f32 master copy of all parameters
//! concatenated, their shapes and compute dtypes, the step count, gradient flattening with the
//! global norm and clipping, and the checkpoint state common to all optimizers.

use super::StepStats;
use crate::device::DType;
use crate::error::{shape_err, Error, Result};
use crate::tensor::{Shape, Tensor};

const MASTER: &str = "master";
const STEP: &str = "step";

pub(super) struct FlatParams {
    /// The flat f32 master weights, (n,); only this store holds its storage, so it updates in place.
    master: Tensor,
    /// Each parameter's shape and compute dtype, in order.
    layout: Vec<(Shape, DType)>,
    max_grad_norm: Option<f32>,
    steps: u64,
}

/// The gradients of one step, flattened, with what clipping makes of them.
pub(super) struct FlatGrads {
    /// All gradients concatenated, f32, (n,).
    pub grads: Tensor,
    /// The factor the update multiplies them by: the clip coefficient, or 1.
    pub scale: f32,
    pub stats: StepStats,
}

impl FlatParams {
    /// The store of `params` (one device, float dtypes) for the optimizer `op`.
    pub(super) fn new(op: &'static str, params: &[Tensor], max_grad_norm: Option<f32>) -> Result<FlatParams> {
        let Some(first) = params.first() else {
            return Err(Error::Usage(format!("{op}: no parameters to optimise")));
        };
        if let Some(max) = max_grad_norm.filter(|m| !(m.is_finite() && *m > 0.0)) {
            return Err(Error::Usage(format!("{op}: max_grad_norm must be positive and finite, got {max}")));
        }
        let device = first.device();
        for (i, p) in params.iter().enumerate() {
            if !p.dtype().is_float() {
                return Err(Error::Usage(format!("{op}: parameter {i} is {}, not a float dtype", p.dtype())));
            }
            if !p.device().same(&device) {
                return Err(Error::Usage(format!("{op}: parameter {i} is on {}, parameter 0 on {device}", p.device())));
            }
        }
        let layout = params.iter().map(|p| (p.shape().clone(), p.dtype())).collect();
        // cat writes a new buffer, so the master copy shares nothing with the parameters given.
        let master = concat_f32(params)?;
        Ok(FlatParams { master, layout, max_grad_norm, steps: 0 })
    }

    /// Elements of all parameters together.
    pub(super) fn len(&self) -> usize {
        self.master.numel()
    }

    pub(super) fn steps(&self) -> u64 {
        self.steps
    }

    /// A zero-filled f32 buffer as long as the master weights, on their device.
    pub(super) fn zeros(&self) -> Result<Tensor> {
        Tensor::zeros([self.len()], DType::F32, &self.master.device())
    }

    /// One step: flattens `grads`, takes the global norm (an error, and no change, when it is not
    /// finite) and the clip scale, and runs `update` on the master weights; counts the step when
    /// `update` succeeds. `update` gets the master weights, the flat gradients, their scale and the
    /// number of steps before this one.
    pub(super) fn step(
        &mut self,
        op: &'static str,
        grads: &[Tensor],
        lr: f32,
        update: impl FnOnce(&mut Tensor, &FlatGrads, u64) -> Result<()>,
    ) -> Result<StepStats> {
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(Error::Usage(format!("{op}: learning rate {lr} is not a finite non-negative number")));
        }
        let flat = self.flatten(op, grads)?;
        update(&mut self.master, &flat, self.steps)?;
        self.steps += 1;
        Ok(flat.stats)
    }

    fn flatten(&self, op: &'static str, grads: &[Tensor]) -> Result<FlatGrads> {
        if grads.len() != self.layout.len() {
            return Err(Error::Usage(format!("{op}: {} gradients for {} parameters", grads.len(), self.layout.len())));
        }
        let device = self.master.device();
        for (i, (g, (shape, _))) in grads.iter().zip(&self.layout).enumerate() {
            if g.shape() != shape {
                return shape_err(op, format!("gradient {i} has shape {}, its parameter {shape}", g.shape()));
            }
            if !g.dtype().is_float() {
                return Err(Error::Usage(format!("{op}: gradient {i} is {}, not a float dtype", g.dtype())));
            }
            if !g.device().same(&device) {
                return Err(Error::Usage(format!(
                    "{op}: gradient {i} is on {}, the parameters on {device}",
                    g.device()
                )));
            }
        }
        let grads_f32 = concat_f32(grads)?;
        let grad_norm = grads_f32.sum_squares()?.to_vec_f32()?[0].sqrt();
        if !grad_norm.is_finite() {
            return Err(non_finite(op, grads, grad_norm));
        }
        // clip_grad_norm_: scale by max_norm / (norm + 1e-6) when that is below 1.
        let coef = self.max_grad_norm.map(|max| max / (grad_norm + 1e-6)).filter(|&c| c < 1.0);
        Ok(FlatGrads {
            grads: grads_f32,
            scale: coef.unwrap_or(1.0),
            stats: StepStats { grad_norm, clipped: coef.is_some() },
        })
    }

    /// The parameters in their compute dtypes, cut from the master weights (fresh tensors).
    pub(super) fn params(&self) -> Result<Vec<Tensor>> {
        let mut offset = 0;
        let mut out = Vec::with_capacity(self.layout.len());
        for (shape, dtype) in &self.layout {
            let n = shape.numel();
            out.push(self.master.narrow(0, offset, n)?.reshape(shape.clone())?.to_dtype(*dtype)?);
            offset += n;
        }
        Ok(out)
    }

    /// Copies of the master weights, of `buffers` under their names, and the step count.
    pub(super) fn state(&self, buffers: &[(&str, &Tensor)]) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![(MASTER.to_string(), copy(&self.master)?)];
        for (name, t) in buffers {
            out.push((name.to_string(), copy(t)?));
        }
        let step = Tensor::from_f32(vec![self.steps as f32], [1], &self.master.device())?;
        out.push((STEP.to_string(), step));
        Ok(out)
    }

    /// Restores the master weights, `buffers` (each replaced by the same-named tensor of `state`)
    /// and the step count; changes nothing unless every one is present and of the right size.
    pub(super) fn load_state(
        &mut self,
        op: &'static str,
        state: &[(String, Tensor)],
        buffers: &mut [(&str, &mut Tensor)],
    ) -> Result<()> {
        let master = self.loaded(op, state, MASTER)?;
        let loaded = buffers.iter().map(|(name, _)| self.loaded(op, state, name)).collect::<Result<Vec<_>>>()?;
        let steps = step_count(op, find(op, state, STEP)?)?;
        self.master = master;
        for ((_, buffer), t) in buffers.iter_mut().zip(loaded) {
            **buffer = t;
        }
        self.steps = steps;
        Ok(())
    }

    /// The flat f32 buffer `name` of `state`, as a new tensor on the master weights' device.
    fn loaded(&self, op: &'static str, state: &[(String, Tensor)], name: &str) -> Result<Tensor> {
        let t = find(op, state, name)?;
        if t.numel() != self.len() {
            return shape_err(op, format!("state '{name}' has {} elements, the parameters {}", t.numel(), self.len()));
        }
        let t = t.to_device(&self.master.device())?.to_dtype(DType::F32)?.reshape([self.len()])?;
        // The tensor may still share the caller's storage; the copy is ours alone.
        copy(&t)
    }
}

/// The tensors flattened to f32 and concatenated into one new (n,) buffer.
fn concat_f32(tensors: &[Tensor]) -> Result<Tensor> {
    let flat = tensors.iter().map(|t| t.to_dtype(DType::F32)?.reshape([t.numel()])).collect::<Result<Vec<Tensor>>>()?;
    Tensor::cat(&flat.iter().collect::<Vec<_>>(), 0)
}

/// A copy of the (n,) tensor `t` in a storage of its own.
fn copy(t: &Tensor) -> Result<Tensor> {
    t.narrow(0, 0, t.numel())
}

fn find<'a>(op: &'static str, state: &'a [(String, Tensor)], name: &str) -> Result<&'a Tensor> {
    match state.iter().find(|(n, _)| n == name) {
        Some((_, t)) => Ok(t),
        None => {
            let names: Vec<&str> = state.iter().map(|(n, _)| n.as_str()).collect();
            Err(Error::Usage(format!("{op}: the state has no '{name}' (it has {names:?})")))
        }
    }
}

/// The step count held by the 1-element tensor `t` (f32 as `state` writes it, or u32).
fn step_count(op: &'static str, t: &Tensor) -> Result<u64> {
    if t.numel() != 1 {
        return shape_err(op, format!("state '{STEP}' has shape {}, not one element", t.shape()));
    }
    let steps = if t.dtype() == DType::U32 { t.to_vec_u32()?[0] as f64 } else { t.to_vec_f32()?[0] as f64 };
    if !(steps >= 0.0 && steps.fract() == 0.0 && steps.is_finite()) {
        return Err(Error::Usage(format!("{op}: '{STEP}' is {steps}, not a step count")));
    }
    Ok(steps as u64)
}

/// The error of a step whose gradient norm is not finite, naming the first gradient at fault.
fn non_finite(op: &'static str, grads: &[Tensor], norm: f32) -> Error {
    // Read on the host: this is the error path, and the squares may overflow where no value does.
    let culprit = grads.iter().position(|g| !g.to_vec_f32().is_ok_and(|v| v.iter().all(|x| x.is_finite())));
    let which = match culprit {
        Some(i) => format!("gradient {i} (shape {}) holds NaN or infinity", grads[i].shape()),
        None => "the squares of the gradients overflow f32".to_string(),
    };
    Error::Training(format!("{op}: the gradient norm is {norm}: {which}; the parameters and the state are unchanged"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Device;

    #[test]
    fn step_counts_read_back() {
        let dev = Device::Cpu;
        let f = |v: f32| Tensor::from_f32(vec![v], [1], &dev).unwrap();
        assert_eq!(step_count("t", &f(7.0)).unwrap(), 7);
        assert_eq!(step_count("t", &Tensor::from_u32(vec![9], [1], &dev).unwrap()).unwrap(), 9);
        for bad in [-1.0, 2.5, f32::NAN, f32::INFINITY] {
            assert!(step_count("t", &f(bad)).is_err(), "{bad}");
        }
        assert!(step_count("t", &Tensor::from_f32(vec![1.0, 2.0], [2], &dev).unwrap()).is_err());
    }
}
