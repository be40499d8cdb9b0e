//! The world's models: the tokenizer trained on its captions, the miniature
//! Stable Diffusion trained from scratch (its loss falls, and the folder it
//! writes is a pipeline `StableDiffusion::load` runs), accuracy by group, and
//! the shipped weights in weights/: the oracle reads renders, and the
//! generator draws what a caption says, and transformers and diffusers read
//! the shipped folder as foil does (tests/fixtures/world-sd, made by
//! scripts/fixtures/world_sd.py).

mod common;

use std::path::{Path, PathBuf};

use foil::diffusion::pipeline::{GenerateRequest, InitialNoise, StableDiffusion};
use foil::models::clip_tokenizer::{train_tokenizer, ClipTokenizer};
use foil::models::resnet::ResNetArch;
use foil::tensor::safetensors::SafetensorsFile;
use foil::world::groups::group_accuracy;
use foil::world::oracle::{factor_accuracy, Oracle};
use foil::world::sd::{train_world_sd, WorldSdConfig};
use foil::world::{Split, World, WorldConfig, FACTORS};
use foil::{DType, Device};

const CPU: Device = Device::Cpu;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("foil-world-models-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("weights").join(name)
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/world-sd").join(name)
}

#[test]
fn the_tokenizer_makes_every_world_word_one_token() {
    let world = World::new(WorldConfig::default());
    let captions: Vec<String> = world.sample(Split::Train, 2000, 1).iter().map(|s| world.caption(s)).collect();
    let dir = scratch("tokenizer");
    let (vocab, max_len) = train_tokenizer(&captions, &dir).unwrap();
    assert_eq!(max_len % 8, 0);
    let tokenizer = ClipTokenizer::from_dir(&dir).unwrap();
    assert_eq!(tokenizer.max_len(), max_len);
    for caption in &captions[..50] {
        let ids = tokenizer.encode(caption).unwrap();
        assert!(ids.iter().all(|&id| (id as usize) < vocab));
        let words = caption.replace(',', " ,").split_whitespace().count();
        let used = ids.iter().skip(1).position(|&id| id == tokenizer.eos_id()).unwrap();
        assert_eq!(used, words, "one token a word: {caption:?} → {ids:?}");
        assert!(used + 2 <= max_len);
    }
    // A word the captions never use still encodes, from its characters.
    let ids = tokenizer.encode("a photo of a cat").unwrap();
    assert_eq!(ids[0], tokenizer.bos_id());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_world_sd_trains_and_writes_a_pipeline_folder() {
    let world = World::new(WorldConfig::default());
    let config = WorldSdConfig {
        images: 256,
        autoencoder_steps: 40,
        autoencoder_batch: 8,
        denoiser_steps: 10,
        denoiser_batch: 8,
        ..WorldSdConfig::default()
    };
    let out = scratch("sd");
    let mut losses: Vec<(String, f32)> = Vec::new();
    let outcome =
        train_world_sd(&world, &config, &out, &CPU, &mut |stage, p| losses.push((stage.to_string(), p.loss))).unwrap();
    let ae: Vec<f32> = losses.iter().filter(|(s, _)| s == "autoencoder").map(|(_, l)| *l).collect();
    assert_eq!(ae.len(), 40);
    let (first, last) = (ae[..5].iter().sum::<f32>() / 5.0, ae[35..].iter().sum::<f32>() / 5.0);
    assert!(last < 0.5 * first, "the autoencoder loss falls: {first:.4} → {last:.4}");
    assert!(outcome.scaling_factor.is_finite() && outcome.scaling_factor > 0.0);

    let sd = StableDiffusion::load(&out, DType::F32, &CPU).unwrap();
    let prompts = vec!["a photo of a small red circle on grass".to_string(), "a big blue star in the sky".into()];
    let request = GenerateRequest {
        prompt: String::new(),
        negative_prompt: String::new(),
        steps: 3,
        guidance: 3.0,
        scheduler: None,
        noise: InitialNoise::Seed(0),
        batch: 1,
        size: None,
        init_image: None,
    };
    let generated = sd.generate_prompts(&prompts, &request).unwrap();
    assert_eq!(generated.dims(), [2, 3, 32, 32]);
    assert!(generated.to_vec_f32().unwrap().iter().all(|v| (0.0..=1.0).contains(v)));
    std::fs::remove_dir_all(out).unwrap();
}

#[test]
fn group_accuracy_counts_label_by_tied_factor() {
    let world = World::new(WorldConfig::default());
    let scenes = world.sample(Split::Test, 64, 2);
    // A classifier that answers with the background's tied label is right exactly on the tied groups.
    let predictions: Vec<u32> = scenes.iter().map(|s| s.values[2] as u32).collect();
    let groups = group_accuracy(&world, &scenes, &predictions);
    assert_eq!(groups.groups.len(), 16);
    assert_eq!(groups.groups.iter().map(|g| g.total).sum::<usize>(), 64);
    assert_eq!(groups.worst(), 0.0);
    assert!((groups.average() - 0.25).abs() < 1e-6, "{}", groups.average());
    assert_eq!(groups.groups[0].name, "circle / water");
    assert_eq!(groups.groups[0].accuracy(), 1.0);
}

#[test]
fn the_shipped_oracle_reads_renders() {
    let world = World::new(WorldConfig::default());
    let oracle = Oracle::load(&shipped("world-oracle.safetensors"), ResNetArch::ResNet18, &world, &CPU).unwrap();
    let scenes = world.balanced().sample(Split::Test, 200, 11);
    let accuracy = factor_accuracy(&oracle.read(&world.render_batch(&scenes, &CPU).unwrap()).unwrap(), &scenes);
    for (f, a) in FACTORS.iter().zip(accuracy) {
        assert!(a >= 0.95, "the oracle reads {f} on {:.1}% of fresh renders", 100.0 * a);
    }
}

#[test]
fn the_shipped_generator_draws_what_the_caption_says() {
    let world = World::new(WorldConfig::default());
    let oracle = Oracle::load(&shipped("world-oracle.safetensors"), ResNetArch::ResNet18, &world, &CPU).unwrap();
    let sd = StableDiffusion::load(&shipped("world-sd"), DType::F32, &CPU).unwrap();
    let balanced = world.balanced();
    let scenes = balanced.sample(Split::Test, 24, 5);
    let prompts: Vec<String> = scenes.iter().map(|s| balanced.caption(s)).collect();
    let request = GenerateRequest {
        prompt: String::new(),
        negative_prompt: String::new(),
        steps: 20,
        guidance: 5.0,
        scheduler: None,
        noise: InitialNoise::Seed(3),
        batch: 1,
        size: None,
        init_image: None,
    };
    let readings = oracle.read(&sd.generate_prompts(&prompts, &request).unwrap()).unwrap();
    let accuracy = factor_accuracy(&readings, &scenes);
    // Measured on 300 captions (BENCHMARKS.md): colour, background and position 100%, shape 59% (chance 25%).
    for (f, least) in [(0, 0.35), (1, 0.9), (2, 0.9), (4, 0.9)] {
        let got = accuracy[f];
        assert!(got >= least, "{}: {:.1}% of 24 generated images match the caption", FACTORS[f], 100.0 * got);
    }
}

#[test]
fn the_shipped_tokenizer_gives_transformers_ids() {
    let fixture = fixture("tokens.json");
    let cases: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    let tokenizer = ClipTokenizer::from_dir(&shipped("world-sd/tokenizer")).unwrap();
    for case in cases.as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(case["slow"].clone()).unwrap();
        assert_eq!(tokenizer.encode(prompt).unwrap(), want, "{prompt:?}");
    }
}

