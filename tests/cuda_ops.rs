//! Every CUDA op against the CPU op, in f32, f16 and bf16, on fresh random
//! inputs at several shapes (odd sizes and size 1 included), with the
//! tolerances of kernels/README.md. Inputs are rounded to the dtype first, so
//! both backends see the same values. Without a usable GPU each test prints one
//! line saying it was skipped, and why.

mod common;

use common::{gpu, randn, rng, tolerance, Class};
use foil::{Conv2dOptions, DType, Device, Rng, Tensor};

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// `data` rounded to `dtype`, as a CPU f32 tensor and a GPU tensor of `dtype`.
fn upload(data: Vec<f32>, dims: &[usize], dtype: DType, gpu: &Device) -> (Tensor, Tensor) {
    let rounded = Tensor::from_f32(data, dims.to_vec(), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
    (rounded.to_dtype(DType::F32).unwrap(), rounded.to_device(gpu).unwrap())
}

/// Random normal data of `dims` times `scale`, as `upload` gives it.
fn pair(r: &mut Rng, dims: &[usize], dtype: DType, gpu: &Device, scale: f32) -> (Tensor, Tensor) {
    let data = randn(r, dims.iter().product()).iter().map(|v| v * scale).collect();
    upload(data, dims, dtype, gpu)
}

fn check(what: &str, cpu: &Tensor, gpu: &Tensor, dtype: DType, class: Class) {
    check_to(what, cpu, gpu, dtype, class, 0.0);
}

/// As `check`, judging the error against at least `scale` (see `rel_err_to`).
fn check_to(what: &str, cpu: &Tensor, gpu: &Tensor, dtype: DType, class: Class, scale: f64) {
    assert_eq!(cpu.dims(), gpu.dims(), "{what}: shapes differ");
    assert_eq!(gpu.dtype(), dtype, "{what}: dtype");
    let want: Vec<f64> = cpu.to_vec_f32().unwrap().iter().map(|&v| v as f64).collect();
    let (got, tol) = (gpu.to_vec_f32().unwrap(), tolerance(dtype, class));
    common::assert_close_to(&format!("{what} {dtype:?}"), &got, &want, scale, tol);
}

/// The largest Σ|x| along `axis` of `x`: the scale a sum's rounding error grows with.
fn abs_sum_scale(x: &Tensor, axis: usize) -> f64 {
    let (d, v) = (x.dims(), x.to_vec_f32().unwrap());
    let (len, inner) = (d[axis], d[axis + 1..].iter().product::<usize>());
    let outer = v.len() / (len * inner).max(1);
    let at = |o: usize, l: usize, i: usize| v[(o * len + l) * inner + i].abs() as f64;
    (0..outer).flat_map(|o| (0..inner).map(move |i| (0..len).map(|l| at(o, l, i)).sum::<f64>())).fold(0.0, f64::max)
}

/// The largest Σ|x·w| + |b| of a convolution: what its rounding error grows
/// with, where the output itself can cancel to near zero.
fn conv_terms_scale(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, o: Conv2dOptions) -> f64 {
    let abs = |t: &Tensor| {
        let v = t.to_vec_f32().unwrap().iter().map(|a| a.abs()).collect();
        Tensor::from_f32(v, t.dims().to_vec(), &Device::Cpu).unwrap()
    };
    let terms = abs(x).conv2d(&abs(w), bias.map(abs).as_ref(), o).unwrap();
    terms.to_vec_f32().unwrap().iter().fold(0f64, |m, &v| m.max(v as f64))
}

type UnaryFn = fn(&Tensor) -> foil::Result<Tensor>;

#[test]
fn activations() {
    let Some(dev) = gpu("cuda_ops::activations") else { return };
    let mut r = rng("cuda activations");
    let ops: [(&str, UnaryFn); 5] = [
        ("silu", Tensor::silu),
        ("gelu", Tensor::gelu),
        ("gelu_tanh", Tensor::gelu_tanh),
        ("quick_gelu", Tensor::quick_gelu),
        ("relu", Tensor::relu),
    ];
    for dtype in DTYPES {
        for dims in [vec![1], vec![7], vec![3, 5, 17], vec![1 << 20 | 3]] {
            let (c, g) = pair(&mut r, &dims, dtype, &dev, 3.0);
            // Judged against max |x| as well, as in cpu_ops: the tails are ill-conditioned.
            let scale = c.to_vec_f32().unwrap().iter().fold(0f64, |m, &x| m.max(x.abs() as f64));
            for (name, op) in ops {
                let (co, go) = (op(&c).unwrap(), op(&g).unwrap());
                check_to(&format!("{name} {dims:?}"), &co, &go, dtype, Class::Elementwise, scale);
            }
            check(
                &format!("scale {dims:?}"),
                &c.scale(0.37).unwrap(),
                &g.scale(0.37).unwrap(),
                dtype,
                Class::Elementwise,
            );
        }
    }
}

#[test]
fn clamp_and_geglu() {
    let Some(dev) = gpu("cuda_ops::clamp_and_geglu") else { return };
    let mut r = rng("cuda clamp_and_geglu");
    for dtype in DTYPES {
        for dims in [vec![1], vec![7], vec![3, 5, 17], vec![1 << 20 | 3]] {
            let (c, g) = pair(&mut r, &dims, dtype, &dev, 3.0);
            for (lo, hi) in [(-1.5, 2.0), (1.0, -1.0)] {
                let (co, go) = (c.clamp(lo, hi).unwrap(), g.clamp(lo, hi).unwrap());
                check(&format!("clamp {dims:?} [{lo}, {hi}]"), &co, &go, dtype, Class::Elementwise);
            }
        }
        // d = 1, odd d (the scalar path), d a multiple of the 16-byte pack (the vector path), SD's width.
        for dims in [vec![1, 2], vec![7, 34], vec![3, 5, 18], vec![2, 3, 64], vec![2, 77, 2 * 1280 * 4]] {
            let (c, g) = pair(&mut r, &dims, dtype, &dev, 3.0);
            let v = c.to_vec_f32().unwrap();
            let d = dims[dims.len() - 1] / 2;
            // Judged against max |h·g| as well: |h·gelu(g)| ≤ |h·g| and the GELU tails are ill-conditioned.
            let scale = v.chunks(2 * d).flat_map(|row| (0..d).map(move |j| (row[j] * row[d + j]).abs() as f64));
            let scale = scale.fold(0.0, f64::max);
            let (co, go) = (c.geglu().unwrap(), g.geglu().unwrap());
            check_to(&format!("geglu {dims:?}"), &co, &go, dtype, Class::Elementwise, scale);
        }
    }
    let nan = Tensor::from_f32(vec![f32::NAN, -3.0, 3.0], [3], &dev).unwrap().clamp(-1.0, 1.0).unwrap();
    let got = nan.to_vec_f32().unwrap();
    assert!(got[0].is_nan() && got[1..] == [-1.0, 1.0], "NaN stays NaN: {got:?}");
    assert!(Tensor::from_f32(vec![1.0; 3], [3], &dev).unwrap().geglu().is_err(), "odd last axis");
}

#[test]
fn binary_broadcast() {
    let Some(dev) = gpu("cuda_ops::binary_broadcast") else { return };
    let mut r = rng("cuda binary_broadcast");
    let shapes: [(&[usize], &[usize]); 6] = [
        (&[1], &[1]),
        (&[1001], &[1001]),
        (&[2, 3, 5], &[5]),
        (&[2, 3, 5], &[3, 1]),
        (&[4, 1, 7], &[1, 6, 1]),
        (&[2, 320, 9, 9], &[1, 320, 1, 1]),
    ];
    for dtype in DTYPES {
        for (da, db) in shapes {
            let (ca, ga) = pair(&mut r, da, dtype, &dev, 1.0);
            let (cb, gb) = pair(&mut r, db, dtype, &dev, 1.0);
            // Divisors 1 + b² keep division well conditioned.
            let divisor = randn(&mut r, db.iter().product()).iter().map(|v| 1.0 + v * v).collect();
            let (cdiv, gdiv) = upload(divisor, db, dtype, &dev);
            let what = format!("{da:?} {db:?}");
            check(&format!("add {what}"), &ca.add(&cb).unwrap(), &ga.add(&gb).unwrap(), dtype, Class::Elementwise);
            check(&format!("sub {what}"), &ca.sub(&cb).unwrap(), &ga.sub(&gb).unwrap(), dtype, Class::Elementwise);
            check(&format!("mul {what}"), &ca.mul(&cb).unwrap(), &ga.mul(&gb).unwrap(), dtype, Class::Elementwise);
            check(&format!("div {what}"), &ca.div(&cdiv).unwrap(), &ga.div(&gdiv).unwrap(), dtype, Class::Elementwise);
        }
    }
}

#[test]
fn casts() {
    let Some(dev) = gpu("cuda_ops::casts") else { return };
    let mut r = rng("cuda casts");
    let x: Vec<f32> = randn(&mut r, 4097).iter().map(|v| v * 300.0).collect();
    let cpu = Tensor::from_f32(x, [17, 241], &Device::Cpu).unwrap();
    let on_gpu = cpu.to_device(&dev).unwrap();
    for from in [DType::F32, DType::F16, DType::BF16, DType::U32] {
        for to in [DType::F32, DType::F16, DType::BF16, DType::U32] {
            let want = cpu.to_dtype(from).unwrap().to_dtype(to).unwrap().to_host().unwrap();
            let got = on_gpu.to_dtype(from).unwrap().to_dtype(to).unwrap().to_host().unwrap();
            assert_eq!(got, want, "cast {from:?} -> {to:?} differs from the CPU's rounding");
        }
    }
    let specials = vec![-3.7f32, -0.0, 0.9, 7.99, 4e9, 5e9, f32::NAN, f32::INFINITY, f32::NEG_INFINITY];
    let n = specials.len();
    let want: Vec<u32> = specials.iter().map(|&v| v as u32).collect();
    let got = Tensor::from_f32(specials, [n], &dev).unwrap().to_dtype(DType::U32).unwrap().to_vec_u32().unwrap();
    assert_eq!(got, want, "f32 -> u32 saturates like Rust `as`");
}

#[test]
fn reductions_and_softmax() {
    let Some(dev) = gpu("cuda_ops::reductions_and_softmax") else { return };
    let mut r = rng("cuda reductions_and_softmax");
    for dtype in DTYPES {
        for dims in [vec![1], vec![9], vec![3, 5, 7], vec![2, 1, 33], vec![4, 4097], vec![64, 77, 3]] {
            let (c, g) = pair(&mut r, &dims, dtype, &dev, 2.0);
            for axis in 0..dims.len() as isize {
                let what = |op: &str| format!("{op} axis {axis} of {dims:?}");
                let scale = abs_sum_scale(&c, axis as usize);
                let (cs, gs) = (c.sum(axis, true).unwrap(), g.sum(axis, true).unwrap());
                check_to(&what("sum"), &cs, &gs, dtype, Class::Reduction, scale);
                let (cm, gm) = (c.mean(axis, false).unwrap(), g.mean(axis, false).unwrap());
                check_to(&what("mean"), &cm, &gm, dtype, Class::Reduction, scale / dims[axis as usize] as f64);
                check(
                    &what("max"),
                    &c.max(axis, false).unwrap(),
                    &g.max(axis, false).unwrap(),
                    dtype,
                    Class::Elementwise,
                );
                let (ca, ga) = (c.argmax(axis, false).unwrap(), g.argmax(axis, false).unwrap());
                assert_eq!(ca.to_vec_u32().unwrap(), ga.to_vec_u32().unwrap(), "{} {dtype:?}", what("argmax"));
                check(&what("softmax"), &c.softmax(axis).unwrap(), &g.softmax(axis).unwrap(), dtype, Class::Reduction);
                let (cl, gl) = (c.log_softmax(axis).unwrap(), g.log_softmax(axis).unwrap());
                check(&what("log_softmax"), &cl, &gl, dtype, Class::Reduction);
            }
        }
        let ninf = f32::NEG_INFINITY;
        let (c, g) = upload(vec![ninf, ninf, ninf, 0.0, ninf, 1.0], &[2, 3], dtype, &dev);
        check("softmax of -inf rows", &c.softmax(-1).unwrap(), &g.softmax(-1).unwrap(), dtype, Class::Reduction);
        check(
            "log_softmax of -inf rows",
            &c.log_softmax(-1).unwrap(),
            &g.log_softmax(-1).unwrap(),
            dtype,
            Class::Reduction,
        );
    }
}

#[test]
fn matmul() {
    let Some(dev) = gpu("cuda_ops::matmul") else { return };
    let mut r = rng("cuda matmul");
    let shapes = [
        (1, 1, 1, 1),
        (1, 1, 17, 3),
        (3, 5, 1, 9),
        (2, 33, 65, 17),
        (1, 130, 70, 259),
        (2, 128, 192, 320),
        (1, 77, 768, 768),
    ];
    for dtype in DTYPES {
        for (batch, m, n, k) in shapes {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let ad = if ta { [batch, k, m] } else { [batch, m, k] };
                let bd = if tb { [batch, n, k] } else { [batch, k, n] };
                let (ca, ga) = pair(&mut r, &ad, dtype, &dev, 1.0);
                let (cb, gb) = pair(&mut r, &bd, dtype, &dev, 1.0);
                let what = format!("matmul b{batch} {m}x{n}x{k} ta={ta} tb={tb}");
                check(
                    &what,
                    &ca.matmul_t(&cb, ta, tb).unwrap(),
                    &ga.matmul_t(&gb, ta, tb).unwrap(),
                    dtype,
                    Class::Contraction,
                );
            }
        }
        let (cx, gx) = pair(&mut r, &[3, 7, 40], dtype, &dev, 1.0);
        let (cw, gw) = pair(&mut r, &[24, 40], dtype, &dev, 1.0);
        let (c, g) = (cx.matmul_t(&cw, false, true).unwrap(), gx.matmul_t(&gw, false, true).unwrap());
        check("matmul shared weight", &c, &g, dtype, Class::Contraction);
    }
}

