//! What both benchmarks share: timing on the CPU and the GPU, and the CPU's FMA
//! peak that compute-bound rows are measured against.

use std::time::{Duration, Instant};

use foil::device::cuda::GpuTimer;
use foil::Device;

/// Median wall time of `f` on the CPU: one warm-up call, then at least 3 calls
/// and about half a second.
pub fn time_cpu(mut f: impl FnMut()) -> f64 {
    f();
    let mut times = vec![];
    let start = Instant::now();
    while times.len() < 3 || (start.elapsed() < Duration::from_millis(500) && times.len() < 100) {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Mean GPU time of `f` by events: two warm-up calls, then enough calls in one
/// timed batch to fill about 100 ms.
pub fn time_gpu(dev: &Device, mut f: impl FnMut()) -> f64 {
    let Device::Cuda(d) = dev else { unreachable!("time_gpu on the CPU") };
    let timer = GpuTimer::new(d).expect("CUDA events");
    f();
    f();
    timer.start(d).unwrap();
    f();
    let once = timer.stop(d).unwrap().max(1e-3) as f64;
    let iters = ((100.0 / once) as usize).clamp(3, 1000);
    timer.start(d).unwrap();
    for _ in 0..iters {
        f();
    }
    timer.stop(d).unwrap() as f64 / 1e3 / iters as f64
}

/// Peak f32 FMA throughput of all threads: independent 8-wide FMA chains, enough
/// of them to cover the FMA latency on two ports.
pub fn cpu_fma_peak() -> f64 {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn chains(iters: usize) -> f32 {
            use std::arch::x86_64::*;
            let mut acc = [_mm256_set1_ps(0.0); 12];
            let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
            for _ in 0..iters {
                for v in acc.iter_mut() {
                    *v = _mm256_fmadd_ps(*v, a, b);
                }
            }
            let mut out = [0f32; 8];
            for v in acc {
                _mm256_storeu_ps(out.as_mut_ptr(), v);
            }
            out[0]
        }
        let iters = 20_000_000;
        let threads = rayon::current_num_threads();
        let seconds = time_cpu(|| {
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            rayon::broadcast(|_| std::hint::black_box(unsafe { chains(std::hint::black_box(iters)) }));
        });
        return (threads * iters * 12 * 8 * 2) as f64 / seconds;
    }
    let iters = 50_000_000;
    let seconds = time_cpu(|| {
        rayon::broadcast(|_| {
            let mut acc = [0f32; 16];
            for _ in 0..std::hint::black_box(iters) {
                for v in acc.iter_mut() {
                    *v = v.mul_add(0.999_999, 1e-7);
                }
            }
            std::hint::black_box(acc)
        });
    });
    (rayon::current_num_threads() * iters * 16 * 2) as f64 / seconds
}
