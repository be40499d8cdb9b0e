//! Every CPU op against a plain float64 reference, on fresh random inputs at
//! several shapes (odd sizes and size 1 included), by relative error.

mod common;

use common::{assert_close, assert_close_to, randn, rng, strides};
use foil::{Conv2dOptions, DType, Device, Tensor};

const CPU: Device = Device::Cpu;
/// f32 against f64: one rounding for elementwise ops, accumulation order for the rest.
const TOL_ELEMENTWISE: f64 = 1e-6;
const TOL_REDUCE: f64 = 1e-5;
const TOL_MATMUL: f64 = 1e-5;

fn t(data: &[f32], dims: &[usize]) -> Tensor {
    Tensor::from_f32(data.to_vec(), dims.to_vec(), &CPU).unwrap()
}

fn max_abs(v: &[f32]) -> f64 {
    v.iter().fold(0f64, |m, &x| m.max(x.abs() as f64))
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// The standard normal CDF by Simpson's rule on its tail integral (independent
/// of the library's erf): Φ(x) = 1 − Φ(−x), tail = ∫_|x|^∞ φ(t) dt.
fn normal_cdf64(x: f64) -> f64 {
    let (a, n) = (x.abs(), 4000);
    let h = 12.0 / n as f64;
    let phi = |t: f64| (-0.5 * t * t).exp() / (2.0 * std::f64::consts::PI).sqrt();
    let inner: f64 = (1..n).map(|i| phi(a + i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 }).sum();
    let tail = (phi(a) + inner + phi(a + 12.0)) * h / 3.0;
    if x < 0.0 {
        tail
    } else {
        1.0 - tail
    }
}

#[test]
fn activations_match_f64() {
    let mut r = rng("activations_match_f64");
    let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
    type Case = (&'static str, fn(&Tensor) -> foil::Result<Tensor>, Box<dyn Fn(f64) -> f64>);
    let cases: Vec<Case> = vec![
        ("silu", Tensor::silu, Box::new(move |x| x * sig(x))),
        ("gelu", Tensor::gelu, Box::new(|x| x * normal_cdf64(x))),
        (
            "gelu_tanh",
            Tensor::gelu_tanh,
            Box::new(|x| 0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())),
        ),
        ("quick_gelu", Tensor::quick_gelu, Box::new(move |x| x * sig(1.702 * x))),
        ("relu", Tensor::relu, Box::new(|x| x.max(0.0))),
    ];
    for dims in [vec![1], vec![7], vec![3, 5, 17], vec![4099]] {
        let n: usize = dims.iter().product();
        let x: Vec<f32> = randn(&mut r, n).iter().map(|v| v * 3.0).collect();
        for (name, op, reference) in &cases {
            let got = op(&t(&x, &dims)).unwrap();
            assert_eq!(got.dims(), &dims[..]);
            let want: Vec<f64> = x.iter().map(|&v| reference(v as f64)).collect();
            // Judged against max |x| too: in the tails the exp's argument error, not the
            // result's rounding, bounds what f32 can reach, and |f(x)| ≤ |x| there.
            let got = got.to_vec_f32().unwrap();
            assert_close_to(&format!("{name} {dims:?}"), &got, &want, max_abs(&x), TOL_ELEMENTWISE);
        }
    }
}

#[test]
fn clamp_is_exact_and_keeps_nan() {
    let mut r = rng("clamp_is_exact_and_keeps_nan");
    for dims in [vec![1], vec![7], vec![3, 5, 17], vec![4099]] {
        let x: Vec<f32> = randn(&mut r, dims.iter().product()).iter().map(|v| v * 3.0).collect();
        // Both bounds inside the data's range, a point interval, and lo > hi (PyTorch gives hi).
        for (lo, hi) in [(-1.5f32, 2.0f32), (0.25, 0.25), (1.0, -1.0)] {
            let got = t(&x, &dims).clamp(lo, hi).unwrap();
            assert_eq!(got.dims(), &dims[..]);
            let want: Vec<f32> = x.iter().map(|&v| (v as f64).max(lo as f64).min(hi as f64) as f32).collect();
            assert_eq!(got.to_vec_f32().unwrap(), want, "clamp {dims:?} to [{lo}, {hi}]");
        }
    }
    let special = t(&[f32::NAN, f32::NEG_INFINITY, f32::INFINITY, -0.5], &[4]).clamp(-1.0, 1.0).unwrap();
    let got = special.to_vec_f32().unwrap();
    assert!(got[0].is_nan() && got[1..] == [-1.0, 1.0, -0.5], "NaN stays NaN: {got:?}");
    assert!(matches!(t(&[1.0], &[1]).clamp(f32::NAN, 1.0), Err(foil::Error::Usage(_))));
}

#[test]
fn geglu_matches_f64() {
    let mut r = rng("geglu_matches_f64");
    // d = 1, odd d, d a multiple of 4, and a long odd row.
    for dims in [vec![1, 2], vec![7, 34], vec![3, 5, 18], vec![2, 3, 64], vec![3, 8198]] {
        let n: usize = dims.iter().product();
        let x: Vec<f32> = randn(&mut r, n).iter().map(|v| v * 3.0).collect();
        let got = t(&x, &dims).geglu().unwrap();
        let d = dims[dims.len() - 1] / 2;
        let out_dims = [&dims[..dims.len() - 1], &[d]].concat();
        assert_eq!(got.dims(), &out_dims[..]);
        let (mut want, mut scale) = (Vec::with_capacity(n / 2), 0f64);
        for row in x.chunks(2 * d) {
            for (&h, &g) in row[..d].iter().zip(&row[d..]) {
                let (h, g) = (h as f64, g as f64);
                want.push(h * g * normal_cdf64(g));
                scale = scale.max((h * g).abs());
            }
        }
        // Judged against max |h·g| too, as GELU is against max |x|: |h·gelu(g)| ≤ |h·g|.
        assert_close_to(&format!("geglu {dims:?}"), &got.to_vec_f32().unwrap(), &want, scale, TOL_ELEMENTWISE);
    }
    assert!(matches!(t(&[1.0; 15], &[3, 5]).geglu(), Err(foil::Error::Shape { .. })), "odd last axis");
}

#[test]
fn scale_and_binary_ops_broadcast() {
    let mut r = rng("scale_and_binary_ops_broadcast");
    let shapes: [(&[usize], &[usize]); 7] = [
        (&[1], &[1]),
        (&[13], &[13]),
        (&[3, 4, 5], &[3, 4, 5]),
        (&[2, 3, 5], &[5]),
        (&[2, 3, 5], &[3, 1]),
        (&[4, 1, 7], &[1, 6, 1]),
        (&[1], &[2, 9]),
    ];
    for (da, db) in shapes {
        let a = randn(&mut r, da.iter().product());
        // Divisors kept away from zero so the reference is well conditioned.
        let b: Vec<f32> = randn(&mut r, db.iter().product()).iter().map(|v| v.signum() * (0.5 + v.abs())).collect();
        let rank = da.len().max(db.len());
        let pad = |d: &[usize]| [vec![1; rank - d.len()], d.to_vec()].concat();
        let (pa, pb) = (pad(da), pad(db));
        let out: Vec<usize> = (0..rank).map(|i| pa[i].max(pb[i])).collect();
        let (sa, sb, so) = (strides(&pa), strides(&pb), strides(&out));
        let numel: usize = out.iter().product();
        let pick = |i: usize, p: &[usize], s: &[usize]| -> usize {
            (0..rank).map(|d| if p[d] == 1 { 0 } else { (i / so[d]) % out[d] * s[d] }).sum()
        };
        for (name, f) in [
            ("add", (|x, y| x + y) as fn(f64, f64) -> f64),
            ("sub", |x, y| x - y),
            ("mul", |x, y| x * y),
            ("div", |x, y| x / y),
        ] {
            let (ta, tb) = (t(&a, da), t(&b, db));
            let got = match name {
                "add" => ta.add(&tb),
                "sub" => ta.sub(&tb),
                "mul" => ta.mul(&tb),
                _ => ta.div(&tb),
            }
            .unwrap();
            assert_eq!(got.dims(), &out[..], "{name} {da:?} {db:?}");
            let want: Vec<f64> =
                (0..numel).map(|i| f(a[pick(i, &pa, &sa)] as f64, b[pick(i, &pb, &sb)] as f64)).collect();
            assert_close(&format!("{name} {da:?} {db:?}"), &got.to_vec_f32().unwrap(), &want, TOL_ELEMENTWISE);
        }
        let got = t(&a, da).scale(-1.7).unwrap().to_vec_f32().unwrap();
        let want: Vec<f64> = a.iter().map(|&v| v as f64 * -1.7f32 as f64).collect();
        assert_close(&format!("scale {da:?}"), &got, &want, TOL_ELEMENTWISE);
    }
    assert!(t(&[1.0; 6], &[2, 3]).add(&t(&[1.0; 4], &[4])).is_err(), "non-broadcastable shapes must fail");
}

#[test]
fn casts_round_like_half_and_rust() {
    let mut r = rng("casts_round_like_half_and_rust");
    let x: Vec<f32> = randn(&mut r, 1001).iter().map(|v| v * 100.0).collect();
    let src = t(&x, &[7, 11, 13]);
    for (dtype, round) in [
        (DType::F16, (|v: f32| half::f16::from_f32(v).to_f32()) as fn(f32) -> f32),
        (DType::BF16, |v| half::bf16::from_f32(v).to_f32()),
    ] {
        let narrow = src.to_dtype(dtype).unwrap();
        assert_eq!(narrow.dtype(), dtype);
        let back = narrow.to_dtype(DType::F32).unwrap().to_vec_f32().unwrap();
        let want: Vec<f32> = x.iter().map(|&v| round(v)).collect();
        assert_eq!(back, want, "{dtype:?} round trip");
    }
    let specials = [-3.7f32, -0.0, 0.9, 1.5, 7.99, 4e9, 5e9, f32::NAN, f32::INFINITY];
    let ids = t(&specials, &[specials.len()]).to_dtype(DType::U32).unwrap().to_vec_u32().unwrap();
    assert_eq!(ids, specials.iter().map(|&v| v as u32).collect::<Vec<_>>(), "f32 -> u32 as Rust `as`");
    let back = Tensor::from_u32(vec![0, 1, 16_777_217, u32::MAX], [4], &CPU).unwrap().to_dtype(DType::F32).unwrap();
    assert_eq!(back.to_vec_f32().unwrap(), vec![0.0, 1.0, 16_777_217u32 as f32, u32::MAX as f32]);
}

#[test]
fn reductions_over_every_axis() {
    let mut r = rng("reductions_over_every_axis");
    for dims in [vec![1], vec![9], vec![3, 5, 7], vec![2, 1, 33], vec![1, 300]] {
        let n: usize = dims.iter().product();
        let x = randn(&mut r, n);
        for axis in 0..dims.len() {
            let (outer, len, inner) =
                (dims[..axis].iter().product::<usize>(), dims[axis], dims[axis + 1..].iter().product::<usize>());
            let at = |o: usize, l: usize, i: usize| x[(o * len + l) * inner + i] as f64;
            let mut sum = vec![];
            let mut abs_sum = 0f64;
            let mut max = vec![];
            let mut arg = vec![];
            for o in 0..outer {
                for i in 0..inner {
                    sum.push((0..len).map(|l| at(o, l, i)).sum::<f64>());
                    abs_sum = abs_sum.max((0..len).map(|l| at(o, l, i).abs()).sum::<f64>());
                    let best = (0..len).fold(0, |b, l| if at(o, l, i) > at(o, b, i) { l } else { b });
                    max.push(at(o, best, i));
                    arg.push(best as u32);
                }
            }
            let mean: Vec<f64> = sum.iter().map(|s| s / len as f64).collect();
            let xt = t(&x, &dims);
            let what = |op: &str| format!("{op} axis {axis} of {dims:?}");
            let mut kept = dims.clone();
            kept[axis] = 1;
            let s = xt.sum(axis as isize, true).unwrap();
            assert_eq!(s.dims(), &kept[..]);
            assert_close_to(&what("sum"), &s.to_vec_f32().unwrap(), &sum, abs_sum, TOL_REDUCE);
            let m = xt.mean(axis as isize, false).unwrap().to_vec_f32().unwrap();
            assert_close_to(&what("mean"), &m, &mean, abs_sum / len as f64, TOL_REDUCE);
            assert_close(&what("max"), &xt.max(axis as isize, false).unwrap().to_vec_f32().unwrap(), &max, 0.0);
            let a = xt.argmax(axis as isize, false).unwrap();
            assert_eq!(a.dtype(), DType::U32);
            assert_eq!(a.to_vec_u32().unwrap(), arg, "{}", what("argmax"));
        }
    }
    let ties = t(&[1.0, 3.0, 3.0, -1.0], &[4]).argmax(0, false).unwrap().to_vec_u32().unwrap();
    assert_eq!(ties, vec![1], "argmax returns the first maximum");
}

#[test]
fn softmax_and_log_softmax() {
    let mut r = rng("softmax_and_log_softmax");
    for (dims, axis) in [(vec![1, 1], 1), (vec![5, 1000], 1), (vec![3, 7, 4], 1), (vec![2, 3, 129], -1), (vec![6], 0)] {
        let n: usize = dims.iter().product();
        let x: Vec<f32> = randn(&mut r, n).iter().map(|v| v * 4.0).collect();
        let a = if axis < 0 { dims.len() - 1 } else { axis as usize };
        let (outer, len, inner) =
            (dims[..a].iter().product::<usize>(), dims[a], dims[a + 1..].iter().product::<usize>());
        let (mut soft, mut logs) = (vec![0f64; n], vec![0f64; n]);
        for o in 0..outer {
            for i in 0..inner {
                let idx = |l: usize| (o * len + l) * inner + i;
                let m = (0..len).map(|l| x[idx(l)] as f64).fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = (0..len).map(|l| (x[idx(l)] as f64 - m).exp()).sum();
                for l in 0..len {
                    soft[idx(l)] = (x[idx(l)] as f64 - m).exp() / z;
                    logs[idx(l)] = x[idx(l)] as f64 - m - z.ln();
                }
            }
        }
        let xt = t(&x, &dims);
        assert_close(&format!("softmax {dims:?}"), &xt.softmax(axis).unwrap().to_vec_f32().unwrap(), &soft, TOL_REDUCE);
        assert_close(
            &format!("log_softmax {dims:?}"),
            &xt.log_softmax(axis).unwrap().to_vec_f32().unwrap(),
            &logs,
            TOL_REDUCE,
        );
    }
    let ninf = f32::NEG_INFINITY;
    let masked = t(&[ninf, ninf, ninf, 0.0, ninf, 0.0], &[2, 3]);
    assert_close(
        "softmax of -inf rows",
        &masked.softmax(-1).unwrap().to_vec_f32().unwrap(),
        &[0.0, 0.0, 0.0, 0.5, 0.0, 0.5],
        0.0,
    );
    let ln2 = -std::f64::consts::LN_2;
    let l = masked.log_softmax(-1).unwrap().to_vec_f32().unwrap();
    assert_close(
        "log_softmax of -inf rows",
        &l,
        &[f64::NEG_INFINITY, f64::NEG_INFINITY, f64::NEG_INFINITY, ln2, f64::NEG_INFINITY, ln2],
        TOL_REDUCE,
    );
}

/// (m, k) · (k, n) in f64 with optional transposes of the stored operands.
fn matmul64(a: &[f32], b: &[f32], m: usize, n: usize, k: usize, ta: bool, tb: bool) -> Vec<f64> {
    let mut c = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k)
                .map(|l| {
                    let av = if ta { a[l * m + i] } else { a[i * k + l] };
                    let bv = if tb { b[j * k + l] } else { b[l * n + j] };
                    av as f64 * bv as f64
                })
                .sum();
        }
    }
    c
}