#[test]
fn layer_norm_and_group_norm() {
    let Some(dev) = gpu("cuda_ops::layer_norm_and_group_norm") else { return };
    let mut r = rng("cuda layer_norm_and_group_norm");
    for dtype in DTYPES {
        for (rows, cols) in [(1, 1), (1, 7), (5, 768), (3, 1025), (77, 320)] {
            let (cx, gx) = pair(&mut r, &[rows, cols], dtype, &dev, 2.0);
            let (cw, gw) = pair(&mut r, &[cols], dtype, &dev, 1.0);
            let (cb, gb) = pair(&mut r, &[cols], dtype, &dev, 1.0);
            let (c, g) = (cx.layer_norm(&cw, &cb, 1e-5).unwrap(), gx.layer_norm(&gw, &gb, 1e-5).unwrap());
            check(&format!("layer_norm {rows}x{cols}"), &c, &g, dtype, Class::Reduction);
        }
        for (dims, groups) in [
            (vec![1, 1, 1, 1], 1),
            (vec![2, 6, 5, 3], 3),
            (vec![1, 64, 9, 9], 32),
            (vec![3, 4, 7], 4),
            (vec![1, 320, 64, 64], 32),
        ] {
            let c_ = dims[1];
            let (cx, gx) = pair(&mut r, &dims, dtype, &dev, 3.0);
            let (cw, gw) = pair(&mut r, &[c_], dtype, &dev, 1.0);
            let (cb, gb) = pair(&mut r, &[c_], dtype, &dev, 1.0);
            let (c, g) =
                (cx.group_norm(groups, &cw, &cb, 1e-6).unwrap(), gx.group_norm(groups, &gw, &gb, 1e-6).unwrap());
            check(&format!("group_norm {dims:?} g{groups}"), &c, &g, dtype, Class::Reduction);
        }
    }
}

