//! Device buffers and the launcher of every op of the contract. A buffer is
//! untyped bytes plus a dtype: a kernel argument is a device pointer whatever
//! its element type, and the kernel name carries the dtype.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::args::{u32_of, AttentionArgs, BroadcastArgs, Conv2dArgs, SchedulerStepArgs, StridedArgs};
use super::args::{AdamWArgs, SgdArgs};
use super::{driver_err, CudaDevice};
use crate::device::contract::*;
use crate::device::{DType, HostData};
use crate::error::{Error, Result};

/// Threads a block for the grid-stride and per-row kernels (see kernels/README.md).
const BLOCK: u32 = 256;

pub struct CudaStorage {
    buf: CudaSlice<u8>,
    dtype: DType,
    len: usize,
    device: Arc<CudaDevice>,
}

/// Enqueues `$name` of `$family` on the device's stream with the given arguments.
macro_rules! launch {
    ($dev:expr, $family:expr, $name:expr, $cfg:expr, $($arg:expr),+ $(,)?) => {{
        let dev: &CudaDevice = $dev;
        let f = dev.function($family, &$name)?;
        let mut b = dev.stream().launch_builder(&f);
        $( b.arg($arg); )+
        // SAFETY: arguments follow the kernel's ABI in kernels/README.md and every
        // buffer is sized by its launcher for the grid it is launched with.
        unsafe { b.launch($cfg) }.map_err(driver_err)?;
    }};
}

impl CudaDevice {
    pub fn upload(self: &Arc<Self>, data: &HostData) -> Result<CudaStorage> {
        let bytes: &[u8] = match data {
            HostData::F32(v) => bytemuck::cast_slice(v),
            HostData::F16(v) => bytemuck::cast_slice(v),
            HostData::BF16(v) => bytemuck::cast_slice(v),
            HostData::U32(v) => bytemuck::cast_slice(v),
        };
        let mut out = CudaStorage::alloc(self, data.len(), data.dtype())?;
        if !bytes.is_empty() {
            self.stream().memcpy_htod(bytes, &mut out.buf).map_err(driver_err)?;
        }
        Ok(out)
    }

    fn grid_stride(&self, n: usize) -> LaunchConfig {
        let blocks = n.div_ceil(BLOCK as usize).min(self.sm_count() as usize * 32).max(1);
        LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
    }
}

fn grid(x: usize, y: usize, z: usize, threads: u32) -> Result<LaunchConfig> {
    if y > 65535 || z > 65535 {
        return Err(Error::Cuda(format!("grid ({x}, {y}, {z}) exceeds the 65535 limit of its y or z dimension")));
    }
    Ok(LaunchConfig {
        grid_dim: (u32_of("grid size", x)?, y as u32, z as u32),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    })
}

impl CudaStorage {
    /// An output buffer; each kernel writes all of it before it is read.
    fn alloc(dev: &Arc<CudaDevice>, len: usize, dtype: DType) -> Result<CudaStorage> {
        u32_of("element count", len)?;
        // A zero-length tensor still gets one byte, so every buffer is a valid pointer.
        let bytes = (len * dtype.size_in_bytes()).max(1);
        // SAFETY: u8 has no invalid bit patterns; contents are written before use.
        let buf = unsafe { dev.stream().alloc::<u8>(bytes) }.map_err(driver_err)?;
        Ok(CudaStorage { buf, dtype, len, device: dev.clone() })
    }

    pub fn device(&self) -> &Arc<CudaDevice> {
        &self.device
    }

    pub(crate) fn raw(&self) -> &CudaSlice<u8> {
        &self.buf
    }

    pub(crate) fn raw_mut(&mut self) -> &mut CudaSlice<u8> {
        &mut self.buf
    }

    /// Copies `src` (same dtype and length) into this buffer, device to device.
    pub fn copy_from(&mut self, src: &CudaStorage) -> Result<()> {
        if src.dtype != self.dtype || src.len != self.len {
            return Err(Error::Shape {
                op: "copy_from",
                detail: format!("{} {} into {} {}", src.len, src.dtype, self.len, self.dtype),
            });
        }
        self.device.stream().memcpy_dtod(&src.buf, &mut self.buf).map_err(driver_err)
    }

    pub fn download(&self) -> Result<HostData> {
        let bytes = self.device.stream().clone_dtoh(&self.buf).map_err(driver_err)?;
        let bytes = &bytes[..self.len * self.dtype.size_in_bytes()];
        Ok(match self.dtype {
            DType::F32 => HostData::F32(bytemuck::pod_collect_to_vec(bytes)),
            DType::F16 => HostData::F16(bytemuck::pod_collect_to_vec(bytes)),
            DType::BF16 => HostData::BF16(bytemuck::pod_collect_to_vec(bytes)),
            DType::U32 => HostData::U32(bytemuck::pod_collect_to_vec(bytes)),
        })
    }

    /// The dtype's kernel suffix, for ops defined on floats.
    fn float_kernel(&self, op: &'static str) -> Result<&'static str> {
        if self.dtype.is_float() {
            Ok(self.dtype.name())
        } else {
            Err(Error::DType { op, dtype: self.dtype })
        }
    }

    /// The element-width kernel suffix, for ops that only move data.
    fn width_kernel(&self) -> &'static str {
        if self.dtype.size_in_bytes() == 2 {
            "b16"
        } else {
            "b32"
        }
    }

    fn output(&self, len: usize, dtype: DType) -> Result<CudaStorage> {
        CudaStorage::alloc(&self.device, len, dtype)
    }
}

fn unary_code(op: UnaryOp) -> i32 {
    match op {
        UnaryOp::Silu => 0,
        UnaryOp::Gelu => 1,
        UnaryOp::GeluTanh => 2,
        UnaryOp::QuickGelu => 3,
        UnaryOp::Relu => 4,
    }
}