#[test]
fn matmul_batched_and_transposed() {
    let mut r = rng("matmul_batched_and_transposed");
    for (batch, m, n, k) in
        [(1, 1, 1, 1), (1, 1, 17, 3), (3, 5, 1, 9), (2, 33, 65, 17), (1, 130, 70, 259), (4, 64, 64, 64)]
    {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let a = randn(&mut r, batch * m * k);
            let b = randn(&mut r, batch * k * n);
            let (ad, bd) =
                (if ta { [batch, k, m] } else { [batch, m, k] }, if tb { [batch, n, k] } else { [batch, k, n] });
            let got = t(&a, &ad).matmul_t(&t(&b, &bd), ta, tb).unwrap();
            assert_eq!(got.dims(), &[batch, m, n]);
            let want: Vec<f64> = (0..batch)
                .flat_map(|z| matmul64(&a[z * m * k..][..m * k], &b[z * k * n..][..k * n], m, n, k, ta, tb))
                .collect();
            let what = format!("matmul b{batch} {m}x{n}x{k} ta={ta} tb={tb}");
            assert_close(&what, &got.to_vec_f32().unwrap(), &want, TOL_MATMUL);
        }
    }
    // A 2-D weight shared across a batch, as a linear layer uses it.
    let (x, w) = (randn(&mut r, 3 * 7 * 5), randn(&mut r, 6 * 5));
    let got = t(&x, &[3, 7, 5]).matmul_t(&t(&w, &[6, 5]), false, true).unwrap();
    assert_eq!(got.dims(), &[3, 7, 6]);
    assert_close("shared weight", &got.to_vec_f32().unwrap(), &matmul64(&x, &w, 21, 6, 5, false, true), TOL_MATMUL);
    assert!(t(&x, &[3, 7, 5]).matmul(&t(&w, &[6, 5])).is_err(), "inner dimensions differ");
}