#[test]
fn conv2d() {
    let Some(dev) = gpu("cuda_ops::conv2d") else { return };
    let mut r = rng("cuda conv2d");
    let opt = |s, p| Conv2dOptions { stride: (s, s), padding: (p, p), ..Default::default() };
    // The shared cases, plus two big enough for several tiles per block dimension.
    let mut cases = common::conv_cases();
    cases.push(([1, 64, 32, 32], [64, 64, 3, 3], opt(1, 1), true));
    cases.push(([1, 3, 31, 33], [64, 3, 7, 7], opt(2, 3), false));
    for dtype in DTYPES {
        for &(xd, wd, o, with_bias) in &cases {
            let (cx, gx) = pair(&mut r, &xd, dtype, &dev, 1.0);
            let (cw, gw) = pair(&mut r, &wd, dtype, &dev, 1.0);
            let (cb, gb) = pair(&mut r, &[wd[0]], dtype, &dev, 1.0);
            let (cbias, gbias) = if with_bias { (Some(&cb), Some(&gb)) } else { (None, None) };
            let (c, g) = (cx.conv2d(&cw, cbias, o).unwrap(), gx.conv2d(&gw, gbias, o).unwrap());
            let scale = conv_terms_scale(&cx, &cw, cbias, o);
            check_to(&format!("conv2d {xd:?} {wd:?} {o:?}"), &c, &g, dtype, Class::Contraction, scale);
        }
    }
}

