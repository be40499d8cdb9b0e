//! The probe layer: captions of a task perturbed one attribute at a time,
//! factual and counterfactual images generated from the same noise, the
//! classifier scored on both, and its weaknesses ranked with confidence
//! intervals; written to a folder the reinforce stage reads.

pub mod folder;
pub mod grid;
pub mod images;
pub mod score;
pub mod source;
pub mod stats;
