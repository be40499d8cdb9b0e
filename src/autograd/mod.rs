//! The autograd layer: reverse-mode differentiation of the ops the tensor layer
//! records (`backward`, with a rule per op in `rules`), the optimizers (SGD and
//! AdamW, each one fused kernel over all parameters, with gradient clipping by
//! global norm) and the learning-rate schedule.

mod backward;
pub mod optim;
mod rules;
pub mod schedule;

pub use crate::tensor::graph::{no_grad, NoGradGuard};
pub use backward::{backward, Gradients};
