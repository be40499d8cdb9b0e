//! The backend contract: the operations every backend implements, and the plain
//! shape descriptions they take. Storages are contiguous, row-major buffers; the
//! tensor layer checks shapes and derives these descriptions, so a backend never
//! validates user input, it only computes.

use super::DType;
use crate::error::Result;

/// Activation functions, applied elementwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    Silu,
    /// GELU with the exact erf form (PyTorch's default `approximate="none"`).
    Gelu,
    /// GELU with the tanh approximation (`approximate="tanh"`).
    GeluTanh,
    /// x·sigmoid(1.702·x), as in OpenAI's CLIP.
    QuickGelu,
    Relu,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    Sum,
    Mean,
    Max,
    /// Index of the first maximum, as a u32 tensor.
    ArgMax,
}

/// The most dimensions a broadcast or strided copy takes after collapsing
/// contiguous runs; kernels take this many as a fixed-size argument.
pub const MAX_DIMS: usize = 6;

/// An elementwise binary op over broadcast operands: output index `i` decomposes
/// into `dims` (row-major) and each operand reads at `sum(idx[d] * strides[d])`,
/// with stride 0 along broadcast dimensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BroadcastLayout {
    pub dims: Vec<usize>,
    pub lhs_strides: Vec<usize>,
    pub rhs_strides: Vec<usize>,
}

/// A tensor seen as (outer, len, inner) around the axis being reduced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReduceShape {
    pub outer: usize,
    pub len: usize,
    pub inner: usize,
}

/// Batched C = op(A)·op(B), all row-major. A is (m, k), or (k, m) when `trans_a`;
/// B is (k, n), or (n, k) when `trans_b`. A batch stride of 0 shares one operand
/// across the batch (a weight matrix against a batch of activations).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatmulShape {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub a_batch_stride: usize,
    pub b_batch_stride: usize,
}

/// 2-D convolution over NCHW input and (c_out, c_in / groups, kh, kw) weight,
/// producing (n, c_out, h_out, w_out). Cross-correlation, as PyTorch computes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dParams {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
    pub groups: usize,
    pub h_out: usize,
    pub w_out: usize,
}

/// Group normalisation of (n, c, spatial) with per-channel affine weight and bias.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupNormShape {
    pub n: usize,
    pub c: usize,
    pub spatial: usize,
    pub groups: usize,
    pub eps: f32,
}

/// softmax(Q·Kᵀ·scale + mask)·V over (batch, heads, seq, head_dim).
/// `causal` masks key j for query i when j > i (top-left aligned, as PyTorch's
/// `is_causal`). The additive f32 mask, when given, is read at
/// `b*s0 + h*s1 + i*s2 + j*s3` with `mask_strides`, so a (batch, 1, 1, kv_len)
/// padding mask broadcasts over heads and queries. A query whose keys are all
/// masked gets a zero output row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionParams {
    pub batch: usize,
    pub heads: usize,
    pub q_len: usize,
    pub kv_len: usize,
    pub head_dim: usize,
    pub scale: f32,
    pub causal: bool,
    pub mask_strides: [usize; 4],
}

/// A rectangular copy: `rows` rows of `cols` elements, from `src` starting at
/// `src_offset` with row pitch `src_pitch`, into `dst` at `dst_offset` with row
/// pitch `dst_pitch`. Concatenation and splitting along any axis are this copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Copy2d {
    pub rows: usize,
    pub cols: usize,
    pub src_pitch: usize,
    pub dst_pitch: usize,
    pub src_offset: usize,
    pub dst_offset: usize,
}

/// Max pooling of (planes, h, w) over square `kernel` windows at `stride`, with
/// `padding` on every side counting as -inf (PyTorch's max_pool2d, dilation 1,
/// floor mode), producing (planes, h_out, w_out). The tensor layer keeps
/// padding ≤ kernel / 2, so every window holds at least one input; NaN wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxPool2dParams {
    pub planes: usize,
    pub h: usize,
    pub w: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub h_out: usize,
    pub w_out: usize,
}

