//! Autograd and the optimizers against PyTorch (tests/fixtures/training, made by
//! scripts/fixtures/training.py; its README lists every key): for a narrow
//! ResNet-18 in train mode, a tiny UNet2DConditionModel and a tiny CLIP text
//! encoder, the loss, every parameter's gradient and the inputs' gradients, and
//! the weights after 3 steps of SGD and of AdamW (with clipping), f32 on the CPU.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::rel_err;
use foil::autograd::optim::{AdamW, AdamWConfig, Optimizer, Sgd, SgdConfig};
use foil::autograd::{backward, Gradients};
use foil::models::clip_text::ClipTextModel;
use foil::models::resnet::{ResNet, ResNetArch};
use foil::models::unet::UNet2DConditionModel;
use foil::nn::{is_batch_norm_buffer, Weights};
use foil::tensor::safetensors::SafetensorsFile;
use foil::train::checkpoint::read_tensors;
use foil::train::classifier::{ClassifierTrainer, OptimizerKind, TrainConfig};
use foil::{DType, Device, Tensor};

const CPU: Device = Device::Cpu;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/training")
}

struct Expected(SafetensorsFile);

impl Expected {
    fn open(name: &str) -> Expected {
        Expected(SafetensorsFile::open(dir().join(name)).unwrap())
    }
    fn f32(&self, name: &str) -> Tensor {
        self.0.load(name, DType::F32, &CPU).unwrap()
    }
    fn u32(&self, name: &str) -> Tensor {
        self.0.load(name, DType::U32, &CPU).unwrap()
    }
    fn has(&self, name: &str) -> bool {
        self.0.contains(name)
    }
}

fn f64s(t: &Tensor) -> Vec<f64> {
    t.to_vec_f32().unwrap().into_iter().map(f64::from).collect()
}

/// Asserts `got` is within `tol` of the stored `key`, relative to the largest stored value.
fn check(what: &str, got: &Tensor, want: &Expected, key: &str, tol: f64) -> f64 {
    let w = want.f32(key);
    assert_eq!(got.dims(), w.dims(), "{what}: {key} shape");
    let e = rel_err(&got.to_vec_f32().unwrap(), &f64s(&w));
    assert!(e <= tol, "{what}: {key}: relative error {e:.2e} > {tol:.0e}");
    e
}

fn is_parameter(name: &str) -> bool {
    !is_batch_norm_buffer(name)
}

/// The checkpoint with its parameters as tracked leaves.
fn tracked(tensors: &BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    tensors.iter().map(|(n, t)| (n.clone(), if is_parameter(n) { t.tracked() } else { t.clone() })).collect()
}

/// Every parameter's gradient against `grad.<name>`; returns the worst error. Names in
/// `absolute` are judged against the largest gradient of the model (their exact value is 0).
fn check_grads(
    what: &str,
    leaves: &BTreeMap<String, Tensor>,
    g: &Gradients,
    want: &Expected,
    absolute: &[&str],
) -> f64 {
    let largest = leaves
        .keys()
        .filter(|n| is_parameter(n))
        .flat_map(|n| f64s(&want.f32(&format!("grad.{n}"))))
        .fold(0f64, |m, v| m.max(v.abs()));
    let mut worst = 0f64;
    for (name, leaf) in leaves.iter().filter(|(n, _)| is_parameter(n)) {
        let got = g.get(leaf).unwrap_or_else(|| panic!("{what}: no gradient for {name}"));
        let key = format!("grad.{name}");
        if absolute.iter().any(|a| name.contains(a)) {
            let e = common::rel_err_to(&got.to_vec_f32().unwrap(), &f64s(&want.f32(&key)), largest);
            assert!(e <= 1e-4, "{what}: {key}: error {e:.2e} of the largest gradient");
        } else {
            worst = worst.max(check(what, got, want, &key, 1e-4));
        }
    }
    worst
}

