//! ResNet against torchvision (tests/fixtures/resnet, made by
//! scripts/fixtures/resnet.py: torchvision's own blocks at reduced widths):
//! f32 on the CPU, f16 and bf16 on the CPU and on the GPU when there is one,
//! and the one-line errors of broken or mismatched checkpoints.

mod common;

use std::path::{Path, PathBuf};

use foil::models::resnet::{imagenet_normalize, ResNet, ResNetArch};
use foil::tensor::safetensors::SafetensorsFile;
use foil::{DType, Device, Tensor};

const ARCHS: [ResNetArch; 4] =
    [ResNetArch::ResNet18, ResNetArch::ResNet34, ResNetArch::ResNet50, ResNetArch::ResNet101];

fn fixture(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/resnet").join(file)
}

fn weights(arch: ResNetArch) -> PathBuf {
    fixture(&format!("{arch}.safetensors"))
}

/// The fixture's images in [0, 1] (2, 3, 45, 39) and torchvision's logits as f64.
fn io(arch: ResNetArch) -> (Tensor, Vec<f64>) {
    let f = SafetensorsFile::open(fixture(&format!("{arch}-io.safetensors"))).unwrap();
    let images = f.load("images", DType::F32, &Device::Cpu).unwrap();
    let logits = f.load("logits", DType::F32, &Device::Cpu).unwrap();
    (images, common::as_f64(&logits))
}

fn run(arch: ResNetArch, dtype: DType, device: &Device) -> Vec<f32> {
    let model = ResNet::load(&weights(arch), arch, dtype, device).unwrap();
    let (images, _) = io(arch);
    let x = imagenet_normalize(&images.to_dtype(dtype).unwrap().to_device(device).unwrap()).unwrap();
    let logits = model.forward(&x).unwrap();
    assert_eq!(logits.dims(), [2, model.num_classes()], "{arch}");
    assert_eq!(logits.dtype(), dtype);
    logits.to_vec_f32().unwrap()
}

#[test]
fn f32_matches_torchvision() {
    for arch in ARCHS {
        let (_, want) = io(arch);
        let err = common::rel_err(&run(arch, DType::F32, &Device::Cpu), &want);
        eprintln!("resnet {arch} f32 cpu: relative error {err:.2e}");
        assert!(err < 1e-4, "{arch}: relative error {err:.3e}");
    }
}

/// The bound for half precision against the f32 CPU output, relative to the
/// largest logit: the per-op contraction tolerance of kernels/README.md (f16
/// 5e-3, bf16 3e-2) times depth / 5, since rounding errors add up and are
/// amplified layer after layer (PyTorch's own f16 and bf16 runs of these
/// fixtures are off by as much: bf16 1.25e-1 on resnet101). Measured on the CPU
/// backend: f16 2.6e-3, 3.3e-3, 2.2e-2, 3.2e-2 and bf16 4.3e-2, 3.2e-2,
/// 1.7e-1, 3.0e-1 for resnet18, 34, 50, 101, against bounds of 1.8e-2 to 1e-1
/// (f16) and 1.1e-1 to 6.1e-1 (bf16).
fn half_tolerance(arch: ResNetArch, dtype: DType) -> f64 {
    let depth = match arch {
        ResNetArch::ResNet18 => 18.0,
        ResNetArch::ResNet34 => 34.0,
        ResNetArch::ResNet50 => 50.0,
        ResNetArch::ResNet101 => 101.0,
    };
    let per_op = if dtype == DType::F16 { 5e-3 } else { 3e-2 };
    per_op * depth / 5.0
}

fn check_half(device: &Device) {
    for arch in ARCHS {
        let want: Vec<f64> = run(arch, DType::F32, &Device::Cpu).iter().map(|&v| v as f64).collect();
        for dtype in [DType::F16, DType::BF16] {
            let tol = half_tolerance(arch, dtype);
            let err = common::rel_err(&run(arch, dtype, device), &want);
            eprintln!("resnet {arch} {dtype:?} {device}: relative error {err:.2e} (bound {tol:.1e})");
            assert!(err < tol, "{arch} {dtype:?} on {device}: relative error {err:.3e} > {tol:.0e}");
        }
    }
}

#[test]
fn half_precision_on_the_cpu() {
    check_half(&Device::Cpu);
}

#[test]
fn half_precision_on_the_gpu() {
    if let Some(gpu) = common::gpu("resnet::half_precision_on_the_gpu") {
        check_half(&gpu);
    }
}

/// A copy of `arch`'s fixture in a fresh temporary file, its tensors passed
/// through `edit` (return None to drop one).
fn broken_copy(arch: ResNetArch, case: &str, edit: impl Fn(&str, Tensor) -> Option<Tensor>) -> PathBuf {
    let path = common::temp_dir(&format!("resnet-{case}")).join(format!("{arch}-{case}.safetensors"));
    common::copy_tensors(&weights(arch), &path, edit);
    path
}

