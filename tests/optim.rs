//! The optimizers against naive f64 implementations of PyTorch's update rules (torch.optim.SGD,
//! torch.optim.AdamW, clip_grad_norm_) written here, over several steps of fresh random
//! gradients, parameters of odd sizes and mixed shapes, f32, f16 and bf16 compute dtypes with f32
//! master weights; the learning-rate schedule at known points; checkpoint state round trips;
//! non-finite gradients; bad input; and the CUDA kernels against the CPU (skipped without a GPU).

mod common;

use std::collections::HashMap;

use common::{as_f64, assert_close, randn, rel_err, rng};
use foil::autograd::optim::{AdamW, AdamWConfig, Optimizer, Sgd, SgdConfig, StepStats};
use foil::autograd::schedule::LrSchedule;
use foil::device::{AdamWStep, SgdStep};
use foil::tensor::safetensors::{load_all, save};
use foil::{DType, Device, Rng, Tensor};

/// Odd sizes, a size 1, a scalar-like (1, 1), and one of more than a CPU task's 16 K elements.
const SHAPES: [&[usize]; 6] = [&[7, 3], &[5], &[1], &[2, 3, 5, 3], &[1, 1], &[129, 257]];

/// The gradient scale of each step: with ~185 as the norm of unit gradients over SHAPES,
/// `CLIP_ACTIVE` clips steps 0, 2 and 3 and leaves step 1 alone.
const GRAD_SCALES: [f32; 4] = [1.0, 0.2, 2.0, 0.7];
const CLIP_ACTIVE: f32 = 100.0;
const CLIP_INACTIVE: f32 = 1e4;

/// Tolerance of the parameters' displacement from their start after `GRAD_SCALES.len()` steps,
/// judged against its largest value: f32 master weights against f64, a few roundings a step.
const TOL: f64 = 1e-4;

/// Random parameters of `SHAPES` in `dtype` (every one the same dtype, or cycling through all three).
fn params(r: &mut Rng, dtype: Option<DType>, dev: &Device) -> Vec<Tensor> {
    let cycle = [DType::F32, DType::BF16, DType::F16];
    SHAPES
        .iter()
        .enumerate()
        .map(|(i, dims)| {
            let t = Tensor::from_f32(randn(r, dims.iter().product()), dims.to_vec(), dev).unwrap();
            t.to_dtype(dtype.unwrap_or(cycle[i % 3])).unwrap()
        })
        .collect()
}

/// Random gradients shaped and typed like `params`, times `scale`.
fn grads(r: &mut Rng, params: &[Tensor], scale: f32) -> Vec<Tensor> {
    params
        .iter()
        .map(|p| {
            let g = randn(r, p.numel()).iter().map(|v| v * scale).collect();
            Tensor::from_f32(g, p.dims().to_vec(), &p.device()).unwrap().to_dtype(p.dtype()).unwrap()
        })
        .collect()
}

/// The tensors' values concatenated, as f64 (what the optimizer sees, after the dtype's rounding).
fn flat(ts: &[Tensor]) -> Vec<f64> {
    ts.iter().flat_map(as_f64).collect()
}

fn master(opt: &dyn Optimizer) -> Vec<f32> {
    let state = opt.state().unwrap();
    state.iter().find(|(n, _)| n == "master").unwrap().1.to_vec_f32().unwrap()
}

/// PyTorch's clip_grad_norm_: the norm, and the gradients scaled by max / (norm + 1e-6) when below 1.
fn clip(g: &mut [f64], max_norm: Option<f32>) -> (f64, bool) {
    let norm = g.iter().map(|x| x * x).sum::<f64>().sqrt();
    match max_norm.map(|m| m as f64 / (norm + 1e-6)) {
        Some(coef) if coef < 1.0 => {
            g.iter_mut().for_each(|x| *x *= coef);
            (norm, true)
        }
        _ => (norm, false),
    }
}

/// torch.optim.SGD's step (dampening 0), naively in f64.
struct RefSgd {
    p: Vec<f64>,
    buf: Option<Vec<f64>>,
    c: SgdConfig,
}