/// `steps` optimizer steps of the parameters in `names` (the rest fixed) on the loss
/// `loss_of(tensors)`; returns the final parameters.
fn optimize(
    tensors: &BTreeMap<String, Tensor>,
    names: &[String],
    mut opt: Box<dyn Optimizer>,
    loss_of: &dyn Fn(&BTreeMap<String, Tensor>) -> Tensor,
    want: &Expected,
    norms: bool,
) -> BTreeMap<String, Tensor> {
    let mut current = tensors.clone();
    for step in 0..3 {
        let leaves = tracked(&current);
        let loss = loss_of(&leaves);
        let g = backward(&loss).unwrap();
        let grads = g.for_leaves(names.iter().map(|n| &leaves[n])).unwrap();
        let stats = opt.step(&grads, if norms { 1e-3 } else { 0.05 }).unwrap();
        if norms {
            let want_norm = want.f32(&format!("adamw.grad_norm.{step}")).to_vec_f32().unwrap()[0];
            let e = ((stats.grad_norm - want_norm) / want_norm).abs();
            assert!(e < 1e-4, "grad norm at step {step}: {} vs {want_norm}", stats.grad_norm);
        }
        for (n, p) in names.iter().zip(opt.params().unwrap()) {
            current.insert(n.clone(), p);
        }
    }
    current
}

fn sgd(params: &[Tensor]) -> Box<dyn Optimizer> {
    let config = SgdConfig { momentum: 0.9, nesterov: true, weight_decay: 1e-4, max_grad_norm: None };
    Box::new(Sgd::new(params, config).unwrap())
}

fn adamw(params: &[Tensor]) -> Box<dyn Optimizer> {
    let config = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, max_grad_norm: Some(1.0) };
    Box::new(AdamW::new(params, config).unwrap())
}

/// AdamW's step is ±lr for gradients within f32 noise of zero (fixture README), so its
/// weights are compared at 1e-3; SGD's at 1e-4.
fn check_weights(what: &str, got: &BTreeMap<String, Tensor>, want: &Expected, prefix: &str, tol: f64) {
    for (name, t) in got {
        let key = format!("{prefix}.{name}");
        if !want.has(&key) {
            continue;
        }
        if t.dtype() == DType::U32 {
            assert_eq!(t.to_vec_u32().unwrap(), want.u32(&key).to_vec_u32().unwrap(), "{what}: {key}");
        } else {
            check(what, t, want, &key, tol);
        }
    }
}

fn resnet_config(optimizer: OptimizerKind, trainable: Vec<String>) -> TrainConfig {
    let sgd = optimizer == OptimizerKind::Sgd;
    let lr = if sgd { 0.05 } else { 1e-3 };
    TrainConfig {
        arch: ResNetArch::ResNet18,
        optimizer,
        lr,
        min_lr: lr,
        warmup_steps: 0,
        steps: 3,
        batch: 4,
        momentum: 0.9,
        weight_decay: if sgd { 1e-4 } else { 0.01 },
        label_smoothing: 0.1,
        max_grad_norm: if sgd { None } else { Some(1.0) },
        trainable,
        eval_every: 0,
        checkpoint_every: 0,
        seed: 0,
        dtype: DType::F32,
    }
}

#[test]
fn resnet18_train_mode_gradients() {
    let want = Expected::open("resnet18-train.safetensors");
    let tensors = read_tensors(&dir().join("resnet18.safetensors"), &CPU).unwrap();
    let leaves = tracked(&tensors);
    let model = ResNet::for_training(
        &Weights::from_tensors("resnet18", leaves.clone(), DType::F32, &CPU),
        ResNetArch::ResNet18,
    )
    .unwrap();
    let x = want.f32("input").tracked();
    let (logits, stats) = model.forward_train(&x).unwrap();
    check("resnet18", &logits, &want, "logits", 1e-4);
    let loss = logits.cross_entropy(&want.u32("labels"), 0.1).unwrap().mean(0, true).unwrap();
    check("resnet18", &loss, &want, "loss", 1e-5);
    for (name, t) in &stats.updated {
        check("resnet18", t, &want, &format!("running.{name}"), 1e-5);
    }
    assert_eq!(stats.updated.len(), 40, "two running statistics per BatchNorm");
    let g = backward(&loss).unwrap();
    let worst = check_grads("resnet18", &leaves, &g, &want, &[]);
    let input = check("resnet18", g.get(&x).unwrap(), &want, "grad.input", 1e-4);
    eprintln!("resnet18: worst parameter gradient error {worst:.2e}, input gradient {input:.2e}");
}

