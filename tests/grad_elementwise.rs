//! The backward ops of the activations, clamp and GEGLU: on the CPU against central finite
//! differences of naive f64 forwards contracted with a random upstream gradient r
//! (L = Σ f(x)·r), and on the GPU (when there is one) against the CPU in f32, f16 and bf16 with
//! the elementwise tolerances of kernels/README.md.

mod common;

use common::{finite_diff, gpu, randn, rel_err_to, rng, tolerance, Class};
use foil::device::UnaryOp;
use foil::{DType, Device, Error, Rng, Tensor};

const H: f64 = 1e-5;
/// f32 backward against the f64 reference, relative to the largest gradient.
const TOL: f64 = 1e-4;
const OPS: [UnaryOp; 5] = [UnaryOp::Silu, UnaryOp::Gelu, UnaryOp::GeluTanh, UnaryOp::QuickGelu, UnaryOp::Relu];
const SHAPES: [&[usize]; 4] = [&[1], &[7], &[3, 5], &[2, 3, 11]];

/// erfc in f64 to ~1e-15: the Taylor series of erf below 2.5, the continued fraction
/// erfc(z) = e^(−z²)/√π · 1/(z + ½/(z + 1/(z + 3⁄2/(z + …)))) above (Rust's std has no erf).
fn erfc(x: f64) -> f64 {
    if x <= -2.5 {
        return 2.0 - erfc(-x);
    }
    if x >= 2.5 {
        let k = (1..=80).rev().fold(x, |k, n| x + n as f64 / 2.0 / k);
        return (-x * x).exp() / (std::f64::consts::PI.sqrt() * k);
    }
    let (mut term, mut sum) = (x, x);
    for n in 1..200 {
        term *= -x * x / n as f64;
        sum += term / (2 * n + 1) as f64;
    }
    1.0 - 2.0 / std::f64::consts::PI.sqrt() * sum
}

