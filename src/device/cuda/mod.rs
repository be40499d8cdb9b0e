//! The CUDA backend, through cudarc with the driver and NVRTC loaded at run
//! time: one context and one stream per device, kernel modules loaded lazily
//! on first use and their functions cached, timing by events.

mod args;
pub mod cublas;
pub mod kernels;
mod storage;
mod timer;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{sys, CudaContext, CudaFunction, CudaModule, CudaStream, DriverError};

use crate::error::{Error, Result};
pub use kernels::KernelOrigin;
pub use storage::CudaStorage;
pub use timer::GpuTimer;

/// A GPU: its context, its one stream, and its loaded kernels.
pub struct CudaDevice {
    ordinal: usize,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    origin: KernelOrigin,
    sm_count: u32,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<String, CudaFunction>>,
}

/// What `foil info` prints about a GPU.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub sm_count: u32,
    pub total_memory: usize,
    pub free_memory: usize,
    pub driver_version: String,
    pub kernels: KernelOrigin,
}

pub(crate) fn driver_err(e: DriverError) -> Error {
    if e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
        Error::OutOfMemory("the device has too little free memory for this allocation".into())
    } else {
        Error::Cuda(e.to_string())
    }
}

impl CudaDevice {
    /// Opens GPU `ordinal`. Every reason there is none (no driver library, no
    /// device, an old GPU, no way to get kernels) is an error, never a panic.
    pub fn open(ordinal: usize) -> Result<Arc<CudaDevice>> {
        // SAFETY: only probes whether the shared library can be opened; cudarc
        // panics on first use of a missing library, so this must come first.
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::Cuda("no CUDA driver library (libcuda.so) found".into()));
        }
        let count = CudaContext::device_count().map_err(driver_err)?;
        if count <= 0 {
            return Err(Error::Cuda("the CUDA driver reports no device".into()));
        }
        if ordinal >= count as usize {
            return Err(Error::Cuda(format!("no CUDA device {ordinal} (the driver reports {count})")));
        }
        let ctx = CudaContext::new(ordinal).map_err(driver_err)?;
        // One stream per device: cudarc's cross-stream event tracking is pure overhead here.
        // SAFETY: no other stream of this context is ever used.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(driver_err)?;
        let cc = ctx.compute_capability().map_err(driver_err)?;
        let origin = kernels::origin_for(cc)?;
        let sm_count = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(driver_err)? as u32;
        Ok(Arc::new(CudaDevice {
            ordinal,
            ctx,
            stream,
            origin,
            sm_count,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
        }))
    }

    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    pub fn sm_count(&self) -> u32 {
        self.sm_count
    }

    pub fn kernel_origin(&self) -> &KernelOrigin {
        &self.origin
    }

    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(driver_err)
    }

    pub fn info(&self) -> Result<DeviceInfo> {
        let (free_memory, total_memory) = self.ctx.mem_get_info().map_err(driver_err)?;
        let mut version = 0;
        // SAFETY: writes one int; the driver library is loaded (checked in open).
        unsafe { sys::cuDriverGetVersion(&mut version) }.result().map_err(driver_err)?;
        Ok(DeviceInfo {
            ordinal: self.ordinal,
            name: self.ctx.name().map_err(driver_err)?,
            compute_capability: self.ctx.compute_capability().map_err(driver_err)?,
            sm_count: self.sm_count,
            total_memory,
            free_memory,
            driver_version: format!("{}.{}", version / 1000, (version % 1000) / 10),
            kernels: self.origin.clone(),
        })
    }

    /// The kernel `name` of `family`, loading the family's module on first use.
    pub(crate) fn function(&self, family: &'static str, name: &str) -> Result<CudaFunction> {
        if let Some(f) = self.functions.lock().unwrap().get(name) {
            return Ok(f.clone());
        }
        let module = self.module(family)?;
        let f = module.load_function(name).map_err(|e| Error::Cuda(format!("kernel '{name}' of '{family}': {e}")))?;
        self.functions.lock().unwrap().insert(name.to_string(), f.clone());
        Ok(f)
    }

    fn module(&self, family: &'static str) -> Result<Arc<CudaModule>> {
        let mut modules = self.modules.lock().unwrap();
        if let Some(m) = modules.get(family) {
            return Ok(m.clone());
        }
        let ptx = kernels::ptx(kernels::family(family)?, &self.origin)?;
        let module = self.ctx.load_module(ptx).map_err(driver_err)?;
        modules.insert(family, module.clone());
        Ok(module)
    }

    /// Compiles every kernel family now (kernel loading is otherwise lazy).
    pub fn load_all_kernels(&self) -> Result<()> {
        for f in kernels::FAMILIES {
            self.module(f.name)?;
        }
        Ok(())
    }
}
