//! The record that reverse-mode autograd replays. A tensor made by `tracked` is a
//! leaf whose gradient is wanted; an op with a tracked input gives its output a
//! node naming the op and the tensors its gradient needs. Untracked inputs, or
//! recording switched off by [`no_grad`], record nothing, so inference pays one
//! branch per op. The tensor layer only records; the autograd layer
//! differentiates.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{Conv2dOptions, Tensor};
use crate::device::{BinaryOp, DType, UnaryOp};

/// What made a tracked tensor: its inputs, as links or, where the gradient needs
/// their values, as tensors, and any saved results.
#[derive(Clone, Debug)]
pub enum Op {
    /// A tensor made by `Tensor::tracked`: gradients stop and are collected here.
    Leaf,
    /// An op foil does not differentiate; reaching it in backward is an error naming it.
    NotDifferentiable {
        op: &'static str,
        x: Link,
    },
    Reshape {
        x: Link,
    },
    ToDtype {
        x: Link,
    },
    Permute {
        x: Link,
        perm: Vec<usize>,
    },
    Cat {
        parts: Vec<Link>,
        axis: usize,
    },
    Narrow {
        x: Link,
        axis: usize,
        start: usize,
    },
    BroadcastTo {
        x: Link,
    },
    /// An activation other than ReLU: its gradient reads the input.
    Unary {
        x: Tensor,
        op: UnaryOp,
    },
    /// ReLU's gradient reads its output (out > 0 exactly where x > 0), so the input can go.
    Relu {
        x: Link,
        out: Tensor,
    },
    /// a·x + b: the gradient is a·g.
    Scale {
        x: Link,
        factor: f32,
    },
    Clamp {
        x: Tensor,
        lo: f32,
        hi: f32,
    },
    Geglu {
        x: Tensor,
    },
    /// lhs ± rhs: the gradients are ±g summed to each operand's shape.
    AddSub {
        lhs: Link,
        rhs: Link,
        sub: bool,
    },
    /// lhs · rhs or lhs / rhs (`op` Mul or Div).
    MulDiv {
        lhs: Tensor,
        rhs: Tensor,
        op: BinaryOp,
    },
    Sum {
        x: Link,
        axis: usize,
    },
    Mean {
        x: Link,
        axis: usize,
    },
    /// Softmax or log-softmax over the last axis; `out` is the (detached) result.
    Softmax {
        out: Tensor,
        log: bool,
    },
    Matmul {
        a: Tensor,
        b: Tensor,
        trans_a: bool,
        trans_b: bool,
    },
    LayerNorm {
        x: Tensor,
        weight: Tensor,
        bias: Tensor,
        eps: f32,
    },
    GroupNorm {
        x: Tensor,
        weight: Tensor,
        bias: Tensor,
        groups: usize,
        eps: f32,
    },
    /// Batch norm with batch statistics; `mean` and `var` (biased) are the statistics used.
    BatchNorm {
        x: Tensor,
        weight: Tensor,
        bias: Tensor,
        mean: Tensor,
        var: Tensor,
        eps: f32,
    },
    Conv2d {
        x: Tensor,
        weight: Tensor,
        bias: Option<Tensor>,
        options: Conv2dOptions,
    },
    UpsampleNearest2x {
        x: Link,
    },
    Embedding {
        table: Link,
        ids: Tensor,
    },
    Attention {
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Option<Tensor>,
        causal: bool,
        scale: f32,
    },
    MaxPool2d {
        x: Tensor,
        kernel: usize,
        stride: usize,
        padding: usize,
    },
    AvgPool2d {
        x: Link,
        kernel: usize,
        stride: usize,
        padding: usize,
    },
    AdaptiveAvgPool2d {
        x: Link,
    },
    CrossEntropy {
        logits: Tensor,
        labels: Tensor,
        smoothing: f32,
    },
}