#[test]
fn resnet18_three_steps_of_sgd_adamw_and_frozen_through_the_trainer() {
    let want = Expected::open("resnet18-train.safetensors");
    let tensors = read_tensors(&dir().join("resnet18.safetensors"), &CPU).unwrap();
    let (x, labels) = (want.f32("input"), want.u32("labels"));
    let frozen = vec!["layer4.".to_string(), "fc.".to_string()];
    for (kind, trainable, prefix, tol) in [
        (OptimizerKind::Sgd, vec![], "sgd", 1e-4),
        (OptimizerKind::AdamW, vec![], "adamw", 1e-3),
        (OptimizerKind::Sgd, frozen, "sgd_frozen", 1e-4),
    ] {
        let mut trainer = ClassifierTrainer::new(resnet_config(kind, trainable), tensors.clone(), &CPU).unwrap();
        for _ in 0..3 {
            trainer.train_step_on(&x, &labels).unwrap();
        }
        let got: BTreeMap<String, Tensor> = trainer.weights().unwrap().into_iter().collect();
        check_weights("resnet18", &got, &want, prefix, tol);
        if prefix == "sgd_frozen" {
            for (name, t) in
                got.iter().filter(|(n, _)| is_parameter(n) && !n.starts_with("layer4.") && !n.starts_with("fc."))
            {
                assert_eq!(t.to_vec_f32().unwrap(), tensors[name].to_vec_f32().unwrap(), "frozen {name} moved");
            }
        }
    }
}

fn unet_loss(
    config: &Path,
    want: &Expected,
    params: &BTreeMap<String, Tensor>,
    sample: &Tensor,
    ehs: &Tensor,
) -> Tensor {
    let unet =
        UNet2DConditionModel::from_weights(config, &Weights::from_tensors("unet", params.clone(), DType::F32, &CPU))
            .unwrap();
    let t = want.f32("timesteps").to_vec_f32().unwrap();
    let out = unet.forward(sample, &t, ehs).unwrap();
    let d = out.sub(&want.f32("target")).unwrap();
    d.mul(&d).unwrap().reshape([d.numel()]).unwrap().mean(0, true).unwrap()
}

#[test]
fn unet_gradients_and_three_optimizer_steps() {
    let want = Expected::open("unet-train.safetensors");
    let folder = dir().join("unet");
    let config = folder.join("config.json");
    let tensors = read_tensors(&folder.join("diffusion_pytorch_model.safetensors"), &CPU).unwrap();
    let leaves = tracked(&tensors);
    let (sample, ehs) = (want.f32("sample").tracked(), want.f32("encoder_hidden_states").tracked());
    let loss = unet_loss(&config, &want, &leaves, &sample, &ehs);
    check("unet", &loss, &want, "loss", 1e-5);
    let g = backward(&loss).unwrap();
    let worst = check_grads("unet", &leaves, &g, &want, &[]);
    check("unet", g.get(&sample).unwrap(), &want, "grad.sample", 1e-4);
    check("unet", g.get(&ehs).unwrap(), &want, "grad.encoder_hidden_states", 1e-4);
    eprintln!("unet: worst parameter gradient error {worst:.2e}");

    let names: Vec<String> = tensors.keys().cloned().collect();
    let params: Vec<Tensor> = names.iter().map(|n| tensors[n].clone()).collect();
    let (s, e) = (want.f32("sample"), want.f32("encoder_hidden_states"));
    let loss_of = |p: &BTreeMap<String, Tensor>| unet_loss(&config, &want, p, &s, &e);
    check_weights("unet", &optimize(&tensors, &names, sgd(&params), &loss_of, &want, false), &want, "sgd", 1e-4);
    check_weights("unet", &optimize(&tensors, &names, adamw(&params), &loss_of, &want, true), &want, "adamw", 1e-3);
}

