//! `cargo bench`: foil's ops at Stable Diffusion 1.5 and ResNet-50 shapes, on
//! the CPU and (when one is usable) the GPU. Each row prints the time, the
//! achieved GFLOP/s or GB/s, and a ratio to a reference measured in the same
//! run: on the CPU the machine's FMA peak (compute-bound ops) or its copy
//! bandwidth (memory-bound ops); on the GPU cuBLAS at the same GEMM shape and
//! dtype, or the device's copy bandwidth.
//!
//! Arguments filter rows by substring (`cargo bench -- matmul`, `-- gpu`).

mod common;

use common::{cpu_fma_peak, time_cpu, time_gpu};
use foil::device::cuda::cublas::Cublas;
use foil::device::{BackendStorage, SchedulerStep, Storage};
use foil::{Conv2dOptions, DType, Device, Rng, Tensor};

/// What one call of an op does: floating-point operations or bytes moved.
#[derive(Clone, Copy)]
enum Work {
    Flops(f64),
    Bytes(f64),
}

struct Row {
    name: String,
    seconds: f64,
    work: Work,
    /// The reference's name and its rate in the same unit as `work` per second.
    reference: (String, f64),
}

fn print_header() {
    println!("| op | shape | device | time (ms) | achieved | reference | ratio |");
    println!("| --- | --- | --- | ---: | ---: | --- | ---: |");
}

fn print_row(r: &Row) {
    let (rate, unit) = match r.work {
        Work::Flops(f) => (f / r.seconds / 1e9, "GFLOP/s"),
        Work::Bytes(b) => (b / r.seconds / 1e9, "GB/s"),
    };
    let (ref_name, ref_rate) = &r.reference;
    println!(
        "| {} | {:.3} | {rate:.1} {unit} | {ref_name} {:.1} {unit} | {:.2} |",
        r.name.replacen(' ', " | ", 1),
        r.seconds * 1e3,
        ref_rate / 1e9,
        rate * 1e9 / ref_rate,
    );
}

/// Copy bandwidth (bytes read + written per second) of a buffer far larger than the caches.
fn cpu_copy_bandwidth() -> f64 {
    use rayon::prelude::*;
    let n = 64 << 20;
    let src = vec![1.0f32; n];
    let mut dst = vec![0.0f32; n];
    let seconds = time_cpu(|| {
        dst.par_chunks_mut(1 << 16).zip(src.par_chunks(1 << 16)).for_each(|(d, s)| d.copy_from_slice(s));
    });
    std::hint::black_box(&dst);
    (2 * n * 4) as f64 / seconds
}

fn gpu_copy_bandwidth(dev: &Device) -> f64 {
    let n = 256 << 20;
    let src = Tensor::zeros([n], DType::F32, dev).unwrap();
    let Storage::Cuda(s) = src.storage() else { unreachable!() };
    let mut dst = s.zeros_like(n, DType::F32).unwrap();
    let seconds = time_gpu(dev, || dst.copy_from(s).unwrap());
    (2 * n * 4) as f64 / seconds
}

fn randn(dims: &[usize], dtype: DType, dev: &Device, rng: &mut Rng) -> Tensor {
    Tensor::randn(dims.to_vec(), rng, &Device::Cpu).unwrap().to_dtype(dtype).unwrap().to_device(dev).unwrap()
}

/// cuBLAS at (m, n, k) in `dtype`: the GPU reference rate for GEMM-shaped work.
fn cublas_rate(blas: &Cublas, dev: &Device, m: usize, n: usize, k: usize, dtype: DType, rng: &mut Rng) -> f64 {
    let (a, b) = (randn(&[m, k], dtype, dev, rng), randn(&[k, n], dtype, dev, rng));
    let (Storage::Cuda(sa), Storage::Cuda(sb)) = (a.storage(), b.storage()) else { unreachable!() };
    let mut c = sa.zeros_like(m * n, dtype).unwrap();
    let seconds = time_gpu(dev, || blas.matmul(sa, sb, &mut c, m, n, k).unwrap());
    2.0 * (m * n * k) as f64 / seconds
}

struct Conv {
    name: &'static str,
    x: [usize; 4],
    w: [usize; 4],
    opt: Conv2dOptions,
}

