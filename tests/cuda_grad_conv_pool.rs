//! The CUDA backward ops of conv2d and of the poolings, and the new pooling forwards, against
//! the CPU reference in f32, f16 and bf16, on fresh random inputs at several shapes (odd sizes,
//! size 1, groups, depthwise, split reductions), with the tolerances of kernels/README.md.
//! Inputs are rounded to the dtype first, so both backends see the same values; the gradients
//! are also checked to be the same bits on a second run (no atomics). Without a usable GPU each
//! test prints one line saying it was skipped, and why.

mod common;

use common::{gpu, randn, rng, tolerance, Class};
use foil::{Conv2dOptions, DType, Device, Rng, Tensor};

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// Random normal data of `dims` rounded to `dtype`, as a CPU f32 tensor and a GPU tensor of `dtype`.
fn pair(r: &mut Rng, dims: &[usize], dtype: DType, gpu: &Device) -> (Tensor, Tensor) {
    let data = randn(r, dims.iter().product());
    let rounded = Tensor::from_f32(data, dims.to_vec(), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
    (rounded.to_dtype(DType::F32).unwrap(), rounded.to_device(gpu).unwrap())
}

/// Checks the GPU result against the CPU one and returns the relative error.
fn check(what: &str, cpu: &Tensor, gpu: &Tensor, dtype: DType, class: Class) -> f64 {
    assert_eq!(cpu.dims(), gpu.dims(), "{what}: shapes differ");
    assert_eq!(gpu.dtype(), dtype, "{what}: dtype");
    let want: Vec<f64> = cpu.to_vec_f32().unwrap().iter().map(|&v| v as f64).collect();
    let (got, tol) = (gpu.to_vec_f32().unwrap(), tolerance(dtype, class));
    let e = common::rel_err(&got, &want);
    assert!(e <= tol, "{what} {dtype:?}: relative error {e:.3e} > {tol:.0e}");
    e
}

/// The same bits as a first run of the same op.
fn same_bits(what: &str, first: &Tensor, again: Tensor) {
    assert_eq!(first.to_host().unwrap(), again.to_host().unwrap(), "{what}: a second run differs");
}

fn opt(stride: usize, padding: usize, dilation: usize, groups: usize) -> Conv2dOptions {
    Conv2dOptions { stride: (stride, stride), padding: (padding, padding), dilation: (dilation, dilation), groups }
}

fn conv_out(x: &[usize; 4], w: &[usize; 4], o: Conv2dOptions) -> [usize; 4] {
    let size = |s: usize, k: usize, st: usize, p: usize, d: usize| (s + 2 * p - d * (k - 1) - 1) / st + 1;
    [
        x[0],
        w[0],
        size(x[2], w[2], o.stride.0, o.padding.0, o.dilation.0),
        size(x[3], w[3], o.stride.1, o.padding.1, o.dilation.1),
    ]
}

#[test]
fn conv2d_grads() {
    let Some(dev) = gpu("cuda_grad_conv_pool::conv2d_grads") else { return };
    let mut r = rng("cuda conv2d_grads");
    let mut cases: Vec<([usize; 4], [usize; 4], Conv2dOptions)> =
        common::conv_cases().into_iter().map(|(x, w, o, _)| (x, w, o)).collect();
    cases.extend([
        // Odd maps, batch 3, dilation 2 with groups 2, depthwise stride 2.
        ([3, 2, 7, 5], [3, 2, 3, 3], opt(2, 1, 1, 1)),
        ([1, 4, 7, 5], [4, 2, 3, 3], opt(1, 2, 2, 2)),
        ([3, 32, 15, 15], [32, 1, 3, 3], opt(2, 1, 1, 32)),
        // ResNet shapes: the stem, a 1×1 bottleneck, a 3×3 with several tiles each way.
        ([2, 3, 63, 61], [64, 3, 7, 7], opt(2, 3, 1, 1)),
        ([2, 256, 7, 7], [128, 256, 1, 1], opt(1, 0, 1, 1)),
        ([2, 64, 28, 28], [64, 64, 3, 3], opt(1, 1, 1, 1)),
        ([1, 130, 9, 9], [70, 130, 3, 3], opt(1, 1, 1, 1)),
        // One weight tile, a long reduction: the weight gradient splits it.
        ([16, 8, 32, 32], [8, 8, 3, 3], opt(1, 1, 1, 1)),
        ([64, 16, 14, 14], [16, 16, 3, 3], opt(2, 1, 1, 1)),
    ]);
    let mut worst = [0f64; 3];
    for (i, dtype) in DTYPES.into_iter().enumerate() {
        for &(xd, wd, o) in &cases {
            let what = format!("{xd:?} {wd:?} {o:?}");
            let (cx, gx) = pair(&mut r, &xd, dtype, &dev);
            let (cw, gw) = pair(&mut r, &wd, dtype, &dev);
            let (cg, gg) = pair(&mut r, &conv_out(&xd, &wd, o), dtype, &dev);
            let gdx = gg.conv2d_input_grad(&gw, &xd, o).unwrap();
            let gdw = gg.conv2d_weight_grad(&gx, &wd, o).unwrap();
            let cdx = cg.conv2d_input_grad(&cw, &xd, o).unwrap();
            let cdw = cg.conv2d_weight_grad(&cx, &wd, o).unwrap();
            worst[i] = worst[i].max(check(&format!("input grad {what}"), &cdx, &gdx, dtype, Class::Contraction));
            worst[i] = worst[i].max(check(&format!("weight grad {what}"), &cdw, &gdw, dtype, Class::Contraction));
            same_bits(&format!("input grad {what}"), &gdx, gg.conv2d_input_grad(&gw, &xd, o).unwrap());
            same_bits(&format!("weight grad {what}"), &gdw, gg.conv2d_weight_grad(&gx, &wd, o).unwrap());
        }
    }
    eprintln!("conv2d_grads: worst relative error f32 {:.2e}, f16 {:.2e}, bf16 {:.2e}", worst[0], worst[1], worst[2]);
}

/// Square-window pooling cases: input dims, kernel, stride, padding.
const POOLS: [(&[usize], usize, usize, usize); 9] = [
    (&[1, 1, 1, 1], 1, 1, 0),
    (&[2, 3, 9, 7], 3, 2, 1),
    (&[1, 4, 8, 8], 3, 2, 1),
    (&[2, 2, 7, 7], 3, 2, 1),
    (&[1, 2, 10, 5], 2, 1, 1),
    (&[1, 2, 17, 19], 5, 3, 2),
    (&[1, 3, 4, 6], 4, 4, 0),
    (&[3, 11, 13], 3, 1, 1),
    // ResNet's stem pool at batch 2.
    (&[2, 64, 112, 112], 3, 2, 1),
];

#[test]
fn window_pools_and_grads() {
    let Some(dev) = gpu("cuda_grad_conv_pool::window_pools_and_grads") else { return };
    let mut r = rng("cuda window_pools_and_grads");
    let mut worst = [0f64; 3];
    for (i, dtype) in DTYPES.into_iter().enumerate() {
        for (dims, k, s, p) in POOLS {
            let what = format!("{dims:?} k{k} s{s} p{p}");
            let (cx, gx) = pair(&mut r, dims, dtype, &dev);
            let out = cx.max_pool2d(k, s, p).unwrap();
            let (cg, gg) = pair(&mut r, out.dims(), dtype, &dev);
            let e = [
                check(&format!("max_pool2d {what}"), &out, &gx.max_pool2d(k, s, p).unwrap(), dtype, Class::Reduction),
                check(
                    &format!("max_pool2d_backward {what}"),
                    &cg.max_pool2d_backward(&cx, k, s, p).unwrap(),
                    &gg.max_pool2d_backward(&gx, k, s, p).unwrap(),
                    dtype,
                    Class::Reduction,
                ),
                check(
                    &format!("avg_pool2d {what}"),
                    &cx.avg_pool2d(k, s, p).unwrap(),
                    &gx.avg_pool2d(k, s, p).unwrap(),
                    dtype,
                    Class::Reduction,
                ),
                check(
                    &format!("avg_pool2d_backward {what}"),
                    &cg.avg_pool2d_backward(dims, k, s, p).unwrap(),
                    &gg.avg_pool2d_backward(dims, k, s, p).unwrap(),
                    dtype,
                    Class::Reduction,
                ),
            ];
            worst[i] = e.iter().fold(worst[i], |w, &e| w.max(e));
            let first = gg.max_pool2d_backward(&gx, k, s, p).unwrap();
            same_bits(&format!("max_pool2d_backward {what}"), &first, gg.max_pool2d_backward(&gx, k, s, p).unwrap());
        }
    }
    eprintln!(
        "window_pools_and_grads: worst relative error f32 {:.2e}, f16 {:.2e}, bf16 {:.2e}",
        worst[0], worst[1], worst[2]
    );
}

#[test]
fn adaptive_pool_and_grad() {
    let Some(dev) = gpu("cuda_grad_conv_pool::adaptive_pool_and_grad") else { return };
    let mut r = rng("cuda adaptive_pool_and_grad");
    let cases: [(&[usize], (usize, usize)); 7] = [
        (&[2, 3, 7, 5], (3, 2)),
        (&[2, 3, 7, 5], (1, 1)),
        (&[1, 2, 8, 8], (4, 4)),
        (&[1, 2, 5, 7], (7, 9)),
        (&[1, 1, 1, 1], (1, 1)),
        (&[3, 6, 10], (4, 3)),
        // ResNet's global pool at batch 4.
        (&[4, 2048, 7, 7], (1, 1)),
    ];
    let mut worst = [0f64; 3];
    for (i, dtype) in DTYPES.into_iter().enumerate() {
        for (dims, (oh, ow)) in cases {
            let what = format!("{dims:?} -> ({oh}, {ow})");
            let (cx, gx) = pair(&mut r, dims, dtype, &dev);
            let out = cx.adaptive_avg_pool2d(oh, ow).unwrap();
            let (cg, gg) = pair(&mut r, out.dims(), dtype, &dev);
            let e = [
                check(&what, &out, &gx.adaptive_avg_pool2d(oh, ow).unwrap(), dtype, Class::Reduction),
                check(
                    &format!("backward {what}"),
                    &cg.adaptive_avg_pool2d_backward(dims).unwrap(),
                    &gg.adaptive_avg_pool2d_backward(dims).unwrap(),
                    dtype,
                    Class::Reduction,
                ),
            ];
            worst[i] = e.iter().fold(worst[i], |w, &e| w.max(e));
        }
    }
    eprintln!(
        "adaptive_pool_and_grad: worst relative error f32 {:.2e}, f16 {:.2e}, bf16 {:.2e}",
        worst[0], worst[1], worst[2]
    );
}

/// GPU time of conv2d and its two gradients at ResNet-50 shapes (f32 and bf16, best of 10 after
/// a warm-up), for the report: `cargo test --release --test cuda_grad_conv_pool -- --ignored --nocapture`.
#[test]
#[ignore = "timing, not a check"]
fn conv_grad_timing() {
    let Some(dev) = gpu("cuda_grad_conv_pool::conv_grad_timing") else { return };
    let mut r = rng("cuda conv_grad_timing");
    let cases = [
        ("256→256 3×3 14×14 b64", [64, 256, 14, 14], [256, 256, 3, 3], opt(1, 1, 1, 1)),
        ("64→64 3×3 56×56 b64", [64, 64, 56, 56], [64, 64, 3, 3], opt(1, 1, 1, 1)),
        ("256→64 1×1 56×56 b64", [64, 256, 56, 56], [64, 256, 1, 1], opt(1, 0, 1, 1)),
        ("512→512 3×3 7×7 b64", [64, 512, 7, 7], [512, 512, 3, 3], opt(1, 1, 1, 1)),
        ("3→64 7×7/2 224×224 b64", [64, 3, 224, 224], [64, 3, 7, 7], opt(2, 3, 1, 1)),
    ];
    let best = |f: &dyn Fn()| {
        f();
        dev.synchronize().unwrap();
        (0..10)
            .map(|_| {
                let t = std::time::Instant::now();
                f();
                dev.synchronize().unwrap();
                t.elapsed().as_secs_f64() * 1e3
            })
            .fold(f64::INFINITY, f64::min)
    };
    eprintln!(
        "{:<26} {:>5} {:>15} {:>15} {:>15}   (ms, TFLOP/s)",
        "conv", "dtype", "forward", "input grad", "weight grad"
    );
    for (name, xd, wd, o) in cases {
        for dtype in [DType::F32, DType::BF16] {
            let (_, x) = pair(&mut r, &xd, dtype, &dev);
            let (_, w) = pair(&mut r, &wd, dtype, &dev);
            let out = conv_out(&xd, &wd, o);
            let (_, g) = pair(&mut r, &out, dtype, &dev);
            let flop = 2.0 * out.iter().product::<usize>() as f64 * (wd[1] * wd[2] * wd[3]) as f64;
            let times = [
                best(&|| drop(x.conv2d(&w, None, o).unwrap())),
                best(&|| drop(g.conv2d_input_grad(&w, &xd, o).unwrap())),
                best(&|| drop(g.conv2d_weight_grad(&x, &wd, o).unwrap())),
            ];
            let cell = |ms: f64| format!("{ms:.3} ({:.1})", flop / ms / 1e9);
            let [f, i, w_] = times.map(cell);
            eprintln!("{name:<26} {:>5} {f:>15} {i:>15} {w_:>15}", format!("{dtype:?}"));
        }
    }
}