impl Op {
    /// The inputs that may carry gradient, in a fixed order.
    pub fn inputs(&self) -> Vec<Link> {
        match self {
            Op::Leaf | Op::Softmax { .. } => vec![],
            Op::NotDifferentiable { x, .. }
            | Op::Reshape { x }
            | Op::ToDtype { x }
            | Op::Permute { x, .. }
            | Op::Narrow { x, .. }
            | Op::BroadcastTo { x }
            | Op::Relu { x, .. }
            | Op::Scale { x, .. }
            | Op::Sum { x, .. }
            | Op::Mean { x, .. }
            | Op::UpsampleNearest2x { x }
            | Op::AvgPool2d { x, .. }
            | Op::AdaptiveAvgPool2d { x }
            | Op::Embedding { table: x, .. } => vec![x.clone()],
            Op::Unary { x, .. } | Op::Clamp { x, .. } | Op::Geglu { x } | Op::MaxPool2d { x, .. } => vec![Link::to(x)],
            Op::Cat { parts, .. } => parts.clone(),
            Op::AddSub { lhs, rhs, .. } => vec![lhs.clone(), rhs.clone()],
            Op::MulDiv { lhs, rhs, .. } => vec![Link::to(lhs), Link::to(rhs)],
            Op::Matmul { a, b, .. } => vec![Link::to(a), Link::to(b)],
            Op::LayerNorm { x, weight, bias, .. }
            | Op::GroupNorm { x, weight, bias, .. }
            | Op::BatchNorm { x, weight, bias, .. } => vec![Link::to(x), Link::to(weight), Link::to(bias)],
            Op::Conv2d { x, weight, bias, .. } => {
                [Some(x), Some(weight), bias.as_ref()].into_iter().flatten().map(Link::to).collect()
            }
            Op::Attention { q, k, v, .. } => vec![Link::to(q), Link::to(k), Link::to(v)],
            Op::CrossEntropy { logits, .. } => vec![Link::to(logits)],
        }
    }
}

/// What a gradient flows back to: an input's node (None when it is not tracked),
/// dtype and shape, without its values. An op whose gradient needs only shapes
/// records links, so an activation no later rule reads is freed as soon as the
/// forward pass drops it.
#[derive(Clone, Debug)]
pub struct Link {
    node: Option<Arc<Node>>,
    dtype: DType,
    dims: Vec<usize>,
}

impl Link {
    pub fn to(t: &Tensor) -> Link {
        Link { node: t.node.clone(), dtype: t.dtype(), dims: t.dims().to_vec() }
    }

    pub fn node(&self) -> Option<&Arc<Node>> {
        self.node.as_ref()
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    pub fn is_tracked(&self) -> bool {
        self.node.is_some()
    }
}

/// One recorded op: `id` identifies the tensor it produced (and its gradient).
#[derive(Debug)]
pub struct Node {
    id: u64,
    op: Op,
}

impl Node {
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn op(&self) -> &Op {
        &self.op
    }
}

fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

thread_local! {
    static NO_GRAD_DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// While alive, ops on this thread record nothing (PyTorch's `torch.no_grad()`).
pub struct NoGradGuard(());

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        NO_GRAD_DEPTH.with(|d| d.set(d.get() - 1));
    }
}

/// Switches recording off on this thread until the guard is dropped.
pub fn no_grad() -> NoGradGuard {
    NO_GRAD_DEPTH.with(|d| d.set(d.get() + 1));
    NoGradGuard(())
}

fn recording() -> bool {
    NO_GRAD_DEPTH.with(|d| d.get() == 0)
}

impl Tensor {
    /// The same values as a leaf whose gradient `autograd::backward` computes
    /// (a trainable parameter, or an input image to attack).
    pub fn tracked(&self) -> Tensor {
        Tensor { storage: self.storage.clone(), shape: self.shape.clone(), node: Some(new_node(Op::Leaf)) }
    }

    /// The same values, cut from the record: no gradient flows through.
    pub fn detach(&self) -> Tensor {
        Tensor { storage: self.storage.clone(), shape: self.shape.clone(), node: None }
    }

    /// Whether a gradient flows to this tensor (a tracked leaf or a result of one).
    pub fn is_tracked(&self) -> bool {
        self.node.is_some()
    }

    pub fn node(&self) -> Option<&Arc<Node>> {
        self.node.as_ref()
    }

    /// `self`, the output of an op over `inputs`, with a node made by `op` when
    /// an input is tracked and recording is on. `op` gets the detached output.
    pub(crate) fn recorded(mut self, inputs: &[&Tensor], op: impl FnOnce(&Tensor) -> Op) -> Tensor {
        if inputs.iter().any(|t| t.is_tracked()) && recording() {
            let out = self.detach();
            self.node = Some(new_node(op(&out)));
        }
        self
    }
}

fn new_node(op: Op) -> Arc<Node> {
    Arc::new(Node { id: next_id(), op })
}
