//! The CPU backward ops of attention and of the embedding lookup against central finite
//! differences of naive f64 forwards, contracted with a random upstream gradient r
//! (L = Σ f(x)·r), on fresh random inputs.

mod common;

use common::{finite_diff, randn, rel_err, rng};
use foil::{DType, Device, Error, Rng, Tensor};

/// h of the central differences: the forwards are smooth, so the truncation error (~h²) and
/// the rounding error (~1e-16/h) both stay near 1e-10.
const H: f64 = 1e-5;
/// f32 backward against the f64 reference, relative to the largest gradient.
const TOL: f64 = 1e-4;

/// One attention problem: dims and an optional additive mask (f64, with its dims).
struct Problem {
    batch: usize,
    heads: usize,
    q_len: usize,
    kv_len: usize,
    d: usize,
    causal: bool,
    scale: f64,
    mask: Option<(Vec<f64>, [usize; 4])>,
}

impl Problem {
    /// The mask value at (b, h, i, j), broadcasting its size-1 dims.
    fn mask_at(&self, b: usize, h: usize, i: usize, j: usize) -> f64 {
        let Some((m, dims)) = &self.mask else { return 0.0 };
        let idx = [b, h, i, j];
        m[(0..4).fold(0, |off, a| off * dims[a] + if dims[a] == 1 { 0 } else { idx[a] })]
    }

    /// Σ attention(q, k, v)·r in f64: softmax(q·kᵀ·scale + mask) with the causal mask, a row with
    /// every key masked giving zeros.
    fn loss(&self, q: &[f64], k: &[f64], v: &[f64], r: &[f64]) -> f64 {
        let (sq, sk, d) = (self.q_len, self.kv_len, self.d);
        let mut total = 0.0;
        for bh in 0..self.batch * self.heads {
            let (b, h) = (bh / self.heads, bh % self.heads);
            for i in 0..sq {
                let qi = &q[(bh * sq + i) * d..(bh * sq + i + 1) * d];
                let logits: Vec<f64> = (0..sk)
                    .map(|j| {
                        if self.causal && j > i {
                            return f64::NEG_INFINITY;
                        }
                        let kj = &k[(bh * sk + j) * d..(bh * sk + j + 1) * d];
                        qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>() * self.scale + self.mask_at(b, h, i, j)
                    })
                    .collect();
                let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                if max == f64::NEG_INFINITY {
                    continue;
                }
                let weights: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
                let sum: f64 = weights.iter().sum();
                let ri = &r[(bh * sq + i) * d..(bh * sq + i + 1) * d];
                for (j, w) in weights.iter().enumerate() {
                    let vj = &v[(bh * sk + j) * d..(bh * sk + j + 1) * d];
                    total += w / sum * vj.iter().zip(ri).map(|(a, b)| a * b).sum::<f64>();
                }
            }
        }
        total
    }
}

