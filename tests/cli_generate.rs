//! `foil generate` against diffusers on the committed tiny pipeline
//! (tests/fixtures/pipeline, made by scripts/fixtures/pipeline.py): the same
//! images to 1e-4 on the CPU for text-to-image (with and without guidance, a
//! negative prompt, a batch) and image-to-image, and clean errors on bad input.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use foil::tensor::{image, safetensors::SafetensorsFile};
use foil::{DType, Device};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/pipeline");

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("foil-cli-generate-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn foil(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_foil")).args(args).output().expect("the foil binary runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn images_match_diffusers() {
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(FIXTURES).join("cases.json")).unwrap()).unwrap();
    let model = Path::new(FIXTURES).join("sd-tiny");
    for case in cases.as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let dir = scratch(name);
        let case_file = Path::new(FIXTURES).join(format!("case-{name}.safetensors"));
        let (out_png, out_tensor) = (dir.join("out.png"), dir.join("out.safetensors"));
        let steps = case["steps"].to_string();
        let guidance = case["guidance"].to_string();
        let mut args: Vec<String> = [
            "generate",
            "--device",
            "cpu",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            case["prompt"].as_str().unwrap(),
            "--negative-prompt",
            case["negative_prompt"].as_str().unwrap(),
            "--steps",
            &steps,
            "--guidance",
            &guidance,
            "--init-noise",
            case_file.to_str().unwrap(),
            "--out",
            out_png.to_str().unwrap(),
            "--save-tensor",
            out_tensor.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(s) = case["scheduler"].as_str() {
            args.extend(["--scheduler".to_string(), s.to_string()]);
        }
        let fixture = SafetensorsFile::open(&case_file).unwrap();
        if let Some(strength) = case.get("strength") {
            let init = fixture.load("init_image", DType::F32, &Device::Cpu).unwrap();
            let png = dir.join("init.png");
            image::write_png(&png, &init, 0).unwrap();
            args.extend([
                "--init-image".into(),
                png.to_str().unwrap().into(),
                "--strength".into(),
                strength.to_string(),
            ]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = foil(&args);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        let got = SafetensorsFile::open(&out_tensor).unwrap().load("image", DType::F32, &Device::Cpu).unwrap();
        let want = fixture.load("image", DType::F32, &Device::Cpu).unwrap();
        assert_eq!(got.dims(), want.dims(), "{name}");
        let want: Vec<f64> = want.to_vec_f32().unwrap().into_iter().map(f64::from).collect();
        let err = common::rel_err(&got.to_vec_f32().unwrap(), &want);
        println!("{name}: relative error {err:.2e}");
        assert!(err < 1e-4, "{name}: relative error {err:.3e}");
        // The PNG holds the same image to 8 bits.
        let png = image::read_png(&out_png, &Device::Cpu).unwrap().to_vec_f32().unwrap();
        let first: Vec<f64> = want[..png.len()].to_vec();
        assert!(common::rel_err(&png, &first) <= 0.5 / 255.0 + 1e-4, "{name}: PNG differs");
    }
}

/// A copy of the tiny pipeline folder to break things in.
fn copy_model(dir: &Path) -> PathBuf {
    let model = dir.join("model");
    let src = Path::new(FIXTURES).join("sd-tiny");
    for part in ["scheduler", "text_encoder", "unet", "vae"] {
        std::fs::create_dir_all(model.join(part)).unwrap();
        for entry in std::fs::read_dir(src.join(part)).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, model.join(part).join(path.file_name().unwrap())).unwrap();
        }
    }
    std::fs::copy(src.join("model_index.json"), model.join("model_index.json")).unwrap();
    let tokenizer = Path::new(FIXTURES).join("../clip-tokenizer/sd1").canonicalize().unwrap();
    std::os::unix::fs::symlink(tokenizer, model.join("tokenizer")).unwrap();
    model
}

fn assert_clean_failure(out: &Output, needle: &str, written: &Path) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("foil: error: ") && err.contains(needle), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!written.exists(), "no output file after an error");
}

#[test]
fn bad_checkpoints_fail_with_one_line() {
    let dir = scratch("bad");
    let out_png = dir.join("never.png");
    let run = |model: &Path| {
        foil(&[
            "generate",
            "--device",
            "cpu",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "x",
            "--steps",
            "2",
            "--out",
            out_png.to_str().unwrap(),
        ])
    };

    let model = copy_model(&dir.join("truncated"));
    let unet = model.join("unet/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&unet).unwrap();
    std::fs::write(&unet, &bytes[..bytes.len() / 2]).unwrap();
    assert_clean_failure(&run(&model), "diffusion_pytorch_model.safetensors", &out_png);

    let model = copy_model(&dir.join("missing-dir"));
    std::fs::remove_dir_all(model.join("vae")).unwrap();
    assert_clean_failure(&run(&model), "vae", &out_png);

    assert_clean_failure(&run(&dir.join("nowhere")), "model_index.json", &out_png);

    let model = copy_model(&dir.join("scheduler"));
    std::fs::write(model.join("scheduler/scheduler_config.json"), r#"{"_class_name": "LMSDiscreteScheduler"}"#)
        .unwrap();
    assert_clean_failure(&run(&model), "LMSDiscreteScheduler", &out_png);
}

#[test]
fn bad_flags_fail_with_one_line() {
    let model = Path::new(FIXTURES).join("sd-tiny");
    let m = model.to_str().unwrap();
    for args in [
        vec!["generate", "--model", m, "--prompt", "x", "--no-such-flag"],
        vec!["generate", "--model", m],
        vec!["generate", "--model", m, "--prompt", "x", "--scheduler", "lms"],
        vec!["generate", "--model", m, "--prompt", "x", "--strength", "0.5"],
    ] {
        let out = foil(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
    let out = foil(&["generate", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--model",
        "--prompt",
        "--negative-prompt",
        "--steps",
        "--guidance",
        "--scheduler",
        "--seed",
        "--init-noise",
        "--init-image",
        "--strength",
        "--out",
        "--save-tensor",
        "Examples:",
    ] {
        assert!(help.contains(flag), "--help mentions {flag}");
    }
}