#[test]
fn layout_ops() {
    let Some(dev) = gpu("cuda_ops::layout_ops") else { return };
    let mut r = rng("cuda layout_ops");
    for dtype in DTYPES {
        let (c, g) = pair(&mut r, &[2, 3, 5, 7], dtype, &dev, 1.0);
        check(
            "upsample",
            &c.upsample_nearest2x().unwrap(),
            &g.upsample_nearest2x().unwrap(),
            dtype,
            Class::Elementwise,
        );
        check(
            "permute",
            &c.permute(&[0, 2, 3, 1]).unwrap(),
            &g.permute(&[0, 2, 3, 1]).unwrap(),
            dtype,
            Class::Elementwise,
        );
        check("transpose", &c.transpose(1, 3).unwrap(), &g.transpose(1, 3).unwrap(), dtype, Class::Elementwise);
        let (c2, g2) = pair(&mut r, &[2, 4, 5, 7], dtype, &dev, 1.0);
        let (cc, gc) = (Tensor::cat(&[&c, &c2], 1).unwrap(), Tensor::cat(&[&g, &g2], 1).unwrap());
        check("cat", &cc, &gc, dtype, Class::Elementwise);
        for (cs, gs) in cc.split(&[1, 5, 1], 1).unwrap().iter().zip(gc.split(&[1, 5, 1], 1).unwrap().iter()) {
            check("split", cs, gs, dtype, Class::Elementwise);
        }
        let (ct, gt) = pair(&mut r, &[49, 13], dtype, &dev, 1.0);
        let ids: Vec<u32> = (0..77).map(|_| r.below(49)).collect();
        let (ci, gi) = (
            Tensor::from_u32(ids.clone(), [7, 11], &Device::Cpu).unwrap(),
            Tensor::from_u32(ids, [7, 11], &dev).unwrap(),
        );
        check("embedding", &ct.embedding(&ci).unwrap(), &gt.embedding(&gi).unwrap(), dtype, Class::Elementwise);
    }
}

