//! The normalisation backward ops, batch norm's training forward, the softmax backward and
//! cross-entropy on the CPU, against float64: each backward against central finite differences of
//! a naive f64 forward contracted with a random upstream gradient r (L = Σ f(x)·r), on fresh random
//! inputs at odd sizes, size 1 included.

mod common;

use common::{as_f64, assert_close, assert_close_to, finite_diff, randn, rng};
use foil::{DType, Device, Rng, Tensor};

const CPU: Device = Device::Cpu;
/// f32 backward against f64 finite differences (h = 1e-5: truncation ~1e-10, cancellation ~1e-11).
const TOL_GRAD: f64 = 1e-4;
/// f32 forward against f64.
const TOL_FORWARD: f64 = 1e-5;
const H: f64 = 1e-5;
const EPS: f32 = 1e-5;

fn t(data: &[f32], dims: &[usize]) -> Tensor {
    Tensor::from_f32(data.to_vec(), dims.to_vec(), &CPU).unwrap()
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(a, b)| a * b).sum()
}

/// Random normal values of `n` scaled by `scale` and shifted by `shift` (never all zero).
fn data(r: &mut Rng, n: usize, scale: f32, shift: f32) -> Vec<f32> {
    randn(r, n).iter().map(|v| v * scale + shift).collect()
}

/// Normalises `x[idx]` for each set of indices in `sets` (the f64 forward of every norm): mean and
/// biased variance over the set, then x̂·w[param(i)] + b[param(i)].
fn normalise64(
    x: &[f64],
    w: &[f64],
    b: &[f64],
    sets: &[Vec<usize>],
    param: impl Fn(usize) -> usize,
    eps: f32,
) -> Vec<f64> {
    let mut y = vec![0f64; x.len()];
    for set in sets {
        let m = set.len() as f64;
        let mean = set.iter().map(|&i| x[i]).sum::<f64>() / m;
        let var = set.iter().map(|&i| (x[i] - mean).powi(2)).sum::<f64>() / m;
        let rstd = 1.0 / (var + eps as f64).sqrt();
        for &i in set {
            y[i] = (x[i] - mean) * rstd * w[param(i)] + b[param(i)];
        }
    }
    y
}

/// The size of the terms of dx = rstd·(gw − mean(gw) − x̂·mean(gw·x̂)): max over the sets of
/// rstd·max |g·w|. dx is judged against it, since in a small set (two values) the terms cancel to a
/// far smaller gradient, which no f32 evaluation of the formula resolves relative to itself.
fn dx_scale(x: &[f32], w: &[f32], g: &[f32], sets: &[Vec<usize>], param: impl Fn(usize) -> usize) -> f64 {
    let mut scale = 0f64;
    for set in sets {
        let m = set.len() as f64;
        let mean = set.iter().map(|&i| x[i] as f64).sum::<f64>() / m;
        let var = set.iter().map(|&i| (x[i] as f64 - mean).powi(2)).sum::<f64>() / m;
        let rstd = 1.0 / (var + EPS as f64).sqrt();
        let gw = set.iter().fold(0f64, |a, &i| a.max((g[i] * w[param(i)]).abs() as f64));
        scale = scale.max(rstd * gw);
    }
    scale
}

/// Checks the three gradients of a normalisation `forward(x, w, b)` (f64) against `got` (dx, dw, db),
/// dx against at least `dx_scale`.
fn check_norm_grads(
    what: &str,
    (x, w, b, r): (&[f32], &[f32], &[f32], &[f32]),
    forward: impl Fn(&[f64], &[f64], &[f64]) -> Vec<f64>,
    (dx, dw, db): (Tensor, Tensor, Tensor),
    dx_scale: f64,
) {
    let (x, w, b, r) = (f64s(x), f64s(w), f64s(b), f64s(r));
    let want_dx = finite_diff(&x, H, |x| dot(&forward(x, &w, &b), &r));
    let want_dw = finite_diff(&w, H, |w| dot(&forward(&x, w, &b), &r));
    let want_db = finite_diff(&b, H, |b| dot(&forward(&x, &w, b), &r));
    assert_close_to(&format!("{what} dx"), &dx.to_vec_f32().unwrap(), &want_dx, dx_scale, TOL_GRAD);
    assert_close(&format!("{what} dweight"), &dw.to_vec_f32().unwrap(), &want_dw, TOL_GRAD);
    assert_close(&format!("{what} dbias"), &db.to_vec_f32().unwrap(), &want_db, TOL_GRAD);
}