impl RefSgd {
    fn step(&mut self, g: &[f64], lr: f64) -> (f64, bool) {
        let mut g = g.to_vec();
        let stats = clip(&mut g, self.c.max_grad_norm);
        let (mom, wd) = (self.c.momentum as f64, self.c.weight_decay as f64);
        // PyTorch creates the buffer on the first step, as a copy of the gradient.
        let first = self.buf.is_none();
        let n = self.p.len();
        let buf = self.buf.get_or_insert_with(|| vec![0.0; n]);
        for (i, p) in self.p.iter_mut().enumerate() {
            let mut d = g[i] + wd * *p;
            if mom != 0.0 {
                buf[i] = if first { d } else { mom * buf[i] + d };
                d = if self.c.nesterov { d + mom * buf[i] } else { buf[i] };
            }
            *p -= lr * d;
        }
        stats
    }
}

/// torch.optim.AdamW's step, naively in f64.
struct RefAdamW {
    p: Vec<f64>,
    m: Vec<f64>,
    v: Vec<f64>,
    t: i32,
    c: AdamWConfig,
}

impl RefAdamW {
    fn step(&mut self, g: &[f64], lr: f64) -> (f64, bool) {
        let mut g = g.to_vec();
        let stats = clip(&mut g, self.c.max_grad_norm);
        let (b1, b2, eps, wd) =
            (self.c.beta1 as f64, self.c.beta2 as f64, self.c.eps as f64, self.c.weight_decay as f64);
        self.t += 1;
        let (bc1, bc2) = (1.0 - b1.powi(self.t), 1.0 - b2.powi(self.t));
        for (((p, m), v), g) in self.p.iter_mut().zip(&mut self.m).zip(&mut self.v).zip(g) {
            *p *= 1.0 - lr * wd;
            *m = b1 * *m + (1.0 - b1) * g;
            *v = b2 * *v + (1.0 - b2) * g * g;
            *p -= lr / bc1 * *m / (v.sqrt() / bc2.sqrt() + eps);
        }
        stats
    }
}

/// Runs `GRAD_SCALES.len()` steps of `opt` and of the reference `reference` on the same fresh
/// gradients and checks the statistics, the master weights and the parameters; returns the
/// worst relative error of the displacement.
fn run_against_reference(
    what: &str,
    r: &mut Rng,
    opt: &mut dyn Optimizer,
    start: &[Tensor],
    lrs: &[f32],
    mut reference: impl FnMut(&[f64], f64) -> (f64, bool),
    reference_params: impl Fn() -> Vec<f64>,
) -> f64 {
    let p0 = flat(start);
    for (step, (&scale, &lr)) in GRAD_SCALES.iter().zip(lrs).enumerate() {
        let g = grads(r, start, scale);
        let StepStats { grad_norm, clipped } = opt.step(&g, lr).unwrap();
        let (norm, want_clipped) = reference(&flat(&g), lr as f64);
        assert_eq!(clipped, want_clipped, "{what} step {step}: clipped");
        assert!(((grad_norm as f64) - norm).abs() <= 1e-5 * norm, "{what} step {step}: norm {grad_norm} vs {norm}");
    }
    assert_eq!(opt.steps(), GRAD_SCALES.len() as u64, "{what}: step count");
    let (got, want) = (master(opt), reference_params());
    let got_moved: Vec<f32> = got.iter().zip(&p0).map(|(&g, &p)| (g as f64 - p) as f32).collect();
    let want_moved: Vec<f64> = want.iter().zip(&p0).map(|(w, p)| w - p).collect();
    let e = rel_err(&got_moved, &want_moved);
    assert!(e < TOL, "{what}: displacement relative error {e:.3e}");
    // The parameters are the master weights rounded to each one's dtype.
    let now = opt.params().unwrap();
    let mut offset = 0;
    for (p, s) in now.iter().zip(start) {
        assert_eq!((p.dims(), p.dtype()), (s.dims(), s.dtype()), "{what}: parameter layout");
        let m = Tensor::from_f32(got[offset..offset + p.numel()].to_vec(), p.dims().to_vec(), &Device::Cpu).unwrap();
        let rounded = m.to_dtype(p.dtype()).unwrap().to_vec_f32().unwrap();
        assert_eq!(p.to_vec_f32().unwrap(), rounded, "{what}: parameters are the rounded master weights");
        offset += p.numel();
    }
    e
}