#[test]
fn layer_norm_and_group_norm() {
    let mut r = rng("layer_norm_and_group_norm");
    for (rows, cols) in [(1, 1), (1, 7), (5, 768), (3, 1025)] {
        let x: Vec<f32> = randn(&mut r, rows * cols).iter().map(|v| v * 2.0 + 0.5).collect();
        let (w, b) = (randn(&mut r, cols), randn(&mut r, cols));
        let mut want = vec![0f64; rows * cols];
        for i in 0..rows {
            let row = &x[i * cols..][..cols];
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / cols as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / cols as f64;
            for j in 0..cols {
                want[i * cols + j] = (row[j] as f64 - mean) / (var + 1e-5).sqrt() * w[j] as f64 + b[j] as f64;
            }
        }
        let got = t(&x, &[rows, cols]).layer_norm(&t(&w, &[cols]), &t(&b, &[cols]), 1e-5).unwrap();
        assert_close(&format!("layer_norm {rows}x{cols}"), &got.to_vec_f32().unwrap(), &want, TOL_REDUCE);
    }
    for (n, c, hw, groups) in
        [(1, 1, vec![1, 1], 1), (2, 6, vec![5, 3], 3), (1, 64, vec![9, 9], 32), (3, 4, vec![7], 4)]
    {
        let spatial: usize = hw.iter().product();
        let x: Vec<f32> = randn(&mut r, n * c * spatial).iter().map(|v| v * 3.0 - 1.0).collect();
        let (w, b) = (randn(&mut r, c), randn(&mut r, c));
        let per = c / groups * spatial;
        let mut want = vec![0f64; x.len()];
        for (g, chunk) in x.chunks(per).enumerate() {
            let mean = chunk.iter().map(|&v| v as f64).sum::<f64>() / per as f64;
            let var = chunk.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / per as f64;
            for (i, &v) in chunk.iter().enumerate() {
                let ch = (g % groups) * (c / groups) + i / spatial;
                want[g * per + i] = (v as f64 - mean) / (var + 1e-6).sqrt() * w[ch] as f64 + b[ch] as f64;
            }
        }
        let dims = [vec![n, c], hw.clone()].concat();
        let got = t(&x, &dims).group_norm(groups, &t(&w, &[c]), &t(&b, &[c]), 1e-6).unwrap();
        assert_close(&format!("group_norm {dims:?} g{groups}"), &got.to_vec_f32().unwrap(), &want, TOL_REDUCE);
    }
    assert!(t(&[0.5; 12], &[1, 6, 2]).group_norm(4, &t(&[1.0; 6], &[6]), &t(&[0.0; 6], &[6]), 1e-5).is_err());
}

