//! The structural causal model of a scene: exogenous noise (seeded) and the
//! factor values it determines, rendered to RGB. A counterfactual keeps the noise
//! and sets one factor, so everything the factor does not cause stays the same.

use serde::{Deserialize, Serialize};

use crate::tensor::Rng;

/// The factors every world has, in this order; a config chooses their values.
pub const FACTORS: [&str; 5] = ["shape", "colour", "background", "size", "position"];

/// The exogenous noise of one scene: everything random that is not a factor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Noise {
    /// Offset of the object's centre from its position's anchor, in units of the image side.
    pub jitter: (f32, f32),
    /// Relative change of the object's size, in [-0.1, 0.1].
    pub scale: f32,
    /// Rotation of the shape, in radians.
    pub angle: f32,
    /// Per-channel offsets of the object's colour, in [-0.06, 0.06].
    pub tint: [f32; 3],
    /// Seed of the background texture.
    pub texture: u64,
    /// Which caption template and wording the scene's caption uses.
    pub wording: u32,
}

impl Noise {
    pub fn sample(rng: &mut Rng) -> Noise {
        let mut centred = |amp: f32| (rng.uniform() * 2.0 - 1.0) * amp;
        Noise {
            jitter: (centred(0.06), centred(0.06)),
            scale: centred(0.1),
            angle: centred(std::f32::consts::PI),
            tint: [centred(0.06), centred(0.06), centred(0.06)],
            texture: ((rng.next_u32() as u64) << 32) | rng.next_u32() as u64,
            wording: rng.next_u32(),
        }
    }
}

/// One scene: a value index for each of [`FACTORS`], and its noise.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scene {
    pub values: [usize; FACTORS.len()],
    pub noise: Noise,
}

impl Scene {
    /// The counterfactual scene: the same noise with factor `factor` set to `value`.
    pub fn with(&self, factor: usize, value: usize) -> Scene {
        let mut s = self.clone();
        s.values[factor] = value;
        s
    }
}
