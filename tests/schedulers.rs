//! The schedulers against diffusers (fixtures from scripts/fixtures/schedulers.py): timesteps
//! bit for bit, sigmas and init_noise_sigma to 1e-6, img2img's start step and add_noise, and
//! step traces (classifier-free guidance and the noise diffusers drew included) to 1e-5
//! relative, f32 on the CPU. Then the fused step op: the CPU against the plain formula in f64, CUDA against the
//! CPU (skipped, saying so, without a GPU), and the errors for what is not supported.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::sync::OnceLock;

use common::{randn, rel_err, rng};
use foil::device::SchedulerStep;
use foil::diffusion::scheduler::{self, Scheduler, SchedulerConfig, SchedulerKind};
use foil::{DType, Device, Error, Tensor};
use serde_json::Value;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/schedulers");

fn json(file: &str) -> Value {
    let text = std::fs::read_to_string(format!("{FIXTURES}/{file}")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The scheduler `kind` built from the fixture config `name` (with DDIM's `eta`), through its
/// `_class_name` when that is the kind's class and through the kind override otherwise.
fn build(configs: &Value, name: &str, kind: &str, eta: Option<f64>) -> Box<dyn Scheduler> {
    let mut config = SchedulerConfig::from_json(&configs[name].to_string(), name).unwrap();
    config.eta = eta;
    let kind: SchedulerKind = kind.parse().unwrap();
    let by_class = config.class_name.as_deref() == Some(kind.class_name());
    scheduler::from_config(&config, if by_class { None } else { Some(kind) }).unwrap()
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

/// The largest elementwise relative error |got − want| / |want| (exact zeros must match).
fn elementwise_rel(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "lengths differ");
    got.iter()
        .zip(want)
        .map(|(&g, &w)| if w == 0.0 { (g != 0.0) as u8 as f64 } else { ((g - w) as f64 / w as f64).abs() })
        .fold(0.0, f64::max)
}

/// Whether `got` matches `want` to relative error `tol` elementwise (0: bit for bit).
fn timesteps_match(got: &[f32], want: &[f32], tol: f64) -> bool {
    got.len() == want.len() && (got == want || (tol > 0.0 && elementwise_rel(got, want) <= tol))
}

#[test]
fn schedules_match_diffusers() {
    let fixture = json("schedules.json");
    // The largest sigma errors of the zero-SNR configs and of the others.
    let (mut cases, mut worst_sigma) = (0, [0f64; 2]);
    for case in fixture["cases"].as_array().unwrap() {
        let (kind, config, steps) = (
            case["kind"].as_str().unwrap(),
            case["config"].as_str().unwrap(),
            case["steps"].as_u64().unwrap() as usize,
        );
        let what = format!("{kind} {config} {steps} steps");
        let mut s = build(&fixture["configs"], config, kind, None);
        s.set_timesteps(steps).unwrap();
        let want = f32s(&case["timesteps"]);
        // Euler's Karras timesteps are fractions computed from the training sigmas, which
        // torch's CPU sqrt (MKL's, not correctly rounded) leaves 1 ulp off in ~1 in 5 entries:
        // those agree to 1e-6. All others are bit for bit.
        let tol = if kind == "euler" && config.contains("karras") { 1e-6 } else { 0.0 };
        assert!(timesteps_match(s.timesteps(), &want, tol), "{what}: timesteps {:?}, want {want:?}", s.timesteps());
        match (&case["sigmas"], s.sigmas()) {
            (Value::Null, None) => {}
            (want, Some(got)) if !want.is_null() => {
                // Zero terminal SNR rescales √ᾱ with cancellation, which turns torch's 1-ulp
                // sqrt errors (see above) into a few 1e-6 of the sigmas.
                let tol = if config == "zero_snr" { 4e-6 } else { 1e-6 };
                let e = elementwise_rel(got, &f32s(want));
                assert!(e <= tol, "{what}: sigmas off by {e:.2e}: {got:?}, want {want}");
                let w = &mut worst_sigma[(config == "zero_snr") as usize];
                *w = w.max(e);
            }
            (want, got) => panic!("{what}: sigmas {got:?}, want {want}"),
        }
        let want = case["init_noise_sigma"].as_f64().unwrap() as f32;
        let e = elementwise_rel(&[s.init_noise_sigma()], &[want]);
        assert!(e <= 1e-6, "{what}: init_noise_sigma {}, want {want}", s.init_noise_sigma());
        for i2i in case["img2img"].as_array().unwrap() {
            let strength = i2i["strength"].as_f64().unwrap();
            match i2i["start"].as_u64() {
                Some(start) => {
                    let got = s.img2img_start(strength).unwrap();
                    assert_eq!(got, start as usize, "{what}: img2img start at strength {strength}");
                    let want = f32s(&i2i["timesteps"]);
                    assert!(timesteps_match(&s.timesteps()[got..], &want, tol), "{what}: strength {strength}");
                }
                None => assert!(s.img2img_start(strength).is_err(), "{what}: strength {strength} leaves no step"),
            }
        }
        cases += 1;
    }
    let [others, zero_snr] = worst_sigma;
    eprintln!("{cases} schedules match; largest sigma relative error {others:.2e} ({zero_snr:.2e} with zero SNR)");
}

/// The tensors of traces.safetensors by name, as f32.
fn trace_tensors() -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(format!("{FIXTURES}/traces.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let data = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            (name, (view.shape().to_vec(), data))
        })
        .collect()
}

#[test]
fn traces_match_diffusers() {
    let fixture = json("traces.json");
    let tensors = trace_tensors();
    let get = |name: &str| {
        tensors.get(name).map(|(dims, data)| Tensor::from_f32(data.clone(), dims.clone(), &Device::Cpu).unwrap())
    };
    let want = |name: &str| {
        tensors.get(name).unwrap_or_else(|| panic!("{name} missing")).1.iter().map(|&v| v as f64).collect::<Vec<_>>()
    };
    for t in fixture["traces"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        let (config, kind) = (t["config"].as_str().unwrap(), t["kind"].as_str().unwrap());
        let mut s = build(&fixture["configs"], config, kind, t["eta"].as_f64());
        s.set_timesteps(t["steps"].as_u64().unwrap() as usize).unwrap();
        let (start, end) = (t["start"].as_u64().unwrap() as usize, t["end"].as_u64().unwrap() as usize);
        match t["strength"].as_f64() {
            Some(strength) => {
                assert_eq!(s.img2img_start(strength).unwrap(), start, "{name}: img2img start");
                let original = get(&format!("{name}/original")).unwrap();
                let noise = get(&format!("{name}/add_noise_noise")).unwrap();
                let noised = s.add_noise(&original, &noise, start).unwrap();
                let e = rel_err(&noised.to_vec_f32().unwrap(), &want(&format!("{name}/sample0")));
                assert!(e <= 1e-6, "{name}: add_noise off by {e:.2e}");
            }
            None => assert_eq!(start, 0),
        }
        let guidance = t["guidance"].as_f64().map(|g| g as f32);
        let mut worst = 0f64;
        for i in start..end {
            let prefix = format!("{name}/{i}");
            // Each step starts from diffusers' sample, so the errors of one step do not
            // compound into the next (multistep history is built from those samples too).
            let sample = match i {
                _ if i == start => get(&format!("{name}/sample0")).unwrap(),
                _ => get(&format!("{name}/{}/out", i - 1)).unwrap(),
            };
            let scaled = s.scale_model_input(&sample, i).unwrap();
            if tensors.contains_key(&format!("{prefix}/scaled")) {
                let e = rel_err(&scaled.to_vec_f32().unwrap(), &want(&format!("{prefix}/scaled")));
                assert!(e <= 1e-6, "{prefix}: scale_model_input off by {e:.2e}");
            }
            let model = get(&format!("{prefix}/model")).unwrap();
            let noise = get(&format!("{prefix}/noise"));
            // A step is a difference of terms of the input's size (at σ = 4096 with zero
            // terminal SNR, much larger than the result): judged against both sizes.
            let scale = sample.to_vec_f32().unwrap().iter().fold(0f64, |m, v| m.max(v.abs() as f64));
            let out = s.step(&model, guidance, i, &sample, noise.as_ref()).unwrap();
            let e = common::rel_err_to(&out.to_vec_f32().unwrap(), &want(&format!("{prefix}/out")), scale);
            assert!(e <= 1e-5, "{prefix}: step off by {e:.2e}");
            worst = worst.max(e);
        }
        eprintln!("{name}: {} steps, largest relative error {worst:.2e}", end - start);
    }
}

#[test]
fn loads_a_pipeline_folder() {
    let fixture = json("traces.json");
    let dir = std::env::temp_dir().join(format!("foil-schedulers-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("scheduler")).unwrap();
    std::fs::write(dir.join("scheduler/scheduler_config.json"), fixture["configs"]["sd2_trailing"].to_string())
        .unwrap();
    let ddim = scheduler::load(&dir, None).unwrap();
    assert_eq!(ddim.kind(), SchedulerKind::Ddim);
    let mut euler = scheduler::load(dir.join("scheduler"), Some(SchedulerKind::Euler)).unwrap();
    euler.set_timesteps(4).unwrap();
    assert_eq!(euler.timesteps(), &[999.0, 749.0, 499.0, 249.0]);
    // SD 1.5 ships a PNDM config.
    std::fs::write(dir.join("scheduler/scheduler_config.json"), fixture["configs"]["sd15"].to_string()).unwrap();
    assert_eq!(scheduler::load(&dir, None).unwrap().kind(), SchedulerKind::Pndm);
    // A class foil does not have needs a kind chosen.
    let lms = r#"{"_class_name": "LMSDiscreteScheduler", "beta_schedule": "scaled_linear"}"#;
    std::fs::write(dir.join("scheduler/scheduler_config.json"), lms).unwrap();
    let e = scheduler::load(&dir, None).err().unwrap();
    assert!(
        matches!(&e, Error::File { file, detail } if file.ends_with("scheduler_config.json") && detail.contains("LMSDiscreteScheduler")),
        "{e}"
    );
    assert_eq!(
        scheduler::load(&dir, Some(SchedulerKind::DpmSolverMultistep)).unwrap().kind(),
        SchedulerKind::DpmSolverMultistep
    );
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(matches!(scheduler::load(&dir, None), Err(Error::File { .. })));
}

/// The error `json` gives as a config of `kind`, as text.
fn config_error(json: &str, kind: SchedulerKind) -> String {
    let config = SchedulerConfig::from_json(json, "cfg.json").unwrap();
    match scheduler::from_config(&config, Some(kind)) {
        Err(e @ Error::File { .. }) => e.to_string(),
        Err(e) => panic!("{json}: {e} is not a file error"),
        Ok(_) => panic!("{json} was accepted as {kind}"),
    }
}

#[test]
fn unsupported_options_are_named() {
    use SchedulerKind::*;
    let cases = [
        (r#"{"thresholding": true}"#, Ddim, "thresholding"),
        (r#"{"beta_schedule": "sigmoid"}"#, Ddpm, "beta_schedule"),
        (r#"{"variance_type": "learned_range"}"#, Ddpm, "variance_type"),
        (r#"{"prediction_type": "sample"}"#, EulerAncestral, "prediction_type"),
        (r#"{"timestep_spacing": "karras"}"#, Euler, "timestep_spacing"),
        (r#"{"use_exponential_sigmas": true}"#, Euler, "use_exponential_sigmas"),
        (r#"{"interpolation_type": "log_linear"}"#, Euler, "interpolation_type"),
        (r#"{"prediction_type": "v_prediction", "timestep_type": "continuous"}"#, Euler, "timestep_type"),
        (r#"{"solver_order": 3}"#, DpmSolverMultistep, "solver_order"),
        (r#"{"algorithm_type": "sde-dpmsolver++"}"#, DpmSolverMultistep, "algorithm_type"),
        (r#"{"use_lu_lambdas": true}"#, DpmSolverMultistep, "use_lu_lambdas"),
        (r#"{"trained_betas": [0.1, 0.2]}"#, Ddim, "trained_betas"),
        (r#"{"eta": -1}"#, Ddim, "eta"),
        (r#"{"skip_prk_steps": false}"#, Pndm, "skip_prk_steps"),
        (r#"{}"#, Pndm, "skip_prk_steps"),
        (r#"{"skip_prk_steps": true, "prediction_type": "sample"}"#, Pndm, "prediction_type"),
    ];
    for (json, kind, option) in cases {
        let e = config_error(json, kind);
        assert!(e.starts_with(&format!("cfg.json: {option}:")), "{json}: {e}");
    }
    let config = SchedulerConfig::from_json(r#"{"_class_name": "LMSDiscreteScheduler"}"#, "cfg.json").unwrap();
    let e = scheduler::from_config(&config, None).err().unwrap().to_string();
    assert!(e.contains("LMSDiscreteScheduler") && e.contains("dpm++2m"), "{e}");
    assert!(matches!(SchedulerConfig::from_json("{\"steps_offset\": \"one\"}", "cfg.json"), Err(Error::File { .. })));
}

#[test]
fn misuse_is_an_error() {
    let x = Tensor::from_f32(vec![0.5; 6], vec![1, 2, 3], &Device::Cpu).unwrap();
    // PNDM's PLMS needs skip_prk_steps, which the others ignore.
    let config = SchedulerConfig { skip_prk_steps: Some(true), ..Default::default() };
    for kind in SchedulerKind::ALL {
        let mut s = scheduler::from_config(&config, Some(kind)).unwrap();
        let usage = |r: foil::Result<Tensor>| matches!(r, Err(Error::Usage(_)));
        assert!(usage(s.step(&x, None, 0, &x, Some(&x))), "{kind}: step before set_timesteps");
        assert!(matches!(s.set_timesteps(0), Err(Error::Usage(_))), "{kind}: 0 steps");
        s.set_timesteps(4).unwrap();
        let end = s.timesteps().len();
        assert!(usage(s.step(&x, None, end, &x, Some(&x))), "{kind}: step past the end");
        assert!(usage(s.add_noise(&x, &x, 9)), "{kind}: add_noise past the end");
        assert!(matches!(s.img2img_start(1.5), Err(Error::Usage(_))), "{kind}: strength 1.5");
        assert!(matches!(s.step(&x, Some(7.5), 0, &x, Some(&x)), Err(Error::Shape { .. })), "{kind}: CFG needs 2N");
        if s.needs_noise() {
            assert!(usage(s.step(&x, None, 0, &x, None)), "{kind}: no noise");
        }
    }
    let mut dpm = scheduler::from_config(&config, Some(SchedulerKind::DpmSolverMultistep)).unwrap();
    dpm.set_timesteps(5).unwrap();
    dpm.step(&x, None, 0, &x, None).unwrap();
    assert!(matches!(dpm.step(&x, None, 2, &x, None), Err(Error::Usage(_))), "dpm++2m: skipped a step");
    // diffusers' trailing spacing gives timestep −1 at 61 steps, which DDIM would index with.
    let trailing = SchedulerConfig::from_json(r#"{"timestep_spacing": "trailing"}"#, "cfg.json").unwrap();
    let mut ddim = scheduler::from_config(&trailing, Some(SchedulerKind::Ddim)).unwrap();
    assert!(matches!(ddim.set_timesteps(61), Err(Error::Usage(m)) if m.contains("-1")));
    let mut euler = scheduler::from_config(&trailing, Some(SchedulerKind::Euler)).unwrap();
    euler.set_timesteps(61).unwrap();
    assert_eq!((euler.num_inference_steps(), euler.timesteps().len()), (61, 62));
}

/// A random fused step: every term on, guidance and clipping as asked.
fn random_step(r: &mut foil::Rng, guidance: bool, clip: bool, keep_x0: bool) -> SchedulerStep {
    let mut c = || r.normal();
    SchedulerStep {
        x0_x: c(),
        x0_m: c(),
        clip: clip.then_some(0.8),
        eps_x: c(),
        eps_m: c(),
        out_x0: c(),
        out_eps: c(),
        out_x: c(),
        out_noise: c(),
        out_prev: c(),
        guidance: guidance.then_some(7.5),
        keep_x0,
    }
}

/// A sum in f64 as (value, Σ|term|).
type Sum = (f64, f64);

/// The step in f64, straight from the formula on SchedulerStep: per element,
/// (out, x0), each as (value, Σ|term|). The f32 rounding error grows with the
/// second, which the value can fall far below when the terms cancel.
fn reference(s: &SchedulerStep, x: &[f32], m: &[f32], noise: &[f32], prev: &[f32]) -> (Vec<Sum>, Vec<Sum>) {
    let n = x.len();
    // Σ c·v over (coefficient, (value, size)) pairs, with its size Σ|c|·size.
    let lin = |terms: &[(f32, Sum)]| -> Sum {
        terms.iter().fold((0.0, 0.0), |(v, a), &(c, (tv, ta))| (v + c as f64 * tv, a + (c as f64).abs() * ta))
    };
    let at = |v: f32| -> Sum { (v as f64, (v as f64).abs()) };
    (0..n)
        .map(|i| {
            let m = match s.guidance {
                Some(g) => {
                    let (u, c) = (m[i] as f64, m[n + i] as f64);
                    (u + g as f64 * (c - u), u.abs() + g.abs() as f64 * (c.abs() + u.abs()))
                }
                None => at(m[i]),
            };
            let mut x0 = lin(&[(s.x0_x, at(x[i])), (s.x0_m, m)]);
            if let Some(c) = s.clip {
                x0.0 = x0.0.clamp(-c as f64, c as f64);
            }
            let eps = lin(&[(s.eps_x, at(x[i])), (s.eps_m, m)]);
            let out = lin(&[
                (s.out_x0, x0),
                (s.out_eps, eps),
                (s.out_x, at(x[i])),
                (s.out_noise, at(noise[i])),
                (s.out_prev, at(prev[i])),
            ]);
            (out, x0)
        })
        .unzip()
}

#[test]
fn fused_step_matches_the_formula() {
    let mut r = rng("fused_step_matches_the_formula");
    for dims in [vec![1, 1, 1, 1], vec![1, 4, 5, 3], vec![3, 4, 7, 9], vec![2, 4, 64, 65]] {
        for (guidance, clip) in [(false, false), (true, false), (false, true), (true, true)] {
            let n: usize = dims.iter().product();
            let s = random_step(&mut r, guidance, clip, true);
            let model_dims = [vec![dims[0] * if guidance { 2 } else { 1 }], dims[1..].to_vec()].concat();
            let (x, m, noise, prev) =
                (randn(&mut r, n), randn(&mut r, model_dims.iter().product()), randn(&mut r, n), randn(&mut r, n));
            let t = |v: &Vec<f32>, d: &[usize]| Tensor::from_f32(v.clone(), d.to_vec(), &Device::Cpu).unwrap();
            let (out, x0) = t(&x, &dims)
                .scheduler_step(&t(&m, &model_dims), Some(&t(&noise, &dims)), Some(&t(&prev, &dims)), &s)
                .unwrap();
            let (want_out, want_x0) = reference(&s, &x, &m, &noise, &prev);
            let what = format!("{dims:?} guidance {guidance} clip {clip}");
            for (name, got, want) in [("out", out, want_out), ("x0", x0.unwrap(), want_x0)] {
                let (values, sizes): (Vec<f64>, Vec<f64>) = want.into_iter().unzip();
                let scale = sizes.iter().fold(0f64, |a, &v| a.max(v));
                let e = common::rel_err_to(&got.to_vec_f32().unwrap(), &values, scale);
                assert!(e <= 1e-6, "{what}: {name} off by {e:.2e}");
            }
        }
    }
}

/// The GPU, or None after printing why this test is skipped.
fn gpu(test: &str) -> Option<Device> {
    static GPU: OnceLock<Result<Device, String>> = OnceLock::new();
    match GPU.get_or_init(|| Device::cuda(0).map_err(|e| e.to_string())) {
        Ok(d) => Some(d.clone()),
        Err(reason) => {
            let line = format!("SKIPPED schedulers::{test}: no GPU ({reason})\n");
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
            None
        }
    }
}

#[test]
fn cuda_fused_step_matches_cpu() {
    let Some(dev) = gpu("cuda_fused_step_matches_cpu") else { return };
    let mut r = rng("cuda_fused_step_matches_cpu");
    // kernels/README.md's elementwise tolerances; f32 is bit for bit by construction.
    for (dtype, tol) in [(DType::F32, 0.0), (DType::F16, 1e-3), (DType::BF16, 8e-3)] {
        for dims in [vec![1, 1, 1, 1], vec![1, 4, 5, 3], vec![3, 4, 7, 9], vec![2, 4, 64, 65], vec![1, 4, 128, 128]] {
            for (guidance, clip, noise_on, prev_on, keep) in [
                (false, false, false, false, false),
                (true, true, true, true, true),
                (true, false, false, true, true),
                (false, true, true, false, false),
            ] {
                let s = random_step(&mut r, guidance, clip, keep);
                let n: usize = dims.iter().product();
                let model_dims = [vec![dims[0] * if guidance { 2 } else { 1 }], dims[1..].to_vec()].concat();
                let pair = |r: &mut foil::Rng, d: &[usize]| {
                    let t = Tensor::from_f32(randn(r, d.iter().product()), d.to_vec(), &Device::Cpu)
                        .unwrap()
                        .to_dtype(dtype)
                        .unwrap();
                    (t.clone(), t.to_device(&dev).unwrap())
                };
                let (cx, gx) = pair(&mut r, &dims);
                let (cm, gm) = pair(&mut r, &model_dims);
                let (cn, gn) = pair(&mut r, &dims);
                let (cp, gp) = pair(&mut r, &dims);
                // Judged against the size of the terms, since the sums may cancel.
                let (out_terms, x0_terms) = {
                    let v = |t: &Tensor| t.to_vec_f32().unwrap();
                    let or_zero = |t: &Tensor, on: bool| if on { v(t) } else { vec![0.0; n] };
                    reference(&s, &v(&cx), &v(&cm), &or_zero(&cn, noise_on), &or_zero(&cp, prev_on))
                };
                let pick = |on: bool, t: Tensor| on.then_some(t);
                let (cpu_out, cpu_x0) =
                    cx.scheduler_step(&cm, pick(noise_on, cn).as_ref(), pick(prev_on, cp).as_ref(), &s).unwrap();
                let (gpu_out, gpu_x0) =
                    gx.scheduler_step(&gm, pick(noise_on, gn).as_ref(), pick(prev_on, gp).as_ref(), &s).unwrap();
                let what =
                    format!("{dtype:?} {dims:?} n={n} guidance {guidance} clip {clip} noise {noise_on} prev {prev_on}");
                let cmp = |c: &Tensor, g: &Tensor, terms: &[Sum], part: &str| {
                    let want: Vec<f64> = c.to_vec_f32().unwrap().iter().map(|&v| v as f64).collect();
                    let scale = terms.iter().fold(0f64, |a, &(_, size)| a.max(size));
                    let e = common::rel_err_to(&g.to_vec_f32().unwrap(), &want, scale);
                    assert!(e <= tol, "{what}: {part} off by {e:.2e}");
                };
                cmp(&cpu_out, &gpu_out, &out_terms, "out");
                assert_eq!(cpu_x0.is_some(), keep);
                if let (Some(c), Some(g)) = (cpu_x0, gpu_x0) {
                    cmp(&c, &g, &x0_terms, "x0");
                }
            }
        }
    }
}