#[allow(clippy::too_many_arguments)]
fn conv64(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    xd: [usize; 4],
    wd: [usize; 4],
    o: Conv2dOptions,
) -> (Vec<f64>, [usize; 4]) {
    let [n, c_in, h, wi] = xd;
    let [c_out, cig, kh, kw] = wd;
    let ho = (h + 2 * o.padding.0 - o.dilation.0 * (kh - 1) - 1) / o.stride.0 + 1;
    let wo = (wi + 2 * o.padding.1 - o.dilation.1 * (kw - 1) - 1) / o.stride.1 + 1;
    let cog = c_out / o.groups;
    let mut y = vec![0f64; n * c_out * ho * wo];
    for b in 0..n {
        for co in 0..c_out {
            let g = co / cog;
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut s = bias.map_or(0.0, |bv| bv[co] as f64);
                    for ci in 0..cig {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * o.stride.0 + ky * o.dilation.0) as isize - o.padding.0 as isize;
                                let ix = (ox * o.stride.1 + kx * o.dilation.1) as isize - o.padding.1 as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wi as isize {
                                    continue;
                                }
                                let xv = x[((b * c_in + g * cig + ci) * h + iy as usize) * wi + ix as usize];
                                s += xv as f64 * w[((co * cig + ci) * kh + ky) * kw + kx] as f64;
                            }
                        }
                    }
                    y[((b * c_out + co) * ho + oy) * wo + ox] = s;
                }
            }
        }
    }
    (y, [n, c_out, ho, wo])
}

