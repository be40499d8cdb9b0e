//! `foil info`: what this build is and where it would run.

use foil::device::cuda::kernels;
use foil::{Device, Result};

pub fn run(device: &Device, fallback: Option<&str>) -> Result<()> {
    println!("foil {}", env!("CARGO_PKG_VERSION"));
    match kernels::PTX_COMPILER {
        Some(compiler) => println!("kernels built: PTX for sm_80 and sm_90 by {compiler}"),
        None => println!("kernels built: sources embedded, compiled by NVRTC at first use"),
    }
    match device {
        Device::Cpu => {
            match fallback {
                Some(reason) => println!("backend: cpu (no usable GPU: {reason})"),
                None => println!("backend: cpu (chosen with --device cpu)"),
            }
            println!("cpu threads: {}", rayon::current_num_threads());
            println!("cpu simd: {}", foil::device::cpu::simd_description());
        }
        Device::Cuda(dev) => {
            let info = dev.info()?;
            let gib = |bytes: usize| bytes as f64 / (1u64 << 30) as f64;
            println!("backend: cuda:{}", info.ordinal);
            println!("gpu: {}", info.name);
            println!("compute capability: {}.{}", info.compute_capability.0, info.compute_capability.1);
            println!("SMs: {}", info.sm_count);
            println!("memory: {:.1} GiB total, {:.1} GiB free", gib(info.total_memory), gib(info.free_memory));
            println!("driver: CUDA {}", info.driver_version);
            println!("kernels: {}", info.kernels);
        }
    }
    Ok(())
}
