//! Helpers shared by the tests: a fresh seed per run (printed, and
//! reproducible with FOIL_TEST_SEED), random data and the relative error; for
//! the model tests, the GPU or a SKIPPED line, output comparison and broken
//! copies of checkpoints.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use foil::tensor::safetensors::{load_all, save, SafetensorsFile};
use foil::{Conv2dOptions, DType, Device, Rng, Tensor};

/// A generator for the test `name`: from FOIL_TEST_SEED when set, else from the
/// clock, so every run sees fresh inputs. The seed is printed, and shown when a
/// test fails.
pub fn rng(name: &str) -> Rng {
    let base = std::env::var("FOIL_TEST_SEED").ok().and_then(|s| s.parse::<u64>().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    eprintln!("{name}: FOIL_TEST_SEED={base}");
    let salt = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    Rng::new(base ^ salt)
}

pub fn randn(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal()).collect()
}

/// max |got − want| / max |want| (floored at 1e-6); infinities must match exactly.
pub fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    rel_err_to(got, want, 0.0)
}

/// As `rel_err`, with the scale raised to at least `scale`: a sum is judged
/// against Σ|x|, since its own value may be near zero after cancellation.
pub fn rel_err_to(got: &[f32], want: &[f64], scale: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "lengths differ");
    let largest = want.iter().filter(|w| w.is_finite()).fold(0f64, |m, w| m.max(w.abs()));
    let scale = largest.max(scale).max(1e-6);
    let mut worst = 0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if w.is_infinite() || g.is_infinite() {
            assert_eq!(g as f64, w, "element {i}: got {g}, want {w}");
            continue;
        }
        assert!(g.is_finite(), "element {i}: got {g}, want {w}");
        worst = worst.max((g as f64 - w).abs());
    }
    worst / scale
}

/// Central finite differences of the scalar function `f` at `x`, in f64: the
/// reference gradient every backward op is checked against. `f` is the op's
/// forward, written naively in f64 in the test, contracted with a random
/// upstream gradient.
pub fn finite_diff(x: &[f64], h: f64, f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let mut probe = x.to_vec();
    (0..x.len())
        .map(|i| {
            probe[i] = x[i] + h;
            let up = f(&probe);
            probe[i] = x[i] - h;
            let down = f(&probe);
            probe[i] = x[i];
            (up - down) / (2.0 * h)
        })
        .collect()
}

/// Asserts `rel_err(got, want) <= tol`, naming the case.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_close_to(what, got, want, 0.0, tol);
}

/// Asserts `rel_err_to(got, want, scale) <= tol`, naming the case.
pub fn assert_close_to(what: &str, got: &[f32], want: &[f64], scale: f64, tol: f64) {
    let e = rel_err_to(got, want, scale);
    assert!(e <= tol, "{what}: relative error {e:.3e} > {tol:.0e}");
}

/// Row-major strides of `dims`.
pub fn strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1; dims.len()];
    for d in (0..dims.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * dims[d + 1];
    }
    s
}

/// Conv2d cases (input dims, weight dims, options, with bias): odd sizes, 1×1,
/// stride 2, dilation 2, groups 2, depthwise, a kernel larger than the input,
/// and unequal strides, padding and dilation per axis.
pub fn conv_cases() -> Vec<([usize; 4], [usize; 4], Conv2dOptions, bool)> {
    let opt = |s, p, d, g| Conv2dOptions { stride: (s, s), padding: (p, p), dilation: (d, d), groups: g };
    let uneven = Conv2dOptions { stride: (2, 3), padding: (1, 0), dilation: (1, 2), groups: 1 };
    vec![
        ([1, 1, 1, 1], [1, 1, 1, 1], opt(1, 0, 1, 1), true),
        ([2, 3, 9, 7], [5, 3, 3, 3], opt(1, 1, 1, 1), true),
        ([1, 4, 10, 11], [6, 4, 3, 3], opt(2, 1, 1, 1), false),
        ([1, 3, 12, 12], [4, 3, 3, 3], opt(1, 2, 2, 1), true),
        ([3, 4, 6, 5], [6, 2, 3, 3], opt(1, 1, 1, 2), true),
        ([1, 8, 7, 9], [8, 1, 3, 3], opt(1, 1, 1, 8), false),
        ([2, 16, 5, 5], [7, 16, 1, 1], opt(1, 0, 1, 1), true),
        ([1, 3, 4, 4], [2, 3, 5, 5], opt(1, 1, 1, 1), true),
        ([1, 2, 8, 8], [3, 2, 4, 2], uneven, true),
    ]
}

