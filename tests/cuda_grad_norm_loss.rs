//! The normalisation backward ops, batch norm's training forward, the softmax backward and
//! cross-entropy on the GPU against the CPU, in f32, f16 and bf16, on fresh random inputs at several
//! shapes (odd sizes, size 1, every kernel path: vectorised and scalar, group norm's warp- and
//! block-per-channel sums, batch norm split into several parts a channel), with the "reductions,
//! norms, softmax" tolerances of kernels/README.md. Inputs are rounded to the dtype first, so both
//! backends see the same values. Without a usable GPU each test prints one line saying it was
//! skipped, and why.

mod common;

use common::{gpu, randn, rng, tolerance, Class};
use foil::{DType, Device, Rng, Tensor};

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];
const EPS: f32 = 1e-5;

/// Random normal data of `dims`·scale + shift rounded to `dtype`, as a CPU f32 tensor and a GPU
/// tensor of `dtype`.
fn pair(r: &mut Rng, dims: &[usize], dtype: DType, gpu: &Device, scale: f32, shift: f32) -> (Tensor, Tensor) {
    let data = randn(r, dims.iter().product()).iter().map(|v| v * scale + shift).collect();
    let rounded = Tensor::from_f32(data, dims.to_vec(), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
    (rounded.to_dtype(DType::F32).unwrap(), rounded.to_device(gpu).unwrap())
}

/// Asserts the GPU result `got` (in `dtype`) matches the CPU's `want`, judged against at least `scale`.
fn check(what: &str, want: &Tensor, got: &Tensor, dtype: DType, scale: f64) {
    assert_eq!(want.dims(), got.dims(), "{what}: shapes differ");
    assert_eq!(got.dtype(), dtype, "{what}: dtype");
    common::assert_close_to(
        &format!("{what} {dtype:?}"),
        &got.to_vec_f32().unwrap(),
        &common::as_f64(want),
        scale,
        tolerance(dtype, Class::Reduction),
    );
}

/// The scales a normalisation's gradients are judged against: dx's terms, rstd·max |g·w| (they
/// cancel to far less in small sets), and the largest Σ|g·x̂| and Σ|g| of a parameter (the
/// parameter gradients are sums that may cancel).
struct Scales {
    dx: f64,
    dweight: f64,
    dbias: f64,
}

/// Scales of a normalisation over `sets` of x's indices, with parameter `param(i)` of element i.
fn scales(x: &Tensor, w: &Tensor, g: &Tensor, sets: &[Vec<usize>], param: impl Fn(usize) -> usize) -> Scales {
    let (x, w, g) = (x.to_vec_f32().unwrap(), w.to_vec_f32().unwrap(), g.to_vec_f32().unwrap());
    let (mut abs_gx, mut abs_g) = (vec![0f64; w.len()], vec![0f64; w.len()]);
    let mut dx = 0f64;
    for set in sets {
        let m = set.len() as f64;
        let mean = set.iter().map(|&i| x[i] as f64).sum::<f64>() / m;
        let var = set.iter().map(|&i| (x[i] as f64 - mean).powi(2)).sum::<f64>() / m;
        let rstd = 1.0 / (var + EPS as f64).sqrt();
        for &i in set {
            let (gi, k) = (g[i] as f64, param(i));
            abs_gx[k] += (gi * (x[i] as f64 - mean) * rstd).abs();
            abs_g[k] += gi.abs();
            dx = dx.max(rstd * (gi * w[k] as f64).abs());
        }
    }
    let max = |v: &[f64]| v.iter().fold(0f64, |a, &b| a.max(b));
    Scales { dx, dweight: max(&abs_gx), dbias: max(&abs_g) }
}

fn check_grads(what: &str, want: (Tensor, Tensor, Tensor), got: (Tensor, Tensor, Tensor), dtype: DType, s: &Scales) {
    check(&format!("{what} dx"), &want.0, &got.0, dtype, s.dx);
    check(&format!("{what} dweight"), &want.1, &got.1, dtype, s.dweight);
    check(&format!("{what} dbias"), &want.2, &got.2, dtype, s.dbias);
}

#[test]
fn layer_norm_backward() {
    let Some(dev) = gpu("cuda_grad_norm_loss::layer_norm_backward") else { return };
    let mut r = rng("cuda layer_norm_backward");
    for dtype in DTYPES {
        // (300, 64) and (2000, 33) split rows into several parts for the column sums.
        for (rows, cols) in [(1, 1), (7, 13), (15, 768), (3, 1027), (300, 64), (2000, 33)] {
            let dims = [rows, cols];
            let (cx, gx) = pair(&mut r, &dims, dtype, &dev, 2.0, 0.5);
            let (cw, gw) = pair(&mut r, &[cols], dtype, &dev, 1.0, 1.0);
            let (cg, gg) = pair(&mut r, &dims, dtype, &dev, 1.0, 0.0);
            let want = cx.layer_norm_backward(&cw, &cg, EPS).unwrap();
            let got = gx.layer_norm_backward(&gw, &gg, EPS).unwrap();
            let sets: Vec<Vec<usize>> = (0..rows).map(|row| (row * cols..(row + 1) * cols).collect()).collect();
            let s = scales(&cx, &cw, &cg, &sets, |i| i % cols);
            check_grads(&format!("layer_norm_backward {dims:?}"), want, got, dtype, &s);
        }
    }
}

/// (n, c, spatial) of dims (n, c, ...).
fn ncs(dims: &[usize]) -> (usize, usize, usize) {
    (dims[0], dims[1], dims[2..].iter().product())
}

#[test]
fn group_norm_backward() {
    let Some(dev) = gpu("cuda_grad_norm_loss::group_norm_backward") else { return };
    let mut r = rng("cuda group_norm_backward");
    let cases: [(&[usize], usize); 7] = [
        (&[1, 1, 1, 1], 1),
        (&[2, 6, 5, 3], 3),   // warp a channel (short channels), scalar
        (&[2, 32, 8, 8], 4),  // warp a channel (8 a group), vectorised
        (&[2, 4, 32, 32], 2), // block a channel, vectorised
        (&[1, 3, 17, 19], 1), // block a channel, scalar
        (&[3, 5], 5),         // spatial 1: every set one value
        (&[1, 320, 24, 24], 32),
    ];
    for dtype in DTYPES {
        for (dims, groups) in cases {
            let (n, c, sp) = ncs(dims);
            let (cx, gx) = pair(&mut r, dims, dtype, &dev, 2.0, -0.5);
            let (cw, gw) = pair(&mut r, &[c], dtype, &dev, 1.0, 1.0);
            let (cg, gg) = pair(&mut r, dims, dtype, &dev, 1.0, 0.0);
            let want = cx.group_norm_backward(groups, &cw, &cg, EPS).unwrap();
            let got = gx.group_norm_backward(groups, &gw, &gg, EPS).unwrap();
            let block = c / groups * sp;
            let sets: Vec<Vec<usize>> = (0..n * groups).map(|i| (i * block..(i + 1) * block).collect()).collect();
            let s = scales(&cx, &cw, &cg, &sets, |i| (i / sp) % c);
            check_grads(&format!("group_norm_backward {dims:?} groups {groups}"), want, got, dtype, &s);
        }
    }
}

/// Shapes for batch norm: n = 1 with spatial > 1, spatial 1, odd spatial (scalar path) and
/// multiples of 8 (packs), and channels long enough to be split into several parts.
const BATCH_NORM_SHAPES: [&[usize]; 7] =
    [&[1, 3, 5, 4], &[4, 3], &[3, 5, 3, 2], &[16, 8, 33, 31], &[8, 4, 32, 32], &[64, 2, 7, 7], &[2, 300, 3, 3]];

fn channel_sets(n: usize, c: usize, sp: usize) -> Vec<Vec<usize>> {
    (0..c).map(|ch| (0..n).flat_map(|i| (i * c + ch) * sp..(i * c + ch + 1) * sp).collect()).collect()
}

#[test]
fn batch_norm_train_and_backward() {
    let Some(dev) = gpu("cuda_grad_norm_loss::batch_norm_train_and_backward") else { return };
    let mut r = rng("cuda batch_norm");
    for dtype in DTYPES {
        for dims in BATCH_NORM_SHAPES {
            let (n, c, sp) = ncs(dims);
            let (cx, gx) = pair(&mut r, dims, dtype, &dev, 1.5, 2.0);
            let (cw, gw) = pair(&mut r, &[c], dtype, &dev, 1.0, 1.0);
            let (cb, gb) = pair(&mut r, &[c], dtype, &dev, 1.0, 0.0);
            let (cg, gg) = pair(&mut r, dims, dtype, &dev, 1.0, 0.0);
            let what = format!("batch_norm {dims:?}");
            let want = cx.batch_norm_train(&cw, &cb, EPS).unwrap();
            let got = gx.batch_norm_train(&gw, &gb, EPS).unwrap();
            check(&format!("{what} out"), &want.out, &got.out, dtype, 0.0);
            // The statistics are f32 from the same rounded inputs in every dtype.
            for (name, w, g) in [("mean", &want.mean, &got.mean), ("var", &want.var, &got.var)] {
                check(&format!("{what} {name} ({dtype:?} input)"), w, g, DType::F32, 0.0);
            }
            // Both backwards from the CPU's statistics, so only the backward is compared.
            let (mean, var) = (want.mean.to_device(&dev).unwrap(), want.var.to_device(&dev).unwrap());
            let want = cx.batch_norm_backward(&cw, &cg, &want.mean, &want.var, EPS).unwrap();
            let got = gx.batch_norm_backward(&gw, &gg, &mean, &var, EPS).unwrap();
            let s = scales(&cx, &cw, &cg, &channel_sets(n, c, sp), |i| (i / sp) % c);
            check_grads(&format!("{what} backward"), want, got, dtype, &s);
        }
    }
}

#[test]
fn softmax_backward() {
    let Some(dev) = gpu("cuda_grad_norm_loss::softmax_backward") else { return };
    let mut r = rng("cuda softmax_backward");
    for dtype in DTYPES {
        for dims in [vec![1, 1], vec![7, 13], vec![4, 1000], vec![3, 4099], vec![2, 8, 77]] {
            let (cx, _) = pair(&mut r, &dims, DType::F32, &dev, 2.0, 0.0);
            let (cg, gg) = pair(&mut r, &dims, dtype, &dev, 1.0, 0.0);
            for log in [false, true] {
                let y = if log { cx.log_softmax(-1) } else { cx.softmax(-1) }.unwrap();
                let (cy, gy) = (
                    y.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap(),
                    y.to_dtype(dtype).unwrap().to_device(&dev).unwrap(),
                );
                let want = cy.softmax_backward(&cg, log).unwrap();
                let got = gy.softmax_backward(&gg, log).unwrap();
                check(&format!("softmax_backward {dims:?} log {log}"), &want, &got, dtype, 0.0);
            }
        }
    }
}

#[test]
fn cross_entropy() {
    let Some(dev) = gpu("cuda_grad_norm_loss::cross_entropy") else { return };
    let mut r = rng("cuda cross_entropy");
    for dtype in DTYPES {
        for (rows, classes) in [(1, 1), (5, 7), (64, 1000), (3, 10007), (33, 2)] {
            let (cz, gz) = pair(&mut r, &[rows, classes], dtype, &dev, 3.0, 0.0);
            let labels: Vec<u32> = (0..rows).map(|_| r.below(classes as u32)).collect();
            let cl = Tensor::from_u32(labels, [rows], &Device::Cpu).unwrap();
            let gl = cl.to_device(&dev).unwrap();
            let (cgr, ggr) = pair(&mut r, &[rows], DType::F32, &dev, 1.0, 0.0);
            for eps in [0.0f32, 0.1] {
                let what = format!("cross_entropy ({rows}, {classes}) ε {eps}");
                // The loss is f32 from the same rounded logits in every dtype.
                let (want, got) = (cz.cross_entropy(&cl, eps).unwrap(), gz.cross_entropy(&gl, eps).unwrap());
                check(&format!("{what} ({dtype:?} logits)"), &want, &got, DType::F32, 0.0);
                let want = cz.cross_entropy_backward(&cl, &cgr, eps).unwrap();
                let got = gz.cross_entropy_backward(&gl, &ggr, eps).unwrap();
                check(&format!("{what} backward"), &want, &got, dtype, 0.0);
            }
        }
    }
}

#[test]
fn cross_entropy_out_of_range_label_gives_nan_row() {
    let Some(dev) = gpu("cuda_grad_norm_loss::cross_entropy_out_of_range_label_gives_nan_row") else { return };
    let z = Tensor::from_f32(vec![0.5, -1.0, 2.0, 0.0, 1.0, 3.0], [2, 3], &dev).unwrap();
    let labels = Tensor::from_u32(vec![1, 3], [2], &dev).unwrap();
    let loss = z.cross_entropy(&labels, 0.1).unwrap().to_vec_f32().unwrap();
    assert!(loss[0].is_finite() && loss[1].is_nan(), "{loss:?}");
    let grad_rows = Tensor::from_f32(vec![1.0, 1.0], [2], &dev).unwrap();
    let dz = z.cross_entropy_backward(&labels, &grad_rows, 0.1).unwrap().to_vec_f32().unwrap();
    assert!(dz[..3].iter().all(|v| v.is_finite()) && dz[3..].iter().all(|v| v.is_nan()), "{dz:?}");
}

#[test]
fn parameter_gradients_are_deterministic() {
    let Some(dev) = gpu("cuda_grad_norm_loss::parameter_gradients_are_deterministic") else { return };
    let mut r = rng("cuda norm grad determinism");
    let dims = [16, 8, 33, 31];
    let (_, x) = pair(&mut r, &dims, DType::F32, &dev, 1.0, 0.0);
    let (_, w) = pair(&mut r, &[8], DType::F32, &dev, 1.0, 1.0);
    let (_, g) = pair(&mut r, &dims, DType::F32, &dev, 1.0, 0.0);
    let bn = x.batch_norm_train(&w, &w, EPS).unwrap();
    let run = || {
        let (dx, dw, db) = x.batch_norm_backward(&w, &g, &bn.mean, &bn.var, EPS).unwrap();
        let (_, gw, gb) = x.group_norm_backward(4, &w, &g, EPS).unwrap();
        [dx, dw, db, gw, gb].map(|t| t.to_vec_f32().unwrap())
    };
    assert!(run() == run(), "two runs differ");
}