#[test]
fn layer_norm_backward_matches_finite_differences() {
    let mut r = rng("layer_norm_backward");
    for dims in [vec![1, 5], vec![7, 13], vec![3, 4, 33], vec![4, 1], vec![9]] {
        let cols = *dims.last().unwrap();
        let n: usize = dims.iter().product();
        let (x, w, b, g) = (
            data(&mut r, n, 1.5, 0.3),
            data(&mut r, cols, 1.0, 1.0),
            data(&mut r, cols, 1.0, 0.0),
            data(&mut r, n, 1.0, 0.0),
        );
        let sets: Vec<Vec<usize>> = (0..n / cols).map(|row| (row * cols..(row + 1) * cols).collect()).collect();
        let forward = |x: &[f64], w: &[f64], b: &[f64]| normalise64(x, w, b, &sets, |i| i % cols, EPS);
        let xt = t(&x, &dims);
        let grads = xt.layer_norm_backward(&t(&w, &[cols]), &t(&g, &dims), EPS).unwrap();
        assert_eq!((grads.0.dims(), grads.1.dims(), grads.2.dims()), (&dims[..], &[cols][..], &[cols][..]));
        let scale = dx_scale(&x, &w, &g, &sets, |i| i % cols);
        check_norm_grads(&format!("layer_norm {dims:?}"), (&x, &w, &b, &g), forward, grads, scale);
    }
}

/// (n, c, spatial) of dims (n, c, ...).
fn ncs(dims: &[usize]) -> (usize, usize, usize) {
    (dims[0], dims[1], dims[2..].iter().product())
}

#[test]
fn group_norm_backward_matches_finite_differences() {
    let mut r = rng("group_norm_backward");
    let cases: [(&[usize], usize); 9] = [
        (&[2, 6, 5, 3], 3),
        (&[2, 6, 5, 3], 1),
        (&[2, 6, 5, 3], 6),
        (&[1, 4], 2),
        (&[3, 4], 4),
        (&[3, 5, 1, 1], 1),
        (&[1, 3, 7], 1),
        (&[1, 10, 3], 5),
        (&[2, 1, 2, 3], 1),
    ];
    for (dims, groups) in cases {
        let (n, c, sp) = ncs(dims);
        let len = n * c * sp;
        let (x, w, b, g) = (
            data(&mut r, len, 2.0, -0.5),
            data(&mut r, c, 1.0, 1.0),
            data(&mut r, c, 1.0, 0.0),
            data(&mut r, len, 1.0, 0.0),
        );
        let block = c / groups * sp;
        let sets: Vec<Vec<usize>> = (0..n * groups).map(|i| (i * block..(i + 1) * block).collect()).collect();
        let forward = |x: &[f64], w: &[f64], b: &[f64]| normalise64(x, w, b, &sets, |i| (i / sp) % c, EPS);
        let grads = t(&x, dims).group_norm_backward(groups, &t(&w, &[c]), &t(&g, dims), EPS).unwrap();
        let scale = dx_scale(&x, &w, &g, &sets, |i| (i / sp) % c);
        check_norm_grads(&format!("group_norm {dims:?} groups {groups}"), (&x, &w, &b, &g), forward, grads, scale);
    }
}