fn binary_code(op: BinaryOp) -> i32 {
    match op {
        BinaryOp::Add => 0,
        BinaryOp::Sub => 1,
        BinaryOp::Mul => 2,
        BinaryOp::Div => 3,
    }
}

impl BackendStorage for CudaStorage {
    fn dtype(&self) -> DType {
        self.dtype
    }

    fn len(&self) -> usize {
        self.len
    }

    fn zeros_like(&self, len: usize, dtype: DType) -> Result<Self> {
        let mut out = self.output(len, dtype)?;
        self.device.stream().memset_zeros(&mut out.buf).map_err(driver_err)?;
        Ok(out)
    }

    fn to_dtype(&self, dtype: DType) -> Result<Self> {
        let mut out = self.output(self.len, dtype)?;
        if dtype == self.dtype {
            self.device.stream().memcpy_dtod(&self.buf, &mut out.buf).map_err(driver_err)?;
        } else if self.len > 0 {
            let name = format!("cast_{}_{}", self.dtype, dtype);
            let n = self.len as u32;
            launch!(&self.device, "elementwise", name, self.device.grid_stride(self.len), &self.buf, &mut out.buf, &n);
        }
        Ok(out)
    }

    fn unary(&self, op: UnaryOp) -> Result<Self> {
        let mut out = self.output(self.len, self.dtype)?;
        if self.len > 0 {
            let name = format!("unary_{}", self.float_kernel("unary")?);
            let (n, code) = (self.len as u32, unary_code(op));
            let cfg = self.device.grid_stride(self.len);
            launch!(&self.device, "elementwise", name, cfg, &self.buf, &mut out.buf, &n, &code);
        }
        Ok(out)
    }

    fn scale(&self, factor: f32) -> Result<Self> {
        let mut out = self.output(self.len, self.dtype)?;
        if self.len > 0 {
            let name = format!("scale_{}", self.float_kernel("scale")?);
            let n = self.len as u32;
            let cfg = self.device.grid_stride(self.len);
            launch!(&self.device, "elementwise", name, cfg, &self.buf, &mut out.buf, &n, &factor);
        }
        Ok(out)
    }

    fn clamp(&self, lo: f32, hi: f32) -> Result<Self> {
        let mut out = self.output(self.len, self.dtype)?;
        if self.len > 0 {
            let name = format!("clamp_{}", self.float_kernel("clamp")?);
            let n = self.len as u32;
            let cfg = self.device.grid_stride(self.len);
            launch!(&self.device, "elementwise", name, cfg, &self.buf, &mut out.buf, &n, &lo, &hi);
        }
        Ok(out)
    }

    fn geglu(&self, rows: usize, d: usize) -> Result<Self> {
        let mut out = self.output(rows * d, self.dtype)?;
        if rows * d > 0 {
            let name = format!("geglu_{}", self.float_kernel("geglu")?);
            let (r, d32) = (rows as u32, d as u32);
            let cfg = self.device.grid_stride(rows * d);
            launch!(&self.device, "elementwise", name, cfg, &self.buf, &mut out.buf, &r, &d32);
        }
        Ok(out)
    }

    fn binary(&self, op: BinaryOp, rhs: &Self, layout: &BroadcastLayout) -> Result<Self> {
        let n: usize = layout.dims.iter().product();
        let mut out = self.output(n, self.dtype)?;
        if n > 0 {
            let name = format!("binary_{}", self.float_kernel("binary")?);
            let (args, code, n32) = (BroadcastArgs::new(layout)?, binary_code(op), n as u32);
            let cfg = self.device.grid_stride(n);
            launch!(&self.device, "elementwise", name, cfg, &self.buf, &rhs.buf, &mut out.buf, &n32, &code, &args);
        }
        Ok(out)
    }

    fn reduce(&self, op: ReduceOp, s: ReduceShape) -> Result<Self> {
        let outputs = s.outer * s.inner;
        let dtype = if op == ReduceOp::ArgMax { DType::U32 } else { self.dtype };
        let mut out = self.output(outputs, dtype)?;
        if outputs == 0 {
            return Ok(out);
        }
        let suffix = self.float_kernel("reduce")?;
        let (outer, len, inner) = (s.outer as u32, u32_of("reduced length", s.len)?, s.inner as u32);
        // One warp an output, 8 warps a block, grid-stride over the outputs.
        let cfg = grid(outputs.div_ceil(8).min(self.device.sm_count() as usize * 32), 1, 1, BLOCK)?;
        let dev = &self.device;
        match op {
            ReduceOp::ArgMax => {
                launch!(dev, "reduce", format!("argmax_{suffix}"), cfg, &self.buf, &mut out.buf, &outer, &len, &inner)
            }
            _ => {
                let code: i32 = match op {
                    ReduceOp::Sum => 0,
                    ReduceOp::Mean => 1,
                    _ => 2,
                };
                let name = format!("reduce_{suffix}");
                launch!(dev, "reduce", name, cfg, &self.buf, &mut out.buf, &outer, &len, &inner, &code)
            }
        }
        Ok(out)
    }

    fn softmax(&self, rows: usize, cols: usize, log: bool) -> Result<Self> {
        let mut out = self.output(rows * cols, self.dtype)?;
        if rows * cols > 0 {
            let name = format!("softmax_{}", self.float_kernel("softmax")?);
            let (r, c, l) = (rows as u32, cols as u32, log as i32);
            launch!(&self.device, "reduce", name, grid(rows, 1, 1, BLOCK)?, &self.buf, &mut out.buf, &r, &c, &l);
        }
        Ok(out)
    }

