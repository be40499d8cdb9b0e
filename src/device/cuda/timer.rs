//! GPU timing by events on the device's stream, so host overhead is not counted.

use cudarc::driver::{sys, CudaEvent};

use super::{driver_err, CudaDevice};
use crate::error::Result;

pub struct GpuTimer {
    start: CudaEvent,
    end: CudaEvent,
}

impl GpuTimer {
    pub fn new(dev: &CudaDevice) -> Result<GpuTimer> {
        let flags = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
        Ok(GpuTimer {
            start: dev.context().new_event(flags).map_err(driver_err)?,
            end: dev.context().new_event(flags).map_err(driver_err)?,
        })
    }

    pub fn start(&self, dev: &CudaDevice) -> Result<()> {
        self.start.record(dev.stream()).map_err(driver_err)
    }

    /// Records the end, waits for it, and returns the milliseconds between the two.
    pub fn stop(&self, dev: &CudaDevice) -> Result<f32> {
        self.end.record(dev.stream()).map_err(driver_err)?;
        self.end.synchronize().map_err(driver_err)?;
        self.start.elapsed_ms(&self.end).map_err(driver_err)
    }
}