#[test]
fn conv2d_strides_padding_dilation_groups() {
    let mut r = rng("conv2d_strides_padding_dilation_groups");
    let cases = common::conv_cases();
    for (xd, wd, o, with_bias) in cases {
        let x = randn(&mut r, xd.iter().product());
        let w = randn(&mut r, wd.iter().product());
        let b = randn(&mut r, wd[0]);
        let bias = with_bias.then(|| t(&b, &[wd[0]]));
        let got = t(&x, &xd).conv2d(&t(&w, &wd), bias.as_ref(), o).unwrap();
        let (want, yd) = conv64(&x, &w, with_bias.then_some(&b[..]), xd, wd, o);
        assert_eq!(got.dims(), &yd[..], "conv2d {xd:?} {wd:?} {o:?}");
        // Rounding grows with Σ|x·w| + |b|, not with the output, which can
        // cancel to near zero (a single x·w + b, say).
        let abs = |v: &[f32]| v.iter().map(|a| a.abs()).collect::<Vec<f32>>();
        let (terms, _) = conv64(&abs(&x), &abs(&w), with_bias.then_some(&abs(&b)[..]), xd, wd, o);
        let scale = terms.iter().fold(0f64, |m, &v| m.max(v));
        let what = format!("conv2d {xd:?} {wd:?} {o:?}");
        assert_close_to(&what, &got.to_vec_f32().unwrap(), &want, scale, TOL_MATMUL);
    }
    assert!(t(&[1.0; 27], &[1, 3, 3, 3])
        .conv2d(&t(&[1.0; 16], &[1, 4, 2, 2]), None, Conv2dOptions::default())
        .is_err());
}

