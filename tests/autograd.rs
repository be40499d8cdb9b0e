//! The autograd engine on the ops whose gradients are compositions of other
//! ops (broadcast arithmetic, matmul, reductions, layout), against central
//! finite differences of the same computation written naively in f64; and the
//! engine's rules: accumulation, untracked inputs, no_grad, errors.

mod common;

use common::{assert_close, assert_close_to, finite_diff, randn, rng};
use foil::autograd::{backward, no_grad};
use foil::{Device, Tensor};

const CPU: Device = Device::Cpu;

fn t(v: &[f64], dims: &[usize]) -> Tensor {
    Tensor::from_f32(v.iter().map(|&x| x as f32).collect(), dims.to_vec(), &CPU).unwrap().tracked()
}

fn rand64(name: &str, n: usize) -> Vec<f64> {
    randn(&mut rng(name), n).into_iter().map(f64::from).collect()
}

fn grad(g: &foil::autograd::Gradients, x: &Tensor) -> Vec<f32> {
    g.get(x).expect("a gradient for a tracked input").to_vec_f32().unwrap()
}

/// Σ over all elements of `x` (rank-1 result of one element), by repeated sums.
fn total(x: &Tensor) -> Tensor {
    let mut s = x.reshape([x.numel()]).unwrap();
    s = s.sum(0, true).unwrap();
    s
}

#[test]
fn broadcast_arithmetic() {
    // L = Σ ((a + b) · c / d − e) · r with a (2,3,4), b (4,), c (3,1), d (2,1,4), e (1,)
    let (a, b, c, d, e) = (rand64("a", 24), rand64("b", 4), rand64("c", 3), rand64("d", 8), rand64("e", 1));
    let d: Vec<f64> = d.iter().map(|v| 1.5 + v.abs()).collect(); // away from zero
    let r = rand64("r", 24);
    let f = |a: &[f64], b: &[f64], c: &[f64], d: &[f64], e: &[f64]| -> f64 {
        let mut s = 0.0;
        for i in 0..2 {
            for (j, cj) in c.iter().enumerate() {
                for (k, bk) in b.iter().enumerate() {
                    let o = (i * 3 + j) * 4 + k;
                    s += ((a[o] + bk) * cj / d[i * 4 + k] - e[0]) * r[o];
                }
            }
        }
        s
    };
    let (ta, tb, tc, td, te) = (t(&a, &[2, 3, 4]), t(&b, &[4]), t(&c, &[3, 1]), t(&d, &[2, 1, 4]), t(&e, &[1]));
    let tr = Tensor::from_f32(r.iter().map(|&x| x as f32).collect(), [2, 3, 4], &CPU).unwrap();
    let y = ta.add(&tb).unwrap().mul(&tc).unwrap().div(&td).unwrap().sub(&te).unwrap().mul(&tr).unwrap();
    let g = backward(&total(&y)).unwrap();
    // The gradients of b, c, d and e sum over the elements they were broadcast
    // to, and such a sum can cancel: each is judged against the largest Σ|term|.
    let mut size = [vec![0f64; 24], vec![0f64; 4], vec![0f64; 3], vec![0f64; 8], vec![0f64; 1]];
    for i in 0..2 {
        for j in 0..3 {
            for k in 0..4 {
                let o = (i * 3 + j) * 4 + k;
                let (ab, cj, dik, ro) = ((a[o] + b[k]).abs(), c[j].abs(), d[i * 4 + k], r[o].abs());
                size[0][o] += cj / dik * ro;
                size[1][k] += cj / dik * ro;
                size[2][j] += ab / dik * ro;
                size[3][i * 4 + k] += ab * cj / (dik * dik) * ro;
                size[4][0] += ro;
            }
        }
    }
    let [sa, sb, sc, sd, se] = size.map(|v| v.iter().fold(0f64, |m, &x| m.max(x)));
    let h = 1e-6;
    assert_close_to("da", &grad(&g, &ta), &finite_diff(&a, h, |x| f(x, &b, &c, &d, &e)), sa, 1e-5);
    assert_close_to("db", &grad(&g, &tb), &finite_diff(&b, h, |x| f(&a, x, &c, &d, &e)), sb, 1e-5);
    assert_close_to("dc", &grad(&g, &tc), &finite_diff(&c, h, |x| f(&a, &b, x, &d, &e)), sc, 1e-5);
    assert_close_to("dd", &grad(&g, &td), &finite_diff(&d, h, |x| f(&a, &b, &c, x, &e)), sd, 1e-5);
    assert_close_to("de", &grad(&g, &te), &finite_diff(&e, h, |x| f(&a, &b, &c, &d, x)), se, 1e-5);
}