fn gelu(x: f64) -> f64 {
    0.5 * x * erfc(-x / std::f64::consts::SQRT_2)
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn activation(op: UnaryOp, x: f64) -> f64 {
    match op {
        UnaryOp::Silu => x * sigmoid(x),
        UnaryOp::Gelu => gelu(x),
        UnaryOp::GeluTanh => {
            0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
        }
        UnaryOp::QuickGelu => x * sigmoid(1.702 * x),
        UnaryOp::Relu => x.max(0.0),
    }
}

/// Random f32-representable values times `scale`, none within `gap` of a kink in `kinks`.
fn random(r: &mut Rng, n: usize, scale: f32, kinks: &[f64], gap: f64) -> Vec<f64> {
    randn(r, n)
        .iter()
        .map(|&v| {
            let mut x = (v * scale) as f64;
            for &k in kinks {
                if (x - k).abs() < gap {
                    x = (k + if x >= k { 2.0 * gap } else { -2.0 * gap }) as f32 as f64;
                }
            }
            x
        })
        .collect()
}

fn tensor(data: &[f64], dims: &[usize], device: &Device) -> Tensor {
    Tensor::from_f32(data.iter().map(|&x| x as f32).collect(), dims.to_vec(), device).unwrap()
}

/// Asserts the relative error and prints it, naming the case.
fn check(what: &str, got: &Tensor, want: &[f64]) {
    let e = rel_err_to(&got.to_vec_f32().unwrap(), want, 0.0);
    eprintln!("{what}: relative error {e:.2e}");
    assert!(e <= TOL, "{what}: relative error {e:.3e} > {TOL:.0e}");
}

#[test]
fn activation_backward_matches_finite_differences() {
    let mut r = rng("activation_backward");
    for dims in SHAPES {
        let n = dims.iter().product();
        // Away from relu's kink at 0, where the difference quotient straddles it.
        let x = random(&mut r, n, 3.0, &[0.0], 1e-3);
        let up = random(&mut r, n, 1.0, &[], 0.0);
        for op in OPS {
            let got = tensor(&x, dims, &Device::Cpu).activation_backward(op, &tensor(&up, dims, &Device::Cpu)).unwrap();
            assert_eq!(got.dims(), dims);
            let loss = |x: &[f64]| x.iter().zip(&up).map(|(&v, g)| activation(op, v) * g).sum::<f64>();
            check(&format!("{op:?} {dims:?}"), &got, &finite_diff(&x, H, loss));
        }
    }
    // relu'(0) = 0, as PyTorch, and x ≤ 0 gives 0 whatever the gradient.
    let x = Tensor::from_f32(vec![0.0, -0.0, -1.0, 2.0], [4], &Device::Cpu).unwrap();
    let up = Tensor::from_f32(vec![1.0, 1.0, f32::INFINITY, 3.0], [4], &Device::Cpu).unwrap();
    assert_eq!(x.activation_backward(UnaryOp::Relu, &up).unwrap().to_vec_f32().unwrap(), [0.0, 0.0, 0.0, 3.0]);
}

#[test]
fn clamp_backward_matches_finite_differences() {
    let mut r = rng("clamp_backward");
    for (lo, hi) in [(-1.0f32, 0.5f32), (0.0, 0.0), (-0.3, 2.0)] {
        for dims in SHAPES {
            let n = dims.iter().product();
            let x = random(&mut r, n, 1.5, &[lo as f64, hi as f64], 1e-3);
            let up = random(&mut r, n, 1.0, &[], 0.0);
            let got = tensor(&x, dims, &Device::Cpu).clamp_backward(lo, hi, &tensor(&up, dims, &Device::Cpu)).unwrap();
            let loss = |x: &[f64]| x.iter().zip(&up).map(|(&v, g)| v.max(lo as f64).min(hi as f64) * g).sum::<f64>();
            check(&format!("clamp [{lo}, {hi}] {dims:?}"), &got, &finite_diff(&x, H, loss));
        }
    }
    // The bounds pass the gradient (PyTorch); NaN and outside get 0.
    let x = Tensor::from_f32(vec![-1.0, 0.5, 0.5001, f32::NAN, -2.0], [5], &Device::Cpu).unwrap();
    let up = Tensor::from_f32(vec![2.0; 5], [5], &Device::Cpu).unwrap();
    assert_eq!(x.clamp_backward(-1.0, 0.5, &up).unwrap().to_vec_f32().unwrap(), [2.0, 2.0, 0.0, 0.0, 0.0]);
}

#[test]
fn geglu_backward_matches_finite_differences() {
    let mut r = rng("geglu_backward");
    for (lead, d) in [(&[1][..], 1), (&[3][..], 5), (&[2, 2][..], 8), (&[1, 3][..], 7)] {
        let (rows, x_dims, g_dims) = (lead.iter().product::<usize>(), [lead, &[2 * d]].concat(), [lead, &[d]].concat());
        let x = random(&mut r, rows * 2 * d, 2.0, &[], 0.0);
        let up = random(&mut r, rows * d, 1.0, &[], 0.0);
        let got = tensor(&x, &x_dims, &Device::Cpu).geglu_backward(&tensor(&up, &g_dims, &Device::Cpu)).unwrap();
        assert_eq!(got.dims(), x_dims);
        let loss = |x: &[f64]| {
            (0..rows * d)
                .map(|i| x[(i / d) * 2 * d + i % d] * gelu(x[(i / d) * 2 * d + d + i % d]) * up[i])
                .sum::<f64>()
        };
        check(&format!("geglu {x_dims:?}"), &got, &finite_diff(&x, H, loss));
    }
}

#[test]
fn backward_ops_check_shapes() {
    let x = Tensor::from_f32(vec![1.0; 6], [2, 3], &Device::Cpu).unwrap();
    let flat = x.reshape([6]).unwrap();
    let bad = x.activation_backward(UnaryOp::Silu, &flat);
    assert!(matches!(bad, Err(Error::Shape { op: "activation_backward", .. })), "{bad:?}");
    let bad = x.clamp_backward(0.0, 1.0, &flat);
    assert!(matches!(bad, Err(Error::Shape { op: "clamp_backward", .. })), "{bad:?}");
    assert!(matches!(x.clamp_backward(f32::NAN, 1.0, &x), Err(Error::Usage(_))));
    let odd = x.geglu_backward(&x);
    assert!(matches!(odd, Err(Error::Shape { op: "geglu_backward", .. })), "{odd:?}");
    let even = Tensor::from_f32(vec![1.0; 8], [2, 4], &Device::Cpu).unwrap();
    let bad = even.geglu_backward(&even);
    assert!(matches!(bad, Err(Error::Shape { op: "geglu_backward", .. })), "{bad:?}");
    let f16 = x.to_dtype(DType::F16).unwrap();
    assert!(f16.activation_backward(UnaryOp::Gelu, &x).is_err(), "dtypes must match");
    assert_eq!(f16.activation_backward(UnaryOp::Gelu, &f16).unwrap().dtype(), DType::F16);
}

// ---- CUDA against the CPU --------------------------------------------------------------------

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// Random data of `dims` times `scale`, rounded to `dtype`: as a CPU f32 tensor and a GPU tensor.
fn pair(r: &mut Rng, dims: &[usize], dtype: DType, gpu: &Device, scale: f32) -> (Tensor, Tensor) {
    let data = randn(r, dims.iter().product()).iter().map(|v| v * scale).collect();
    let rounded = Tensor::from_f32(data, dims.to_vec(), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
    (rounded.to_dtype(DType::F32).unwrap(), rounded.to_device(gpu).unwrap())
}

fn check_gpu(what: &str, cpu: &Tensor, gpu: &Tensor, dtype: DType) {
    assert_eq!(cpu.dims(), gpu.dims(), "{what}: shapes differ");
    assert_eq!(gpu.dtype(), dtype, "{what}: dtype");
    let want: Vec<f64> = cpu.to_vec_f32().unwrap().iter().map(|&v| v as f64).collect();
    let e = rel_err_to(&gpu.to_vec_f32().unwrap(), &want, 0.0);
    assert!(
        e <= tolerance(dtype, Class::Elementwise),
        "{what} {dtype:?}: relative error {e:.3e} > {:.0e}",
        tolerance(dtype, Class::Elementwise)
    );
}

#[test]
fn cuda_elementwise_backward_matches_the_cpu() {
    let Some(dev) = gpu("grad_elementwise::cuda_elementwise_backward_matches_the_cpu") else { return };
    let mut r = rng("cuda elementwise backward");
    for dtype in DTYPES {
        for dims in [vec![1], vec![7], vec![3, 5, 17], vec![1 << 20 | 3]] {
            let (cx, gx) = pair(&mut r, &dims, dtype, &dev, 3.0);
            let (cg, gg) = pair(&mut r, &dims, dtype, &dev, 1.0);
            for op in OPS {
                let (c, g) = (cx.activation_backward(op, &cg).unwrap(), gx.activation_backward(op, &gg).unwrap());
                check_gpu(&format!("{op:?} backward {dims:?}"), &c, &g, dtype);
            }
            let (c, g) = (cx.clamp_backward(-1.0, 0.5, &cg).unwrap(), gx.clamp_backward(-1.0, 0.5, &gg).unwrap());
            check_gpu(&format!("clamp backward {dims:?}"), &c, &g, dtype);
        }
        for (rows, d) in [(1, 1), (3, 5), (7, 8), (64, 1280), (5, 13)] {
            let (cx, gx) = pair(&mut r, &[rows, 2 * d], dtype, &dev, 2.0);
            let (cg, gg) = pair(&mut r, &[rows, d], dtype, &dev, 1.0);
            let (c, g) = (cx.geglu_backward(&cg).unwrap(), gx.geglu_backward(&gg).unwrap());
            check_gpu(&format!("geglu backward ({rows}, {})", 2 * d), &c, &g, dtype);
        }
    }
}