fn sgd_configs() -> Vec<SgdConfig> {
    let c =
        |momentum, nesterov, weight_decay, max_grad_norm| SgdConfig { momentum, nesterov, weight_decay, max_grad_norm };
    vec![
        c(0.0, false, 0.0, None),
        c(0.0, false, 0.05, Some(CLIP_ACTIVE)),
        c(0.9, false, 0.0, None),
        c(0.9, false, 0.01, Some(CLIP_ACTIVE)),
        c(0.9, true, 0.0, Some(CLIP_INACTIVE)),
        c(0.5, true, 0.1, Some(CLIP_ACTIVE)),
    ]
}

fn adamw_configs() -> Vec<AdamWConfig> {
    let d = AdamWConfig::default();
    vec![
        d,
        AdamWConfig { weight_decay: 0.0, max_grad_norm: Some(CLIP_ACTIVE), ..d },
        AdamWConfig { beta1: 0.8, beta2: 0.99, eps: 1e-6, weight_decay: 0.1, max_grad_norm: Some(CLIP_INACTIVE) },
        AdamWConfig { beta1: 0.0, beta2: 0.5, eps: 1e-3, weight_decay: 0.3, max_grad_norm: Some(CLIP_ACTIVE) },
    ]
}

/// f32, bf16 and f16 compute (all parameters alike), and all three mixed in one optimizer.
const COMPUTE: [Option<DType>; 4] = [Some(DType::F32), Some(DType::BF16), Some(DType::F16), None];

#[test]
fn sgd_follows_pytorch() {
    let mut r = rng("optim sgd_follows_pytorch");
    let mut worst = 0f64;
    for c in sgd_configs() {
        for dtype in COMPUTE {
            let start = params(&mut r, dtype, &Device::Cpu);
            let mut opt = Sgd::new(&start, c).unwrap();
            let reference = std::cell::RefCell::new(RefSgd { p: flat(&start), buf: None, c });
            let what = format!("sgd {c:?} {dtype:?}");
            let e = run_against_reference(
                &what,
                &mut r,
                &mut opt,
                &start,
                &[0.1, 0.05, 0.02, 0.08],
                |g, lr| reference.borrow_mut().step(g, lr),
                || reference.borrow().p.clone(),
            );
            worst = worst.max(e);
        }
    }
    eprintln!("sgd: worst displacement relative error {worst:.2e}");
}

#[test]
fn adamw_follows_pytorch() {
    let mut r = rng("optim adamw_follows_pytorch");
    let mut worst = 0f64;
    for c in adamw_configs() {
        for dtype in COMPUTE {
            let start = params(&mut r, dtype, &Device::Cpu);
            let mut opt = AdamW::new(&start, c).unwrap();
            let n = flat(&start).len();
            let reference =
                std::cell::RefCell::new(RefAdamW { p: flat(&start), m: vec![0.0; n], v: vec![0.0; n], t: 0, c });
            let what = format!("adamw {c:?} {dtype:?}");
            let e = run_against_reference(
                &what,
                &mut r,
                &mut opt,
                &start,
                &[1e-2, 3e-2, 5e-3, 2e-2],
                |g, lr| reference.borrow_mut().step(g, lr),
                || reference.borrow().p.clone(),
            );
            worst = worst.max(e);
        }
    }
    eprintln!("adamw: worst displacement relative error {worst:.2e}");
}

#[test]
fn the_given_parameters_and_returned_tensors_never_change() {
    let mut r = rng("optim the_given_parameters_and_returned_tensors_never_change");
    let start = params(&mut r, Some(DType::F32), &Device::Cpu);
    let before = flat(&start);
    let mut opt = AdamW::new(&start, AdamWConfig::default()).unwrap();
    let (held_params, held_state) = (opt.params().unwrap(), opt.state().unwrap());
    let held: Vec<Vec<f64>> = held_state.iter().map(|(_, t)| as_f64(t)).collect();
    // Steps succeed while the caller holds the parameters and the state: both are copies.
    for _ in 0..2 {
        opt.step(&grads(&mut r, &start, 1.0), 0.1).unwrap();
    }
    assert_eq!(flat(&start), before, "the tensors the optimizer was built from");
    assert_eq!(flat(&held_params), before, "params() taken before the steps");
    for ((name, t), h) in held_state.iter().zip(held) {
        assert_eq!(as_f64(t), h, "state '{name}' taken before the steps");
    }
}

