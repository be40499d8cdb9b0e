//! The autograd layer: training on top of the tensor layer. `optim` holds the optimizers (SGD and
//! AdamW, each one fused kernel over all parameters, with gradient clipping by global norm) and
//! `schedule` the learning-rate schedule.

pub mod optim;
pub mod schedule;