const BATCH_NORM_SHAPES: [&[usize]; 6] = [&[1, 3, 5, 4], &[4, 3], &[3, 5, 3, 2], &[2, 1, 7], &[5, 2, 1, 1], &[1, 2, 9]];

/// The sets of batch norm over (n, c, sp): per channel, every image's plane.
fn channel_sets(n: usize, c: usize, sp: usize) -> Vec<Vec<usize>> {
    (0..c)
        .map(|ch| (0..n).flat_map(|i| ((i * c + ch) * sp..(i * c + ch + 1) * sp).collect::<Vec<_>>()).collect())
        .collect()
}

#[test]
fn batch_norm_train_matches_f64() {
    let mut r = rng("batch_norm_train");
    for dims in BATCH_NORM_SHAPES {
        let (n, c, sp) = ncs(dims);
        let len = n * c * sp;
        // Shifted channels: the variance must not cancel against a large mean.
        let (x, w, b) = (data(&mut r, len, 1.5, 3.0), data(&mut r, c, 1.0, 1.0), data(&mut r, c, 1.0, 0.0));
        let bn = t(&x, dims).batch_norm_train(&t(&w, &[c]), &t(&b, &[c]), EPS).unwrap();
        let sets = channel_sets(n, c, sp);
        let x64 = f64s(&x);
        let mean: Vec<f64> = sets.iter().map(|s| s.iter().map(|&i| x64[i]).sum::<f64>() / s.len() as f64).collect();
        let var: Vec<f64> = sets
            .iter()
            .zip(&mean)
            .map(|(s, m)| s.iter().map(|&i| (x64[i] - m).powi(2)).sum::<f64>() / s.len() as f64)
            .collect();
        let want = normalise64(&x64, &f64s(&w), &f64s(&b), &sets, |i| (i / sp) % c, EPS);
        assert_eq!(
            (bn.mean.dims(), bn.mean.dtype(), bn.var.dims(), bn.var.dtype()),
            (&[c][..], DType::F32, &[c][..], DType::F32)
        );
        assert_close(&format!("batch_norm_train out {dims:?}"), &bn.out.to_vec_f32().unwrap(), &want, TOL_FORWARD);
        assert_close(&format!("batch_norm_train mean {dims:?}"), &bn.mean.to_vec_f32().unwrap(), &mean, TOL_FORWARD);
        assert_close(&format!("batch_norm_train var {dims:?}"), &bn.var.to_vec_f32().unwrap(), &var, TOL_FORWARD);
    }
}

#[test]
fn batch_norm_backward_matches_finite_differences() {
    let mut r = rng("batch_norm_backward");
    for dims in BATCH_NORM_SHAPES {
        let (n, c, sp) = ncs(dims);
        let len = n * c * sp;
        let (x, w, b, g) = (
            data(&mut r, len, 1.5, 0.5),
            data(&mut r, c, 1.0, 1.0),
            data(&mut r, c, 1.0, 0.0),
            data(&mut r, len, 1.0, 0.0),
        );
        let sets = channel_sets(n, c, sp);
        let forward = |x: &[f64], w: &[f64], b: &[f64]| normalise64(x, w, b, &sets, |i| (i / sp) % c, EPS);
        let (xt, wt) = (t(&x, dims), t(&w, &[c]));
        let bn = xt.batch_norm_train(&wt, &t(&b, &[c]), EPS).unwrap();
        let grads = xt.batch_norm_backward(&wt, &t(&g, dims), &bn.mean, &bn.var, EPS).unwrap();
        let scale = dx_scale(&x, &w, &g, &sets, |i| (i / sp) % c);
        check_norm_grads(&format!("batch_norm {dims:?}"), (&x, &w, &b, &g), forward, grads, scale);
    }
}

