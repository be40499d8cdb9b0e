//! Labelled image sets for training a classifier, held in memory as f32 RGB in
//! [0, 1]: an image folder (one sub-folder per class, as torchvision's
//! ImageFolder), or a generated task whose answer is known.

use std::path::Path;

use crate::device::Device;
use crate::error::{file_err, Error, Result};
use crate::tensor::image::read_png;
use crate::tensor::{Rng, Tensor};

pub struct Dataset {
    /// (n, 3, size, size) row-major, values in [0, 1].
    pixels: Vec<f32>,
    labels: Vec<u32>,
    size: usize,
    classes: Vec<String>,
}

impl Dataset {
    /// The PNGs of `dir`/<class>/, classes in sorted name order (ImageFolder's
    /// indices), each image resized (bilinear) to `size`×`size`.
    pub fn from_folder(dir: &Path, size: usize) -> Result<Dataset> {
        let mut classes: Vec<String> = std::fs::read_dir(dir)
            .map_err(|e| Error::File { file: dir.display().to_string(), detail: e.to_string() })?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        classes.sort();
        if classes.len() < 2 {
            return file_err(dir, "needs at least two class sub-folders (one folder of PNGs per class)");
        }
        let mut data = Dataset { pixels: vec![], labels: vec![], size, classes: classes.clone() };
        for (label, class) in classes.iter().enumerate() {
            let mut files: Vec<_> = std::fs::read_dir(dir.join(class))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("png")))
                .collect();
            files.sort();
            if files.is_empty() {
                return file_err(&dir.join(class), "no .png images in this class folder");
            }
            for file in files {
                let image = read_png(&file, &Device::Cpu)?;
                let (h, w) = (image.dims()[2], image.dims()[3]);
                data.pixels.extend(resize_bilinear(&image.to_vec_f32()?, h, w, size));
                data.labels.push(label as u32);
            }
        }
        Ok(data)
    }

    /// `n` images of a four-class task: stripes at 0°, 45°, 90° or 135° (the
    /// class), of random period, phase and colours, over noise. Position carries
    /// no information, so a model must learn oriented filters; chance is 25%.
    pub fn stripes(n: usize, size: usize, seed: u64) -> Dataset {
        let mut rng = Rng::new(seed);
        let mut pixels = Vec::with_capacity(n * 3 * size * size);
        let mut labels = Vec::with_capacity(n);
        for _ in 0..n {
            let class = rng.below(4);
            let angle = class as f32 * std::f32::consts::FRAC_PI_4;
            let period = 6.0 + 6.0 * rng.uniform();
            let phase = std::f32::consts::TAU * rng.uniform();
            let colour = |rng: &mut Rng| [rng.uniform(), rng.uniform(), rng.uniform()];
            let (a, b) = (colour(&mut rng), colour(&mut rng));
            let (dx, dy) = (angle.cos(), angle.sin());
            let mut image = vec![0.0; 3 * size * size];
            for y in 0..size {
                for x in 0..size {
                    let t =
                        ((x as f32 * dx + y as f32 * dy) * std::f32::consts::TAU / period + phase).sin() * 0.5 + 0.5;
                    for c in 0..3 {
                        let v = a[c] * t + b[c] * (1.0 - t) + 0.1 * rng.normal();
                        image[(c * size + y) * size + x] = v.clamp(0.0, 1.0);
                    }
                }
            }
            pixels.extend(image);
            labels.push(class);
        }
        let classes = ["stripes-0", "stripes-45", "stripes-90", "stripes-135"].map(String::from).to_vec();
        Dataset { pixels, labels, size, classes }
    }

    /// Images already in memory: `pixels` (n, 3, size, size) in [0, 1], a label each.
    pub fn from_pixels(pixels: Vec<f32>, labels: Vec<u32>, size: usize, classes: Vec<String>) -> Result<Dataset> {
        if pixels.len() != labels.len() * 3 * size * size {
            let n = labels.len();
            return Err(Error::Usage(format!("{} values for {n} images of 3×{size}×{size}", pixels.len())));
        }
        if let Some(bad) = labels.iter().find(|&&l| l as usize >= classes.len()) {
            return Err(Error::Usage(format!("label {bad} for {} classes", classes.len())));
        }
        Ok(Dataset { pixels, labels, size, classes })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn size(&self) -> usize {
        self.size
    }

    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// A random `fraction` of the images as a second set (held out for
    /// evaluation), the rest as the first.
    pub fn split(self, fraction: f64, seed: u64) -> (Dataset, Dataset) {
        let mut order: Vec<usize> = (0..self.len()).collect();
        Rng::new(seed).shuffle(&mut order);
        let held = ((self.len() as f64 * fraction).round() as usize).min(self.len());
        let (held_idx, kept_idx) = order.split_at(held);
        (self.subset(kept_idx), self.subset(held_idx))
    }

    fn subset(&self, idx: &[usize]) -> Dataset {
        let per = 3 * self.size * self.size;
        let mut pixels = Vec::with_capacity(idx.len() * per);
        for &i in idx {
            pixels.extend_from_slice(&self.pixels[i * per..(i + 1) * per]);
        }
        let labels = idx.iter().map(|&i| self.labels[i]).collect();
        Dataset { pixels, labels, size: self.size, classes: self.classes.clone() }
    }

    /// Images (b, 3, size, size) in [0, 1] and labels (b,) u32 of the given indices.
    pub fn batch(&self, idx: &[usize], device: &Device) -> Result<(Tensor, Tensor)> {
        let sub = self.subset(idx);
        let images = Tensor::from_f32(sub.pixels, [idx.len(), 3, self.size, self.size], device)?;
        Ok((images, Tensor::from_u32(sub.labels, [idx.len()], device)?))
    }
}

/// (3, h, w) to (3, size, size), bilinear with half-pixel centres (PIL's and
/// torchvision's convention without antialiasing).
fn resize_bilinear(src: &[f32], h: usize, w: usize, size: usize) -> Vec<f32> {
    if h == size && w == size {
        return src.to_vec();
    }
    let coord = |o: usize, n: usize| -> (usize, usize, f32) {
        let x = ((o as f32 + 0.5) * n as f32 / size as f32 - 0.5).clamp(0.0, (n - 1) as f32);
        let i = x.floor() as usize;
        (i, (i + 1).min(n - 1), x - i as f32)
    };
    let mut out = vec![0.0; 3 * size * size];
    for y in 0..size {
        let (y0, y1, fy) = coord(y, h);
        for x in 0..size {
            let (x0, x1, fx) = coord(x, w);
            for c in 0..3 {
                let at = |yy: usize, xx: usize| src[(c * h + yy) * w + xx];
                let top = at(y0, x0) * (1.0 - fx) + at(y0, x1) * fx;
                let bottom = at(y1, x0) * (1.0 - fx) + at(y1, x1) * fx;
                out[(c * size + y) * size + x] = top * (1.0 - fy) + bottom * fy;
            }
        }
    }
    out
}
