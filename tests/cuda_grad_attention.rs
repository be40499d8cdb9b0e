//! The CUDA backward ops of attention and of the embedding lookup against the CPU ones, in f32,
//! f16 and bf16, on fresh random inputs (inputs rounded to the dtype first, so both backends see
//! the same values), with the tolerances of kernels/README.md: attention as a contraction, the
//! embedding's sums as a reduction. Both are deterministic: a second run is bit for bit the same.
//! Without a usable GPU each test prints one line saying it was skipped, and why.

mod common;

use common::{gpu, randn, rel_err, rng, tolerance, Class};
use foil::{DType, Device, Error, Rng, Tensor};

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// Random normal data of `dims`, rounded to `dtype`: as a CPU f32 tensor and a GPU tensor.
fn pair(r: &mut Rng, dims: &[usize], dtype: DType, gpu: &Device) -> (Tensor, Tensor) {
    let rounded = Tensor::from_f32(randn(r, dims.iter().product()), dims.to_vec(), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    (rounded.to_dtype(DType::F32).unwrap(), rounded.to_device(gpu).unwrap())
}

fn check(what: &str, cpu: &Tensor, gpu: &Tensor, dtype: DType, tol: f64) {
    assert_eq!(cpu.dims(), gpu.dims(), "{what}: shapes differ");
    assert_eq!(gpu.dtype(), dtype, "{what}: dtype");
    let want: Vec<f64> = cpu.to_vec_f32().unwrap().iter().map(|&v| v as f64).collect();
    let e = rel_err(&gpu.to_vec_f32().unwrap(), &want);
    eprintln!("{what} {dtype:?}: relative error {e:.2e}");
    assert!(e <= tol, "{what} {dtype:?}: relative error {e:.3e} > {tol:.0e}");
}

fn same_bits(what: &str, a: &Tensor, b: &Tensor) {
    assert_eq!(a.to_host().unwrap(), b.to_host().unwrap(), "{what}: two runs differ");
}

/// (batch, heads, q_len, kv_len, head_dim, causal, mask): mask 0 none, 1 padding with the last
/// image fully padded, 2 a full (batch, heads, q_len, kv_len) mask with one fully masked row.
type Case = (usize, usize, usize, usize, usize, bool, u8);

fn mask_for(r: &mut Rng, (b, h, lq, lk, ..): Case, kind: u8) -> Option<Tensor> {
    match kind {
        1 => {
            let lengths: Vec<usize> = (0..b).map(|i| if i + 1 == b && b > 1 { 0 } else { lk - lk / 3 }).collect();
            Some(Tensor::padding_mask(&lengths, lk, &Device::Cpu).unwrap())
        }
        2 => {
            let mut m = randn(r, b * h * lq * lk);
            m[(lq / 2) * lk..(lq / 2 + 1) * lk].fill(f32::NEG_INFINITY);
            Some(Tensor::from_f32(m, [b, h, lq, lk], &Device::Cpu).unwrap())
        }
        _ => None,
    }
}

#[test]
fn attention_backward_matches_the_cpu() {
    let Some(dev) = gpu("cuda_grad_attention::attention_backward_matches_the_cpu") else { return };
    let mut r = rng("cuda attention_backward");
    let cases: [Case; 11] = [
        (1, 1, 1, 1, 1, false, 0),
        (2, 3, 7, 7, 8, true, 0),
        (2, 2, 5, 77, 40, false, 1),
        (2, 1, 130, 33, 64, false, 2),
        (1, 2, 65, 65, 80, true, 1),
        (1, 2, 70, 45, 3, true, 2),
        (1, 8, 256, 77, 160, false, 0),
        (2, 2, 100, 300, 130, true, 1),
        // SD's self-attention at 64×64 latents (one head) and its cross-attention to 77 tokens.
        (1, 1, 4096, 4096, 40, false, 0),
        (1, 2, 4096, 77, 64, false, 1),
        (1, 1, 4096, 4096, 64, true, 0),
    ];
    for dtype in DTYPES {
        let tol = tolerance(dtype, Class::Contraction);
        for case in cases {
            let (b, h, lq, lk, d, causal, kind) = case;
            let (cq, gq) = pair(&mut r, &[b, h, lq, d], dtype, &dev);
            let (ck, gk) = pair(&mut r, &[b, h, lk, d], dtype, &dev);
            let (cv, gv) = pair(&mut r, &[b, h, lk, d], dtype, &dev);
            let (cg, gg) = pair(&mut r, &[b, h, lq, d], dtype, &dev);
            let cm = mask_for(&mut r, case, kind);
            let gm = cm.as_ref().map(|m| m.to_device(&dev).unwrap());
            let want = cq.attention_backward(&ck, &cv, cm.as_ref(), causal, None, &cg).unwrap();
            let got = gq.attention_backward(&gk, &gv, gm.as_ref(), causal, None, &gg).unwrap();
            let what = format!("attention_backward b{b} h{h} q{lq} kv{lk} d{d} causal={causal} mask={kind}");
            check(&format!("{what} dq"), &want.0, &got.0, dtype, tol);
            check(&format!("{what} dk"), &want.1, &got.1, dtype, tol);
            check(&format!("{what} dv"), &want.2, &got.2, dtype, tol);
            if lq * lk <= 1 << 16 {
                let again = gq.attention_backward(&gk, &gv, gm.as_ref(), causal, None, &gg).unwrap();
                same_bits(&what, &got.0, &again.0);
                same_bits(&what, &got.1, &again.1);
                same_bits(&what, &got.2, &again.2);
            }
        }
    }
}

#[test]
fn attention_backward_refuses_head_dims_past_160() {
    let Some(dev) = gpu("cuda_grad_attention::attention_backward_refuses_head_dims_past_160") else { return };
    let q = Tensor::zeros([1, 1, 2, 192], DType::F32, &dev).unwrap();
    let e = q.attention_backward(&q, &q, None, false, None, &q);
    assert!(matches!(&e, Err(Error::Cuda(m)) if m.contains("160")), "{e:?}");
}

#[test]
fn embedding_backward_matches_the_cpu() {
    let Some(dev) = gpu("cuda_grad_attention::embedding_backward_matches_the_cpu") else { return };
    let mut r = rng("cuda embedding_backward");
    // (ids dims, vocab, dim): CLIP's token table, its position table (every id 8 times), odd sizes.
    let cases: [(&[usize], usize, usize); 5] =
        [(&[1], 1, 1), (&[2, 77], 49408, 32), (&[8, 77], 77, 768), (&[300], 1000, 33), (&[3, 5, 7], 4, 5)];
    for dtype in DTYPES {
        let tol = tolerance(dtype, Class::Reduction);
        for (id_dims, vocab, dim) in cases {
            let n: usize = id_dims.iter().product();
            let ids: Vec<u32> =
                (0..n).map(|i| ((r.normal().abs() * 7919.0) as usize + i) as u32 % vocab as u32).collect();
            let grad_dims = [id_dims, &[dim]].concat();
            let (cg, gg) = pair(&mut r, &grad_dims, dtype, &dev);
            let ids_c = Tensor::from_u32(ids, id_dims.to_vec(), &Device::Cpu).unwrap();
            let ids_g = ids_c.to_device(&dev).unwrap();
            let want = Tensor::embedding_backward(&cg, &ids_c, vocab).unwrap();
            let got = Tensor::embedding_backward(&gg, &ids_g, vocab).unwrap();
            let what = format!("embedding_backward ids {id_dims:?} vocab {vocab} dim {dim}");
            check(&what, &want, &got, dtype, tol);
            same_bits(&what, &got, &Tensor::embedding_backward(&gg, &ids_g, vocab).unwrap());
        }
    }
    // CUDA skips ids past the vocabulary (the CPU refuses them).
    let ids = Tensor::from_u32(vec![1, 9, 1, 0], [4], &dev).unwrap();
    let grad = Tensor::from_f32((0..8).map(|v| v as f32).collect(), [4, 2], &dev).unwrap();
    let got = Tensor::embedding_backward(&grad, &ids, 3).unwrap().to_vec_f32().unwrap();
    assert_eq!(got, [6.0, 7.0, 4.0, 6.0, 0.0, 0.0]);
}