#[test]
fn the_shipped_generator_gives_diffusers_image() {
    let case = SafetensorsFile::open(fixture("case.safetensors")).unwrap();
    let sd = StableDiffusion::load(&shipped("world-sd"), DType::F32, &CPU).unwrap();
    let request = GenerateRequest {
        prompt: "a photo of a large yellow star on water".into(),
        negative_prompt: String::new(),
        steps: 10,
        guidance: 5.0,
        scheduler: None,
        noise: InitialNoise::Given { latents: case.load("latents", DType::F32, &CPU).unwrap(), encoder_noise: None },
        batch: 1,
        size: None,
        init_image: None,
    };
    let got = sd.generate(&request).unwrap().to_vec_f32().unwrap();
    let want: Vec<f64> =
        case.load("image", DType::F32, &CPU).unwrap().to_vec_f32().unwrap().into_iter().map(f64::from).collect();
    let err = common::rel_err(&got, &want);
    assert!(err < 1e-3, "foil and diffusers differ by {err:.2e} on the shipped generator");
}

#[test]
fn a_missing_init_folder_or_autoencoder_is_an_error_before_any_work() {
    let world = World::new(WorldConfig::default());
    let out = scratch("bad-init");
    let empty = scratch("empty-init");
    std::fs::create_dir_all(&empty).unwrap();
    for (init, expect) in [(out.join("nope"), "no such pipeline folder"), (empty.clone(), "no autoencoder to keep")] {
        let config = WorldSdConfig { init: Some(init), autoencoder_steps: 0, ..WorldSdConfig::default() };
        let e = train_world_sd(&world, &config, &out, &CPU, &mut |_, _| {}).err().expect("a bad --init fails");
        assert!(e.to_string().contains(expect), "{e}");
        assert!(!out.exists(), "nothing is written");
    }
    std::fs::remove_dir_all(empty).unwrap();
}
