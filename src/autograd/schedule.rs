//! The learning-rate schedule: linear warm-up, then cosine decay to a floor.

use std::f64::consts::PI;

/// Linear warm-up from 0 to `base_lr` over `warmup_steps`, then half a cosine from `base_lr` down
/// to `min_lr`, reached at `total_steps` and kept after. `lr(step)` equals transformers'
/// `get_cosine_with_min_lr_schedule_with_warmup(num_warmup_steps, num_training_steps,
/// min_lr=min_lr)` (one half cycle) at the same step index, which counts optimizer steps from 0:
///   step < warmup:  base_lr · step / warmup   (so the very first step runs at 0, as there)
///   else:           min_lr + (base_lr − min_lr) · ½(1 + cos(π · min(1, (step − warmup) / max(1, total − warmup))))
/// transformers lets the cosine rise again past `total_steps`; here it stays at `min_lr`.
/// Without warm-up the first step runs at `base_lr`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrSchedule {
    pub base_lr: f32,
    pub warmup_steps: u64,
    pub total_steps: u64,
    pub min_lr: f32,
}

impl LrSchedule {
    /// The learning rate of step `step` (0 for the first), computed in f64.
    pub fn lr(&self, step: u64) -> f32 {
        let (base, min) = (self.base_lr as f64, self.min_lr as f64);
        if step < self.warmup_steps {
            return (base * step as f64 / self.warmup_steps as f64) as f32;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / decay_steps as f64).min(1.0);
        (min + (base - min) * 0.5 * (1.0 + (PI * progress).cos())) as f32
    }
}