    fn matmul(&self, rhs: &Self, s: &MatmulShape) -> Result<Self> {
        let mut out = self.output(s.batch * s.m * s.n, self.dtype)?;
        if s.batch * s.m * s.n > 0 {
            let name = format!("matmul_{}", self.float_kernel("matmul")?);
            let u = |v| u32_of("matmul size", v);
            let (m, n, k) = (u(s.m)?, u(s.n)?, u(s.k)?);
            let (ta, tb) = (s.trans_a as i32, s.trans_b as i32);
            let (sa, sb) = (u(s.a_batch_stride)?, u(s.b_batch_stride)?);
            let cfg = grid(s.n.div_ceil(64), s.m.div_ceil(64), s.batch, BLOCK)?;
            launch!(&self.device, "gemm", name, cfg, &self.buf, &rhs.buf, &mut out.buf, &m, &n, &k, &ta, &tb, &sa, &sb);
        }
        Ok(out)
    }

    fn layer_norm(&self, weight: &Self, bias: &Self, rows: usize, cols: usize, eps: f32) -> Result<Self> {
        let mut out = self.output(rows * cols, self.dtype)?;
        if rows * cols > 0 {
            let name = format!("layer_norm_{}", self.float_kernel("layer_norm")?);
            let (r, c) = (rows as u32, cols as u32);
            let cfg = grid(rows, 1, 1, BLOCK)?;
            launch!(&self.device, "norm", name, cfg, &self.buf, &weight.buf, &bias.buf, &mut out.buf, &r, &c, &eps);
        }
        Ok(out)
    }

    fn group_norm(&self, weight: &Self, bias: &Self, s: GroupNormShape) -> Result<Self> {
        let mut out = self.output(self.len, self.dtype)?;
        if self.len > 0 {
            let name = format!("group_norm_{}", self.float_kernel("group_norm")?);
            let (n, c, sp, g) = (s.n as u32, s.c as u32, s.spatial as u32, s.groups as u32);
            let cfg = grid(s.n * s.groups, 1, 1, BLOCK)?;
            let dev = &self.device;
            launch!(dev, "norm", name, cfg, &self.buf, &weight.buf, &bias.buf, &mut out.buf, &n, &c, &sp, &g, &s.eps);
        }
        Ok(out)
    }

    fn conv2d(&self, weight: &Self, bias: Option<&Self>, p: &Conv2dParams) -> Result<Self> {
        let len = p.n * p.c_out * p.h_out * p.w_out;
        let mut out = self.output(len, self.dtype)?;
        if len > 0 {
            let name = format!("conv2d_{}", self.float_kernel("conv2d")?);
            let args = Conv2dArgs::new(p, bias.is_some())?;
            // Without a bias the kernel never reads that pointer; the weight stands in.
            let bias_buf = bias.map_or(&weight.buf, |b| &b.buf);
            let cols = p.n * p.h_out * p.w_out;
            let cfg = grid(cols.div_ceil(64), (p.c_out / p.groups).div_ceil(64), p.groups, BLOCK)?;
            launch!(&self.device, "conv", name, cfg, &self.buf, &weight.buf, bias_buf, &mut out.buf, &args);
        }
        Ok(out)
    }

    fn upsample_nearest2x(&self, planes: usize, h: usize, w: usize) -> Result<Self> {
        let len = planes * 4 * h * w;
        let mut out = self.output(len, self.dtype)?;
        if len > 0 {
            let name = format!("upsample_nearest2x_{}", self.width_kernel());
            let (p, h, w) = (planes as u32, h as u32, w as u32);
            launch!(&self.device, "layout", name, self.device.grid_stride(len), &self.buf, &mut out.buf, &p, &h, &w);
        }
        Ok(out)
    }

    fn copy_strided(&self, dims: &[usize], strides: &[usize]) -> Result<Self> {
        let len: usize = dims.iter().product();
        let mut out = self.output(len, self.dtype)?;
        if len > 0 {
            let name = format!("copy_strided_{}", self.width_kernel());
            let (args, n) = (StridedArgs::new(dims, strides)?, len as u32);
            launch!(&self.device, "layout", name, self.device.grid_stride(len), &self.buf, &mut out.buf, &n, &args);
        }
        Ok(out)
    }

    fn copy2d_into(&self, dst: &mut Self, c: Copy2d) -> Result<()> {
        if c.rows * c.cols == 0 {
            return Ok(());
        }
        let name = format!("copy2d_{}", self.width_kernel());
        let u = |v| u32_of("copy size", v);
        let (rows, cols, sp, dp, so, d_o) =
            (u(c.rows)?, u(c.cols)?, u(c.src_pitch)?, u(c.dst_pitch)?, u(c.src_offset)?, u(c.dst_offset)?);
        let cfg = self.device.grid_stride(c.rows * c.cols);
        launch!(&self.device, "layout", name, cfg, &self.buf, &mut dst.buf, &rows, &cols, &sp, &dp, &so, &d_o);
        Ok(())
    }

    fn embedding(&self, ids: &Self, dim: usize) -> Result<Self> {
        if ids.dtype != DType::U32 {
            return Err(Error::DType { op: "embedding ids", dtype: ids.dtype });
        }
        let len = ids.len * dim;
        let mut out = self.output(len, self.dtype)?;
        if len > 0 {
            let name = format!("embedding_{}", self.width_kernel());
            let (n, d, vocab) = (ids.len as u32, dim as u32, (self.len / dim) as u32);
            let cfg = self.device.grid_stride(len);
            launch!(&self.device, "layout", name, cfg, &self.buf, &ids.buf, &mut out.buf, &n, &d, &vocab);
        }
        Ok(out)
    }

    fn attention(&self, k: &Self, v: &Self, mask: Option<&Self>, p: &AttentionParams) -> Result<Self> {
        let len = p.batch * p.heads * p.q_len * p.head_dim;
        let mut out = self.output(len, self.dtype)?;
        if len == 0 {
            return Ok(out);
        }
        let d_max = match p.head_dim {
            0..=64 => 64,
            65..=128 => 128,
            129..=256 => 256,
            d => return Err(Error::Cuda(format!("attention head_dim {d} exceeds the kernels' maximum of 256"))),
        };
        let name = format!("attention_{}_d{d_max}", self.float_kernel("attention")?);
        let args = AttentionArgs::new(p, mask.is_some())?;
        // Without a mask the kernel never reads that pointer; q stands in.
        let mask_buf = mask.map_or(&self.buf, |m| &m.buf);
        let cfg = grid(p.q_len.div_ceil(16), p.batch * p.heads, 1, 128)?;
        launch!(&self.device, "attention", name, cfg, &self.buf, &k.buf, &v.buf, mask_buf, &mut out.buf, &args);
        Ok(out)
    }

