//! PNG images in and out as f32 (3, H, W) tensors with values in [0, 1], the
//! layout diffusers' output_type="np" and torchvision's ToTensor give (NCHW).
//! Writing goes through a temporary file and a rename, as for safetensors.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use super::atomic_file::write_atomically;
use super::Tensor;
use crate::device::{DType, Device};
use crate::error::{shape_err, Error, Result};

/// An 8- or 16-bit PNG (grey, grey+alpha, RGB, RGBA, palette) as RGB (1, 3, H, W)
/// in [0, 1]; alpha is dropped, as PIL's convert("RGB") does.
pub fn read_png(path: impl AsRef<Path>, device: &Device) -> Result<Tensor> {
    let path = path.as_ref();
    let bad = |e: &dyn std::fmt::Display| Error::File { file: path.display().to_string(), detail: e.to_string() };
    let file = File::open(path).map_err(|e| bad(&e))?;
    let mut decoder = png::Decoder::new(BufReader::new(file));
    // Palette and low-bit-depth images expand to 8 bits a sample.
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().map_err(|e| bad(&format!("not a readable PNG: {e}")))?;
    let size = reader.output_buffer_size().ok_or_else(|| bad(&"image too large"))?;
    let mut buf = vec![0u8; size];
    let frame = reader.next_frame(&mut buf).map_err(|e| bad(&format!("corrupt PNG data: {e}")))?;
    let (w, h) = (frame.width as usize, frame.height as usize);
    let channels = frame.color_type.samples();
    let samples: Vec<f32> = match frame.bit_depth {
        png::BitDepth::Sixteen => buf[..frame.buffer_size()]
            .chunks_exact(2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]) as f32 / 65535.0)
            .collect(),
        _ => buf[..frame.buffer_size()].iter().map(|&b| b as f32 / 255.0).collect(),
    };
    let row = frame.line_size / if frame.bit_depth == png::BitDepth::Sixteen { 2 } else { 1 };
    let mut planar = vec![0f32; 3 * h * w];
    for y in 0..h {
        for x in 0..w {
            let px = &samples[y * row + x * channels..][..channels];
            // Grey (with or without alpha) repeats its one value in R, G and B.
            let rgb = if channels >= 3 { [px[0], px[1], px[2]] } else { [px[0]; 3] };
            for (c, v) in rgb.into_iter().enumerate() {
                planar[(c * h + y) * w + x] = v;
            }
        }
    }
    Tensor::from_f32(planar, [1, 3, h, w], device)
}

/// Writes image `index` of an (N, 3, H, W) tensor in [0, 1] as an 8-bit RGB PNG,
/// rounding as diffusers' numpy_to_pil does ((x·255).round()).
pub fn write_png(path: impl AsRef<Path>, images: &Tensor, index: usize) -> Result<()> {
    let path = path.as_ref();
    let d = images.dims();
    if d.len() != 4 || d[1] != 3 || index >= d[0] {
        return shape_err("write_png", format!("image {index} of {} (want (N, 3, H, W))", images.shape()));
    }
    let (h, w) = (d[2], d[3]);
    let plane = images.narrow(0, index, 1)?.to_dtype(DType::F32)?.to_vec_f32()?;
    let mut rgb = vec![0u8; 3 * h * w];
    for c in 0..3 {
        for i in 0..h * w {
            rgb[i * 3 + c] = (plane[c * h * w + i].clamp(0.0, 1.0) * 255.0).round() as u8;
        }
    }
    write_rgb_png(path, w as u32, h as u32, &rgb)
}

/// Writes interleaved 8-bit RGB rows as a PNG, atomically (whole or not at all).
pub fn write_rgb_png(path: &Path, width: u32, height: u32, rgb: &[u8]) -> Result<()> {
    write_atomically(path, "cannot write PNG", |out| {
        let mut encoder = png::Encoder::new(out, width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(rgb)?;
        writer.finish()?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Rng;

    #[test]
    fn png_round_trip_is_exact_to_8_bits() {
        let dev = Device::Cpu;
        let mut rng = Rng::new(3);
        let img = Tensor::rand_uniform([2, 3, 5, 7], 0.0, 1.0, &mut rng, &dev).unwrap();
        let dir = std::env::temp_dir().join(format!("foil-png-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.png");
        write_png(&path, &img, 1).unwrap();
        let back = read_png(&path, &dev).unwrap();
        assert_eq!(back.dims(), [1, 3, 5, 7]);
        let want = img.narrow(0, 1, 1).unwrap().to_vec_f32().unwrap();
        for (a, b) in want.iter().zip(back.to_vec_f32().unwrap()) {
            assert!((a - b).abs() <= 0.5 / 255.0 + 1e-6, "{a} vs {b}");
        }
        std::fs::write(dir.join("bad.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
        let e = read_png(dir.join("bad.png"), &dev).unwrap_err().to_string();
        assert!(e.contains("bad.png") && e.contains("PNG"), "{e}");
    }
}
