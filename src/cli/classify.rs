//! `foil classify`: a torchvision ResNet from a safetensors state dict, on images.

use std::path::{Path, PathBuf};

use clap::Args;

use foil::models::resnet::{imagenet_normalize, ResNet, ResNetArch};
use foil::tensor::{image, safetensors, Tensor};
use foil::{DType, Device, Error, Result};

use super::{compute_dtype, DTypeArg};

#[derive(Args)]
#[command(after_help = "Examples:
  foil classify --model resnet50.safetensors --arch resnet50 --input cat.png
  foil classify --model resnet18.safetensors --arch resnet18 --input batch.safetensors --save-tensor logits.safetensors")]
pub struct ClassifyArgs {
    /// A torchvision ResNet state dict saved as safetensors (conv1.weight, bn1.*, layer1.0.*, ..., fc.*).
    #[arg(long, value_name = "FILE")]
    model: PathBuf,
    /// resnet18, resnet34, resnet50 or resnet101 (block type and depth; widths come from the file).
    #[arg(long, value_name = "ARCH")]
    arch: ResNetArch,
    /// A PNG, or a safetensors file with `images`: f32 (N, 3, H, W) in [0, 1]. ImageNet's mean and
    /// std are applied by foil.
    #[arg(long, value_name = "FILE")]
    input: PathBuf,
    /// Write the logits as a safetensors file (`logits`, f32 (N, classes)) instead of printing.
    #[arg(long, value_name = "FILE")]
    save_tensor: Option<PathBuf>,
    /// How many classes to print per image.
    #[arg(long, value_name = "K", default_value_t = 5)]
    top: usize,
    /// Compute dtype: auto (f16 on a GPU, f32 on the CPU), f32, f16 or bf16.
    #[arg(long, value_enum, default_value = "auto")]
    dtype: DTypeArg,
}

pub fn run(args: ClassifyArgs, device: &Device) -> Result<()> {
    let dtype = compute_dtype(args.dtype, device);
    let images = read_images(&args.input, device)?;
    let model = ResNet::load(&args.model, args.arch, dtype, device)?;
    let logits = model.forward(&imagenet_normalize(&images)?.to_dtype(dtype)?)?.to_dtype(DType::F32)?;
    if let Some(path) = &args.save_tensor {
        return safetensors::save(path, &[("logits", &logits)]);
    }
    let probs = logits.softmax(1)?.to_vec_f32()?;
    let classes = logits.dims()[1];
    for (n, row) in probs.chunks(classes).enumerate() {
        let mut order: Vec<usize> = (0..classes).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        let top: Vec<String> = order.iter().take(args.top).map(|&c| format!("{c} ({:.4})", row[c])).collect();
        println!("image {n}: {}", top.join(", "));
    }
    Ok(())
}

fn read_images(path: &Path, device: &Device) -> Result<Tensor> {
    let is_png = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("png"));
    let images = if is_png {
        image::read_png(path, device)?
    } else {
        safetensors::SafetensorsFile::open(path)?.load("images", DType::F32, device)?
    };
    let d = images.dims();
    if d.len() != 4 || d[1] != 3 {
        return Err(Error::File {
            file: path.display().to_string(),
            detail: format!("images {} must be (N, 3, H, W)", images.shape()),
        });
    }
    Ok(images)
}