/// The load error of `file` as `arch`, which must be one line naming the file.
fn load_error(file: &Path, arch: ResNetArch) -> String {
    let e = common::one_line_error(ResNet::load(file, arch, DType::F32, &Device::Cpu));
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    assert!(e.contains(&name), "names the file {name}: {e}");
    e
}

#[test]
fn broken_checkpoints_are_one_line_errors() {
    let missing = "layer2.0.downsample.0.weight";
    let file = broken_copy(ResNetArch::ResNet18, "missing", |n, t| (n != missing).then_some(t));
    let e = load_error(&file, ResNetArch::ResNet18);
    assert!(e.contains(&format!("missing tensor '{missing}'")), "{e}");

    let reshaped = "layer3.1.conv2.weight";
    let file = broken_copy(ResNetArch::ResNet50, "shape", |n, t| {
        Some(if n == reshaped { t.reshape([12, 4, 3, 9]).unwrap() } else { t })
    });
    let e = load_error(&file, ResNetArch::ResNet50);
    assert!(e.contains(&format!("tensor '{reshaped}' has shape [12, 4, 3, 9]")), "{e}");

    let file = broken_copy(ResNetArch::ResNet34, "bn", |n, t| {
        Some(if n == "layer4.2.bn1.running_var" { t.narrow(0, 0, 15).unwrap() } else { t })
    });
    let e = load_error(&file, ResNetArch::ResNet34);
    assert!(e.contains("tensor 'layer4.2.bn1.running_var' has shape [15]"), "{e}");
}

#[test]
fn the_wrong_architecture_is_a_one_line_error() {
    use ResNetArch::*;
    let cases = [
        // A bottleneck's first conv is 1×1 where a basic block's is 3×3.
        (ResNet50, ResNet18, "tensor 'layer1.0.conv1.weight' has shape [4, 4, 1, 1], expected [4, 4, 3, 3]"),
        (ResNet18, ResNet50, "tensor 'layer1.0.conv1.weight' has shape [8, 8, 3, 3], expected [8, 8, 1, 1]"),
        (ResNet18, ResNet34, "missing tensor 'layer1.2.conv1.weight'"),
        (ResNet34, ResNet18, "unexpected tensor 'layer1.2."),
        (ResNet101, ResNet50, "unexpected tensor 'layer3.10."),
        (ResNet50, ResNet101, "missing tensor 'layer3.6.conv1.weight'"),
    ];
    for (stored, asked, want) in cases {
        let e = load_error(&weights(stored), asked);
        assert!(e.contains(want), "{stored} loaded as {asked}: {e}");
    }
}

#[test]
fn architecture_names() {
    for arch in ARCHS {
        assert_eq!(arch.to_string().parse::<ResNetArch>().unwrap(), arch);
    }
    let e = "resnet152".parse::<ResNetArch>().unwrap_err().to_string();
    assert!(e.contains("unknown ResNet architecture 'resnet152'"), "{e}");
}

#[test]
fn normalization_and_bad_inputs() {
    let cpu = Device::Cpu;
    let images = Tensor::from_f32(vec![0.0, 1.0, 0.5, 0.25, 1.0, 0.0], [1, 3, 1, 2], &cpu).unwrap();
    let got = imagenet_normalize(&images).unwrap().to_vec_f32().unwrap();
    let want = [
        -0.485 / 0.229,
        (1.0 - 0.485) / 0.229,
        (0.5 - 0.456) / 0.224,
        (0.25 - 0.456) / 0.224,
        (1.0 - 0.406) / 0.225,
        -0.406 / 0.225,
    ];
    common::assert_close("imagenet_normalize", &got, &want, 1e-6);
    assert!(imagenet_normalize(&Tensor::zeros([1, 4, 2, 2], DType::F32, &cpu).unwrap()).is_err());

    let model = ResNet::load(&weights(ResNetArch::ResNet18), ResNetArch::ResNet18, DType::F32, &cpu).unwrap();
    assert_eq!((model.arch(), model.num_classes()), (ResNetArch::ResNet18, 10));
    assert!(model.forward(&Tensor::zeros([1, 4, 32, 32], DType::F32, &cpu).unwrap()).is_err(), "4 channels");
    assert!(model.forward(&Tensor::zeros([3, 32, 32], DType::F32, &cpu).unwrap()).is_err(), "no batch");
    assert!(model.forward(&Tensor::zeros([1, 3, 32, 32], DType::F16, &cpu).unwrap()).is_err(), "another dtype");
}
