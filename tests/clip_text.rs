//! The CLIP text encoder against transformers' CLIPTextModel
//! (tests/fixtures/clip-text, made by scripts/fixtures/clip_text.py): f32 on the
//! CPU, f16 and bf16 on the CPU and on the GPU when there is one, and the
//! one-line errors of broken checkpoints.

mod common;

use std::path::{Path, PathBuf};

use foil::models::clip_text::ClipTextModel;
use foil::tensor::safetensors::SafetensorsFile;
use foil::{DType, Device, Tensor};

const CONFIGS: [&str; 2] = ["quick_gelu", "gelu"];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip-text").join(name)
}

/// The fixture's (input_ids, last_hidden_state as f64).
fn io(name: &str) -> (Tensor, Vec<f64>) {
    let f = SafetensorsFile::open(fixture(&format!("{name}-io.safetensors"))).unwrap();
    let ids = f.load("input_ids", DType::U32, &Device::Cpu).unwrap();
    let want = f.load("last_hidden_state", DType::F32, &Device::Cpu).unwrap();
    (ids, common::as_f64(&want))
}

fn run(name: &str, dtype: DType, device: &Device) -> Vec<f32> {
    let model = ClipTextModel::load(&fixture(name), dtype, device).unwrap();
    let (ids, _) = io(name);
    let out = model.forward(&ids.to_device(device).unwrap()).unwrap();
    assert_eq!(out.dims(), [2, 77, model.hidden_size()], "{name}");
    assert_eq!(out.dtype(), dtype);
    out.to_vec_f32().unwrap()
}

#[test]
fn f32_matches_transformers() {
    for name in CONFIGS {
        let (_, want) = io(name);
        let got = run(name, DType::F32, &Device::Cpu);
        let err = common::rel_err(&got, &want);
        eprintln!("clip_text {name} f32 cpu: relative error {err:.2e}");
        assert!(err < 1e-4, "{name}: relative error {err:.3e}");
    }
}

/// Half precision against the f32 CPU output: twice the per-op contraction
/// tolerances of kernels/README.md (f16 5e-3, bf16 3e-2), for the ~10 rounded
/// ops of each of the 2–3 layers. Measured on the CPU backend: f16 1.3e-3, bf16 1.3e-2.
const HALF_TOLERANCES: [(DType, f64); 2] = [(DType::F16, 1e-2), (DType::BF16, 6e-2)];

fn check_half(device: &Device) {
    for name in CONFIGS {
        let want: Vec<f64> = run(name, DType::F32, &Device::Cpu).iter().map(|&v| v as f64).collect();
        for (dtype, tol) in HALF_TOLERANCES {
            let err = common::rel_err(&run(name, dtype, device), &want);
            eprintln!("clip_text {name} {dtype:?} {device}: relative error {err:.2e} (bound {tol:.0e})");
            assert!(err < tol, "{name} {dtype:?} on {device}: relative error {err:.3e} > {tol:.0e}");
        }
    }
}

#[test]
fn half_precision_on_the_cpu() {
    check_half(&Device::Cpu);
}

#[test]
fn half_precision_on_the_gpu() {
    if let Some(gpu) = common::gpu("clip_text::half_precision_on_the_gpu") {
        check_half(&gpu);
    }
}

/// A copy of fixture `name` in a fresh temporary folder, its weights passed
/// through `edit` (return None to drop a tensor) and its config through `config`.
fn broken_copy(
    name: &str,
    case: &str,
    edit: impl Fn(&str, Tensor) -> Option<Tensor>,
    config: impl Fn(String) -> String,
) -> PathBuf {
    let dir = common::temp_dir(&format!("clip-text-{case}"));
    common::copy_tensors(&fixture(name).join("model.safetensors"), &dir.join("model.safetensors"), edit);
    let text = std::fs::read_to_string(fixture(name).join("config.json")).unwrap();
    std::fs::write(dir.join("config.json"), config(text)).unwrap();
    dir
}

fn load_error(dir: &Path) -> String {
    common::one_line_error(ClipTextModel::load(dir, DType::F32, &Device::Cpu))
}

#[test]
fn broken_checkpoints_are_one_line_errors() {
    let same = |s: String| s;
    let keep = |_: &str, t: Tensor| Some(t);

    let missing = "text_model.encoder.layers.1.mlp.fc2.bias";
    let dir = broken_copy("quick_gelu", "missing", |n, t| (n != missing).then_some(t), same);
    let e = load_error(&dir);
    assert!(e.contains(&format!("missing tensor '{missing}'")) && e.contains("model.safetensors"), "{e}");

    let reshaped = "encoder.layers.0.self_attn.k_proj.weight";
    let dir =
        broken_copy("gelu", "shape", |n, t| Some(if n == reshaped { t.reshape([48, 192]).unwrap() } else { t }), same);
    let e = load_error(&dir);
    assert!(e.contains(reshaped) && e.contains("[48, 192]") && e.contains("model.safetensors"), "{e}");

    // A config with fewer layers than the checkpoint (another model's config) leaves tensors unused.
    let dir =
        broken_copy("gelu", "layers", keep, |s| s.replace("\"num_hidden_layers\": 3", "\"num_hidden_layers\": 2"));
    let e = load_error(&dir);
    assert!(e.contains("unexpected tensor 'encoder.layers.2.") && e.contains("model.safetensors"), "{e}");

    let dir = broken_copy("quick_gelu", "act", keep, |s| s.replace("\"quick_gelu\"", "\"swish\""));
    let e = load_error(&dir);
    assert!(e.contains("hidden_act 'swish' is not supported") && e.contains("config.json"), "{e}");

    let e = load_error(&std::env::temp_dir().join("foil-clip-text-no-such-folder"));
    assert!(e.contains("config.json"), "{e}");
}

#[test]
fn bad_ids_are_errors() {
    let model = ClipTextModel::load(&fixture("quick_gelu"), DType::F32, &Device::Cpu).unwrap();
    let cpu = Device::Cpu;
    assert!(model.forward(&Tensor::from_u32(vec![0; 78], [1, 78], &cpu).unwrap()).is_err(), "too long");
    assert!(model.forward(&Tensor::from_u32(vec![1000; 3], [1, 3], &cpu).unwrap()).is_err(), "id past the vocabulary");
    assert!(model.forward(&Tensor::from_f32(vec![0.0; 3], [1, 3], &cpu).unwrap()).is_err(), "float ids");
    assert!(model.forward(&Tensor::from_u32(vec![0; 3], [3], &cpu).unwrap()).is_err(), "no batch dimension");
}
