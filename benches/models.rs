//! `cargo bench --bench models`: whole models at their real sizes with random
//! weights (timing needs no download). Stable Diffusion 1.5's UNet step at
//! 512×512 (batch 2: classifier-free guidance), its text encoder (batch 2, 77
//! tokens) and its VAE decode to 512×512, and ResNet-50 at batch 64 (224×224),
//! forward and one training step (forward, backward, SGD).
//!
//! benches/models/<name>/ holds each model's config.json, the name and shape of
//! every tensor (shapes.json) and PyTorch's FLOP count of the timed forward pass
//! (flops.json), all written by scripts/fixtures/bench_shapes.py. The first run
//! writes a random f32 checkpoint of those shapes to target/bench-models/ and
//! later runs reuse it; loading goes through the same loader as a real one.
//!
//! Each row: wall time, GFLOP/s, and the ratio to the CPU's FMA peak measured in
//! the same run (on a GPU, the time in f16). Arguments filter rows by substring.

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;

use common::{cpu_fma_peak, time_gpu};
use foil::autograd::backward;
use foil::autograd::optim::{AdamW, AdamWConfig, Optimizer};
use foil::models::clip_text::ClipTextModel;
use foil::models::resnet::{resnet_init, ResNet, ResNetArch, Stem};
use foil::models::unet::UNet2DConditionModel;
use foil::models::vae::AutoencoderKL;
use foil::nn::Weights;
use foil::train::checkpoint::read_tensors;
use foil::train::classifier::{ClassifierTrainer, OptimizerKind, TrainConfig};
use foil::train::data::Dataset;
use foil::{DType, Device, Rng, Tensor};

const MANIFESTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/models");

fn flops(name: &str) -> f64 {
    let text = std::fs::read_to_string(Path::new(MANIFESTS).join("flops.json")).expect("benches/models/flops.json");
    let all: serde_json::Value = serde_json::from_str(&text).expect("flops.json is JSON");
    all[name]["flops"].as_f64().expect("a FLOP count per model")
}

/// The folder of a random checkpoint with the shapes of `name`, written on first use.
fn random_checkpoint(name: &str) -> PathBuf {
    let src = Path::new(MANIFESTS).join(name);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-models").join(name);
    let weights = dir.join("model.safetensors");
    if weights.exists() {
        return dir;
    }
    std::fs::create_dir_all(&dir).unwrap();
    if src.join("config.json").exists() {
        std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    }
    let shapes: BTreeMap<String, Vec<usize>> =
        serde_json::from_str(&std::fs::read_to_string(src.join("shapes.json")).unwrap()).unwrap();
    let started = Instant::now();
    write_random(&weights, &shapes);
    eprintln!("wrote random {name} weights in {:.1?}", started.elapsed());
    dir
}

/// Streams random tensors to a safetensors file: weights of rank ≥ 2 with the
/// standard deviation 1/√fan_in that keeps activations at unit scale through
/// depth; norm scales near 1, biases and shifts small, variances 1.
fn write_random(path: &Path, shapes: &BTreeMap<String, Vec<usize>>) {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape) in shapes {
        let n: usize = shape.iter().product();
        let (dtype, bytes) = if name.ends_with("num_batches_tracked") { ("I64", 8 * n) } else { ("F32", 4 * n) };
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut header = serde_json::Value::Object(header).to_string().into_bytes();
    header.resize(header.len().next_multiple_of(8), b' ');
    let tmp = path.with_extension("tmp");
    let mut out = BufWriter::new(File::create(&tmp).unwrap());
    out.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
    out.write_all(&header).unwrap();
    for (i, (name, shape)) in shapes.iter().enumerate() {
        let n: usize = shape.iter().product();
        if name.ends_with("num_batches_tracked") {
            out.write_all(&vec![0u8; 8 * n]).unwrap();
            continue;
        }
        let fan_in: usize = shape.iter().skip(1).product();
        let (mean, std) = match name.rsplit('.').next().unwrap_or("") {
            "running_var" => (1.0, 0.0),
            "running_mean" | "bias" => (0.0, 0.02),
            _ if shape.len() >= 2 => (0.0, 1.0 / (fan_in as f32).sqrt()),
            _ => (1.0, 0.02),
        };
        let values: Vec<f32> = (0..n.div_ceil(1 << 16))
            .into_par_iter()
            .flat_map_iter(|chunk| {
                let mut rng = Rng::new(((i as u64) << 32) ^ chunk as u64);
                let len = (n - chunk * (1 << 16)).min(1 << 16);
                (0..len).map(move |_| mean + std * rng.normal()).collect::<Vec<_>>()
            })
            .collect();
        out.write_all(bytemuck::cast_slice(&values)).unwrap();
    }
    out.into_inner().unwrap().sync_all().unwrap();
    std::fs::rename(tmp, path).unwrap();
}

