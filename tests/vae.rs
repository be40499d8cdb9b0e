//! AutoencoderKL against diffusers (tests/fixtures/vae, made by
//! scripts/fixtures/unet_vae.py): three tiny configurations (current attention
//! names without quant convs, the deprecated attention names with quant convs,
//! no mid-block attention), encoding images of even and odd sizes and
//! decoding latents. f32 on the CPU within 1e-4 relative error; f16 and bf16
//! on the GPU against the CPU's f32 output when a GPU is present. Broken
//! checkpoints and configs fail with one line naming what is wrong.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use foil::models::vae::AutoencoderKL;
use foil::tensor::safetensors::load_all;
use foil::{DType, Device, Tensor};

const CONFIGS: [&str; 3] = ["small", "legacy", "noattn"];

/// The model folder of fixture `name` (its inputs and outputs are next to it).
fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vae").join(name).join("vae")
}

fn io(name: &str) -> HashMap<String, Tensor> {
    load_all(fixture(name).with_file_name("io.safetensors"), DType::F32, &Device::Cpu).unwrap()
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
        let worst = common::worst_rel_err(name, &run_all(&model, &io), &io, 1e-4);
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

/// The error loading `dir` gives, which must be one line; removes `dir`.
fn load_error(dir: &Path) -> String {
    common::load_error_removing(dir, AutoencoderKL::load(dir, DType::F32, &Device::Cpu))
}

#[test]
fn broken_checkpoints_and_configs_are_named() {
    let key = "encoder.mid_block.attentions.0.proj_attn.weight";
    let e = load_error(&common::broken_diffusers_copy(&fixture("legacy"), "missing", |w| drop(w.remove(key)), |_| {}));
    assert!(e.contains("missing tensor 'encoder.mid_block.attentions.0.proj_attn.weight'"), "{e}");

    let key = "decoder.up_blocks.0.resnets.1.conv1.weight";
    let wrong = Tensor::zeros([16, 16, 3, 1], DType::F32, &Device::Cpu).unwrap();
    let e = load_error(&common::broken_diffusers_copy(
        &fixture("small"),
        "shape",
        |w| drop(w.insert(key.into(), wrong)),
        |_| {},
    ));
    assert!(e.contains(key) && e.contains("[16, 16, 3, 1]") && e.contains("expected [16, 16, 3, 3]"), "{e}");

    // A config that says there are no quant convs for a checkpoint that has them.
    let no_quant = |c: &mut serde_json::Map<_, _>| drop(c.insert("use_quant_conv".into(), false.into()));
    let e = load_error(&common::broken_diffusers_copy(&fixture("legacy"), "quant", |_| {}, no_quant));
    assert!(e.contains("unexpected tensor 'quant_conv."), "{e}");

    let attn_block = |c: &mut serde_json::Map<_, _>| {
        drop(c.insert("up_block_types".into(), serde_json::json!(["AttnUpDecoderBlock2D", "UpDecoderBlock2D"])))
    };
    let e = load_error(&common::broken_diffusers_copy(&fixture("small"), "block", |_| {}, attn_block));
    assert!(e.contains("unsupported block type 'AttnUpDecoderBlock2D' in up_block_types"), "{e}");

    let shift = |c: &mut serde_json::Map<_, _>| drop(c.insert("shift_factor".into(), 0.0609.into()));
    let e = load_error(&common::broken_diffusers_copy(&fixture("small"), "shift", |_| {}, shift));
    assert!(e.contains("unsupported option shift_factor = 0.0609") && e.contains("config.json"), "{e}");
}

/// f16 and bf16 on the GPU against f32 on the CPU: within 2e-2 (f16) and
/// 8e-2 (bf16) of the largest output value.
#[test]
fn half_precision_on_cuda_matches_cpu() {
    let Some(gpu) = common::gpu("vae::half_precision_on_cuda_matches_cpu") else { return };
    for name in CONFIGS {
        let io = io(name);
        let cpu = AutoencoderKL::load(&fixture(name), DType::F32, &Device::Cpu).unwrap();
        let want: HashMap<String, Tensor> = run_all(&cpu, &io).into_iter().collect();
        for (dtype, tol) in [(DType::F32, 1e-4), (DType::F16, 2e-2), (DType::BF16, 8e-2)] {
            let model = AutoencoderKL::load(&fixture(name), dtype, &gpu).unwrap();
            let got = run_all(&model, &io);
            assert!(got.iter().all(|(_, t)| t.dtype() == dtype), "{name} {dtype:?}");
            let worst = common::worst_rel_err(&format!("{name} {dtype:?}"), &got, &want, tol);
            eprintln!("vae {name}: {dtype:?} cuda vs f32 cpu worst relative error {worst:.2e}");
        }
    }
}
