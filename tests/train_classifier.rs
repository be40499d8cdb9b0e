//! Training a classifier end to end on the CPU: a small ResNet-18 learns the
//! generated stripes task (a broken gradient leaves it near chance), the same
//! seed gives the same weights, a resumed run equals an uninterrupted one,
//! frozen prefixes stay fixed, and `foil train classifier` writes weights that
//! `foil classify` loads, and stops cleanly on a non-finite loss.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};

use foil::models::resnet::{resnet_init, ResNetArch, Stem};
use foil::train::classifier::{ClassifierTrainer, OptimizerKind, TrainConfig};
use foil::train::data::Dataset;
use foil::{DType, Device, Rng, Tensor};

fn config(steps: usize) -> TrainConfig {
    TrainConfig {
        arch: ResNetArch::ResNet18,
        optimizer: OptimizerKind::Sgd,
        lr: 0.1,
        min_lr: 0.0,
        warmup_steps: steps / 20,
        steps,
        batch: 32,
        momentum: 0.9,
        weight_decay: 5e-4,
        label_smoothing: 0.1,
        max_grad_norm: Some(5.0),
        trainable: vec![],
        eval_every: 0,
        checkpoint_every: 0,
        seed: 3,
        dtype: DType::F32,
    }
}

fn fresh(width: usize) -> BTreeMap<String, Tensor> {
    resnet_init(ResNetArch::ResNet18, Stem::ImageNet, width, 4, &mut Rng::new(11)).unwrap()
}

fn weights(t: &ClassifierTrainer) -> BTreeMap<String, Vec<f32>> {
    t.weights()
        .unwrap()
        .into_iter()
        .filter(|(_, v)| v.dtype().is_float())
        .map(|(n, v)| (n, v.to_vec_f32().unwrap()))
        .collect()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("foil-train-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The bar: 90% on held-out images of a four-class task (chance: 25%).
#[test]
fn learns_the_generated_task() {
    let (train, held_out) = Dataset::stripes(1200, 32, 5).split(0.2, 5);
    let mut trainer = ClassifierTrainer::new(config(300), fresh(8), &Device::Cpu).unwrap();
    let before = trainer.evaluate(&held_out).unwrap();
    let outcome = trainer.run(&train, &held_out, None, &mut |_| {}).unwrap();
    eprintln!(
        "stripes: held-out accuracy {:.1}% → {:.1}% in 300 steps ({:.1} s), final loss {:.3}",
        100.0 * before,
        100.0 * outcome.final_accuracy,
        outcome.seconds,
        outcome.final_loss
    );
    assert!(outcome.final_accuracy >= 0.9, "held-out accuracy {:.3} < 0.9", outcome.final_accuracy);
}

#[test]
fn same_seed_same_weights_and_resume_equals_uninterrupted() {
    let data = Dataset::stripes(96, 32, 9);
    let none = Dataset::stripes(0, 32, 0);
    let run = || {
        let mut t = ClassifierTrainer::new(config(6), fresh(4), &Device::Cpu).unwrap();
        t.run(&data, &none, None, &mut |_| {}).unwrap();
        t
    };
    let (a, b) = (run(), run());
    assert_eq!(weights(&a), weights(&b), "two runs with one seed differ");

    // Three of the six steps, a checkpoint, and the other three from it.
    let file = scratch("resume").join("run.ckpt.safetensors");
    let mut first = ClassifierTrainer::new(config(6), fresh(4), &Device::Cpu).unwrap();
    first.run_to(3, &data, &none, None, &mut |_| {}).unwrap();
    first.save_checkpoint(&file).unwrap();
    let mut resumed = ClassifierTrainer::resume(config(6), &file, &Device::Cpu).unwrap();
    assert_eq!(resumed.step(), 3);
    resumed.run(&data, &none, None, &mut |_| {}).unwrap();
    assert_eq!(weights(&resumed), weights(&a), "a resumed run differs from an uninterrupted one");
    assert_ne!(weights(&first), weights(&a), "the steps after the checkpoint changed nothing");
}

#[test]
fn frozen_prefixes_stay_fixed() {
    let data = Dataset::stripes(64, 32, 2);
    let init = fresh(4);
    let cfg = TrainConfig { trainable: vec!["layer4.".into(), "fc.".into()], ..config(2) };
    let mut t = ClassifierTrainer::new(cfg, init.clone(), &Device::Cpu).unwrap();
    assert!(t.trainable_names().iter().all(|n| n.starts_with("layer4.") || n.starts_with("fc.")));
    t.run(&data, &Dataset::stripes(0, 32, 0), None, &mut |_| {}).unwrap();
    let after = weights(&t);
    for (name, before) in &init {
        if !before.dtype().is_float() {
            continue;
        }
        let same = after[name] == before.to_vec_f32().unwrap();
        let trains = name.starts_with("layer4.") || name.starts_with("fc.");
        let buffer = name.contains("running_");
        assert_eq!(same, !(trains || buffer), "{name}: changed {}", !same);
    }
}

fn foil(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_foil")).args(args).output().expect("the foil binary runs")
}

#[test]
fn cli_trains_weights_that_classify_loads_and_stops_on_a_non_finite_loss() {
    let dir = scratch("cli");
    let out = dir.join("stripes.safetensors");
    let o = out.to_str().unwrap();
    let common = ["train", "classifier", "--device", "cpu", "--generated", "80", "--width", "4", "--batch", "16"];
    let run = foil(&[&common[..], &["--steps", "4", "--eval-every", "2", "--log-every", "1", "--out", o]].concat());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{err}");
    assert!(err.contains("step     4/4") && err.contains("held-out accuracy"), "{err}");
    let png = dir.join("one.png");
    let one = Dataset::stripes(1, 32, 0).batch(&[0], &Device::Cpu).unwrap().0;
    foil::tensor::image::write_png(&png, &one, 0).unwrap();
    let classify =
        foil(&["classify", "--device", "cpu", "--arch", "resnet18", "--model", o, "--input", png.to_str().unwrap()]);
    assert!(classify.status.success(), "{}", String::from_utf8_lossy(&classify.stderr));

    // A learning rate that overflows: one error line, the checkpoint of step 1 kept, no output.
    let bad = dir.join("bad.safetensors");
    let ckpt = dir.join("bad.ckpt.safetensors");
    let b = bad.to_str().unwrap();
    let run = foil(&[&common[..], &["--steps", "50", "--lr", "1e30", "--checkpoint-every", "1", "--out", b]].concat());
    let err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{err}");
    let last = err.lines().last().unwrap_or("");
    assert!(last.contains("training stopped") && last.contains("bad.ckpt.safetensors"), "{err}");
    assert!(!bad.exists(), "no weights are written after a failed run");
    assert!(ckpt.exists(), "the last good checkpoint stays");
    let resumed = foil(&[&common[..], &["--steps", "1", "--resume", ckpt.to_str().unwrap(), "--out", b]].concat());
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));

    let unknown = foil(&["train", "classifier", "--generated", "8", "--out", o, "--bogus"]);
    assert_eq!(unknown.status.code(), Some(2));
    // A missing required flag is named on the one error line.
    let missing = foil(&["reinforce", "--probe", o, "--out", o]);
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(2));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--classifier <FILE>"), "{stderr}");
}