/// Wall time of one call after one warm-up (each call is seconds long on the CPU).
fn time_once(mut f: impl FnMut()) -> f64 {
    f();
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

fn time(dev: &Device, mut f: impl FnMut()) -> f64 {
    if dev.is_cuda() {
        time_gpu(dev, f)
    } else {
        time_once(&mut f)
    }
}

fn randn(dims: &[usize], dtype: DType, dev: &Device, rng: &mut Rng) -> Tensor {
    Tensor::randn(dims.to_vec(), rng, &Device::Cpu).unwrap().to_dtype(dtype).unwrap().to_device(dev).unwrap()
}

/// A table row; `flops` NaN when the model has no FLOP count (GFLOP/s then reads "-").
fn row(model: &str, input: &str, dev: &Device, dtype: DType, seconds: f64, flops: f64, peak: f64) {
    let rate = flops / seconds;
    let ratio = if dev.is_cuda() || rate.is_nan() { "-".to_string() } else { format!("{:.2}", rate / peak) };
    let gflops = if rate.is_nan() { "-".to_string() } else { format!("{:.1}", rate / 1e9) };
    println!("| {model} | {input} | {dev} {dtype} | {:.1} | {gflops} | {ratio} |", seconds * 1e3);
}

fn bench(dev: &Device, dtype: DType, filter: &[String], peak: f64, rng: &mut Rng) {
    let wanted = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    if wanted("sd15-unet") {
        let unet = UNet2DConditionModel::load(&random_checkpoint("sd15-unet"), dtype, dev).unwrap();
        let (x, ctx) = (randn(&[2, 4, 64, 64], dtype, dev, rng), randn(&[2, 77, 768], dtype, dev, rng));
        let s = time(dev, || {
            unet.forward(&x, &[500.0], &ctx).unwrap();
        });
        row("sd15-unet step", "2x4x64x64 (512x512, CFG)", dev, dtype, s, flops("sd15-unet"), peak);
    }
    if wanted("sd15-text-encoder") {
        let text = ClipTextModel::load(&random_checkpoint("sd15-text-encoder"), dtype, dev).unwrap();
        let ids: Vec<u32> = (0..2 * 77).map(|i| (i * 7919 % 49408) as u32).collect();
        let ids = Tensor::from_u32(ids, [2, 77], dev).unwrap();
        let s = time(dev, || {
            text.forward(&ids).unwrap();
        });
        row("sd15-text-encoder", "2x77 tokens", dev, dtype, s, flops("sd15-text-encoder"), peak);
    }
    if wanted("sd15-vae") {
        let vae = AutoencoderKL::load(&random_checkpoint("sd15-vae"), dtype, dev).unwrap();
        let z = randn(&[1, 4, 64, 64], dtype, dev, rng);
        let s = time(dev, || {
            vae.decode(&z).unwrap();
        });
        row("sd15-vae decode", "1x4x64x64 -> 512x512", dev, dtype, s, flops("sd15-vae"), peak);
    }
    if wanted("resnet50") {
        let file = random_checkpoint("resnet50").join("model.safetensors");
        let net = ResNet::load(&file, ResNetArch::ResNet50, dtype, dev).unwrap();
        let x = randn(&[64, 3, 224, 224], dtype, dev, rng);
        let s = time(dev, || {
            net.forward(&x).unwrap();
        });
        row("resnet50 forward", "64x3x224x224", dev, dtype, s, flops("resnet50"), peak);
    }
    if wanted("resnet50-train") {
        // Training computes in bf16 on a GPU (f32 master weights), f32 on the CPU.
        let dtype = if dev.is_cuda() { DType::BF16 } else { dtype };
        let tensors = resnet_init(ResNetArch::ResNet50, Stem::ImageNet, 64, 1000, rng).unwrap();
        let config = TrainConfig {
            arch: ResNetArch::ResNet50,
            optimizer: OptimizerKind::Sgd,
            lr: 0.1,
            min_lr: 0.0,
            warmup_steps: 0,
            steps: 100,
            batch: 64,
            momentum: 0.9,
            weight_decay: 5e-4,
            label_smoothing: 0.0,
            max_grad_norm: None,
            trainable: vec![],
            eval_every: 0,
            checkpoint_every: 0,
            seed: 0,
            dtype,
        };
        let mut trainer = ClassifierTrainer::new(config, tensors, dev).unwrap();
        let data = Dataset::stripes(64, 224, 1);
        let batch: Vec<usize> = (0..64).collect();
        let s = time(dev, || {
            trainer.train_step(&data, &batch).unwrap();
        });
        // Backward costs twice the forward: the usual 3× rule for a training step.
        row("resnet50 train step (SGD)", "64x3x224x224", dev, dtype, s, 3.0 * flops("resnet50"), peak);
    }
    if wanted("tiny-unet-train") {
        let s = time_tiny_unet_step(dev, rng);
        row("tiny-unet train step (MSE, AdamW)", "2x4x8x8, 7x12 context", dev, DType::F32, s, f64::NAN, peak);
    }
}

/// One training step of the UNet of tests/fixtures/training/unet (the one
/// scripts/bench_torch.py --train times): forward, MSE, backward, clipping, AdamW.
fn time_tiny_unet_step(dev: &Device, rng: &mut Rng) -> f64 {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/training/unet");
    let config = folder.join("config.json");
    let params = read_tensors(&folder.join("diffusion_pytorch_model.safetensors"), dev).unwrap();
    let names: Vec<String> = params.keys().cloned().collect();
    let init: Vec<Tensor> = names.iter().map(|n| params[n].clone()).collect();
    let adamw = AdamWConfig { max_grad_norm: Some(1.0), ..AdamWConfig::default() };
    let mut opt = AdamW::new(&init, adamw).unwrap();
    let (x, ctx) = (randn(&[2, 4, 8, 8], DType::F32, dev, rng), randn(&[2, 7, 12], DType::F32, dev, rng));
    let target = randn(&[2, 4, 8, 8], DType::F32, dev, rng);
    time(dev, || {
        let leaves: BTreeMap<String, Tensor> =
            names.iter().zip(opt.params().unwrap()).map(|(n, p)| (n.clone(), p.tracked())).collect();
        let w = Weights::from_tensors("unet", leaves.clone(), DType::F32, dev);
        let unet = UNet2DConditionModel::from_weights(&config, &w).unwrap();
        let d = unet.forward(&x, &[37.0, 811.5], &ctx).unwrap().sub(&target).unwrap();
        let loss = d.mul(&d).unwrap().reshape([d.numel()]).unwrap().mean(0, true).unwrap();
        let grads = backward(&loss).unwrap();
        let grads: Vec<Tensor> = names.iter().map(|n| grads.get(&leaves[n]).unwrap().clone()).collect();
        opt.step(&grads, 1e-3).unwrap();
    })
}

fn main() {
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let mut rng = Rng::new(0x5eed);
    let peak = cpu_fma_peak();
    println!("CPU FMA peak: {:.1} GFLOP/s ({} threads)", peak / 1e9, rayon::current_num_threads());
    println!("| model | input | device | time (ms) | GFLOP/s | of CPU peak |");
    println!("| --- | --- | --- | ---: | ---: | ---: |");
    bench(&Device::Cpu, DType::F32, &filter, peak, &mut rng);
    match Device::cuda(0) {
        Ok(dev) => bench(&dev, DType::F16, &filter, peak, &mut rng),
        Err(e) => eprintln!("GPU rows skipped: {e}"),
    }
}
