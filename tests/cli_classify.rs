//! `foil classify` against torchvision on the committed width-reduced ResNets
//! (tests/fixtures/resnet, made by scripts/fixtures/resnet.py): the same logits
//! to 1e-4 on the CPU from a safetensors input and from a PNG, and clean errors.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use foil::tensor::{image, safetensors, safetensors::SafetensorsFile};
use foil::{DType, Device};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/resnet");

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("foil-cli-classify-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn foil(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_foil")).args(args).output().expect("the foil binary runs")
}

/// `foil classify` on the CPU of `model` as `arch` over `input`, with `more` arguments.
fn classify(arch: &str, model: &Path, input: &Path, more: &[&str]) -> Output {
    let (model, input) = (model.to_str().unwrap(), input.to_str().unwrap());
    foil(&[&["classify", "--device", "cpu", "--arch", arch, "--model", model, "--input", input][..], more].concat())
}

fn load(path: &Path, name: &str) -> Vec<f32> {
    SafetensorsFile::open(path).unwrap().load(name, DType::F32, &Device::Cpu).unwrap().to_vec_f32().unwrap()
}

#[test]
fn logits_match_torchvision() {
    for arch in ["resnet18", "resnet34", "resnet50", "resnet101"] {
        let dir = scratch(arch);
        let model = Path::new(FIXTURES).join(format!("{arch}.safetensors"));
        let io = Path::new(FIXTURES).join(format!("{arch}-io.safetensors"));
        let out = dir.join("logits.safetensors");
        let run = classify(arch, &model, &io, &["--save-tensor", out.to_str().unwrap()]);
        assert!(run.status.success(), "{arch}: {}", String::from_utf8_lossy(&run.stderr));
        let want: Vec<f64> = load(&io, "logits").into_iter().map(f64::from).collect();
        let err = common::rel_err(&load(&out, "logits"), &want);
        println!("{arch}: logits relative error {err:.2e}");
        assert!(err < 1e-4, "{arch}: relative error {err:.3e}");
    }
}

#[test]
fn png_input_and_printed_top_classes() {
    let dir = scratch("png");
    let io = Path::new(FIXTURES).join("resnet18-io.safetensors");
    let images = SafetensorsFile::open(&io).unwrap().load("images", DType::F32, &Device::Cpu).unwrap();
    let png = dir.join("x.png");
    image::write_png(&png, &images, 0).unwrap();
    let model = Path::new(FIXTURES).join("resnet18.safetensors");
    let out = dir.join("png-logits.safetensors");
    let run = classify("resnet18", &model, &png, &["--save-tensor", out.to_str().unwrap()]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    // The PNG rounds the image to 8 bits; the logits of that image through the
    // library must equal what the command wrote.
    let rounded = image::read_png(&png, &Device::Cpu).unwrap();
    let again = dir.join("rounded.safetensors");
    safetensors::save(&again, &[("images", &rounded)]).unwrap();
    let run2 = classify("resnet18", &model, &again, &["--save-tensor", again.with_extension("out").to_str().unwrap()]);
    assert!(run2.status.success());
    assert_eq!(load(&out, "logits"), load(&again.with_extension("out"), "logits"));

    let run = classify("resnet18", &model, &png, &["--top", "3"]);
    let text = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success() && text.starts_with("image 0: ") && text.matches('(').count() == 3, "{text}");
}

#[test]
fn bad_inputs_fail_with_one_line() {
    let dir = scratch("bad");
    let model = Path::new(FIXTURES).join("resnet50.safetensors");
    let io = Path::new(FIXTURES).join("resnet50-io.safetensors");
    let out = dir.join("never.safetensors");
    let (m, i, o) = (model.to_str().unwrap(), io.to_str().unwrap(), out.to_str().unwrap());
    let truncated = dir.join("truncated.safetensors");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() - 7]).unwrap();
    for (args, needle) in [
        (
            vec!["classify", "--arch", "resnet18", "--model", m, "--input", i, "--save-tensor", o],
            "resnet50.safetensors",
        ),
        (
            vec![
                "classify",
                "--arch",
                "resnet50",
                "--model",
                truncated.to_str().unwrap(),
                "--input",
                i,
                "--save-tensor",
                o,
            ],
            "truncated.safetensors",
        ),
        (vec!["classify", "--arch", "resnet50", "--model", m, "--input", m, "--save-tensor", o], "images"),
        (
            vec!["classify", "--arch", "resnet50", "--model", m, "--input", "/no/such.png", "--save-tensor", o],
            "/no/such.png",
        ),
    ] {
        let run = foil(&[&["--device", "cpu"][..], &args].concat());
        let err = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("foil: error: ") && err.contains(needle), "{args:?}: {err}");
        assert!(!out.exists(), "{args:?} left an output file");
    }
    let run = foil(&["classify", "--arch", "resnet152", "--model", m, "--input", i]);
    assert_eq!(run.status.code(), Some(2));
}