#[test]
fn schedule_values() {
    let s = LrSchedule { base_lr: 1e-3, warmup_steps: 10, total_steps: 110, min_lr: 1e-5 };
    let cosine = |progress: f64| 1e-5 + (1e-3 - 1e-5) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    let known = [
        (0, 0.0),
        (1, 1e-4),
        (5, 5e-4),
        (9, 9e-4),
        (10, 1e-3),
        (35, cosine(0.25)),
        (60, (1e-3 + 1e-5) / 2.0),
        (85, cosine(0.75)),
        (110, 1e-5),
        (111, 1e-5),
        (10_000, 1e-5),
    ];
    for (step, want) in known {
        let got = s.lr(step) as f64;
        assert!((got - want).abs() <= 1e-7 * want.max(1e-3), "lr({step}) = {got}, want {want}");
    }
    let decreasing = (10..=110).map(|t| s.lr(t)).collect::<Vec<_>>();
    assert!(decreasing.windows(2).all(|w| w[1] <= w[0]), "the cosine only decreases");
    // Without warm-up the first step runs at the base rate; a warm-up past the end stays finite.
    let flat_start = LrSchedule { warmup_steps: 0, ..s };
    assert_eq!(flat_start.lr(0), 1e-3);
    let odd = LrSchedule { base_lr: 1.0, warmup_steps: 5, total_steps: 3, min_lr: 0.0 };
    assert_eq!((odd.lr(4), odd.lr(5), odd.lr(6)), (0.8, 1.0, 0.0));
}

/// Two optimizers of the same kind, the second built from other parameters.
type Build = fn(&[Tensor]) -> Box<dyn Optimizer>;

fn builders() -> Vec<(&'static str, Build)> {
    vec![
        ("sgd", |p| Box::new(Sgd::new(p, SgdConfig { momentum: 0.9, nesterov: true, ..Default::default() }).unwrap())),
        ("sgd plain", |p| Box::new(Sgd::new(p, SgdConfig { weight_decay: 0.1, ..Default::default() }).unwrap())),
        ("adamw", |p| {
            Box::new(AdamW::new(p, AdamWConfig { max_grad_norm: Some(CLIP_ACTIVE), ..Default::default() }).unwrap())
        }),
    ]
}

