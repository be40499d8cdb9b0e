//! AutoencoderKL against diffusers (tests/fixtures/vae, made by
//! scripts/fixtures/unet_vae.py): three tiny configurations (current attention
//! names without quant convs, the deprecated attention names with quant convs,
//! no mid-block attention), encoding images of even and odd sizes and
//! decoding latents. f32 on the CPU within 1e-4 relative error; f16 and bf16
//! on the GPU against the CPU's f32 output when a GPU is present. Broken
//! checkpoints and configs fail with one line naming what is wrong.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use foil::models::vae::AutoencoderKL;
use foil::tensor::safetensors::{load_all, save};
use foil::{DType, Device, Tensor};

const CONFIGS: [&str; 3] = ["small", "legacy", "noattn"];

/// The model folder of fixture `name` (its inputs and outputs are next to it).
fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vae").join(name).join("vae")
}

fn io(name: &str) -> HashMap<String, Tensor> {
    load_all(fixture(name).with_file_name("io.safetensors"), DType::F32, &Device::Cpu).unwrap()
}

fn as_f64(t: &Tensor) -> Vec<f64> {
    t.to_vec_f32().unwrap().iter().map(|&v| v as f64).collect()
}

/// mean.i, logvar.i and decoded.i of the model for every input i of the fixture.
fn run_all(model: &AutoencoderKL, io: &HashMap<String, Tensor>) -> Vec<(String, Tensor)> {
    let mut outs = vec![];
    for i in 0.. {
        let Some(images) = io.get(&format!("images.{i}")) else { break };
        let (mean, logvar) = model.encode(images).unwrap();
        outs.push((format!("mean.{i}"), mean));
        outs.push((format!("logvar.{i}"), logvar));
        outs.push((format!("decoded.{i}"), model.decode(&io[&format!("latents.{i}")]).unwrap()));
    }
    outs
}

#[test]
fn matches_diffusers_in_f32_on_cpu() {
    for name in CONFIGS {
        let model = AutoencoderKL::load(&fixture(name), DType::F32, &Device::Cpu).unwrap();
        let io = io(name);
        let mut worst = 0f64;
        for (key, out) in run_all(&model, &io) {
            let want = &io[&key];
            assert_eq!(out.dims(), want.dims(), "{name} {key}");
            let e = common::rel_err(&out.to_vec_f32().unwrap(), &as_f64(want));
            assert!(e < 1e-4, "{name} {key}: relative error {e:.3e}");
            worst = worst.max(e);
        }
        eprintln!("vae {name}: f32 cpu worst relative error {worst:.2e}");
    }
}

#[test]
fn reports_its_sizes_and_checks_inputs() {
    let sizes = |name: &str| {
        let m = AutoencoderKL::load(&fixture(name), DType::F32, &Device::Cpu).unwrap();
        (m.scaling_factor(), m.latent_channels(), m.downscale())
    };
    assert_eq!(sizes("small"), (0.18215, 4, 2));
    assert_eq!(sizes("legacy"), (0.13025, 3, 4));
    let model = AutoencoderKL::load(&fixture("small"), DType::F32, &Device::Cpu).unwrap();
    let io = io("small");
    let e = model.encode(&io["latents.0"]).unwrap_err().to_string();
    assert!(e.contains("is not (n, 3, h, w)"), "{e}");
    let e = model.decode(&io["images.0"]).unwrap_err().to_string();
    assert!(e.contains("is not (n, 4, h, w)"), "{e}");
}

/// A copy of fixture `name` in a fresh temporary folder, with the weights
/// passed through `edit` and the config through `edit_config`.
fn broken_copy(
    name: &str,
    tag: &str,
    edit: impl FnOnce(&mut HashMap<String, Tensor>),
    edit_config: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("foil-vae-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = fixture(name);
    let text = std::fs::read_to_string(src.join("config.json")).unwrap();
    let mut config: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).unwrap();
    edit_config(&mut config);
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config).unwrap()).unwrap();
    let mut weights = load_all(src.join("diffusion_pytorch_model.safetensors"), DType::F32, &Device::Cpu).unwrap();
    edit(&mut weights);
    let named: Vec<(&str, &Tensor)> = weights.iter().map(|(k, v)| (k.as_str(), v)).collect();
    save(dir.join("diffusion_pytorch_model.safetensors"), &named).unwrap();
    dir
}