/// The per-element coefficients of one fused diffusion-scheduler step (kernels/scheduler.cu).
/// With x the sample and m the model output, or m = u + g·(c − u) of the output's two batch
/// halves [u; c] when `guidance` is Some(g):
///   x0  = x0_x·x + x0_m·m, clamped to [−clip, clip] when `clip` is Some
///   eps = eps_x·x + eps_m·m
///   out = out_x0·x0 + out_eps·eps + out_x·x + out_noise·noise + out_prev·prev_x0
/// Every DDIM, DDPM, Euler, Euler-ancestral and DPM-Solver++ (1S/2M) step is such a combination.
/// With `keep_x0` the backend returns x0 too (DPM-Solver++ keeps it for its next step).
/// Backends compute in f32 with this exact sequence of roundings, fused multiply-adds where
/// written as such, so the CPU and CUDA results agree bit for bit in f32:
///   m = fma(g, c − u, u); x0 = fma(x0_x, x, x0_m·m); eps = fma(eps_x, x, eps_m·m);
///   out = fma(out_prev, p, fma(out_noise, n, fma(out_x, x, fma(out_eps, eps, out_x0·x0)))).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SchedulerStep {
    pub x0_x: f32,
    pub x0_m: f32,
    pub clip: Option<f32>,
    pub eps_x: f32,
    pub eps_m: f32,
    pub out_x0: f32,
    pub out_eps: f32,
    pub out_x: f32,
    pub out_noise: f32,
    pub out_prev: f32,
    pub guidance: Option<f32>,
    pub keep_x0: bool,
}

/// Average pooling takes the windows of max pooling; padding counts as zeros in the average
/// (PyTorch's count_include_pad), and with floor mode no window overhangs the padded input, so
/// every window divides by kernel².
pub type AvgPool2dParams = MaxPool2dParams;

/// Adaptive average pooling of (planes, h, w) to (planes, h_out, w_out) with PyTorch's bins:
/// output row i averages input rows floor(i·h / h_out) .. ceil((i + 1)·h / h_out), and the same
/// for columns. h, w, h_out and w_out are all at least 1, so no bin is empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdaptivePool2dParams {
    pub planes: usize,
    pub h: usize,
    pub w: usize,
    pub h_out: usize,
    pub w_out: usize,
}

