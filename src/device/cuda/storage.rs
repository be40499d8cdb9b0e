//! Device buffers and the launcher of every op of the contract. A buffer is
//! untyped bytes plus a dtype: a kernel argument is a device pointer whatever
//! its element type, and the kernel name carries the dtype.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::args::{u32_of, AttentionArgs, BroadcastArgs, Conv2dArgs, SchedulerStepArgs, StridedArgs};
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