#[test]
fn state_round_trip() {
    let mut r = rng("optim state_round_trip");
    let dir = common::temp_dir("optim-state");
    for (name, build) in builders() {
        for dtype in [DType::F32, DType::BF16] {
            let start = params(&mut r, Some(dtype), &Device::Cpu);
            let mut opt = build(&start);
            for scale in [1.0, 0.3] {
                opt.step(&grads(&mut r, &start, scale), 0.05).unwrap();
            }
            // Through a safetensors file, read back as f32 as a training script would.
            let state = opt.state().unwrap();
            let path = dir.join(format!("{name}-{dtype}.safetensors"));
            save(&path, &state.iter().map(|(n, t)| (n.as_str(), t)).collect::<Vec<_>>()).unwrap();
            let mut loaded: Vec<(String, Tensor)> =
                load_all(&path, DType::F32, &Device::Cpu).unwrap().into_iter().collect();
            loaded.push(("unrelated.weight".into(), Tensor::zeros([3], DType::F32, &Device::Cpu).unwrap()));
            let mut fresh = build(&params(&mut r, Some(dtype), &Device::Cpu));
            fresh.load_state(&loaded).unwrap();
            assert_eq!(fresh.steps(), 2, "{name}: step count");
            assert_eq!(flat(&fresh.params().unwrap()), flat(&opt.params().unwrap()), "{name}: params after loading");
            let g = grads(&mut r, &start, 0.8);
            assert_eq!(opt.step(&g, 0.05).unwrap(), fresh.step(&g, 0.05).unwrap(), "{name} {dtype}: third step stats");
            assert_eq!(master(&*fresh), master(&*opt), "{name} {dtype}: the third step");
            let (a, b) = (opt.state().unwrap(), fresh.state().unwrap());
            for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
                assert_eq!((na, as_f64(ta)), (nb, as_f64(tb)), "{name} {dtype}: state after the third step");
            }
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// An optimizer's checkpoint state, as `Optimizer::state` gives it.
type State = Vec<(String, Tensor)>;

#[test]
fn load_state_errors_change_nothing() {
    let mut r = rng("optim load_state_errors_change_nothing");
    let start = params(&mut r, Some(DType::F32), &Device::Cpu);
    let mut opt = AdamW::new(&start, AdamWConfig::default()).unwrap();
    opt.step(&grads(&mut r, &start, 1.0), 0.01).unwrap();
    let good: HashMap<String, Tensor> = opt.state().unwrap().into_iter().collect();
    let before = master(&opt);
    let without = |skip: &str| good.iter().filter(|(n, _)| *n != skip).map(|(n, t)| (n.clone(), t.clone())).collect();
    let with = |name: &str, t: Tensor| {
        let mut s: State = without(name);
        s.push((name.to_string(), t));
        s
    };
    let n = good["master"].numel();
    let cases: Vec<(&str, State, &str)> = vec![
        ("missing exp_avg_sq", without("exp_avg_sq"), "'exp_avg_sq'"),
        ("missing step", without("step"), "'step'"),
        ("short exp_avg", with("exp_avg", Tensor::zeros([n - 1], DType::F32, &Device::Cpu).unwrap()), "exp_avg"),
        ("long master", with("master", Tensor::zeros([n + 1], DType::F32, &Device::Cpu).unwrap()), "master"),
        ("fractional step", with("step", Tensor::from_f32(vec![1.5], [1], &Device::Cpu).unwrap()), "step"),
    ];
    for (what, state, names) in cases {
        let e = common::one_line_error(opt.load_state(&state));
        assert!(e.contains(names), "{what}: {e}");
        assert_eq!(master(&opt), before, "{what}: master weights changed");
        assert_eq!(opt.steps(), 1, "{what}: step count changed");
    }
    // An SGD state lacks the moments AdamW needs.
    let sgd = Sgd::new(&start, SgdConfig { momentum: 0.9, ..Default::default() }).unwrap();
    assert!(common::one_line_error(opt.load_state(&sgd.state().unwrap())).contains("exp_avg"));
}

#[test]
fn non_finite_gradients_are_refused() {
    let mut r = rng("optim non_finite_gradients_are_refused");
    for (name, build) in builders() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let start = params(&mut r, Some(DType::F32), &Device::Cpu);
            let (mut opt, mut twin) = (build(&start), build(&start));
            let g = grads(&mut r, &start, 1.0);
            opt.step(&g, 0.05).unwrap();
            twin.step(&g, 0.05).unwrap();
            let (params_before, state_before) = (flat(&opt.params().unwrap()), opt.state().unwrap());
            let mut poisoned = grads(&mut r, &start, 1.0);
            let mut v = poisoned[3].to_vec_f32().unwrap();
            v[17] = bad;
            poisoned[3] = Tensor::from_f32(v, poisoned[3].dims().to_vec(), &Device::Cpu).unwrap();
            let e = common::one_line_error(opt.step(&poisoned, 0.05));
            assert!(e.contains("gradient 3"), "{name} {bad}: {e}");
            assert_eq!(flat(&opt.params().unwrap()), params_before, "{name} {bad}: params changed");
            for ((n, a), (_, b)) in opt.state().unwrap().iter().zip(&state_before) {
                assert_eq!(as_f64(a), as_f64(b), "{name} {bad}: state '{n}' changed");
            }
            // The refused step left no trace: the next good step matches an optimizer that never saw it.
            let g = grads(&mut r, &start, 0.5);
            assert_eq!(opt.step(&g, 0.05).unwrap(), twin.step(&g, 0.05).unwrap());
            assert_eq!(master(&*opt), master(&*twin), "{name} {bad}: the step after");
        }
    }
    // Finite gradients whose squares overflow f32 are refused too, and said to be so.
    let start = params(&mut r, Some(DType::F32), &Device::Cpu);
    let mut opt = Sgd::new(&start, SgdConfig::default()).unwrap();
    let e = common::one_line_error(opt.step(&grads(&mut r, &start, 1e30), 0.1));
    assert!(e.contains("overflow"), "{e}");
}