/// The error classes of kernels/README.md's table "Tolerances".
#[derive(Clone, Copy)]
pub enum Class {
    Elementwise,
    Reduction,
    Contraction,
}

/// CUDA against the CPU: kernels/README.md, "Tolerances".
pub fn tolerance(dtype: DType, class: Class) -> f64 {
    let row = match dtype {
        DType::F32 => [1e-6, 1e-5, 1e-4],
        DType::F16 => [1e-3, 2e-3, 5e-3],
        DType::BF16 => [8e-3, 1.6e-2, 3e-2],
        DType::U32 => [0.0; 3],
    };
    row[class as usize]
}

/// The GPU, or None after printing why `test` is skipped. The line goes straight
/// to stderr in one write, past the harness's capture and without interleaving
/// with parallel tests; the probe runs once per test binary.
pub fn gpu(test: &str) -> Option<Device> {
    static GPU: std::sync::OnceLock<Result<Device, String>> = std::sync::OnceLock::new();
    match GPU.get_or_init(|| Device::cuda(0).map_err(|e| e.to_string())) {
        Ok(d) => Some(d.clone()),
        Err(reason) => {
            let line = format!("SKIPPED {test}: no GPU ({reason})\n");
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
            None
        }
    }
}

/// The values of `t` as f64, the reference side of `rel_err`.
pub fn as_f64(t: &Tensor) -> Vec<f64> {
    t.to_vec_f32().unwrap().iter().map(|&v| v as f64).collect()
}

/// The worst relative error of the named outputs `got` against the same-named tensors of
/// `want`, asserting each has the reference's dims and is within `tol`; `what` names the case.
pub fn worst_rel_err(what: &str, got: &[(String, Tensor)], want: &HashMap<String, Tensor>, tol: f64) -> f64 {
    let mut worst = 0f64;
    for (key, out) in got {
        let want = &want[key];
        assert_eq!(out.dims(), want.dims(), "{what} {key}");
        let e = rel_err(&out.to_vec_f32().unwrap(), &as_f64(want));
        assert!(e < tol, "{what} {key}: relative error {e:.3e} > {tol:.0e}");
        worst = worst.max(e);
    }
    worst
}

/// A fresh temporary folder for the broken copy `tag`.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("foil-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A copy of the diffusers model folder `src` (config.json and
/// diffusion_pytorch_model.safetensors; a fixture's .../<name>/<model>) in a fresh temporary
/// folder for `tag`, with the weights passed through `edit` and the config through `edit_config`.
pub fn broken_diffusers_copy(
    src: &Path,
    tag: &str,
    edit: impl FnOnce(&mut HashMap<String, Tensor>),
    edit_config: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> PathBuf {
    let name = |p: Option<&Path>| p.and_then(Path::file_name).unwrap().to_string_lossy().into_owned();
    let dir = temp_dir(&format!("{}-{}-{tag}", name(Some(src)), name(src.parent())));
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

/// Writes the tensors of the safetensors file `src` to `dest`, in order, each passed through
/// `edit` (None drops it); integer tensors (token positions, BatchNorm's step counter) as U32.
pub fn copy_tensors(src: &Path, dest: &Path, edit: impl Fn(&str, Tensor) -> Option<Tensor>) {
    let src = SafetensorsFile::open(src).unwrap();
    let mut tensors = vec![];
    for n in src.names() {
        let is_index = matches!(src.stored_dtype(&n), Some(safetensors::Dtype::I64 | safetensors::Dtype::I32));
        let t = src.load(&n, if is_index { DType::U32 } else { DType::F32 }, &Device::Cpu).unwrap();
        if let Some(t) = edit(&n, t) {
            tensors.push((n, t));
        }
    }
    let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    save(dest, &named).unwrap();
}

/// The error of loading the broken copy `dir` (`result`), asserted to be one line; removes `dir`.
pub fn load_error_removing<T>(dir: &Path, result: foil::Result<T>) -> String {
    let _ = std::fs::remove_dir_all(dir);
    one_line_error(result)
}

/// The error of a load that must fail, asserted to be one line.
pub fn one_line_error<T>(result: foil::Result<T>) -> String {
    let e = result.err().expect("loading must fail").to_string();
    assert!(!e.contains('\n'), "not one line: {e}");
    e
}