    fn max_pool2d(&self, p: &MaxPool2dParams) -> Result<Self> {
        let len = p.planes * p.h_out * p.w_out;
        let mut out = self.output(len, self.dtype)?;
        if len > 0 {
            let name = format!("max_pool2d_{}", self.float_kernel("max_pool2d")?);
            let u = |v| u32_of("max_pool2d size", v);
            let (pl, h, w, ho, wo) = (u(p.planes)?, u(p.h)?, u(p.w)?, u(p.h_out)?, u(p.w_out)?);
            let (k, s, pad) = (u(p.kernel)?, u(p.stride)?, u(p.padding)?);
            let cfg = self.device.grid_stride(len);
            launch!(&self.device, "pool", name, cfg, &self.buf, &mut out.buf, &pl, &h, &w, &k, &s, &pad, &ho, &wo);
        }
        Ok(out)
    }

    fn scheduler_step(
        &self,
        model_out: &Self,
        noise: Option<&Self>,
        prev_x0: Option<&Self>,
        step: &SchedulerStep,
    ) -> Result<(Self, Option<Self>)> {
        let mut out = self.output(self.len, self.dtype)?;
        let mut x0 = if step.keep_x0 { Some(self.output(self.len, self.dtype)?) } else { None };
        if self.len == 0 {
            return Ok((out, x0));
        }
        let name = format!("scheduler_step_{}", self.float_kernel("scheduler_step")?);
        let (args, n) = (SchedulerStepArgs::new(step, noise.is_some(), prev_x0.is_some()), self.len as u32);
        // Absent inputs are never read and an absent x0 is never written; x stands in for them.
        let noise_buf = noise.map_or(&self.buf, |t| &t.buf);
        let prev_buf = prev_x0.map_or(&self.buf, |t| &t.buf);
        let (dev, cfg) = (&self.device, self.device.grid_stride(self.len));
        let (x, m) = (&self.buf, &model_out.buf);
        match x0.as_mut() {
            Some(x0) => {
                launch!(dev, "scheduler", name, cfg, x, m, noise_buf, prev_buf, &mut out.buf, &mut x0.buf, &n, &args)
            }
            None => launch!(dev, "scheduler", name, cfg, x, m, noise_buf, prev_buf, &mut out.buf, x, &n, &args),
        }
        Ok((out, x0))
    }

    fn adamw_step(&mut self, grads: &Self, m: &mut Self, v: &mut Self, step: &AdamWStep) -> Result<()> {
        for s in [&*self, grads, &*m, &*v] {
            if s.dtype != DType::F32 {
                return Err(Error::DType { op: "adamw_step", dtype: s.dtype });
            }
        }
        if self.len > 0 {
            let (args, n) = (AdamWArgs::new(step), self.len as u32);
            let (dev, cfg) = (&self.device, self.device.grid_stride(self.len));
            launch!(dev, "optim", "adamw_step_f32", cfg, &mut self.buf, &grads.buf, &mut m.buf, &mut v.buf, &n, &args);
        }
        Ok(())
    }

    fn sgd_step(&mut self, grads: &Self, momentum: Option<&mut Self>, step: &SgdStep) -> Result<()> {
        for s in [Some(&*self), Some(grads), momentum.as_deref()].into_iter().flatten() {
            if s.dtype != DType::F32 {
                return Err(Error::DType { op: "sgd_step", dtype: s.dtype });
            }
        }
        if self.len > 0 {
            let (args, n) = (SgdArgs::new(step, momentum.is_some()), self.len as u32);
            let (dev, cfg) = (&self.device, self.device.grid_stride(self.len));
            match momentum {
                Some(b) => launch!(dev, "optim", "sgd_step_f32", cfg, &mut self.buf, &grads.buf, &mut b.buf, &n, &args),
                // Without momentum the kernel never touches the buffer; the gradients stand in.
                None => launch!(dev, "optim", "sgd_step_f32", cfg, &mut self.buf, &grads.buf, &grads.buf, &n, &args),
            }
        }
        Ok(())
    }

    fn sum_squares(&self) -> Result<Self> {
        let name = format!("sum_squares_{}", self.float_kernel("sum_squares")?);
        if self.len == 0 {
            return self.zeros_like(1, DType::F32);
        }
        // One partial a block, summed by reduce_f32: the same grid always adds in the same order.
        let blocks = self.len.div_ceil(2048).min(self.device.sm_count() as usize * 8).max(1);
        let mut partials = self.output(blocks, DType::F32)?;
        let n = self.len as u32;
        launch!(&self.device, "optim", name, grid(blocks, 1, 1, BLOCK)?, &self.buf, &mut partials.buf, &n);
        partials.reduce(ReduceOp::Sum, ReduceShape { outer: 1, len: blocks, inner: 1 })
    }