#[test]
fn bad_input_is_an_error() {
    let mut r = rng("optim bad_input_is_an_error");
    let start = params(&mut r, Some(DType::F32), &Device::Cpu);
    let g = grads(&mut r, &start, 1.0);
    let mut opt = AdamW::new(&start, AdamWConfig::default()).unwrap();
    common::one_line_error(opt.step(&g[1..], 0.1));
    let mut wrong_shape = g.clone();
    wrong_shape[0] = wrong_shape[0].reshape([3, 7]).unwrap();
    assert!(common::one_line_error(opt.step(&wrong_shape, 0.1)).contains("gradient 0"));
    let mut ids = g.clone();
    ids[2] = Tensor::from_u32(vec![1], [1], &Device::Cpu).unwrap();
    common::one_line_error(opt.step(&ids, 0.1));
    for lr in [-1.0, f32::NAN, f32::INFINITY] {
        common::one_line_error(opt.step(&g, lr));
    }
    assert_eq!(opt.steps(), 0, "no refused step counts");

    let sgd = |c: SgdConfig| Sgd::new(&start, c).map(|_| ());
    common::one_line_error(sgd(SgdConfig { nesterov: true, ..Default::default() }));
    common::one_line_error(sgd(SgdConfig { momentum: -0.5, ..Default::default() }));
    common::one_line_error(sgd(SgdConfig { weight_decay: f32::NAN, ..Default::default() }));
    common::one_line_error(sgd(SgdConfig { max_grad_norm: Some(0.0), ..Default::default() }));
    let adamw = |c: AdamWConfig| AdamW::new(&start, c).map(|_| ());
    common::one_line_error(adamw(AdamWConfig { beta1: 1.0, ..Default::default() }));
    common::one_line_error(adamw(AdamWConfig { beta2: -0.1, ..Default::default() }));
    common::one_line_error(adamw(AdamWConfig { eps: -1e-8, ..Default::default() }));
    common::one_line_error(adamw(AdamWConfig { max_grad_norm: Some(f32::INFINITY), ..Default::default() }));
    common::one_line_error(AdamW::new(&[], AdamWConfig::default()));
    common::one_line_error(AdamW::new(
        &[Tensor::from_u32(vec![1], [1], &Device::Cpu).unwrap()],
        AdamWConfig::default(),
    ));
}

#[test]
fn in_place_updates_need_sole_ownership() {
    let mut r = rng("optim in_place_updates_need_sole_ownership");
    let dev = Device::Cpu;
    let t = |r: &mut Rng| Tensor::from_f32(randn(r, 10), [10], &dev).unwrap();
    let (mut p, g, mut m, mut v) = (t(&mut r), t(&mut r), t(&mut r), t(&mut r));
    let step = AdamWStep::new(0.1, (0.9, 0.999), 1e-8, 0.0, 1, 1.0);
    let shared = p.clone();
    assert!(common::one_line_error(p.adamw_step(&g, &mut m, &mut v, &step)).contains("share"));
    assert_eq!(p.to_vec_f32().unwrap(), shared.to_vec_f32().unwrap());
    drop(shared);
    let moment_view = m.reshape([2, 5]).unwrap();
    common::one_line_error(p.adamw_step(&g, &mut m, &mut v, &step));
    drop(moment_view);
    p.adamw_step(&g, &mut m, &mut v, &step).unwrap();
    let sgd = SgdStep { lr: 0.1, momentum: 0.9, weight_decay: 0.0, nesterov: false, first_step: true, grad_scale: 1.0 };
    let mut short = Tensor::zeros([9], DType::F32, &dev).unwrap();
    common::one_line_error(p.sgd_step(&g, Some(&mut short), &sgd));
    let mut half = p.to_dtype(DType::BF16).unwrap();
    common::one_line_error(half.sgd_step(&g, None, &sgd));
}

