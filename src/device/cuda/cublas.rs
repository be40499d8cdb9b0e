//! cuBLAS as the yardstick: benchmarks and tests compare foil's GEMM with it in
//! the same run. Never on foil's own compute path.

use cudarc::cublas::{sys::cublasOperation_t, CudaBlas, Gemm, GemmConfig};

use super::{CudaDevice, CudaStorage};
use crate::device::{BackendStorage, DType};
use crate::error::{Error, Result};

pub struct Cublas {
    blas: CudaBlas,
}

fn blas_err(e: impl std::fmt::Debug) -> Error {
    Error::Cuda(format!("cuBLAS: {e:?}"))
}

impl Cublas {
    pub fn new(dev: &CudaDevice) -> Result<Cublas> {
        // SAFETY: only probes whether the shared library can be opened.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(Error::Cuda("the cuBLAS library (libcublas.so) was not found".into()));
        }
        Ok(Cublas { blas: CudaBlas::new(dev.stream().clone()).map_err(blas_err)? })
    }

    /// Row-major c (m, n) = a (m, k) · b (k, n), computed as the column-major
    /// cᵀ = bᵀ·aᵀ, so no transpose is materialised. f32 uses plain SGEMM math.
    pub fn matmul(
        &self,
        a: &CudaStorage,
        b: &CudaStorage,
        c: &mut CudaStorage,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<()> {
        let dims = |v: usize| i32::try_from(v).map_err(|_| Error::Cuda(format!("cuBLAS size {v} too large")));
        let (mi, ni, ki) = (dims(m)?, dims(n)?, dims(k)?);
        macro_rules! gemm {
            ($t:ty, $one:expr, $zero:expr) => {{
                let cfg = GemmConfig::<$t> {
                    transa: cublasOperation_t::CUBLAS_OP_N,
                    transb: cublasOperation_t::CUBLAS_OP_N,
                    m: ni,
                    n: mi,
                    k: ki,
                    alpha: $one,
                    lda: ni,
                    ldb: ki,
                    beta: $zero,
                    ldc: ni,
                };
                // SAFETY: the views cover exactly the (k,n), (m,k) and (m,n) buffers.
                unsafe {
                    let bv = b.raw().transmute::<$t>(k * n).ok_or_else(|| blas_err("b too small"))?;
                    let av = a.raw().transmute::<$t>(m * k).ok_or_else(|| blas_err("a too small"))?;
                    let mut cv = c.raw_mut().transmute_mut::<$t>(m * n).ok_or_else(|| blas_err("c too small"))?;
                    self.blas.gemm(cfg, &bv, &av, &mut cv).map_err(blas_err)
                }
            }};
        }
        match a.dtype() {
            DType::F32 => gemm!(f32, 1.0, 0.0),
            DType::F16 => gemm!(half::f16, half::f16::ONE, half::f16::ZERO),
            DType::BF16 => gemm!(half::bf16, half::bf16::ONE, half::bf16::ZERO),
            dtype => Err(Error::DType { op: "cublas matmul", dtype }),
        }
    }
}