    fn attention_backward(
        &self,
        k: &Self,
        v: &Self,
        mask: Option<&Self>,
        grad_out: &Self,
        p: &AttentionParams,
    ) -> Result<(Self, Self, Self)> {
        let heads = p.batch * p.heads;
        let (len_q, len_kv) = (heads * p.q_len * p.head_dim, heads * p.kv_len * p.head_dim);
        if len_q == 0 || len_kv == 0 {
            // No keys: the output is 0 whatever q; no queries: nothing reaches k or v.
            let zeros = |len| self.zeros_like(len, self.dtype);
            return Ok((zeros(len_q)?, zeros(len_kv)?, zeros(len_kv)?));
        }
        let suffix = self.float_kernel("attention_backward")?;
        // Per head-dim capacity D: query rows a stats/dQ block, keys a dK/dV block, and the dynamic
        // shared memory of the stats, dQ and dK/dV kernels (kernels/attention_grad.cu `Cfg`).
        let (d_max, block_q, block_k, smem) = match p.head_dim {
            0..=64 => (64, 32, 64, [34816, 39168, 69888]),
            65..=96 => (96, 64, 64, [76800, 85504, 94464]),
            97..=160 => (160, 32, 32, [83968, 88320, 93440]),
            d => {
                return Err(Error::Cuda(format!(
                    "attention_backward: head_dim {d} exceeds the kernels' maximum of 160"
                )))
            }
        };
        let dev = &self.device;
        let config = |kernel: &str, blocks: usize, bytes: u32| -> Result<(String, LaunchConfig)> {
            let name = format!("attention_bwd_{kernel}_{suffix}_d{d_max}");
            // Over 48 KB of dynamic shared memory needs the function's opt-in.
            let attribute = cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
            dev.function("attention_grad", &name)?.set_attribute(attribute, bytes as i32).map_err(driver_err)?;
            Ok((name, LaunchConfig { shared_mem_bytes: bytes, ..grid(blocks, heads, 1, BLOCK)? }))
        };
        let args = AttentionArgs::new(p, mask.is_some())?;
        // Without a mask the kernels never read that pointer; q stands in.
        let mask_buf = mask.map_or(&self.buf, |m| &m.buf);
        let (q, kb, vb, g) = (&self.buf, &k.buf, &v.buf, &grad_out.buf);
        let mut lse = self.output(heads * p.q_len, DType::F32)?;
        let mut dsum = self.output(heads * p.q_len, DType::F32)?;
        let (name, cfg) = config("stats", p.q_len.div_ceil(block_q), smem[0])?;
        launch!(dev, "attention_grad", name, cfg, q, kb, vb, mask_buf, g, &mut lse.buf, &mut dsum.buf, &args);
        let mut dq = self.output(len_q, self.dtype)?;
        let (name, cfg) = config("dq", p.q_len.div_ceil(block_q), smem[1])?;
        launch!(dev, "attention_grad", name, cfg, q, kb, vb, mask_buf, g, &lse.buf, &dsum.buf, &mut dq.buf, &args);
        let (mut dk, mut dv) = (self.output(len_kv, self.dtype)?, self.output(len_kv, self.dtype)?);
        let (name, cfg) = config("dkdv", p.kv_len.div_ceil(block_k), smem[2])?;
        let (lse, dsum) = (&lse.buf, &dsum.buf);
        launch!(dev, "attention_grad", name, cfg, q, kb, vb, mask_buf, g, lse, dsum, &mut dk.buf, &mut dv.buf, &args);
        Ok((dq, dk, dv))
    }

    fn embedding_backward(&self, ids: &Self, vocab: usize, dim: usize) -> Result<Self> {
        if ids.dtype != DType::U32 {
            return Err(Error::DType { op: "embedding_backward ids", dtype: ids.dtype });
        }
        let suffix = self.float_kernel("embedding_backward")?;
        // Rows no id names stay zero; the sum kernel writes the others once.
        let mut table = self.zeros_like(vocab * dim, self.dtype)?;
        if ids.len == 0 || table.len == 0 {
            return Ok(table);
        }
        let (n, d, vocab) = (u32_of("id count", ids.len)?, dim as u32, vocab as u32);
        let mut order = self.output(ids.len, DType::U32)?;
        let dev = &self.device;
        let cfg = grid(ids.len.div_ceil(BLOCK as usize), 1, 1, BLOCK)?;
        launch!(dev, "embedding_grad", "embedding_grad_rank", cfg, &ids.buf, &mut order.buf, &n, &vocab);
        let name = format!("embedding_grad_sum_{suffix}");
        let cfg = grid(ids.len.min(dev.sm_count() as usize * 8), 1, 1, BLOCK)?;
        launch!(dev, "embedding_grad", name, cfg, &self.buf, &ids.buf, &order.buf, &mut table.buf, &n, &d, &vocab);
        Ok(table)
    }

    fn activation_backward(&self, op: UnaryOp, grad_out: &Self) -> Result<Self> {
        let mut out = self.output(self.len, self.dtype)?;
        if self.len > 0 {
            let name = format!("activation_backward_{}", self.float_kernel("activation_backward")?);
            let (n, code, cfg) = (self.len as u32, unary_code(op), self.device.grid_stride(self.len));
            launch!(&self.device, "elementwise_grad", name, cfg, &self.buf, &grad_out.buf, &mut out.buf, &n, &code);
        }
        Ok(out)
    }

    fn clamp_backward(&self, lo: f32, hi: f32, grad_out: &Self) -> Result<Self> {
        let mut out = self.output(self.len, self.dtype)?;
        if self.len > 0 {
            let name = format!("clamp_backward_{}", self.float_kernel("clamp_backward")?);
            let (n, cfg) = (self.len as u32, self.device.grid_stride(self.len));
            launch!(&self.device, "elementwise_grad", name, cfg, &self.buf, &grad_out.buf, &mut out.buf, &n, &lo, &hi);
        }
        Ok(out)
    }

    fn geglu_backward(&self, grad_out: &Self, rows: usize, d: usize) -> Result<Self> {
        let mut out = self.output(rows * 2 * d, self.dtype)?;
        if rows * d > 0 {
            let name = format!("geglu_backward_{}", self.float_kernel("geglu_backward")?);
            let (r, d32, cfg) = (rows as u32, d as u32, self.device.grid_stride(rows * d));
            launch!(&self.device, "elementwise_grad", name, cfg, &self.buf, &grad_out.buf, &mut out.buf, &r, &d32);
        }
        Ok(out)
    }