/// Softmax (or log-softmax) of each row of (rows, cols), in f64.
fn softmax64(x: &[f64], cols: usize, log: bool) -> Vec<f64> {
    x.chunks(cols)
        .flat_map(|row| {
            let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
            row.iter().map(move |v| if log { v - lse } else { (v - lse).exp() }).collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn softmax_backward_matches_finite_differences() {
    let mut r = rng("softmax_backward");
    for dims in [vec![1, 1], vec![5, 7], vec![2, 3, 33], vec![3, 1], vec![11]] {
        let cols = *dims.last().unwrap();
        let n: usize = dims.iter().product();
        let (x, g) = (data(&mut r, n, 2.0, 0.0), data(&mut r, n, 1.0, 0.0));
        for log in [false, true] {
            let xt = t(&x, &dims);
            let y = if log { xt.log_softmax(-1) } else { xt.softmax(-1) }.unwrap();
            let dx = y.softmax_backward(&t(&g, &dims), log).unwrap();
            assert_eq!(dx.dims(), &dims[..]);
            let g64 = f64s(&g);
            let want = finite_diff(&f64s(&x), H, |x| dot(&softmax64(x, cols, log), &g64));
            assert_close(&format!("softmax_backward {dims:?} log {log}"), &dx.to_vec_f32().unwrap(), &want, TOL_GRAD);
        }
    }
}

/// Per-row (1−ε)·(−log p_label) + ε·mean_j(−log p_j), in f64.
fn cross_entropy64(z: &[f64], labels: &[u32], classes: usize, eps: f64) -> Vec<f64> {
    let logp = softmax64(z, classes, true);
    logp.chunks(classes)
        .zip(labels)
        .map(|(lp, &l)| -(1.0 - eps) * lp[l as usize] - eps * lp.iter().sum::<f64>() / classes as f64)
        .collect()
}

#[test]
fn cross_entropy_matches_f64_and_finite_differences() {
    let mut r = rng("cross_entropy");
    for (rows, classes) in [(1, 1), (5, 7), (8, 10), (3, 1000), (2, 2)] {
        let z = data(&mut r, rows * classes, 3.0, 0.0);
        let labels: Vec<u32> = (0..rows).map(|_| r.below(classes as u32)).collect();
        let grad_rows = data(&mut r, rows, 1.0, 0.0);
        let (zt, lt) = (t(&z, &[rows, classes]), Tensor::from_u32(labels.clone(), [rows], &CPU).unwrap());
        for eps in [0.0f32, 0.1] {
            let what = format!("cross_entropy ({rows}, {classes}) ε {eps}");
            let loss = zt.cross_entropy(&lt, eps).unwrap();
            assert_eq!((loss.dims(), loss.dtype()), (&[rows][..], DType::F32));
            let want = cross_entropy64(&f64s(&z), &labels, classes, eps as f64);
            // Judged against the logits' size: a confident row's loss is a
            // difference of two such numbers, far below either.
            let logits = z.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
            assert_close_to(&what, &loss.to_vec_f32().unwrap(), &want, logits, TOL_FORWARD);

            let dz = zt.cross_entropy_backward(&lt, &t(&grad_rows, &[rows]), eps).unwrap();
            assert_eq!(dz.dims(), &[rows, classes]);
            let gr = f64s(&grad_rows);
            let want = finite_diff(&f64s(&z), H, |z| dot(&cross_entropy64(z, &labels, classes, eps as f64), &gr));
            // Judged against max |grad_rows| too: with one class the gradient is 0 everywhere.
            let scale = gr.iter().fold(0f64, |m, v| m.max(v.abs()));
            assert_close_to(&format!("{what} backward"), &dz.to_vec_f32().unwrap(), &want, scale, TOL_GRAD);
        }
    }
}

#[test]
fn bad_labels_and_shapes_are_errors() {
    let z = t(&[0.5, -1.0, 2.0, 0.0, 1.0, 3.0], &[2, 3]);
    let labels = |v: Vec<u32>| Tensor::from_u32(v, [2], &CPU).unwrap();
    let e = z.cross_entropy(&labels(vec![1, 3]), 0.0).unwrap_err().to_string();
    assert!(e.contains("label 3 of row 1"), "{e}");
    let e = z.cross_entropy_backward(&labels(vec![7, 0]), &t(&[1.0, 1.0], &[2]), 0.1).unwrap_err().to_string();
    assert!(e.contains("label 7 of row 0"), "{e}");
    assert!(z.cross_entropy(&labels(vec![0, 1]), 1.5).is_err(), "smoothing outside [0, 1]");
    assert!(z.cross_entropy(&t(&[0.0, 1.0], &[2]), 0.0).is_err(), "f32 labels");
    assert!(z.cross_entropy(&Tensor::from_u32(vec![0], [1], &CPU).unwrap(), 0.0).is_err(), "one label for two rows");
    assert!(z.cross_entropy_backward(&labels(vec![0, 1]), &t(&[1.0], &[1]), 0.0).is_err(), "grad_rows length");
    assert!(
        t(&[1.0, 2.0, 3.0], &[1, 3]).batch_norm_train(&t(&[1.0; 3], &[3]), &t(&[0.0; 3], &[3]), EPS).is_err(),
        "one value a channel"
    );
    let x = t(&[1.0, 2.0, 3.0, 4.0], &[2, 2]);
    assert!(x.batch_norm_train(&t(&[1.0; 3], &[3]), &t(&[0.0; 2], &[2]), EPS).is_err(), "weight length");
    let w = t(&[1.0; 2], &[2]);
    assert!(x.batch_norm_backward(&w, &x, &w.to_dtype(DType::F16).unwrap(), &w, EPS).is_err(), "f16 mean");
    assert!(x.group_norm_backward(3, &w, &x, EPS).is_err(), "groups not dividing c");
    assert!(x.layer_norm_backward(&t(&[1.0; 3], &[3]), &x, EPS).is_err(), "weight length");
    assert!(x.softmax_backward(&t(&[1.0; 2], &[2]), false).is_err(), "grad shape");
}

#[test]
fn half_inputs_give_half_gradients() {
    let mut r = rng("half norm grads");
    let x = t(&data(&mut r, 24, 1.0, 0.0), &[2, 4, 3]).to_dtype(DType::BF16).unwrap();
    let w = t(&data(&mut r, 4, 1.0, 1.0), &[4]).to_dtype(DType::BF16).unwrap();
    let b = w.scale(0.5).unwrap();
    let (dx, dw, db) = x.group_norm_backward(2, &w, &x, EPS).unwrap();
    assert_eq!((dx.dtype(), dw.dtype(), db.dtype()), (DType::BF16, DType::BF16, DType::BF16));
    let bn = x.batch_norm_train(&w, &b, EPS).unwrap();
    assert_eq!((bn.out.dtype(), bn.mean.dtype()), (DType::BF16, DType::F32));
    let (dx, dw, _) = x.batch_norm_backward(&w, &x, &bn.mean, &bn.var, EPS).unwrap();
    assert_eq!((dx.dtype(), dw.dtype()), (DType::BF16, DType::BF16));
    let dz = x.reshape([6, 4]).unwrap().cross_entropy_backward(
        &Tensor::from_u32(vec![0, 1, 2, 3, 0, 1], [6], &CPU).unwrap(),
        &t(&[1.0; 6], &[6]),
        0.1,
    );
    assert_eq!(dz.unwrap().dtype(), DType::BF16);
    // The backward of a bf16 input is the f32 backward of its values, rounded once.
    let (dx32, ..) = x
        .to_dtype(DType::F32)
        .unwrap()
        .batch_norm_backward(&w.to_dtype(DType::F32).unwrap(), &x.to_dtype(DType::F32).unwrap(), &bn.mean, &bn.var, EPS)
        .unwrap();
    assert_close("bf16 batch_norm dx", &dx.to_vec_f32().unwrap(), &as_f64(&dx32), 8e-3);
}