fn clip_loss(config: &Path, want: &Expected, params: &BTreeMap<String, Tensor>) -> Tensor {
    let model =
        ClipTextModel::from_weights(config, Weights::from_tensors("clip", params.clone(), DType::F32, &CPU)).unwrap();
    let out = model.forward(&want.u32("input_ids")).unwrap();
    let d = out.sub(&want.f32("target")).unwrap();
    d.mul(&d).unwrap().reshape([d.numel()]).unwrap().mean(0, true).unwrap()
}

#[test]
fn clip_text_gradients_and_three_optimizer_steps() {
    let want = Expected::open("clip-text-train.safetensors");
    let folder = dir().join("clip-text");
    let config = folder.join("config.json");
    let tensors = read_tensors(&folder.join("model.safetensors"), &CPU).unwrap();
    let leaves = tracked(&tensors);
    let loss = clip_loss(&config, &want, &leaves);
    check("clip", &loss, &want, "loss", 1e-5);
    let g = backward(&loss).unwrap();
    let worst = check_grads("clip", &leaves, &g, &want, &["k_proj.bias"]);
    eprintln!("clip: worst parameter gradient error {worst:.2e}");

    let names: Vec<String> = tensors.keys().cloned().collect();
    let params: Vec<Tensor> = names.iter().map(|n| tensors[n].clone()).collect();
    let loss_of = |p: &BTreeMap<String, Tensor>| clip_loss(&config, &want, p);
    check_weights("clip", &optimize(&tensors, &names, sgd(&params), &loss_of, &want, false), &want, "sgd", 1e-4);
    // The key biases' true gradient is 0: their AdamW steps are noise (fixture README).
    let mut after = optimize(&tensors, &names, adamw(&params), &loss_of, &want, true);
    after.retain(|n, _| !n.contains("k_proj.bias"));
    check_weights("clip", &after, &want, "adamw", 1e-3);
}

/// The same ResNet-18 step and 3 SGD steps on the GPU: f32 against PyTorch at the
/// tolerance of the CUDA contractions (kernels/README.md), and bf16 compute with f32
/// master weights within bf16's reach.
#[test]
fn cuda_training_matches_pytorch() {
    let Some(gpu) = common::gpu("training_fixtures::cuda_training_matches_pytorch") else { return };
    let want = Expected::open("resnet18-train.safetensors");
    let tensors = read_tensors(&dir().join("resnet18.safetensors"), &gpu).unwrap();
    let leaves = tracked(&tensors);
    let w = Weights::from_tensors("resnet18", leaves.clone(), DType::F32, &gpu);
    let model = ResNet::for_training(&w, ResNetArch::ResNet18).unwrap();
    let x = want.f32("input").to_device(&gpu).unwrap().tracked();
    let labels = want.u32("labels").to_device(&gpu).unwrap();
    let (logits, _) = model.forward_train(&x).unwrap();
    let loss = logits.cross_entropy(&labels, 0.1).unwrap().mean(0, true).unwrap();
    let g = backward(&loss).unwrap();
    for (name, leaf) in leaves.iter().filter(|(n, _)| is_parameter(n)) {
        check("resnet18 cuda", g.get(leaf).unwrap(), &want, &format!("grad.{name}"), 1e-3);
    }
    check("resnet18 cuda", g.get(&x).unwrap(), &want, "grad.input", 1e-3);
    for (dtype, tol) in [(DType::F32, 1e-3), (DType::BF16, 5e-2)] {
        let config = TrainConfig { dtype, ..resnet_config(OptimizerKind::Sgd, vec![]) };
        let mut trainer = ClassifierTrainer::new(config, tensors.clone(), &gpu).unwrap();
        for _ in 0..3 {
            trainer.train_step_on(&x.detach(), &labels).unwrap();
        }
        let got: BTreeMap<String, Tensor> = trainer.weights().unwrap().into_iter().collect();
        check_weights(&format!("resnet18 cuda {dtype}"), &got, &want, "sgd", tol);
    }
}