    fn layer_norm_backward(
        &self,
        weight: &Self,
        grad_out: &Self,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<(Self, Self, Self)> {
        let suffix = self.float_kernel("layer_norm_backward")?;
        let mut dx = self.output(rows * cols, self.dtype)?;
        if rows * cols == 0 {
            return Ok((dx, self.zeros_like(cols, self.dtype)?, self.zeros_like(cols, self.dtype)?));
        }
        let dev = &self.device;
        let (r, c) = (rows as u32, cols as u32);
        let mut row_stats = self.output(2 * rows, DType::F32)?;
        let name = format!("layer_norm_backward_{suffix}");
        let (x, w, g) = (&self.buf, &weight.buf, &grad_out.buf);
        launch!(
            dev,
            "norm_grad",
            name,
            grid(rows, 1, 1, BLOCK)?,
            x,
            w,
            g,
            &mut dx.buf,
            &mut row_stats.buf,
            &r,
            &c,
            &eps
        );
        // Rows split into parts so the (column tiles, parts) grid has about 8 blocks an SM.
        let col_tiles = cols.div_ceil(32);
        let parts = (dev.sm_count() as usize * 8).div_ceil(col_tiles).clamp(1, rows.div_ceil(32));
        let rows_per_part = rows.div_ceil(parts);
        let parts = rows.div_ceil(rows_per_part);
        let mut partials = self.output(parts * cols * 2, DType::F32)?;
        let name = format!("layer_norm_param_partials_{suffix}");
        let (cfg, rpp) = (grid(col_tiles, parts, 1, BLOCK)?, rows_per_part as u32);
        launch!(dev, "norm_grad", name, cfg, x, g, &row_stats.buf, &mut partials.buf, &r, &c, &rpp);
        let (dw, db) = self.norm_param_grads(&partials, parts, cols, None)?;
        Ok((dx, dw, db))
    }

    fn group_norm_backward(&self, weight: &Self, grad_out: &Self, s: GroupNormShape) -> Result<(Self, Self, Self)> {
        let suffix = self.float_kernel("group_norm_backward")?;
        let mut dx = self.output(self.len, self.dtype)?;
        if self.len == 0 {
            return Ok((dx, self.zeros_like(s.c, self.dtype)?, self.zeros_like(s.c, self.dtype)?));
        }
        let (n, c, sp, g) = (s.n as u32, s.c as u32, s.spatial as u32, s.groups as u32);
        let mut partials = self.output(s.n * s.c * 2, DType::F32)?;
        let name = format!("group_norm_backward_{suffix}");
        let (dev, cfg) = (&self.device, grid(s.n * s.groups, 1, 1, BLOCK)?);
        let (x, w, gr) = (&self.buf, &weight.buf, &grad_out.buf);
        launch!(dev, "norm_grad", name, cfg, x, w, gr, &mut dx.buf, &mut partials.buf, &n, &c, &sp, &g, &s.eps);
        let (dw, db) = self.norm_param_grads(&partials, s.n, s.c, None)?;
        Ok((dx, dw, db))
    }

    fn batch_norm_train(&self, weight: &Self, bias: &Self, s: BatchNormShape) -> Result<(Self, Self, Self)> {
        let suffix = self.float_kernel("batch_norm_train")?;
        let mut out = self.output(self.len, self.dtype)?;
        let (mut mean, mut var) = (self.output(s.c, DType::F32)?, self.output(s.c, DType::F32)?);
        if self.len == 0 {
            return Ok((out, mean, var));
        }
        let (parts, chunk) = self.batch_norm_parts(s);
        let (n, c, sp, ch) = (s.n as u32, s.c as u32, s.spatial as u32, chunk as u32);
        let (dev, cfg) = (&self.device, grid(s.c, parts, 1, BLOCK)?);
        let mut partials = self.output(parts * s.c * 3, DType::F32)?;
        let name = format!("batch_norm_stats_partials_{suffix}");
        launch!(dev, "norm_grad", name, cfg, &self.buf, &mut partials.buf, &n, &c, &sp, &ch);
        let p = parts as u32;
        let merge_cfg = dev.grid_stride(s.c);
        launch!(
            dev,
            "norm_grad",
            "batch_norm_stats_merge",
            merge_cfg,
            &partials.buf,
            &mut mean.buf,
            &mut var.buf,
            &p,
            &c
        );
        let name = format!("batch_norm_apply_{suffix}");
        let (x, w, b) = (&self.buf, &weight.buf, &bias.buf);
        launch!(dev, "norm_grad", name, cfg, x, w, b, &mean.buf, &var.buf, &mut out.buf, &n, &c, &sp, &ch, &s.eps);
        Ok((out, mean, var))
    }

    fn batch_norm_backward(
        &self,
        weight: &Self,
        grad_out: &Self,
        mean: &Self,
        var: &Self,
        s: BatchNormShape,
    ) -> Result<(Self, Self, Self)> {
        let suffix = self.float_kernel("batch_norm_backward")?;
        for stat in [mean, var] {
            if stat.dtype != DType::F32 || stat.len != s.c {
                return Err(Error::DType { op: "batch_norm_backward statistics", dtype: stat.dtype });
            }
        }
        let mut dx = self.output(self.len, self.dtype)?;
        if self.len == 0 {
            return Ok((dx, self.zeros_like(s.c, self.dtype)?, self.zeros_like(s.c, self.dtype)?));
        }
        let (parts, chunk) = self.batch_norm_parts(s);
        let (n, c, sp, ch) = (s.n as u32, s.c as u32, s.spatial as u32, chunk as u32);
        let (dev, cfg) = (&self.device, grid(s.c, parts, 1, BLOCK)?);
        let (x, w, g, m, v) = (&self.buf, &weight.buf, &grad_out.buf, &mean.buf, &var.buf);
        let mut partials = self.output(parts * s.c * 2, DType::F32)?;
        let name = format!("batch_norm_grad_partials_{suffix}");
        launch!(dev, "norm_grad", name, cfg, x, g, m, v, &mut partials.buf, &n, &c, &sp, &ch, &s.eps);
        let mut totals = self.output(s.c * 2, DType::F32)?;
        let (dw, db) = self.norm_param_grads(&partials, parts, s.c, Some(&mut totals))?;
        let name = format!("batch_norm_backward_dx_{suffix}");
        launch!(dev, "norm_grad", name, cfg, x, w, g, m, v, &totals.buf, &mut dx.buf, &n, &c, &sp, &ch, &s.eps);
        Ok((dx, dw, db))
    }

    fn softmax_backward(&self, grad_out: &Self, rows: usize, cols: usize, log: bool) -> Result<Self> {
        let mut dx = self.output(rows * cols, self.dtype)?;
        if rows * cols > 0 {
            let name = format!("softmax_backward_{}", self.float_kernel("softmax_backward")?);
            let (r, c, l) = (rows as u32, cols as u32, log as i32);
            let (y, g) = (&self.buf, &grad_out.buf);
            launch!(&self.device, "loss", name, grid(rows, 1, 1, BLOCK)?, y, g, &mut dx.buf, &r, &c, &l);
        }
        Ok(dx)
    }

    fn cross_entropy(&self, labels: &Self, rows: usize, classes: usize, smoothing: f32) -> Result<Self> {
        let suffix = self.float_kernel("cross_entropy")?;
        if labels.dtype != DType::U32 || labels.len != rows {
            return Err(Error::DType { op: "cross_entropy labels", dtype: labels.dtype });
        }
        let mut loss = self.output(rows, DType::F32)?;
        if rows > 0 {
            let (r, c) = (rows as u32, classes as u32);
            let (z, l, cfg) = (&self.buf, &labels.buf, grid(rows, 1, 1, BLOCK)?);
            launch!(
                &self.device,
                "loss",
                format!("cross_entropy_{suffix}"),
                cfg,
                z,
                l,
                &mut loss.buf,
                &r,
                &c,
                &smoothing
            );
        }
        Ok(loss)
    }

    fn cross_entropy_backward(
        &self,
        labels: &Self,
        grad_rows: &Self,
        rows: usize,
        classes: usize,
        smoothing: f32,
    ) -> Result<Self> {
        let suffix = self.float_kernel("cross_entropy_backward")?;
        if labels.dtype != DType::U32 || labels.len != rows {
            return Err(Error::DType { op: "cross_entropy_backward labels", dtype: labels.dtype });
        }
        if grad_rows.dtype != DType::F32 || grad_rows.len != rows {
            return Err(Error::DType { op: "cross_entropy_backward grad_rows", dtype: grad_rows.dtype });
        }
        let mut dz = self.output(rows * classes, self.dtype)?;
        if rows * classes > 0 {
            let (r, c) = (rows as u32, classes as u32);
            let (z, l, gr, cfg) = (&self.buf, &labels.buf, &grad_rows.buf, grid(rows, 1, 1, BLOCK)?);
            let name = format!("cross_entropy_backward_{suffix}");
            launch!(&self.device, "loss", name, cfg, z, l, gr, &mut dz.buf, &r, &c, &smoothing);
        }
        Ok(dz)
    }

    fn conv2d_input_grad(&self, weight: &Self, p: &Conv2dParams) -> Result<Self> {
        let len = p.n * p.c_in * p.h * p.w;
        let mut dx = self.output(len, self.dtype)?;
        if len > 0 {
            let name = format!("conv2d_input_grad_{}", self.float_kernel("conv2d_input_grad")?);
            let args = Conv2dArgs::new(p, false)?;
            let cfg = grid((p.n * p.h * p.w).div_ceil(64), (p.c_in / p.groups).div_ceil(64), p.groups, BLOCK)?;
            launch!(&self.device, "conv_grad", name, cfg, &self.buf, &weight.buf, &mut dx.buf, &args);
        }
        Ok(dx)
    }

    fn conv2d_weight_grad(&self, input: &Self, p: &Conv2dParams) -> Result<Self> {
        let depth = p.c_in / p.groups * p.kh * p.kw;
        let len = p.c_out * depth;
        let mut dw = self.output(len, self.dtype)?;
        if len == 0 {
            return Ok(dw);
        }
        let suffix = self.float_kernel("conv2d_weight_grad")?;
        let args = Conv2dArgs::new(p, false)?;
        // The reduction over k = n·h_out·w_out is split so that about two blocks an SM run when the
        // 64×64 tiles alone are too few, each split at least 1024 long; the splits' f32 partial sums
        // are then added in a fixed order.
        let k = p.n * p.h_out * p.w_out;
        let tiles = depth.div_ceil(64) * (p.c_out / p.groups).div_ceil(64) * p.groups;
        let want = (2 * self.device.sm_count() as usize).div_ceil(tiles);
        let splits = want.min(k / 1024).min(65535 / p.groups).max(1);
        let k_split = k.div_ceil(splits).next_multiple_of(16).max(16);
        let splits = k.div_ceil(k_split).max(1);
        let cfg = grid(depth.div_ceil(64), (p.c_out / p.groups).div_ceil(64), p.groups * splits, BLOCK)?;
        let (s32, ks32) = (splits as u32, u32_of("conv2d_weight_grad split", k_split)?);
        let name = format!("conv2d_weight_grad_{suffix}");
        if splits == 1 {
            // One split writes dW itself and never touches the partial sums; dY stands in for them.
            let (dev, dy) = (&self.device, &self.buf);
            launch!(dev, "conv_grad", name, cfg, dy, &input.buf, dy, &mut dw.buf, &args, &s32, &ks32);
            return Ok(dw);
        }
        let mut partial = CudaStorage::alloc(&self.device, splits * len, DType::F32)?;
        let dev = &self.device;
        launch!(dev, "conv_grad", name, cfg, &self.buf, &input.buf, &mut partial.buf, &dw.buf, &args, &s32, &ks32);
        let name = format!("conv2d_weight_grad_reduce_{suffix}");
        let len32 = len as u32;
        launch!(dev, "conv_grad", name, dev.grid_stride(len), &partial.buf, &mut dw.buf, &len32, &s32);
        Ok(dw)
    }

    fn max_pool2d_backward(&self, input: &Self, p: &MaxPool2dParams) -> Result<Self> {
        let len = p.planes * p.h * p.w;
        let mut dx = self.output(len, self.dtype)?;
        if len > 0 {
            let name = format!("max_pool2d_backward_{}", self.float_kernel("max_pool2d_backward")?);
            let u = |v| u32_of("max_pool2d size", v);
            let (pl, h, w, ho, wo) = (u(p.planes)?, u(p.h)?, u(p.w)?, u(p.h_out)?, u(p.w_out)?);
            let (k, s, pad) = (u(p.kernel)?, u(p.stride)?, u(p.padding)?);
            let (dev, cfg) = (&self.device, self.device.grid_stride(len));
            launch!(dev, "pool", name, cfg, &input.buf, &self.buf, &mut dx.buf, &pl, &h, &w, &k, &s, &pad, &ho, &wo);
        }
        Ok(dx)
    }

    fn avg_pool2d(&self, p: &AvgPool2dParams) -> Result<Self> {
        self.window_pool("avg_pool2d", p, p.planes * p.h_out * p.w_out)
    }

    fn avg_pool2d_backward(&self, p: &AvgPool2dParams) -> Result<Self> {
        self.window_pool("avg_pool2d_backward", p, p.planes * p.h * p.w)
    }

    fn adaptive_avg_pool2d(&self, p: &AdaptivePool2dParams) -> Result<Self> {
        self.adaptive_pool("adaptive_avg_pool2d", p, p.planes * p.h_out * p.w_out)
    }

    fn adaptive_avg_pool2d_backward(&self, p: &AdaptivePool2dParams) -> Result<Self> {
        self.adaptive_pool("adaptive_avg_pool2d_backward", p, p.planes * p.h * p.w)
    }
}

impl CudaStorage {
    /// dweight and dbias in `self`'s dtype from f32 partial sums (parts, channels, [Σ g·x̂, Σ g]),
    /// added part by part in order; with `totals` (channels × 2 f32), the unrounded sums too.
    fn norm_param_grads(
        &self,
        partials: &CudaStorage,
        parts: usize,
        channels: usize,
        totals: Option<&mut CudaStorage>,
    ) -> Result<(CudaStorage, CudaStorage)> {
        let (mut dw, mut db) = (self.output(channels, self.dtype)?, self.output(channels, self.dtype)?);
        if channels == 0 {
            return Ok((dw, db));
        }
        let name = format!("norm_param_grads_{}", self.float_kernel("norm_param_grads")?);
        let (p, c, keep) = (u32_of("parts", parts)?, channels as u32, totals.is_some() as u32);
        let (dev, cfg) = (&self.device, self.device.grid_stride(channels));
        match totals {
            Some(t) => {
                launch!(dev, "norm_grad", name, cfg, &partials.buf, &mut dw.buf, &mut db.buf, &mut t.buf, &p, &c, &keep)
            }
            // Without totals the kernel never writes that pointer; the partials stand in.
            None => launch!(
                dev,
                "norm_grad",
                name,
                cfg,
                &partials.buf,
                &mut dw.buf,
                &mut db.buf,
                &partials.buf,
                &p,
                &c,
                &keep
            ),
        }
        Ok((dw, db))
    }