/// Asserts the relative error and prints it, naming the case.
fn check(what: &str, got: &Tensor, want: &[f64]) {
    let e = rel_err(&got.to_vec_f32().unwrap(), want);
    eprintln!("{what}: relative error {e:.2e}");
    assert!(e <= TOL, "{what}: relative error {e:.3e} > {TOL:.0e}");
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn tensor(data: &[f64], dims: &[usize]) -> Tensor {
    Tensor::from_f32(data.iter().map(|&x| x as f32).collect(), dims.to_vec(), &Device::Cpu).unwrap()
}

/// Random f32-representable values, so the f32 op and the f64 reference see the same inputs.
fn random(r: &mut Rng, n: usize) -> Vec<f64> {
    f64s(&randn(r, n))
}

fn check_attention(what: &str, p: &Problem, r: &mut Rng, scale_arg: Option<f32>) {
    let (qd, kd) = ([p.batch, p.heads, p.q_len, p.d], [p.batch, p.heads, p.kv_len, p.d]);
    let (q, k, v) = (random(r, qd.iter().product()), random(r, kd.iter().product()), random(r, kd.iter().product()));
    let up = random(r, q.len());
    let mask = p.mask.as_ref().map(|(m, dims)| tensor(m, dims));
    let (dq, dk, dv) = tensor(&q, &qd)
        .attention_backward(&tensor(&k, &kd), &tensor(&v, &kd), mask.as_ref(), p.causal, scale_arg, &tensor(&up, &qd))
        .unwrap();
    assert_eq!((dq.dims(), dk.dims(), dv.dims()), (&qd[..], &kd[..], &kd[..]), "{what}: gradient shapes");
    let want_q = finite_diff(&q, H, |x| p.loss(x, &k, &v, &up));
    let want_k = finite_diff(&k, H, |x| p.loss(&q, x, &v, &up));
    let want_v = finite_diff(&v, H, |x| p.loss(&q, &k, x, &up));
    check(&format!("{what} dq"), &dq, &want_q);
    check(&format!("{what} dk"), &dk, &want_k);
    check(&format!("{what} dv"), &dv, &want_v);
}

fn plain(batch: usize, heads: usize, q_len: usize, kv_len: usize, d: usize, causal: bool) -> Problem {
    Problem { batch, heads, q_len, kv_len, d, causal, scale: 1.0 / (d as f64).sqrt(), mask: None }
}

#[test]
fn attention_backward_matches_finite_differences() {
    let mut r = rng("attention_backward");
    for d in [8, 40, 64] {
        check_attention(&format!("self d{d}"), &plain(1, 2, 6, 6, d, false), &mut r, None);
        check_attention(&format!("cross d{d}"), &plain(2, 1, 5, 7, d, false), &mut r, None);
        check_attention(&format!("causal d{d}"), &plain(1, 2, 7, 7, d, true), &mut r, None);
    }
    // Causal with more queries than keys (the last rows see every key) and fewer.
    check_attention("causal q7 kv5", &plain(1, 1, 7, 5, 8, true), &mut r, None);
    check_attention("causal q5 kv7", &plain(2, 1, 5, 7, 8, true), &mut r, None);
    // Size 1, and an explicit scale.
    check_attention("one query one key", &plain(1, 1, 1, 1, 1, false), &mut r, None);
    let mut scaled = plain(1, 1, 3, 4, 5, false);
    scaled.scale = 0.3;
    check_attention("scale 0.3", &scaled, &mut r, Some(0.3));
}

#[test]
fn attention_backward_with_masks() {
    let mut r = rng("attention_backward masks");
    // Padding: the second image has no keys at all, so all its rows are fully masked and get zeros.
    let padding = Tensor::padding_mask(&[5, 0], 7, &Device::Cpu).unwrap();
    let pad = (f64s(&padding.to_vec_f32().unwrap()), [2, 1, 1, 7]);
    for d in [8, 40] {
        let p = Problem { mask: Some(pad.clone()), ..plain(2, 2, 5, 7, d, false) };
        check_attention(&format!("padding d{d}"), &p, &mut r, None);
    }
    // A full additive mask with one fully masked row and some -inf entries, with causal on top.
    let dims = [1, 2, 5, 7];
    let mut m = random(&mut r, dims.iter().product());
    m[(5 + 2) * 7..(5 + 3) * 7].fill(f64::NEG_INFINITY);
    m[3] = f64::NEG_INFINITY;
    for causal in [false, true] {
        let p = Problem { mask: Some((m.clone(), dims)), ..plain(1, 2, 5, 7, 40, causal) };
        check_attention(&format!("full mask causal={causal}"), &p, &mut r, None);
    }
    // The fully masked row gets exactly zero.
    let (q, k) = (tensor(&random(&mut r, 80), &[1, 2, 5, 8]), tensor(&random(&mut r, 112), &[1, 2, 7, 8]));
    let up = tensor(&random(&mut r, 80), &[1, 2, 5, 8]);
    let mask = tensor(&m, &dims);
    let (dq, _, _) = q.attention_backward(&k, &k, Some(&mask), false, None, &up).unwrap();
    let dq = dq.to_vec_f32().unwrap();
    assert!(dq[(5 + 2) * 8..(5 + 3) * 8].iter().all(|&g| g == 0.0), "fully masked row: {dq:?}");
}

#[test]
fn attention_backward_keeps_the_dtype_and_checks_shapes() {
    let mut r = rng("attention_backward shapes");
    let t = |dims: &[usize], r: &mut Rng| tensor(&random(r, dims.iter().product()), dims);
    let (q, k) = (t(&[1, 2, 3, 4], &mut r), t(&[1, 2, 5, 4], &mut r));
    let (dq, dk, dv) = q
        .to_dtype(DType::BF16)
        .unwrap()
        .attention_backward(
            &k.to_dtype(DType::BF16).unwrap(),
            &k.to_dtype(DType::BF16).unwrap(),
            None,
            false,
            None,
            &q.to_dtype(DType::BF16).unwrap(),
        )
        .unwrap();
    assert!([dq.dtype(), dk.dtype(), dv.dtype()].iter().all(|&d| d == DType::BF16));
    let bad_grad = q.attention_backward(&k, &k, None, false, None, &k);
    assert!(matches!(bad_grad, Err(Error::Shape { op: "attention_backward", .. })), "{bad_grad:?}");
    let bad_k = q.attention_backward(&t(&[1, 2, 5, 3], &mut r), &k, None, false, None, &q);
    assert!(matches!(bad_k, Err(Error::Shape { op: "attention_backward", .. })), "{bad_k:?}");
    let empty = Tensor::zeros([1, 2, 0, 4], DType::F32, &Device::Cpu).unwrap();
    let (dq, dk, dv) = empty.attention_backward(&k, &k, None, false, None, &empty).unwrap();
    assert_eq!(dq.dims(), [1, 2, 0, 4]);
    assert!(dk.to_vec_f32().unwrap().iter().chain(&dv.to_vec_f32().unwrap()).all(|&g| g == 0.0));
}

/// Σ table[ids[n]]·r[n] in f64.
fn embedding_loss(table: &[f64], ids: &[u32], dim: usize, r: &[f64]) -> f64 {
    ids.iter()
        .enumerate()
        .map(|(n, &i)| (0..dim).map(|c| table[i as usize * dim + c] * r[n * dim + c]).sum::<f64>())
        .sum()
}

#[test]
fn embedding_backward_matches_finite_differences() {
    let mut r = rng("embedding_backward");
    let cases: [(&[usize], usize, usize); 4] = [(&[1], 1, 1), (&[2, 5], 7, 3), (&[3, 4], 4, 16), (&[9], 20, 5)];
    for (id_dims, vocab, dim) in cases {
        let n: usize = id_dims.iter().product();
        // Repeated ids: each of the first half's ids comes back in the second half.
        let mut ids: Vec<u32> = (0..n).map(|_| (r.normal().abs() * vocab as f32) as u32 % vocab as u32).collect();
        for i in 0..n / 2 {
            ids[n - 1 - i] = ids[i];
        }
        let table = random(&mut r, vocab * dim);
        let up = random(&mut r, n * dim);
        let grad_dims = [id_dims, &[dim]].concat();
        let ids_t = Tensor::from_u32(ids.clone(), id_dims.to_vec(), &Device::Cpu).unwrap();
        let got = Tensor::embedding_backward(&tensor(&up, &grad_dims), &ids_t, vocab).unwrap();
        assert_eq!(got.dims(), [vocab, dim]);
        let want = finite_diff(&table, H, |t| embedding_loss(t, &ids, dim, &up));
        check(&format!("embedding ids {id_dims:?} vocab {vocab} dim {dim}"), &got, &want);
    }
}

#[test]
fn embedding_backward_rejects_bad_ids_and_shapes() {
    let ids = Tensor::from_u32(vec![0, 3, 9], [3], &Device::Cpu).unwrap();
    let grad = Tensor::from_f32(vec![1.0; 6], [3, 2], &Device::Cpu).unwrap();
    let e = Tensor::embedding_backward(&grad, &ids, 5).unwrap_err().to_string();
    assert!(e.contains("id 9") && !e.contains('\n'), "{e}");
    let bad = Tensor::embedding_backward(&grad.reshape([6]).unwrap(), &ids, 10);
    assert!(matches!(bad, Err(Error::Shape { op: "embedding_backward", .. })), "{bad:?}");
    let float_ids = Tensor::embedding_backward(&grad, &grad, 10);
    assert!(float_ids.is_err());
}
