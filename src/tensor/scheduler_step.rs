//! The fused diffusion-scheduler step: one backend call (one kernel launch on CUDA) a step.

use super::Tensor;
use crate::device::{BackendStorage, SchedulerStep};
use crate::error::{shape_err, Error, Result};

impl Tensor {
    /// One fused scheduler step with `self` as the sample x (the formula is on `SchedulerStep`).
    /// `model_out` has x's shape, or, when `step.guidance` is set, twice its batch (dimension 0)
    /// holding [uncond; cond]. `noise` and `prev_x0` have x's shape; each is required when its
    /// coefficient is nonzero and ignored when it is zero. Returns the new sample and, with
    /// `step.keep_x0`, the predicted x0.
    pub fn scheduler_step(
        &self,
        model_out: &Tensor,
        noise: Option<&Tensor>,
        prev_x0: Option<&Tensor>,
        step: &SchedulerStep,
    ) -> Result<(Tensor, Option<Tensor>)> {
        const OP: &str = "scheduler_step";
        self.check_float(OP)?;
        let noise = operand(OP, "noise", noise, step.out_noise)?;
        let prev_x0 = operand(OP, "prev_x0", prev_x0, step.out_prev)?;
        let mut others = vec![model_out];
        others.extend(noise);
        others.extend(prev_x0);
        self.check_same(OP, &others)?;
        let want_model = match step.guidance {
            Some(_) if self.rank() == 0 => return shape_err(OP, "guidance needs a batch dimension"),
            Some(_) => [&[2 * self.dims()[0]], &self.dims()[1..]].concat(),
            None => self.dims().to_vec(),
        };
        if model_out.dims() != want_model.as_slice() {
            return shape_err(OP, format!("model output {} for sample {}", model_out.shape(), self.shape()));
        }
        for (what, t) in [("noise", noise), ("prev_x0", prev_x0)] {
            if let Some(t) = t.filter(|t| t.dims() != self.dims()) {
                return shape_err(OP, format!("{what} {} for sample {}", t.shape(), self.shape()));
            }
        }
        let (out, x0) = self.storage.scheduler_step(
            &model_out.storage,
            noise.map(|t| &*t.storage),
            prev_x0.map(|t| &*t.storage),
            step,
        )?;
        let x0 = x0.map(|s| Tensor::from_storage(s, self.shape.clone()));
        let out = Tensor::from_storage(out, self.shape.clone());
        let out = out.recorded(&[self, model_out], |_| super::graph::Op::NotDifferentiable {
            op: "scheduler_step",
            x: super::graph::Link::to(self),
        });
        Ok((out, x0))
    }
}

/// The optional input a nonzero `coefficient` needs; dropped when the coefficient is zero.
fn operand<'a>(op: &str, what: &str, t: Option<&'a Tensor>, coefficient: f32) -> Result<Option<&'a Tensor>> {
    match t {
        _ if coefficient == 0.0 => Ok(None),
        Some(t) => Ok(Some(t)),
        None => Err(Error::Usage(format!("{op}: the step weights {what} by {coefficient} but none was given"))),
    }
}