#[test]
fn upsample_cat_split_permute_embedding() {
    let mut r = rng("upsample_cat_split_permute_embedding");
    let x = randn(&mut r, 2 * 3 * 5);
    let up = t(&x, &[2, 3, 5]).upsample_nearest2x().unwrap();
    assert_eq!(up.dims(), &[2, 6, 10]);
    let want: Vec<f64> =
        (0..2 * 6 * 10).map(|i| x[(i / 60) * 15 + (i % 60 / 10 / 2) * 5 + (i % 10) / 2] as f64).collect();
    assert_close("upsample", &up.to_vec_f32().unwrap(), &want, 0.0);

    let (a, b) = (randn(&mut r, 2 * 3 * 4), randn(&mut r, 2 * 5 * 4));
    let cat = Tensor::cat(&[&t(&a, &[2, 3, 4]), &t(&b, &[2, 5, 4])], 1).unwrap();
    assert_eq!(cat.dims(), &[2, 8, 4]);
    let want: Vec<f64> =
        (0..2).flat_map(|n| [&a[n * 12..][..12], &b[n * 20..][..20]].concat()).map(|v| v as f64).collect();
    assert_close("cat", &cat.to_vec_f32().unwrap(), &want, 0.0);
    let parts = cat.split(&[3, 5], 1).unwrap();
    assert_close("split 0", &parts[0].to_vec_f32().unwrap(), &f64s(&a), 0.0);
    assert_close("split 1", &parts[1].to_vec_f32().unwrap(), &f64s(&b), 0.0);
    assert!(cat.split(&[3, 4], 1).is_err());

    let dims = [2, 3, 4, 5];
    let x = randn(&mut r, 120);
    let perm = [0, 2, 3, 1];
    let p = t(&x, &dims).permute(&perm).unwrap();
    assert_eq!(p.dims(), &[2, 4, 5, 3]);
    let (s, pd) = (strides(&dims), [2, 4, 5, 3]);
    let ps = strides(&pd);
    let want: Vec<f64> =
        (0..120).map(|i| x[(0..4).map(|d| (i / ps[d]) % pd[d] * s[perm[d]]).sum::<usize>()] as f64).collect();
    assert_close("permute", &p.to_vec_f32().unwrap(), &want, 0.0);

    let table = randn(&mut r, 11 * 6);
    let ids: Vec<u32> = (0..7).map(|_| r.below(11)).collect();
    let e = t(&table, &[11, 6]).embedding(&Tensor::from_u32(ids.clone(), [7], &CPU).unwrap()).unwrap();
    assert_eq!(e.dims(), &[7, 6]);
    let want: Vec<f64> = ids.iter().flat_map(|&i| table[i as usize * 6..][..6].to_vec()).map(|v| v as f64).collect();
    assert_close("embedding", &e.to_vec_f32().unwrap(), &want, 0.0);
    assert!(t(&table, &[11, 6]).embedding(&Tensor::from_u32(vec![11], [1], &CPU).unwrap()).is_err());
}

