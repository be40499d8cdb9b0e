//! The backward ops of conv2d and of the poolings on the CPU, in f32, against float64 central
//! finite differences of the forward written naively here (L = Σ f(x)·r with a random upstream
//! gradient r), and the new pooling forwards against naive f64 references. Larger conv shapes,
//! too large for finite differences, are checked against the naive f64 adjoint, which the small
//! cases check against finite differences first.

mod common;

use common::{finite_diff, randn, rel_err, rng};
use foil::{Conv2dOptions, DType, Device, Rng, Tensor};

/// Finite-difference step: every loss here is linear or piecewise linear in its input, so the
/// central difference is exact up to rounding (~1e-16·|L| / h, about 1e-9 here).
const H: f64 = 1e-5;
/// f32 results against f64 references: the f32 sums carry ~1e-6 relative error.
const TOL: f64 = 1e-4;

/// Asserts `rel_err(got, want) <= tol`, naming the case, and returns the error.
fn check(what: &str, got: &[f32], want: &[f64], tol: f64) -> f64 {
    let e = rel_err(got, want);
    assert!(e <= tol, "{what}: relative error {e:.3e} > {tol:.0e}");
    e
}

/// Prints the worst error of a test (seen with --nocapture).
fn report(test: &str, worst: f64) {
    eprintln!("{test}: worst relative error {worst:.2e}");
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn cpu(data: &[f32], dims: &[usize]) -> Tensor {
    Tensor::from_f32(data.to_vec(), dims.to_vec(), &Device::Cpu).unwrap()
}

// ---- conv2d -------------------------------------------------------------------------

fn opt(stride: usize, padding: usize, dilation: usize, groups: usize) -> Conv2dOptions {
    Conv2dOptions { stride: (stride, stride), padding: (padding, padding), dilation: (dilation, dilation), groups }
}

/// One convolution: input dims, weight dims, options.
#[derive(Clone, Copy, Debug)]
struct Conv {
    x: [usize; 4],
    w: [usize; 4],
    opt: Conv2dOptions,
}

impl Conv {
    fn out(&self) -> [usize; 4] {
        let size = |s: usize, k: usize, st: usize, p: usize, d: usize| (s + 2 * p - d * (k - 1) - 1) / st + 1;
        let o = &self.opt;
        [
            self.x[0],
            self.w[0],
            size(self.x[2], self.w[2], o.stride.0, o.padding.0, o.dilation.0),
            size(self.x[3], self.w[3], o.stride.1, o.padding.1, o.dilation.1),
        ]
    }

    /// Calls `f(x index, w index, out index)` for every product of the forward.
    fn each_tap(&self, mut f: impl FnMut(usize, usize, usize)) {
        let ([n, c_in, h, w], [c_out, cig, kh, kw], [_, _, ho, wo]) = (self.x, self.w, self.out());
        let o = &self.opt;
        let cog = c_out / o.groups;
        for img in 0..n {
            for co in 0..c_out {
                let g = co / cog;
                for oy in 0..ho {
                    for ox in 0..wo {
                        let out = ((img * c_out + co) * ho + oy) * wo + ox;
                        for ci in 0..cig {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy = (oy * o.stride.0 + ky * o.dilation.0) as isize - o.padding.0 as isize;
                                    let ix = (ox * o.stride.1 + kx * o.dilation.1) as isize - o.padding.1 as isize;
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    let xi = ((img * c_in + g * cig + ci) * h + iy as usize) * w + ix as usize;
                                    let wi = ((co * cig + ci) * kh + ky) * kw + kx;
                                    f(xi, wi, out);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    fn forward(&self, x: &[f64], w: &[f64]) -> Vec<f64> {
        let mut y = vec![0.0; self.out().iter().product()];
        self.each_tap(|xi, wi, o| y[o] += x[xi] * w[wi]);
        y
    }

    /// The naive adjoint: (dL/dx, dL/dW) for upstream gradient r.
    fn grads(&self, x: &[f64], w: &[f64], r: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let (mut dx, mut dw) = (vec![0.0; x.len()], vec![0.0; w.len()]);
        self.each_tap(|xi, wi, o| {
            dx[xi] += w[wi] * r[o];
            dw[wi] += x[xi] * r[o];
        });
        (dx, dw)
    }

    /// foil's (dL/dx, dL/dW) on the CPU in f32.
    fn foil_grads(&self, x: &[f32], w: &[f32], r: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let (xt, wt, rt) = (cpu(x, &self.x), cpu(w, &self.w), cpu(r, &self.out()));
        assert_eq!(xt.conv2d(&wt, None, self.opt).unwrap().dims(), self.out(), "{self:?}");
        let dx = rt.conv2d_input_grad(&wt, &self.x, self.opt).unwrap();
        let dw = rt.conv2d_weight_grad(&xt, &self.w, self.opt).unwrap();
        assert_eq!((dx.dims(), dw.dims()), (&self.x[..], &self.w[..]), "{self:?}");
        (dx.to_vec_f32().unwrap(), dw.to_vec_f32().unwrap())
    }

    fn inputs(&self, rng: &mut Rng) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let numel = |d: [usize; 4]| d.iter().product();
        (randn(rng, numel(self.x)), randn(rng, numel(self.w)), randn(rng, numel(self.out())))
    }
}

/// Small cases for finite differences: the shared conv cases plus the ResNet stem, odd maps
/// and batch 3.
fn small_convs() -> Vec<Conv> {
    let mut cases: Vec<Conv> = common::conv_cases().into_iter().map(|(x, w, opt, _)| Conv { x, w, opt }).collect();
    cases.extend([
        Conv { x: [1, 3, 15, 13], w: [4, 3, 7, 7], opt: opt(2, 3, 1, 1) },
        Conv { x: [3, 2, 7, 5], w: [3, 2, 3, 3], opt: opt(2, 1, 1, 1) },
        Conv { x: [1, 4, 7, 5], w: [4, 2, 3, 3], opt: opt(1, 2, 2, 2) },
        Conv { x: [3, 6, 7, 5], w: [6, 1, 3, 3], opt: opt(2, 1, 1, 6) },
        Conv { x: [3, 5, 7, 5], w: [4, 5, 1, 1], opt: opt(1, 0, 1, 1) },
        Conv { x: [1, 4, 7, 5], w: [6, 4, 1, 1], opt: opt(2, 0, 1, 1) },
        Conv { x: [2, 3, 5, 4], w: [2, 3, 5, 5], opt: opt(1, 2, 1, 1) },
    ]);
    cases
}

#[test]
fn conv_grads_match_finite_differences() {
    let mut rng = rng("conv_grads_match_finite_differences");
    let mut worst = 0f64;
    for c in small_convs() {
        let (x, w, r) = c.inputs(&mut rng);
        let (x64, w64, r64) = (f64s(&x), f64s(&w), f64s(&r));
        let fd_x = finite_diff(&x64, H, |x| dot(&c.forward(x, &w64), &r64));
        let fd_w = finite_diff(&w64, H, |w| dot(&c.forward(&x64, w), &r64));
        let (dx, dw) = c.foil_grads(&x, &w, &r);
        worst = worst.max(check(&format!("{c:?} dx"), &dx, &fd_x, TOL));
        worst = worst.max(check(&format!("{c:?} dW"), &dw, &fd_w, TOL));
        // The naive adjoint the large cases use.
        let (ax, aw) = c.grads(&x64, &w64, &r64);
        let as32 = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<_>>();
        worst = worst.max(check(&format!("{c:?} adjoint dx"), &as32(&ax), &fd_x, 1e-6));
        worst = worst.max(check(&format!("{c:?} adjoint dW"), &as32(&aw), &fd_w, 1e-6));
    }
    report("conv_grads_match_finite_differences", worst);
}

/// Shapes that take the CPU's other paths: unrolled columns over COLS_MAX (bands of output
/// rows), several images to one GEMM, a 1×1 conv straight through the GEMM, groups in parallel.
#[test]
fn large_conv_grads_match_the_naive_adjoint() {
    let mut rng = rng("large_conv_grads_match_the_naive_adjoint");
    let mut worst = 0f64;
    let cases = [
        Conv { x: [1, 256, 40, 40], w: [8, 256, 3, 3], opt: opt(1, 1, 1, 1) },
        Conv { x: [2, 64, 33, 35], w: [16, 16, 3, 3], opt: opt(1, 1, 1, 4) },
        Conv { x: [5, 64, 7, 7], w: [32, 64, 3, 3], opt: opt(1, 1, 1, 1) },
        Conv { x: [2, 300, 70, 70], w: [16, 300, 1, 1], opt: opt(1, 0, 1, 1) },
        Conv { x: [4, 32, 28, 28], w: [32, 1, 3, 3], opt: opt(2, 1, 1, 32) },
        Conv { x: [3, 3, 64, 64], w: [16, 3, 7, 7], opt: opt(2, 3, 1, 1) },
    ];
    for c in cases {
        let (x, w, r) = c.inputs(&mut rng);
        let (want_x, want_w) = c.grads(&f64s(&x), &f64s(&w), &f64s(&r));
        let (dx, dw) = c.foil_grads(&x, &w, &r);
        worst = worst.max(check(&format!("{c:?} dx"), &dx, &want_x, TOL));
        worst = worst.max(check(&format!("{c:?} dW"), &dw, &want_w, TOL));
    }
    report("large_conv_grads_match_the_naive_adjoint", worst);
}

#[test]
fn conv_grads_keep_the_dtype() {
    let mut rng = rng("conv_grads_keep_the_dtype");
    let c = Conv { x: [2, 4, 9, 7], w: [6, 2, 3, 3], opt: opt(2, 1, 1, 2) };
    let (x, w, r) = c.inputs(&mut rng);
    for dtype in [DType::F16, DType::BF16] {
        let t = |v: &[f32], d: &[usize]| cpu(v, d).to_dtype(dtype).unwrap();
        let (xt, wt, rt) = (t(&x, &c.x), t(&w, &c.w), t(&r, &c.out()));
        let dx = rt.conv2d_input_grad(&wt, &c.x, c.opt).unwrap();
        let dw = rt.conv2d_weight_grad(&xt, &c.w, c.opt).unwrap();
        assert_eq!((dx.dtype(), dw.dtype()), (dtype, dtype));
        // The same as f32 on the rounded inputs, rounded once at the end.
        let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let want_x = f(&rt).conv2d_input_grad(&f(&wt), &c.x, c.opt).unwrap().to_dtype(dtype).unwrap();
        let want_w = f(&rt).conv2d_weight_grad(&f(&xt), &c.w, c.opt).unwrap().to_dtype(dtype).unwrap();
        assert_eq!(dx.to_host().unwrap(), want_x.to_host().unwrap(), "{dtype:?} dx");
        assert_eq!(dw.to_host().unwrap(), want_w.to_host().unwrap(), "{dtype:?} dW");
    }
}

#[test]
fn conv_grad_shape_errors() {
    let dev = Device::Cpu;
    let z = |d: &[usize]| Tensor::zeros(d.to_vec(), DType::F32, &dev).unwrap();
    let (g, w, x) = (z(&[1, 4, 5, 5]), z(&[4, 3, 3, 3]), z(&[1, 3, 7, 7]));
    let o = opt(1, 0, 1, 1);
    assert!(g.conv2d_input_grad(&w, &[1, 3, 7, 7], o).is_ok());
    assert!(g.conv2d_weight_grad(&x, &[4, 3, 3, 3], o).is_ok());
    // Upstream gradient of the wrong size, wrong input channels, groups that do not divide,
    // 3-D input dims, a kernel larger than the input, mixed dtypes.
    assert!(z(&[1, 4, 6, 5]).conv2d_input_grad(&w, &[1, 3, 7, 7], o).is_err());
    assert!(g.conv2d_input_grad(&w, &[1, 2, 7, 7], o).is_err());
    assert!(g.conv2d_weight_grad(&x, &[4, 3, 3, 3], opt(1, 0, 1, 2)).is_err());
    assert!(g.conv2d_input_grad(&w, &[3, 7, 7], o).is_err());
    assert!(g.conv2d_weight_grad(&z(&[1, 3, 2, 2]), &[4, 3, 3, 3], o).is_err());
    assert!(g.conv2d_weight_grad(&x.to_dtype(DType::F16).unwrap(), &[4, 3, 3, 3], o).is_err());
    assert!(g.conv2d_input_grad(&w, &[1, 3, 7, 7], opt(0, 0, 1, 1)).is_err());
}

// ---- pooling ------------------------------------------------------------------------

/// A square-window pooling: input dims (n, c, h, w), kernel, stride, padding.
type Pool = ([usize; 4], usize, usize, usize);

fn pool_cases() -> Vec<Pool> {
    vec![
        ([1, 1, 1, 1], 1, 1, 0),
        ([2, 3, 9, 7], 3, 2, 1),
        // ResNet's stem pool on an even and an odd map.
        ([1, 4, 8, 8], 3, 2, 1),
        ([2, 2, 7, 7], 3, 2, 1),
        ([1, 2, 10, 5], 2, 1, 1),
        ([1, 2, 6, 5], 3, 1, 1),
        ([1, 2, 17, 19], 5, 3, 2),
        ([1, 3, 4, 6], 4, 4, 0),
        ([3, 1, 5, 5], 2, 2, 0),
    ]
}

fn pool_out(&(d, k, s, p): &Pool) -> [usize; 4] {
    [d[0], d[1], (d[2] + 2 * p - k) / s + 1, (d[3] + 2 * p - k) / s + 1]
}

/// The naive pooling over the padded input: `reduce` gets the window's values, padding
/// included as None.
fn pool_f64(x: &[f64], pool: &Pool, reduce: impl Fn(&[Option<f64>]) -> f64) -> Vec<f64> {
    let (d, k, s, p) = *pool;
    let [_, _, ho, wo] = pool_out(pool);
    let (h, w) = (d[2], d[3]);
    let mut out = vec![];
    for plane in 0..d[0] * d[1] {
        for oy in 0..ho {
            for ox in 0..wo {
                let mut window = vec![];
                for i in 0..k {
                    for j in 0..k {
                        let (y, x_) = ((oy * s + i) as isize - p as isize, (ox * s + j) as isize - p as isize);
                        let inside = y >= 0 && x_ >= 0 && y < h as isize && x_ < w as isize;
                        window.push(inside.then(|| x[(plane * h + y as usize) * w + x_ as usize]));
                    }
                }
                out.push(reduce(&window));
            }
        }
    }
    out
}

fn max_f64(window: &[Option<f64>]) -> f64 {
    window.iter().flatten().fold(f64::NEG_INFINITY, |m, &v| m.max(v))
}

fn avg_f64(window: &[Option<f64>]) -> f64 {
    window.iter().map(|v| v.unwrap_or(0.0)).sum::<f64>() / window.len() as f64
}

/// `n` values in random order, no two within 0.01 of each other: a window's
/// maximum stays put under a step of ±h, so its derivative is exact. (Plain
/// normals sometimes land within h and the difference then splits between two.)
fn spaced(rng: &mut Rng, n: usize) -> Vec<f32> {
    let keys = randn(rng, n);
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| keys[a].total_cmp(&keys[b]));
    let mut x = vec![0f32; n];
    for (rank, &i) in order.iter().enumerate() {
        x[i] = (rank as f32 - n as f32 / 2.0) * 0.01;
    }
    x
}

#[test]
fn max_pool2d_backward_matches_finite_differences() {
    let mut rng = rng("max_pool2d_backward_matches_finite_differences");
    let mut worst = 0f64;
    for pool in pool_cases() {
        let (d, k, s, p) = pool;
        let out = pool_out(&pool);
        let (x, r) = (spaced(&mut rng, d.iter().product()), randn(&mut rng, out.iter().product()));
        let r64 = f64s(&r);
        let fd = finite_diff(&f64s(&x), H, |x| dot(&pool_f64(x, &pool, max_f64), &r64));
        let got = cpu(&r, &out).max_pool2d_backward(&cpu(&x, &d), k, s, p).unwrap();
        assert_eq!(got.dims(), d);
        worst = worst.max(check(&format!("max_pool2d_backward {pool:?}"), &got.to_vec_f32().unwrap(), &fd, TOL));
    }
    report("max_pool2d_backward_matches_finite_differences", worst);
}

#[test]
fn max_pool2d_backward_picks_the_first_maximum() {
    let dev = Device::Cpu;
    // One 2×2 window with a tie: the first in row-major order takes the gradient, as PyTorch.
    let x = Tensor::from_f32(vec![1.0, 3.0, 3.0, 2.0], [1, 1, 2, 2], &dev).unwrap();
    let g = Tensor::from_f32(vec![5.0], [1, 1, 1, 1], &dev).unwrap();
    assert_eq!(g.max_pool2d_backward(&x, 2, 1, 0).unwrap().to_vec_f32().unwrap(), [0.0, 5.0, 0.0, 0.0]);
    // Overlapping windows that pick the same input add up there.
    let x = Tensor::from_f32(vec![0.0, 9.0, 0.0, 1.0, 2.0, 1.0], [1, 1, 2, 3], &dev).unwrap();
    let g = Tensor::from_f32(vec![1.5, 2.5], [1, 1, 1, 2], &dev).unwrap();
    assert_eq!(g.max_pool2d_backward(&x, 2, 1, 0).unwrap().to_vec_f32().unwrap(), [0.0, 4.0, 0.0, 0.0, 0.0, 0.0]);
}

#[test]
fn avg_pool2d_matches_the_naive_reference() {
    let mut rng = rng("avg_pool2d_matches_the_naive_reference");
    let mut worst = 0f64;
    for pool in pool_cases() {
        let (d, k, s, p) = pool;
        let x = randn(&mut rng, d.iter().product());
        let got = cpu(&x, &d).avg_pool2d(k, s, p).unwrap();
        assert_eq!(got.dims(), pool_out(&pool));
        let want = pool_f64(&f64s(&x), &pool, avg_f64);
        worst = worst.max(check(&format!("avg_pool2d {pool:?}"), &got.to_vec_f32().unwrap(), &want, 1e-6));
    }
    report("avg_pool2d_matches_the_naive_reference", worst);
}

#[test]
fn avg_pool2d_backward_matches_finite_differences() {
    let mut rng = rng("avg_pool2d_backward_matches_finite_differences");
    let mut worst = 0f64;
    for pool in pool_cases() {
        let (d, k, s, p) = pool;
        let out = pool_out(&pool);
        let (x, r) = (randn(&mut rng, d.iter().product()), randn(&mut rng, out.iter().product()));
        let r64 = f64s(&r);
        let fd = finite_diff(&f64s(&x), H, |x| dot(&pool_f64(x, &pool, avg_f64), &r64));
        let got = cpu(&r, &out).avg_pool2d_backward(&d, k, s, p).unwrap();
        assert_eq!(got.dims(), d);
        worst = worst.max(check(&format!("avg_pool2d_backward {pool:?}"), &got.to_vec_f32().unwrap(), &fd, TOL));
    }
    report("avg_pool2d_backward_matches_finite_differences", worst);
}

/// Adaptive pooling cases: input dims, (out_h, out_w).
fn adaptive_cases() -> Vec<([usize; 4], (usize, usize))> {
    vec![
        ([2, 3, 7, 5], (3, 2)),
        ([2, 3, 7, 5], (1, 1)),
        ([1, 2, 8, 8], (4, 4)),
        ([1, 2, 5, 7], (7, 9)),
        ([1, 1, 1, 1], (1, 1)),
        ([1, 2, 6, 10], (4, 3)),
        ([3, 4, 7, 7], (1, 1)),
    ]
}

/// The naive adaptive average pooling, PyTorch's bins written out.
fn adaptive_f64(x: &[f64], d: [usize; 4], (oh, ow): (usize, usize)) -> Vec<f64> {
    let (h, w) = (d[2], d[3]);
    let start = |i: usize, size: usize, out: usize| (i * size) / out;
    let end = |i: usize, size: usize, out: usize| ((i + 1) * size).div_ceil(out);
    let mut out = vec![];
    for plane in 0..d[0] * d[1] {
        for i in 0..oh {
            for j in 0..ow {
                let (ys, ye, xs, xe) = (start(i, h, oh), end(i, h, oh), start(j, w, ow), end(j, w, ow));
                let sum: f64 = (ys..ye)
                    .flat_map(|y| (xs..xe).map(move |x_| (y, x_)))
                    .map(|(y, x_)| x[(plane * h + y) * w + x_])
                    .sum();
                out.push(sum / ((ye - ys) * (xe - xs)) as f64);
            }
        }
    }
    out
}

#[test]
fn adaptive_avg_pool2d_matches_the_naive_reference() {
    let mut rng = rng("adaptive_avg_pool2d_matches_the_naive_reference");
    let mut worst = 0f64;
    for (d, (oh, ow)) in adaptive_cases() {
        let x = randn(&mut rng, d.iter().product());
        let got = cpu(&x, &d).adaptive_avg_pool2d(oh, ow).unwrap();
        assert_eq!(got.dims(), [d[0], d[1], oh, ow]);
        let want = adaptive_f64(&f64s(&x), d, (oh, ow));
        worst = worst.max(check(
            &format!("adaptive_avg_pool2d {d:?} -> ({oh}, {ow})"),
            &got.to_vec_f32().unwrap(),
            &want,
            1e-6,
        ));
    }
    report("adaptive_avg_pool2d_matches_the_naive_reference", worst);
}

#[test]
fn adaptive_avg_pool2d_backward_matches_finite_differences() {
    let mut rng = rng("adaptive_avg_pool2d_backward_matches_finite_differences");
    let mut worst = 0f64;
    for (d, (oh, ow)) in adaptive_cases() {
        let out = [d[0], d[1], oh, ow];
        let (x, r) = (randn(&mut rng, d.iter().product()), randn(&mut rng, out.iter().product()));
        let r64 = f64s(&r);
        let fd = finite_diff(&f64s(&x), H, |x| dot(&adaptive_f64(x, d, (oh, ow)), &r64));
        let got = cpu(&r, &out).adaptive_avg_pool2d_backward(&d).unwrap();
        assert_eq!(got.dims(), d);
        worst =
            worst.max(check(&format!("adaptive backward {d:?} -> ({oh}, {ow})"), &got.to_vec_f32().unwrap(), &fd, TOL));
    }
    report("adaptive_avg_pool2d_backward_matches_finite_differences", worst);
}

#[test]
fn pool_ops_keep_the_dtype() {
    let mut rng = rng("pool_ops_keep_the_dtype");
    let (d, out) = ([2, 3, 9, 7], [2, 3, 5, 4]);
    let (x, r) = (randn(&mut rng, d.iter().product()), randn(&mut rng, out.iter().product()));
    for dtype in [DType::F16, DType::BF16] {
        let (xt, rt) = (cpu(&x, &d).to_dtype(dtype).unwrap(), cpu(&r, &out).to_dtype(dtype).unwrap());
        let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let pairs = [
            (rt.max_pool2d_backward(&xt, 3, 2, 1), f(&rt).max_pool2d_backward(&f(&xt), 3, 2, 1)),
            (xt.avg_pool2d(3, 2, 1), f(&xt).avg_pool2d(3, 2, 1)),
            (rt.avg_pool2d_backward(&d, 3, 2, 1), f(&rt).avg_pool2d_backward(&d, 3, 2, 1)),
            (xt.adaptive_avg_pool2d(3, 2), f(&xt).adaptive_avg_pool2d(3, 2)),
            (rt.adaptive_avg_pool2d_backward(&d), f(&rt).adaptive_avg_pool2d_backward(&d)),
        ];
        for (i, (got, want)) in pairs.into_iter().enumerate() {
            let (got, want) = (got.unwrap(), want.unwrap().to_dtype(dtype).unwrap());
            assert_eq!(got.dtype(), dtype);
            assert_eq!(got.to_host().unwrap(), want.to_host().unwrap(), "op {i} {dtype:?}");
        }
    }
}

#[test]
fn pool_shape_errors() {
    let dev = Device::Cpu;
    let z = |d: &[usize]| Tensor::zeros(d.to_vec(), DType::F32, &dev).unwrap();
    let x = z(&[1, 2, 8, 8]);
    assert!(z(&[1, 2, 4, 4]).max_pool2d_backward(&x, 3, 2, 1).is_ok());
    assert!(z(&[1, 2, 4, 5]).max_pool2d_backward(&x, 3, 2, 1).is_err());
    assert!(z(&[1, 2, 4, 4]).max_pool2d_backward(&x, 3, 2, 2).is_err());
    assert!(z(&[1, 2, 4, 4]).avg_pool2d_backward(&[1, 2, 8, 8], 3, 2, 1).is_ok());
    assert!(z(&[1, 2, 4, 4]).avg_pool2d_backward(&[1, 3, 8, 8], 3, 2, 1).is_err());
    assert!(x.avg_pool2d(0, 1, 0).is_err());
    assert!(x.avg_pool2d(9, 1, 0).is_err());
    assert!(x.adaptive_avg_pool2d(0, 2).is_err());
    assert!(z(&[1, 2, 0, 3]).adaptive_avg_pool2d(1, 1).is_err());
    assert!(z(&[1, 2, 3, 2]).adaptive_avg_pool2d_backward(&[1, 2, 8, 8]).is_ok());
    assert!(z(&[1, 3, 3, 2]).adaptive_avg_pool2d_backward(&[1, 2, 8, 8]).is_err());
    assert!(z(&[2, 3, 2]).adaptive_avg_pool2d_backward(&[1, 2, 8, 8]).is_err());
    assert!(Tensor::from_u32(vec![0; 4], [1, 1, 2, 2], &dev).unwrap().avg_pool2d(1, 1, 0).is_err());
}

/// CPU time of conv2d and its two gradients at ResNet-50 shapes (best of 5), for the report:
/// `cargo test --release --test grad_conv_pool -- --ignored --nocapture`.
#[test]
#[ignore = "timing, not a check"]
fn conv_grad_timing() {
    let mut rng = rng("conv_grad_timing");
    let cases = [
        ("256→256 3×3 14×14 batch 8", Conv { x: [8, 256, 14, 14], w: [256, 256, 3, 3], opt: opt(1, 1, 1, 1) }),
        ("64→64 3×3 56×56 batch 8", Conv { x: [8, 64, 56, 56], w: [64, 64, 3, 3], opt: opt(1, 1, 1, 1) }),
        ("256→64 1×1 56×56 batch 8", Conv { x: [8, 256, 56, 56], w: [64, 256, 1, 1], opt: opt(1, 0, 1, 1) }),
        ("512→512 3×3 7×7 batch 8", Conv { x: [8, 512, 7, 7], w: [512, 512, 3, 3], opt: opt(1, 1, 1, 1) }),
        ("3→64 7×7/2 224×224 batch 8", Conv { x: [8, 3, 224, 224], w: [64, 3, 7, 7], opt: opt(2, 3, 1, 1) }),
    ];
    let best = |f: &dyn Fn()| {
        (0..5)
            .map(|_| {
                let t = std::time::Instant::now();
                f();
                t.elapsed().as_secs_f64() * 1e3
            })
            .fold(f64::INFINITY, f64::min)
    };
    eprintln!("{:<30} {:>10} {:>13} {:>14}   (ms, GFLOP/s)", "conv", "forward", "input grad", "weight grad");
    for (name, c) in cases {
        let (x, w, r) = c.inputs(&mut rng);
        let (xt, wt, rt) = (cpu(&x, &c.x), cpu(&w, &c.w), cpu(&r, &c.out()));
        let flop = 2.0 * c.out().iter().product::<usize>() as f64 * (c.w[1] * c.w[2] * c.w[3]) as f64;
        let times = [
            best(&|| drop(xt.conv2d(&wt, None, c.opt).unwrap())),
            best(&|| drop(rt.conv2d_input_grad(&wt, &c.x, c.opt).unwrap())),
            best(&|| drop(rt.conv2d_weight_grad(&xt, &c.w, c.opt).unwrap())),
        ];
        let cell = |ms: f64| format!("{ms:.2} ({:.0})", flop / ms / 1e6);
        eprintln!("{name:<30} {:>10} {:>13} {:>14}", cell(times[0]), cell(times[1]), cell(times[2]));
    }
}