#[test]
fn attention() {
    let Some(dev) = gpu("cuda_ops::attention") else { return };
    let mut r = rng("cuda attention");
    let cases = [
        (1, 1, 1, 1, 1, false, false),
        (2, 3, 7, 7, 8, true, false),
        (1, 2, 5, 77, 40, false, true),
        (2, 1, 130, 33, 64, false, false),
        (1, 2, 65, 65, 80, true, true),
        (1, 8, 256, 77, 160, false, false),
        (1, 4, 300, 300, 256, true, false),
        (2, 8, 1024, 1024, 40, false, false),
    ];
    for dtype in DTYPES {
        for (b, h, lq, lk, d, causal, padded) in cases {
            let (cq, gq) = pair(&mut r, &[b, h, lq, d], dtype, &dev, 1.0);
            let (ck, gk) = pair(&mut r, &[b, h, lk, d], dtype, &dev, 1.0);
            let (cv, gv) = pair(&mut r, &[b, h, lk, d], dtype, &dev, 1.0);
            // The second image has every key padded: its rows must come out as zeros.
            let lengths: Vec<usize> = (0..b).map(|i| if i == 0 { lk - lk / 3 } else { 0 }).collect();
            let cm = padded.then(|| Tensor::padding_mask(&lengths, lk, &Device::Cpu).unwrap());
            let gm = cm.as_ref().map(|m| m.to_device(&dev).unwrap());
            let c = cq.attention(&ck, &cv, cm.as_ref(), causal, None).unwrap();
            let g = gq.attention(&gk, &gv, gm.as_ref(), causal, None).unwrap();
            let what = format!("attention b{b} h{h} q{lq} kv{lk} d{d} causal={causal} padded={padded}");
            check(&what, &c, &g, dtype, Class::Contraction);
        }
    }
}