#[test]
fn sum_squares_matches_f64() {
    let mut r = rng("optim sum_squares_matches_f64");
    for n in [0, 1, 7, 4097, (1 << 16) + 3] {
        let x = randn(&mut r, n);
        let want: f64 = x.iter().map(|&v| v as f64 * v as f64).sum();
        let got = Tensor::from_f32(x, [n], &Device::Cpu).unwrap().sum_squares().unwrap();
        assert_eq!(got.dims(), &[] as &[usize]);
        assert_close(&format!("sum_squares {n}"), &got.to_vec_f32().unwrap(), &[want], 1e-6);
    }
}

// ---- CUDA against the CPU ------------------------------------------------------------------------

/// kernels/README.md, "Tolerances": the updates are elementwise, the norm a reduction.
fn tolerance(dtype: DType, reduction: bool) -> f64 {
    match (dtype, reduction) {
        (DType::F32, false) => 1e-6,
        (DType::F32, true) => 1e-5,
        (DType::F16, false) => 1e-3,
        (DType::F16, true) => 2e-3,
        (_, false) => 8e-3,
        (_, true) => 1.6e-2,
    }
}

#[test]
fn cuda_matches_cpu() {
    let Some(gpu) = common::gpu("optim::cuda_matches_cpu") else { return };
    let mut r = rng("optim cuda_matches_cpu");
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        for n in [1, 7, 4097, (1 << 20) + 3] {
            let x = Tensor::from_f32(randn(&mut r, n), [n], &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
            let want = x.sum_squares().unwrap().to_vec_f32().unwrap()[0] as f64;
            let got = x.to_device(&gpu).unwrap().sum_squares().unwrap();
            assert_eq!((got.dims(), got.dtype()), (&[] as &[usize], DType::F32));
            assert_close(
                &format!("sum_squares {n} {dtype}"),
                &got.to_vec_f32().unwrap(),
                &[want],
                tolerance(dtype, true),
            );
        }
    }
    for (name, build) in builders() {
        for dtype in [Some(DType::F32), Some(DType::BF16), None] {
            let start = params(&mut r, dtype, &Device::Cpu);
            let on_gpu: Vec<Tensor> = start.iter().map(|p| p.to_device(&gpu).unwrap()).collect();
            let (mut cpu, mut cuda) = (build(&start), build(&on_gpu));
            for scale in GRAD_SCALES {
                let g = grads(&mut r, &start, scale);
                let g_gpu: Vec<Tensor> = g.iter().map(|t| t.to_device(&gpu).unwrap()).collect();
                let (a, b) = (cpu.step(&g, 0.05).unwrap(), cuda.step(&g_gpu, 0.05).unwrap());
                assert_eq!(a.clipped, b.clipped, "{name}: clipped");
                let norm_err = rel_err(&[b.grad_norm], &[a.grad_norm as f64]);
                assert!(norm_err <= tolerance(DType::F32, true), "{name}: grad norm {norm_err:.2e}");
            }
            let what = format!("cuda {name} {dtype:?}");
            assert_close(&format!("{what} master"), &master(&*cuda), &as_f64_vec(&master(&*cpu)), 1e-6);
            for (i, (c, g)) in cpu.params().unwrap().iter().zip(cuda.params().unwrap()).enumerate() {
                assert_eq!((g.dims(), g.dtype()), (c.dims(), c.dtype()));
                assert!(g.device().is_cuda(), "{what}: parameter {i} on the GPU");
                let tol = tolerance(c.dtype(), false);
                assert_close(&format!("{what} param {i}"), &g.to_vec_f32().unwrap(), &as_f64(c), tol);
            }
            for ((n, c), (_, g)) in cpu.state().unwrap().iter().zip(cuda.state().unwrap()) {
                assert_close(&format!("{what} state {n}"), &g.to_vec_f32().unwrap(), &as_f64(c), 1e-6);
            }
        }
    }
}

fn as_f64_vec(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}