/// What every backend's storage can do. Inputs are contiguous; a float op takes
/// f32/f16/bf16 and returns the input dtype (accumulating in f32).
pub trait BackendStorage: Sized {
    fn dtype(&self) -> DType;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// A new zero-filled storage of the same backend.
    fn zeros_like(&self, len: usize, dtype: DType) -> Result<Self>;
    fn to_dtype(&self, dtype: DType) -> Result<Self>;
    fn unary(&self, op: UnaryOp) -> Result<Self>;
    /// x · factor.
    fn scale(&self, factor: f32) -> Result<Self>;
    /// min(max(x, lo), hi), NaN staying NaN (PyTorch's clamp).
    fn clamp(&self, lo: f32, hi: f32) -> Result<Self>;
    /// GEGLU of (rows, 2·d) into (rows, d): h · gelu(g) with [h, g] the halves of each row
    /// and the exact erf GELU.
    fn geglu(&self, rows: usize, d: usize) -> Result<Self>;
    fn binary(&self, op: BinaryOp, rhs: &Self, layout: &BroadcastLayout) -> Result<Self>;
    fn reduce(&self, op: ReduceOp, shape: ReduceShape) -> Result<Self>;
    /// Softmax (or log-softmax) over the last axis of (rows, cols).
    fn softmax(&self, rows: usize, cols: usize, log: bool) -> Result<Self>;
    fn matmul(&self, rhs: &Self, shape: &MatmulShape) -> Result<Self>;
    /// Layer norm over the last axis of (rows, cols) with weight and bias of length cols.
    fn layer_norm(&self, weight: &Self, bias: &Self, rows: usize, cols: usize, eps: f32) -> Result<Self>;
    fn group_norm(&self, weight: &Self, bias: &Self, shape: GroupNormShape) -> Result<Self>;
    fn conv2d(&self, weight: &Self, bias: Option<&Self>, params: &Conv2dParams) -> Result<Self>;
    /// Nearest-neighbour ×2 upsampling of (planes, h, w) to (planes, 2h, 2w).
    fn upsample_nearest2x(&self, planes: usize, h: usize, w: usize) -> Result<Self>;
    /// A gather: output index `i` decomposes into `dims` and reads the input at
    /// `sum(idx[d] * strides[d])` (a permutation or any strided view, made contiguous).
    fn copy_strided(&self, dims: &[usize], strides: &[usize]) -> Result<Self>;
    fn copy2d_into(&self, dst: &mut Self, copy: Copy2d) -> Result<()>;
    /// Rows of the (vocab, dim) table `self` picked by the u32 `ids`.
    fn embedding(&self, ids: &Self, dim: usize) -> Result<Self>;
    fn attention(&self, k: &Self, v: &Self, mask: Option<&Self>, params: &AttentionParams) -> Result<Self>;
    fn max_pool2d(&self, params: &MaxPool2dParams) -> Result<Self>;
    /// One fused scheduler step over the sample `self` (n elements): `model_out` holds n
    /// elements, or 2n ([uncond; cond]) with guidance; `noise` and `prev_x0` hold n and are
    /// read only when given. Returns the new sample and, with `step.keep_x0`, x0.
    fn scheduler_step(
        &self,
        model_out: &Self,
        noise: Option<&Self>,
        prev_x0: Option<&Self>,
        step: &SchedulerStep,
    ) -> Result<(Self, Option<Self>)>;
    /// One AdamW update (see `AdamWStep`) in place over the f32 master weights `self`, the
    /// f32 gradients `grads` and the f32 moments `m` and `v`, all of one length.
    fn adamw_step(&mut self, grads: &Self, m: &mut Self, v: &mut Self, step: &AdamWStep) -> Result<()>;
    /// One SGD update (see `SgdStep`) in place over the f32 weights `self` and the f32 momentum
    /// buffer, given exactly when momentum is in use, with f32 `grads` of the same length.
    fn sgd_step(&mut self, grads: &Self, momentum: Option<&mut Self>, step: &SgdStep) -> Result<()>;
    /// Σ x² over the whole buffer, accumulated in f32, as a one-element f32 storage (the squared
    /// global gradient norm an optimizer clips by).
    fn sum_squares(&self) -> Result<Self>;
    /// The gradients (dq, dk, dv) of `attention` for the upstream gradient `grad_out` (shaped as
    /// q); `self` is q. The mask gets none. A query whose keys are all masked gets zeros.
    fn attention_backward(
        &self,
        k: &Self,
        v: &Self,
        mask: Option<&Self>,
        grad_out: &Self,
        params: &AttentionParams,
    ) -> Result<(Self, Self, Self)>;
    /// The (vocab, dim) gradient of an embedding table from `self`, the (ids.len, dim) gradient
    /// of the looked-up rows: row `ids[n]` sums row n. The CPU errs on an id ≥ vocab; CUDA
    /// skips it.
    fn embedding_backward(&self, ids: &Self, vocab: usize, dim: usize) -> Result<Self>;
    /// dx = grad_out · op'(x) for the activation input `self`.
    fn activation_backward(&self, op: UnaryOp, grad_out: &Self) -> Result<Self>;
    /// dx = grad_out where lo ≤ x ≤ hi, else 0 (`self` is x).
    fn clamp_backward(&self, lo: f32, hi: f32, grad_out: &Self) -> Result<Self>;
    /// The (rows, 2·d) gradient of `geglu` at `self` for the (rows, d) `grad_out`.
    fn geglu_backward(&self, grad_out: &Self, rows: usize, d: usize) -> Result<Self>;
    /// The gradients (dx, dweight, dbias) of `layer_norm` of (rows, cols) `self` for the upstream
    /// gradient `grad_out`, recomputing each row's mean and rstd from x.
    fn layer_norm_backward(
        &self,
        weight: &Self,
        grad_out: &Self,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<(Self, Self, Self)>;
    /// The gradients (dx, dweight, dbias) of `group_norm` of `self` for the upstream gradient `grad_out`.
    fn group_norm_backward(&self, weight: &Self, grad_out: &Self, shape: GroupNormShape) -> Result<(Self, Self, Self)>;
    /// Batch norm in training mode: (out, mean, var), normalised by the batch statistics of each
    /// channel; mean and the biased variance are f32 (c,) whatever `self`'s dtype.
    fn batch_norm_train(&self, weight: &Self, bias: &Self, shape: BatchNormShape) -> Result<(Self, Self, Self)>;
    /// The gradients (dx, dweight, dbias) of `batch_norm_train` through the batch statistics, given
    /// the f32 `mean` and `var` it returned.
    fn batch_norm_backward(
        &self,
        weight: &Self,
        grad_out: &Self,
        mean: &Self,
        var: &Self,
        shape: BatchNormShape,
    ) -> Result<(Self, Self, Self)>;
    /// dx of softmax (or log-softmax, with `log`) over the last axis of (rows, cols), from its
    /// output `self` and the upstream gradient: y·(g − Σ g·y), or g − exp(y)·Σ g.
    fn softmax_backward(&self, grad_out: &Self, rows: usize, cols: usize, log: bool) -> Result<Self>;
    /// Per-row cross-entropy of the (rows, classes) logits `self` against the u32 `labels`, with
    /// label smoothing ε: (1−ε)·(−log p_label) + ε·mean_j(−log p_j), as f32 (rows,). A label ≥
    /// classes is an error on the CPU and a NaN row on the GPU.
    fn cross_entropy(&self, labels: &Self, rows: usize, classes: usize, smoothing: f32) -> Result<Self>;
    /// dlogits of `cross_entropy` for the f32 per-row upstream gradient `grad_rows`:
    /// grad_rows[r]·(softmax − ((1−ε)·onehot + ε/classes)), in the logits' dtype.
    fn cross_entropy_backward(
        &self,
        labels: &Self,
        grad_rows: &Self,
        rows: usize,
        classes: usize,
        smoothing: f32,
    ) -> Result<Self>;
    /// dL/dx of conv2d from the upstream gradient `self` (n, c_out, h_out, w_out) and the
    /// weight; `params` describes the forward. Returns (n, c_in, h, w).
    fn conv2d_input_grad(&self, weight: &Self, params: &Conv2dParams) -> Result<Self>;
    /// dL/dW of conv2d from the upstream gradient `self` and the forward's input; returns
    /// (c_out, c_in / groups, kh, kw), summed over the batch.
    fn conv2d_weight_grad(&self, input: &Self, params: &Conv2dParams) -> Result<Self>;
    /// dL/dx of max_pool2d from the upstream gradient `self` (planes, h_out, w_out): each
    /// window's gradient goes to its maximum, found again from `input` with the forward's rule
    /// (the first maximum in row-major window order; a NaN wins, the last one if several).
    fn max_pool2d_backward(&self, input: &Self, params: &MaxPool2dParams) -> Result<Self>;
    fn avg_pool2d(&self, params: &AvgPool2dParams) -> Result<Self>;
    /// dL/dx of avg_pool2d from the upstream gradient `self` (planes, h_out, w_out).
    fn avg_pool2d_backward(&self, params: &AvgPool2dParams) -> Result<Self>;
    fn adaptive_avg_pool2d(&self, params: &AdaptivePool2dParams) -> Result<Self>;
    /// dL/dx of adaptive_avg_pool2d from the upstream gradient `self` (planes, h_out, w_out).
    fn adaptive_avg_pool2d_backward(&self, params: &AdaptivePool2dParams) -> Result<Self>;
}

/// One AdamW step, PyTorch's `torch.optim.AdamW` with the scalars that depend on the step number
/// precomputed on the host (in f64, see `AdamWStep::new`). Per element, in f32:
///   g = grad · grad_scale
///   p ← p · (1 − lr · weight_decay)
///   m ← m + (1 − beta1) · (g − m)
///   v ← v · beta2 + (1 − beta2) · g²
///   p ← p − (lr / bias_correction1) · m / (√v / bias_correction2_sqrt + eps)
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// 1 − beta1^t at step t (counted from 1).
    pub bias_correction1: f32,
    /// √(1 − beta2^t).
    pub bias_correction2_sqrt: f32,
    /// The gradient clipping factor (1 when not clipping).
    pub grad_scale: f32,
}

impl AdamWStep {
    /// The scalars of step `t` (1 for the first step).
    pub fn new(lr: f32, (beta1, beta2): (f32, f32), eps: f32, weight_decay: f32, t: u64, grad_scale: f32) -> Self {
        let t = t as f64;
        AdamWStep {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            bias_correction1: (1.0 - (beta1 as f64).powf(t)) as f32,
            bias_correction2_sqrt: (1.0 - (beta2 as f64).powf(t)).sqrt() as f32,
            grad_scale,
        }
    }
}

/// One SGD step, PyTorch's `torch.optim.SGD` with dampening 0. Per element, in f32:
///   g = grad · grad_scale + weight_decay · p
///   with a momentum buffer b: b ← g on the first step, else b ← momentum · b + g;
///                             then g = g + momentum · b (nesterov) or g = b
///   p ← p − lr · g
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdStep {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
    /// The buffer is set to the gradient instead of updated (PyTorch creates it on the first step).
    pub first_step: bool,
    /// The gradient clipping factor (1 when not clipping).
    pub grad_scale: f32,
}

/// Batch normalisation of (n, c, spatial): each channel is normalised over its n·spatial values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNormShape {
    pub n: usize,
    pub c: usize,
    pub spatial: usize,
    pub eps: f32,
}
