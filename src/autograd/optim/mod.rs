//! Optimizers in the style of llm.c: all parameters live in one flat f32 *master* buffer (so f16
//! or bf16 compute keeps f32 weights by construction), the optimizer state in flat f32 buffers
//! beside it, and a step is one fused kernel over the whole buffer. Updates follow PyTorch's
//! `torch.optim.SGD` and `torch.optim.AdamW` exactly, and clipping `clip_grad_norm_`.
//!
//! A step takes the gradients in the parameters' order and shapes, in any float dtype:
//! ```no_run
//! # use foil::autograd::optim::{AdamW, AdamWConfig, Optimizer};
//! # fn grads_of(_: &[foil::Tensor]) -> Vec<foil::Tensor> { vec![] }
//! # fn run(params: Vec<foil::Tensor>) -> foil::Result<()> {
//! let mut opt = AdamW::new(&params, AdamWConfig { max_grad_norm: Some(1.0), ..Default::default() })?;
//! for _ in 0..10 {
//!     let params = opt.params()?;
//!     let stats = opt.step(&grads_of(&params), 1e-3)?;
//!     println!("grad norm {:.3}{}", stats.grad_norm, if stats.clipped { " (clipped)" } else { "" });
//! }
//! # Ok(()) }
//! ```

mod adamw;
mod flat;
mod sgd;

pub use adamw::{AdamW, AdamWConfig};
pub use sgd::{Sgd, SgdConfig};

use crate::error::Result;
use crate::tensor::Tensor;

/// What a step saw of the gradients.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// The global L2 norm of all gradients, before clipping.
    pub grad_norm: f32,
    /// Whether the gradients were scaled down to the configured `max_grad_norm`.
    pub clipped: bool,
}

pub trait Optimizer {
    /// One update with `grads` (the parameters' order and shapes, any float dtype, on the
    /// parameters' device) at learning rate `lr`. The global gradient norm is always computed;
    /// when it is not finite (a gradient holds NaN or infinity) this returns an error and leaves
    /// the parameters and the state untouched, so the caller can skip the batch.
    fn step(&mut self, grads: &[Tensor], lr: f32) -> Result<StepStats>;
    /// The current parameters in the dtype each was given in, rounded from the f32 master copy.
    /// Fresh tensors: they never change under a later step.
    fn params(&self) -> Result<Vec<Tensor>>;
    /// The state a checkpoint needs, as copies: `master` (the flat f32 weights), the optimizer's
    /// buffers under PyTorch's names, and `step` (the steps taken, a 1-element f32 tensor, exact
    /// up to 2^24).
    fn state(&self) -> Result<Vec<(String, Tensor)>>;
    /// Restores `state` (as `state` gives it; other names are ignored) into an optimizer built for
    /// the same parameters; nothing changes when a name is missing or a size is wrong.
    fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()>;
    /// The steps taken so far.
    fn steps(&self) -> u64;
}
