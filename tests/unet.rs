//! UNet2DConditionModel against diffusers (tests/fixtures/unet, made by
//! scripts/fixtures/unet_vae.py): three tiny configurations (SD 1.x-like, SD
//! 2.x-like, and DownBlock2D-first with odd latent sizes), two inputs each at
//! four timestep settings. f32 on the CPU within 1e-4 relative error; f16 and
//! bf16 on the GPU against the CPU's f32 output when a GPU is present.
//! Broken checkpoints and configs fail with one line naming what is wrong.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use foil::models::unet::UNet2DConditionModel;
use foil::tensor::safetensors::load_all;
use foil::{DType, Device, Tensor};

const CONFIGS: [&str; 3] = ["sd1", "sd2", "mixed"];
const TIMESTEP_SETS: usize = 4;

/// The model folder of fixture `name` (its inputs and outputs are next to it).
fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/unet").join(name).join("unet")
}

fn io(name: &str) -> HashMap<String, Tensor> {
    load_all(fixture(name).with_file_name("io.safetensors"), DType::F32, &Device::Cpu).unwrap()
}

/// The model's output for every (sample i, timestep set j) of the fixture, with its name.
fn run_all(model: &UNet2DConditionModel, io: &HashMap<String, Tensor>) -> Vec<(String, Tensor)> {
    let context = &io["encoder_hidden_states"];
    let mut outs = vec![];
    for i in 0.. {
        let Some(sample) = io.get(&format!("sample.{i}")) else { break };
        for j in 0..TIMESTEP_SETS {
            let timesteps = io[&format!("timesteps.{j}")].to_vec_f32().unwrap();
            outs.push((format!("out.{i}.{j}"), model.forward(sample, &timesteps, context).unwrap()));
        }
    }
    outs
}

#[test]
fn matches_diffusers_in_f32_on_cpu() {
    for name in CONFIGS {
        let model = UNet2DConditionModel::load(&fixture(name), DType::F32, &Device::Cpu).unwrap();
        let io = io(name);
        let worst = common::worst_rel_err(name, &run_all(&model, &io), &io, 1e-4);
        eprintln!("unet {name}: f32 cpu worst relative error {worst:.2e}");
    }
}

#[test]
fn reports_its_sizes_and_checks_inputs() {
    let model = UNet2DConditionModel::load(&fixture("sd1"), DType::F32, &Device::Cpu).unwrap();
    assert_eq!((model.in_channels(), model.sample_size()), (4, Some(8)));
    let io = io("sd1");
    let (sample, context) = (&io["sample.0"], &io["encoder_hidden_states"]);
    let e = model.forward(sample, &[1.0, 2.0, 3.0], context).unwrap_err().to_string();
    assert!(e.contains("3 timesteps for a batch of 2"), "{e}");
    let e = model.forward(&sample.narrow(1, 0, 3).unwrap(), &[1.0], context).unwrap_err().to_string();
    assert!(e.contains("3 channels, the model takes 4"), "{e}");
    let e = model.forward(sample, &[1.0], &context.narrow(0, 0, 1).unwrap()).unwrap_err().to_string();
    assert!(e.contains("encoder_hidden_states"), "{e}");
}

/// The error loading `dir` gives, which must be one line; removes `dir`.
fn load_error(dir: &Path) -> String {
    common::load_error_removing(dir, UNet2DConditionModel::load(dir, DType::F32, &Device::Cpu))
}

#[test]
fn broken_checkpoints_name_the_tensor() {
    let key = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight";
    let dir = common::broken_diffusers_copy(&fixture("sd1"), "missing", |w| drop(w.remove(key)), |_| {});
    let e = load_error(&dir);
    assert!(e.contains(&format!("missing tensor '{key}'")), "{e}");

    let key = "mid_block.resnets.1.conv2.weight";
    let dir = common::broken_diffusers_copy(
        &fixture("sd2"),
        "shape",
        |w| drop(w.insert(key.into(), Tensor::zeros([24, 24, 1, 1], DType::F32, &Device::Cpu).unwrap())),
        |_| {},
    );
    let e = load_error(&dir);
    assert!(e.contains(key) && e.contains("[24, 24, 1, 1]") && e.contains("expected [24, 24, 3, 3]"), "{e}");

    let dir = common::broken_diffusers_copy(
        &fixture("mixed"),
        "extra",
        |w| drop(w.insert("class_embedding.weight".into(), Tensor::zeros([3, 32], DType::F32, &Device::Cpu).unwrap())),
        |_| {},
    );
    let e = load_error(&dir);
    assert!(e.contains("unexpected tensor 'class_embedding.weight'"), "{e}");
}

#[test]
fn unsupported_config_options_are_named() {
    for (key, value) in [
        ("class_embed_type", r#""timestep""#),
        ("addition_embed_type", r#""text_time""#),
        ("resnet_time_scale_shift", r#""scale_shift""#),
        ("dual_cross_attention", "true"),
        ("only_cross_attention", "true"),
        ("time_embedding_type", r#""fourier""#),
    ] {
        let set = |c: &mut serde_json::Map<_, _>| drop(c.insert(key.into(), serde_json::from_str(value).unwrap()));
        let dir = common::broken_diffusers_copy(&fixture("sd1"), key, |_| {}, set);
        let e = load_error(&dir);
        assert!(e.contains(&format!("unsupported option {key} = {value}")) && e.contains("config.json"), "{e}");
    }
    let set = |c: &mut serde_json::Map<_, _>| {
        drop(c.insert(
            "up_block_types".into(),
            serde_json::json!(["AttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]),
        ))
    };
    let e = load_error(&common::broken_diffusers_copy(&fixture("sd1"), "block", |_| {}, set));
    assert!(e.contains("unsupported up block type 'AttnUpBlock2D'"), "{e}");
}

/// f16 and bf16 on the GPU against f32 on the CPU, over the whole network:
/// within 2e-2 (f16) and 8e-2 (bf16) of the largest output value.
#[test]
fn half_precision_on_cuda_matches_cpu() {
    let Some(gpu) = common::gpu("unet::half_precision_on_cuda_matches_cpu") else { return };
    for name in CONFIGS {
        let io = io(name);
        let cpu = UNet2DConditionModel::load(&fixture(name), DType::F32, &Device::Cpu).unwrap();
        let want: HashMap<String, Tensor> = run_all(&cpu, &io).into_iter().collect();
        for (dtype, tol) in [(DType::F32, 1e-4), (DType::F16, 2e-2), (DType::BF16, 8e-2)] {
            let model = UNet2DConditionModel::load(&fixture(name), dtype, &gpu).unwrap();
            let got = run_all(&model, &io);
            assert!(got.iter().all(|(_, t)| t.dtype() == dtype), "{name} {dtype:?}");
            let worst = common::worst_rel_err(&format!("{name} {dtype:?}"), &got, &want, tol);
            eprintln!("unet {name}: {dtype:?} cuda vs f32 cpu worst relative error {worst:.2e}");
        }
    }
}