fn conv_cases() -> Vec<Conv> {
    let o = |s, p| Conv2dOptions { stride: (s, s), padding: (p, p), ..Default::default() };
    vec![
        Conv { name: "resnet50 stem 7x7/2", x: [1, 3, 224, 224], w: [64, 3, 7, 7], opt: o(2, 3) },
        Conv { name: "resnet50 3x3 64->64", x: [1, 64, 56, 56], w: [64, 64, 3, 3], opt: o(1, 1) },
        Conv { name: "resnet50 1x1 256->64", x: [1, 256, 56, 56], w: [64, 256, 1, 1], opt: o(1, 0) },
        Conv { name: "sd15 unet 3x3 320->320", x: [1, 320, 64, 64], w: [320, 320, 3, 3], opt: o(1, 1) },
        Conv { name: "sd15 vae 3x3 512->512", x: [1, 512, 64, 64], w: [512, 512, 3, 3], opt: o(1, 1) },
    ]
}

/// (name, batch·heads, q_len, kv_len, head_dim): SD 1.5's UNet attention at 512².
const ATTENTION: [(&str, usize, usize, usize, usize); 3] = [
    ("sd15 self 64x64", 8, 4096, 4096, 40),
    ("sd15 cross 64x64", 8, 4096, 77, 40),
    ("sd15 self 32x32", 8, 1024, 1024, 80),
];

/// (name, m, n, k): SD 1.5 projections at the 64² latent, CLIP, ResNet-50's fc, and the square reference.
const MATMUL: [(&str, usize, usize, usize); 5] = [
    ("square 1024", 1024, 1024, 1024),
    ("sd15 attn proj 4096x320x320", 4096, 320, 320),
    ("sd15 geglu 4096x2560x320", 4096, 2560, 320),
    ("clip mlp 77x3072x768", 77, 3072, 768),
    ("resnet50 fc 32x1000x2048", 32, 1000, 2048),
];