#[test]
fn matmul_batched_shared_and_transposed() {
    // (2, 3, 5) · op(W) with W shared across the batch, every transpose combination.
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        let (m, k, n) = (3, 5, 4);
        let x = rand64("x", 2 * m * k);
        let w = rand64("w", k * n);
        let r = rand64("r", 2 * m * n);
        let xd = if ta { [2, k, m] } else { [2, m, k] };
        let wd = if tb { [n, k] } else { [k, n] };
        let f = |x: &[f64], w: &[f64]| -> f64 {
            let mut s = 0.0;
            for bi in 0..2 {
                for i in 0..m {
                    for j in 0..n {
                        let mut acc = 0.0;
                        for l in 0..k {
                            let xv = if ta { x[bi * k * m + l * m + i] } else { x[bi * m * k + i * k + l] };
                            let wv = if tb { w[j * k + l] } else { w[l * n + j] };
                            acc += xv * wv;
                        }
                        s += acc * r[(bi * m + i) * n + j];
                    }
                }
            }
            s
        };
        let (tx, tw) = (t(&x, &xd), t(&w, &wd));
        let tr = Tensor::from_f32(r.iter().map(|&v| v as f32).collect(), [2, m, n], &CPU).unwrap();
        let y = tx.matmul_t(&tw, ta, tb).unwrap().mul(&tr).unwrap();
        let g = backward(&total(&y)).unwrap();
        let what = format!("trans ({ta}, {tb})");
        assert_close(&format!("dx {what}"), &grad(&g, &tx), &finite_diff(&x, 1e-6, |v| f(v, &w)), 1e-5);
        assert_close(&format!("dw {what}"), &grad(&g, &tw), &finite_diff(&w, 1e-6, |v| f(&x, v)), 1e-5);
    }
}

#[test]
fn reductions_and_layout() {
    // L = Σ cat([mean_1(x)ᵀ-ish permute, narrow], …) · r, exercising sum, mean,
    // permute, narrow, cat, reshape and broadcast_to in one graph.
    let x = rand64("x", 2 * 3 * 5);
    let r1 = rand64("r1", 5 * 2);
    let r2 = rand64("r2", 2 * 3 * 5);
    let r3 = rand64("r3", 3 * 2);
    let f = |x: &[f64]| -> f64 {
        let at = |i: usize, j: usize, k: usize| x[(i * 3 + j) * 5 + k];
        let mut s = 0.0;
        // mean over axis 1 → (2, 5), permuted to (5, 2)
        for k in 0..5 {
            for i in 0..2 {
                s += (0..3).map(|j| at(i, j, k)).sum::<f64>() / 3.0 * r1[k * 2 + i];
            }
        }
        // sum over axis 2 → (2, 3, 1), broadcast back to (2, 3, 5), times x narrowed... times r2
        for i in 0..2 {
            for j in 0..3 {
                let row: f64 = (0..5).map(|k| at(i, j, k)).sum();
                for k in 0..5 {
                    s += row * r2[(i * 3 + j) * 5 + k];
                }
            }
        }
        // narrow axis 2 to 1..3 then the last two of them summed: cat of two narrows
        for j in 0..3 {
            for i in 0..2 {
                s += (at(i, j, 1) + at(i, j, 4)) * r3[j * 2 + i];
            }
        }
        s
    };
    let tx = t(&x, &[2, 3, 5]);
    let r = |v: &[f64], d: &[usize]| Tensor::from_f32(v.iter().map(|&x| x as f32).collect(), d.to_vec(), &CPU).unwrap();
    let a = tx.mean(1, false).unwrap().permute(&[1, 0]).unwrap().mul(&r(&r1, &[5, 2])).unwrap();
    let b = tx.sum(2, true).unwrap().broadcast_to(&[2, 3, 5]).unwrap().mul(&r(&r2, &[2, 3, 5])).unwrap();
    let pair = Tensor::cat(&[&tx.narrow(2, 1, 1).unwrap(), &tx.narrow(2, 4, 1).unwrap()], 2).unwrap();
    let c = pair.sum(2, false).unwrap().permute(&[1, 0]).unwrap().mul(&r(&r3, &[3, 2])).unwrap();
    let loss = total(&a).add(&total(&b)).unwrap().add(&total(&c)).unwrap();
    let g = backward(&loss).unwrap();
    assert_close("dx", &grad(&g, &tx), &finite_diff(&x, 1e-6, f), 1e-5);
}

#[test]
fn reuse_accumulates_and_untracked_inputs_get_nothing() {
    let x = rand64("x", 6);
    let tx = t(&x, &[6]);
    let data = Tensor::from_f32(randn(&mut rng("d"), 6), [6], &CPU).unwrap();
    // L = Σ x·x·data + Σ x: dL/dx = 2·x·data + 1
    let loss = total(&tx.mul(&tx).unwrap().mul(&data).unwrap()).add(&total(&tx)).unwrap();
    let g = backward(&loss).unwrap();
    let d = data.to_vec_f32().unwrap();
    let want: Vec<f64> = x.iter().zip(&d).map(|(x, d)| 2.0 * x * *d as f64 + 1.0).collect();
    assert_close("dx", &grad(&g, &tx), &want, 1e-6);
    assert!(g.get(&data).is_none(), "an untracked input has no gradient");
    assert_eq!(g.len(), 1);
}

#[test]
fn no_grad_records_nothing() {
    let x = t(&rand64("x", 4), &[4]);
    let y = {
        let _guard = no_grad();
        x.scale(2.0).unwrap()
    };
    assert!(!y.is_tracked());
    assert!(x.scale(2.0).unwrap().is_tracked(), "recording resumes when the guard drops");
    assert!(backward(&total(&y)).unwrap_err().to_string().contains("does not depend on any tracked tensor"));
}

#[test]
fn errors_are_values() {
    let x = t(&rand64("x", 6), &[2, 3]);
    let e = backward(&x).err().unwrap().to_string();
    assert!(e.contains("one element"), "{e}");
    let m = x.max(1, false).unwrap();
    let e = backward(&total(&m)).err().unwrap().to_string();
    assert!(e.contains("no gradient for max"), "{e}");
}