/// The error loading `dir` gives, which must be one line; removes `dir`.
fn load_error(dir: &Path) -> String {
    let result = AutoencoderKL::load(dir, DType::F32, &Device::Cpu);
    let _ = std::fs::remove_dir_all(dir);
    let e = match result {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    };
    assert!(!e.contains('\n'), "not one line: {e}");
    e
}

#[test]
fn broken_checkpoints_and_configs_are_named() {
    let key = "encoder.mid_block.attentions.0.proj_attn.weight";
    let e = load_error(&broken_copy("legacy", "missing", |w| drop(w.remove(key)), |_| {}));
    assert!(e.contains("missing tensor 'encoder.mid_block.attentions.0.proj_attn.weight'"), "{e}");

    let key = "decoder.up_blocks.0.resnets.1.conv1.weight";
    let wrong = Tensor::zeros([16, 16, 3, 1], DType::F32, &Device::Cpu).unwrap();
    let e = load_error(&broken_copy("small", "shape", |w| drop(w.insert(key.into(), wrong)), |_| {}));
    assert!(e.contains(key) && e.contains("[16, 16, 3, 1]") && e.contains("expected [16, 16, 3, 3]"), "{e}");

    // A config that says there are no quant convs for a checkpoint that has them.
    let no_quant = |c: &mut serde_json::Map<_, _>| drop(c.insert("use_quant_conv".into(), false.into()));
    let e = load_error(&broken_copy("legacy", "quant", |_| {}, no_quant));
    assert!(e.contains("unexpected tensor 'quant_conv."), "{e}");

    let attn_block = |c: &mut serde_json::Map<_, _>| {
        drop(c.insert("up_block_types".into(), serde_json::json!(["AttnUpDecoderBlock2D", "UpDecoderBlock2D"])))
    };
    let e = load_error(&broken_copy("small", "block", |_| {}, attn_block));
    assert!(e.contains("unsupported block type 'AttnUpDecoderBlock2D' in up_block_types"), "{e}");

    let shift = |c: &mut serde_json::Map<_, _>| drop(c.insert("shift_factor".into(), 0.0609.into()));
    let e = load_error(&broken_copy("small", "shift", |_| {}, shift));
    assert!(e.contains("unsupported option shift_factor = 0.0609") && e.contains("config.json"), "{e}");
}

/// f16 and bf16 on the GPU against f32 on the CPU: within 2e-2 (f16) and
/// 8e-2 (bf16) of the largest output value.
#[test]
fn half_precision_on_cuda_matches_cpu() {
    let gpu = match Device::cuda(0) {
        Ok(d) => d,
        Err(reason) => {
            let line = format!("SKIPPED vae::half_precision_on_cuda_matches_cpu: no GPU ({reason})\n");
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
            return;
        }
    };
    for name in CONFIGS {
        let io = io(name);
        let cpu = AutoencoderKL::load(&fixture(name), DType::F32, &Device::Cpu).unwrap();
        let want = run_all(&cpu, &io);
        for (dtype, tol) in [(DType::F32, 1e-4), (DType::F16, 2e-2), (DType::BF16, 8e-2)] {
            let model = AutoencoderKL::load(&fixture(name), dtype, &gpu).unwrap();
            let mut worst = 0f64;
            for ((key, got), (_, want)) in run_all(&model, &io).iter().zip(&want) {
                assert_eq!(got.dtype(), dtype);
                let e = common::rel_err(&got.to_vec_f32().unwrap(), &as_f64(want));
                assert!(e < tol, "{name} {key} {dtype:?}: relative error {e:.3e} > {tol:.0e}");
                worst = worst.max(e);
            }
            eprintln!("vae {name}: {dtype:?} cuda vs f32 cpu worst relative error {worst:.2e}");
        }
    }
}
