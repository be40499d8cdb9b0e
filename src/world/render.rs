//! Drawing a scene: a procedural background texture and one anti-aliased shape
//! (4×4 samples a pixel), as f32 RGB (3, size, size) in [0, 1].

use super::scene::Scene;
use crate::tensor::Rng;

/// Samples per pixel along each axis: 16 a pixel smooth the shape's edge.
const SUPERSAMPLE: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    Circle,
    Square,
    Triangle,
    Star,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Background {
    Water,
    Grass,
    Sand,
    Sky,
}

/// What the renderer needs of a scene's factor values.
pub struct Look {
    pub shape: Shape,
    pub colour: [f32; 3],
    pub background: Background,
    /// Radius as a fraction of the image side.
    pub radius: f32,
    /// Centre as fractions of the image side.
    pub centre: (f32, f32),
}

/// The image (3, size, size) of `look`, with `scene`'s noise.
pub fn render(look: &Look, scene: &Scene, size: usize) -> Vec<f32> {
    let n = &scene.noise;
    let mut out = background(look.background, n.texture, size);
    let colour: Vec<f32> = (0..3).map(|c| (look.colour[c] + n.tint[c]).clamp(0.0, 1.0)).collect();
    let radius = look.radius * (1.0 + n.scale);
    let (cx, cy) = (look.centre.0 + n.jitter.0, look.centre.1 + n.jitter.1);
    let (sin, cos) = n.angle.sin_cos();
    let step = 1.0 / (size * SUPERSAMPLE) as f32;
    for y in 0..size {
        for x in 0..size {
            let mut covered = 0;
            for sy in 0..SUPERSAMPLE {
                for sx in 0..SUPERSAMPLE {
                    let px = (x * SUPERSAMPLE + sx) as f32 * step + step / 2.0 - cx;
                    let py = (y * SUPERSAMPLE + sy) as f32 * step + step / 2.0 - cy;
                    // Into the shape's own frame: rotated, in units of its radius.
                    let (u, v) = ((cos * px + sin * py) / radius, (cos * py - sin * px) / radius);
                    covered += inside(look.shape, u, v) as usize;
                }
            }
            let a = covered as f32 / (SUPERSAMPLE * SUPERSAMPLE) as f32;
            if a > 0.0 {
                for (c, &col) in colour.iter().enumerate() {
                    let i = (c * size + y) * size + x;
                    out[i] = out[i] * (1.0 - a) + col * a;
                }
            }
        }
    }
    out
}

/// Whether (u, v) in the unit frame of `shape` (radius 1) is inside it.
fn inside(shape: Shape, u: f32, v: f32) -> bool {
    match shape {
        Shape::Circle => u * u + v * v <= 1.0,
        Shape::Square => u.abs().max(v.abs()) <= 0.8,
        Shape::Triangle => polygon_contains(&regular(3, 1.0, 1.0), u, v),
        Shape::Star => polygon_contains(&regular(5, 1.05, 0.45), u, v),
    }
}

/// A regular polygon (or a star, when `inner` < `outer`) of `points` tips, as vertices.
fn regular(points: usize, outer: f32, inner: f32) -> Vec<(f32, f32)> {
    let vertices = if inner < outer { 2 * points } else { points };
    (0..vertices)
        .map(|i| {
            let r = if inner < outer && i % 2 == 1 { inner } else { outer };
            let t = -std::f32::consts::FRAC_PI_2 + i as f32 * std::f32::consts::TAU / vertices as f32;
            (r * t.cos(), r * t.sin())
        })
        .collect()
}

/// Even-odd rule.
fn polygon_contains(poly: &[(f32, f32)], x: f32, y: f32) -> bool {
    let mut inside = false;
    let mut j = poly.len() - 1;
    for i in 0..poly.len() {
        let ((xi, yi), (xj, yj)) = (poly[i], poly[j]);
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

/// A recognisable texture, not a flat colour: water has horizontal ripples, grass
/// vertical blades, sand fine speckle, sky a gradient with soft clouds.
fn background(kind: Background, seed: u64, size: usize) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let phase = rng.uniform() * std::f32::consts::TAU;
    let mut out = vec![0.0; 3 * size * size];
    let blades: Vec<f32> = (0..size).map(|_| rng.uniform()).collect();
    let clouds: Vec<(f32, f32, f32)> =
        (0..3).map(|_| (rng.uniform(), rng.uniform() * 0.5, 0.12 + 0.1 * rng.uniform())).collect();
    for y in 0..size {
        for x in 0..size {
            let (fx, fy) = (x as f32 / size as f32, y as f32 / size as f32);
            let rgb = match kind {
                Background::Water => {
                    let wave = (fy * 40.0 + (fx * 9.0 + phase).sin() * 1.5).sin() * 0.5 + 0.5;
                    [0.05 + 0.1 * wave, 0.25 + 0.15 * wave, 0.55 + 0.25 * wave]
                }
                Background::Grass => {
                    let blade = blades[x] * 0.6 + 0.4 * ((fy * 25.0 + blades[x] * 6.0).sin() * 0.5 + 0.5);
                    [0.1 + 0.1 * blade, 0.35 + 0.3 * blade, 0.08 + 0.08 * blade]
                }
                Background::Sand => {
                    let grain = rng.uniform();
                    [0.78 + 0.12 * grain, 0.68 + 0.1 * grain, 0.45 + 0.1 * grain]
                }
                Background::Sky => {
                    let cloud = clouds.iter().fold(0f32, |m, &(cx, cy, r)| {
                        let d = ((fx - cx).powi(2) + (fy - cy).powi(2) * 2.0).sqrt();
                        m.max((1.0 - d / r).clamp(0.0, 1.0))
                    });
                    let base = [0.45 + 0.25 * fy, 0.65 + 0.2 * fy, 0.95];
                    [base[0] + (1.0 - base[0]) * cloud, base[1] + (1.0 - base[1]) * cloud, 0.95 + 0.05 * cloud]
                }
            };
            for (c, v) in rgb.iter().enumerate() {
                out[(c * size + y) * size + x] = v.clamp(0.0, 1.0);
            }
        }
    }
    out
}