#[test]
fn max_pool2d() {
    let Some(dev) = gpu("cuda_ops::max_pool2d") else { return };
    let mut r = rng("cuda max_pool2d");
    let cases: [(&[usize], usize, usize, usize); 7] = [
        (&[1, 1, 1, 1], 1, 1, 0),
        (&[2, 3, 9, 7], 3, 2, 1),
        (&[3, 11, 13], 2, 2, 0),
        (&[2, 2, 10, 5], 2, 1, 1),
        (&[1, 4, 17, 19], 5, 3, 2),
        (&[2, 64, 112, 112], 3, 2, 1),
        (&[1, 3, 4, 6], 4, 4, 0),
    ];
    for dtype in DTYPES {
        for (dims, k, s, p) in cases {
            let (c, g) = pair(&mut r, dims, dtype, &dev, 1.0);
            let (co, go) = (c.max_pool2d(k, s, p).unwrap(), g.max_pool2d(k, s, p).unwrap());
            // The max picks one of the inputs: exact in every dtype.
            let want = co.to_dtype(dtype).unwrap().to_host().unwrap();
            assert_eq!(go.dims(), co.dims(), "max_pool2d {dims:?} k{k} s{s} p{p} {dtype:?}: shapes differ");
            assert_eq!(go.to_host().unwrap(), want, "max_pool2d {dims:?} k{k} s{s} p{p} {dtype:?}");
        }
    }
    let x = vec![1.0, f32::NAN, 3.0, -2.0, 5.0, 0.5, -1.0, 2.0, 4.0];
    let got = Tensor::from_f32(x, [1, 1, 3, 3], &dev).unwrap().max_pool2d(2, 1, 0).unwrap().to_vec_f32().unwrap();
    assert!(got[0].is_nan() && got[1].is_nan() && got[2..] == [5.0, 5.0], "NaN wins: {got:?}");
}

#[test]
fn bad_input_is_an_error_on_the_gpu_too() {
    let Some(dev) = gpu("cuda_ops::bad_input_is_an_error_on_the_gpu_too") else { return };
    let a = Tensor::from_f32(vec![1.0; 6], [2, 3], &dev).unwrap();
    let b = Tensor::from_f32(vec![1.0; 4], [4], &dev).unwrap();
    assert!(a.add(&b).is_err());
    assert!(a.matmul(&a).is_err());
    let cpu = Tensor::from_f32(vec![1.0; 6], [2, 3], &Device::Cpu).unwrap();
    assert!(a.add(&cpu).is_err(), "operands on different devices");
}