    /// (parts, chunk) for batch norm's (c, parts) grids: each channel's n·spatial values split so
    /// the grid has about 8 blocks an SM, at least 4096 values a part, chunks a multiple of 8 (whole
    /// 16-byte packs of any dtype).
    fn batch_norm_parts(&self, s: BatchNormShape) -> (usize, usize) {
        let m = s.n * s.spatial;
        let want = (self.device.sm_count() as usize * 8).div_ceil(s.c.max(1)).clamp(1, m.div_ceil(4096).max(1));
        let chunk = m.div_ceil(want).next_multiple_of(8);
        (m.div_ceil(chunk), chunk)
    }
}

impl CudaStorage {
    /// Launches the one-input pooling kernel `op` of kernels/pool.cu over square windows,
    /// producing `len` elements.
    fn window_pool(&self, op: &'static str, p: &MaxPool2dParams, len: usize) -> Result<Self> {
        let mut out = self.output(len, self.dtype)?;
        if len > 0 {
            let name = format!("{op}_{}", self.float_kernel(op)?);
            let u = |v| u32_of("pooling size", v);
            let (pl, h, w, ho, wo) = (u(p.planes)?, u(p.h)?, u(p.w)?, u(p.h_out)?, u(p.w_out)?);
            let (k, s, pad) = (u(p.kernel)?, u(p.stride)?, u(p.padding)?);
            let cfg = self.device.grid_stride(len);
            launch!(&self.device, "pool", name, cfg, &self.buf, &mut out.buf, &pl, &h, &w, &k, &s, &pad, &ho, &wo);
        }
        Ok(out)
    }

    /// Launches the adaptive pooling kernel `op` of kernels/pool.cu, producing `len` elements.
    fn adaptive_pool(&self, op: &'static str, p: &AdaptivePool2dParams, len: usize) -> Result<Self> {
        let mut out = self.output(len, self.dtype)?;
        if len > 0 {
            let name = format!("{op}_{}", self.float_kernel(op)?);
            let u = |v| u32_of("pooling size", v);
            let (pl, h, w, ho, wo) = (u(p.planes)?, u(p.h)?, u(p.w)?, u(p.h_out)?, u(p.w_out)?);
            launch!(
                &self.device,
                "pool",
                name,
                self.device.grid_stride(len),
                &self.buf,
                &mut out.buf,
                &pl,
                &h,
                &w,
                &ho,
                &wo
            );
        }
        Ok(out)
    }
}