/// Measures every row on `dev` and prints it as soon as it is known.
fn run(dev: &Device, dtype: DType, filter: &[String], rng: &mut Rng) {
    let gpu = dev.is_cuda();
    let tag = if gpu { format!("gpu {dtype}") } else { "cpu f32".to_string() };
    let wanted = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    let label = |op: &str, shape: &str| format!("{op} {shape} | {tag}");
    let time = |f: &mut dyn FnMut()| if gpu { time_gpu(dev, f) } else { time_cpu(f) };
    let blas = match dev {
        Device::Cuda(d) => Some(Cublas::new(d).expect("cuBLAS")),
        Device::Cpu => None,
    };
    let (peak, bandwidth) = if gpu {
        (None, ("device copy".to_string(), gpu_copy_bandwidth(dev)))
    } else {
        (Some(("CPU FMA peak".to_string(), cpu_fma_peak())), ("CPU copy".to_string(), cpu_copy_bandwidth()))
    };
    let compute_ref = |m: usize, n: usize, k: usize, rng: &mut Rng| -> (String, f64) {
        match (&blas, &peak) {
            (Some(b), _) => (format!("cuBLAS {m}x{n}x{k}"), cublas_rate(b, dev, m, n, k, dtype, rng)),
            (None, Some(p)) => p.clone(),
            (None, None) => unreachable!(),
        }
    };

    for (name, m, n, k) in MATMUL {
        let row_name = label("matmul", name);
        if !wanted(&row_name) {
            continue;
        }
        let (a, b) = (randn(&[m, k], dtype, dev, rng), randn(&[k, n], dtype, dev, rng));
        let seconds = time(&mut || drop(a.matmul(&b).unwrap()));
        let reference = compute_ref(m, n, k, rng);
        print_row(&Row { name: row_name, seconds, work: Work::Flops(2.0 * (m * n * k) as f64), reference });
    }
    for c in conv_cases() {
        let row_name = label("conv2d", c.name);
        if !wanted(&row_name) {
            continue;
        }
        let (x, w) = (randn(&c.x, dtype, dev, rng), randn(&c.w, dtype, dev, rng));
        let bias = randn(&[c.w[0]], dtype, dev, rng);
        let y = x.conv2d(&w, Some(&bias), c.opt).unwrap();
        let seconds = time(&mut || drop(x.conv2d(&w, Some(&bias), c.opt).unwrap()));
        let (m, n, k) = (c.w[0], y.numel() / c.w[0], c.w[1] * c.w[2] * c.w[3]);
        let reference = compute_ref(m, n, k, rng);
        print_row(&Row { name: row_name, seconds, work: Work::Flops(2.0 * (m * n * k) as f64), reference });
    }
    for (name, bh, lq, lk, d) in ATTENTION {
        let row_name = label("attention", name);
        if !wanted(&row_name) {
            continue;
        }
        let q = randn(&[1, bh, lq, d], dtype, dev, rng);
        let (k, v) = (randn(&[1, bh, lk, d], dtype, dev, rng), randn(&[1, bh, lk, d], dtype, dev, rng));
        let seconds = time(&mut || drop(q.attention(&k, &v, None, false, None).unwrap()));
        // Q·Kᵀ and P·V; the reference is one GEMM of the first's shape over every head.
        let reference = compute_ref(bh * lq, lk, d, rng);
        print_row(&Row { name: row_name, seconds, work: Work::Flops(4.0 * (bh * lq * lk * d) as f64), reference });
    }
    let size = dtype.size_in_bytes() as f64;
    for (name, dims, groups) in
        [("sd15 64x64x320 g32", [2, 320, 64, 64], 32), ("sd15 vae 128x128x256 g32", [1, 256, 128, 128], 32)]
    {
        let row_name = label("group_norm", name);
        if !wanted(&row_name) {
            continue;
        }
        let x = randn(&dims, dtype, dev, rng);
        let (w, b) = (randn(&[dims[1]], dtype, dev, rng), randn(&[dims[1]], dtype, dev, rng));
        let seconds = time(&mut || drop(x.group_norm(groups, &w, &b, 1e-5).unwrap()));
        // One read and one write of the activations is the floor of what it must move.
        let work = Work::Bytes(2.0 * x.numel() as f64 * size);
        print_row(&Row { name: row_name, seconds, work, reference: bandwidth.clone() });
    }
    for (name, rows, cols) in [
        ("sd15 cross scores 8·4096x77", 8 * 4096, 77),
        ("scores 4096x4096", 4096, 4096),
        ("resnet50 logits 256x1000", 256, 1000),
    ] {
        let row_name = label("softmax", name);
        if !wanted(&row_name) {
            continue;
        }
        let x = randn(&[rows, cols], dtype, dev, rng);
        let seconds = time(&mut || drop(x.softmax(-1).unwrap()));
        let work = Work::Bytes(2.0 * x.numel() as f64 * size);
        print_row(&Row { name: row_name, seconds, work, reference: bandwidth.clone() });
    }
    // A DPM-Solver++ 2M step with guidance: the heaviest of the fused scheduler steps.
    for (name, dims) in [("sd15 latents 1x4x64x64 CFG", [1, 4, 64, 64]), ("latents 8x4x128x128 CFG", [8, 4, 128, 128])]
    {
        let row_name = label("scheduler_step", name);
        if !wanted(&row_name) {
            continue;
        }
        let x = randn(&dims, dtype, dev, rng);
        let model = randn(&[2 * dims[0], dims[1], dims[2], dims[3]], dtype, dev, rng);
        let prev = randn(&dims, dtype, dev, rng);
        let step = SchedulerStep {
            x0_x: 0.9,
            x0_m: -0.4,
            out_x0: 0.7,
            out_x: 0.3,
            out_prev: -0.2,
            guidance: Some(7.5),
            keep_x0: true,
            ..Default::default()
        };
        let seconds = time(&mut || drop(x.scheduler_step(&model, None, Some(&prev), &step).unwrap()));
        // Reads x, both model halves and the previous x0; writes the sample and x0.
        let work = Work::Bytes(6.0 * x.numel() as f64 * size);
        print_row(&Row { name: row_name, seconds, work, reference: bandwidth.clone() });
    }
}

fn main() {
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let mut rng = Rng::new(0x5eed);
    print_header();
    run(&Device::Cpu, DType::F32, &filter, &mut rng);
    match Device::cuda(0) {
        Ok(dev) => {
            for dtype in [DType::F16, DType::F32] {
                run(&dev, dtype, &filter, &mut rng);
            }
        }
        Err(e) => eprintln!("GPU rows skipped: {e}"),
    }
}