/// softmax(q·kᵀ·scale + mask)·v in f64; a row with every key masked gives zeros.
#[allow(clippy::too_many_arguments)]
fn attention64(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: Option<&[f32]>,
    b: usize,
    h: usize,
    lq: usize,
    lk: usize,
    d: usize,
    causal: bool,
) -> Vec<f64> {
    let scale = 1.0 / (d as f64).sqrt();
    let mut o = vec![0f64; b * h * lq * d];
    for bh in 0..b * h {
        for i in 0..lq {
            let s: Vec<f64> = (0..lk)
                .map(|j| {
                    let masked = causal && j > i;
                    let add = mask.map_or(0.0, |m| m[(bh / h) * lk + j] as f64);
                    if masked || add == f64::NEG_INFINITY {
                        return f64::NEG_INFINITY;
                    }
                    let dot: f64 =
                        (0..d).map(|c| q[(bh * lq + i) * d + c] as f64 * k[(bh * lk + j) * d + c] as f64).sum();
                    dot * scale + add
                })
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            if m == f64::NEG_INFINITY {
                continue;
            }
            let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
            for c in 0..d {
                o[(bh * lq + i) * d + c] =
                    (0..lk).map(|j| (s[j] - m).exp() / z * v[(bh * lk + j) * d + c] as f64).sum();
            }
        }
    }
    o
}

#[test]
fn attention_self_cross_causal_and_padding() {
    let mut r = rng("attention_self_cross_causal_and_padding");
    for (b, h, lq, lk, d, causal, padded) in [
        (1, 1, 1, 1, 1, false, false),
        (2, 3, 7, 7, 8, true, false),
        (1, 2, 5, 77, 40, false, true),
        (2, 1, 130, 33, 64, false, false),
        (1, 2, 65, 65, 80, true, true),
    ] {
        let (q, k, v) = (randn(&mut r, b * h * lq * d), randn(&mut r, b * h * lk * d), randn(&mut r, b * h * lk * d));
        // Lengths include 0, so a fully masked row (all keys padded) is covered.
        let lengths: Vec<usize> = (0..b).map(|i| if i == 0 { lk - lk / 3 } else { 0 }).collect();
        let mask = padded.then(|| Tensor::padding_mask(&lengths, lk, &CPU).unwrap());
        let mask_data = mask.as_ref().map(|m| m.to_vec_f32().unwrap());
        let got = t(&q, &[b, h, lq, d])
            .attention(&t(&k, &[b, h, lk, d]), &t(&v, &[b, h, lk, d]), mask.as_ref(), causal, None)
            .unwrap();
        let want = attention64(&q, &k, &v, mask_data.as_deref(), b, h, lq, lk, d, causal);
        let what = format!("attention b{b} h{h} q{lq} kv{lk} d{d} causal={causal} padded={padded}");
        assert_close(&what, &got.to_vec_f32().unwrap(), &want, TOL_MATMUL);
    }
}
