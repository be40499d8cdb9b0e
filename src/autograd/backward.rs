//! Reverse mode: the recorded ops from a scalar loss back to the tracked leaves,
//! in reverse topological order, each turning its output's gradient into its
//! inputs' (rules.rs). Gradients of a tensor used twice add up; an input that is
//! not tracked (a frozen parameter, the data) gets none, and its gradient is not
//! computed at all.

use std::collections::HashMap;
use std::sync::Arc;

use super::rules::input_grads;
use crate::error::{shape_err, Result};
use crate::tensor::graph::{no_grad, Node, Op};
use crate::tensor::Tensor;

/// The gradients of the tracked leaves, looked up by the leaf tensor.
#[derive(Debug, Default)]
pub struct Gradients {
    by_leaf: HashMap<u64, Tensor>,
}

impl Gradients {
    /// d loss / d `leaf`: None when `leaf` is not tracked or the loss does not depend on it.
    pub fn get(&self, leaf: &Tensor) -> Option<&Tensor> {
        leaf.node().and_then(|n| self.by_leaf.get(&n.id()))
    }

    /// The gradient of each of `leaves`, in order, zeros (of the leaf's shape and
    /// dtype) for a leaf the loss does not depend on: what an optimizer step takes.
    pub fn for_leaves<'a>(&self, leaves: impl IntoIterator<Item = &'a Tensor>) -> Result<Vec<Tensor>> {
        leaves
            .into_iter()
            .map(|leaf| match self.get(leaf) {
                Some(g) => Ok(g.clone()),
                None => Tensor::zeros(leaf.dims().to_vec(), leaf.dtype(), &leaf.device()),
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.by_leaf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_leaf.is_empty()
    }
}

/// The gradients of the one-element `loss` with respect to every tracked leaf it depends on.
pub fn backward(loss: &Tensor) -> Result<Gradients> {
    if loss.numel() != 1 {
        return shape_err("backward", format!("the loss must have one element, not shape {}", loss.shape()));
    }
    let Some(root) = loss.node() else {
        return shape_err("backward", "the loss does not depend on any tracked tensor");
    };
    let _no_grad = no_grad();
    let order = topological_order(root);
    let seed = Tensor::from_f32(vec![1.0], loss.dims().to_vec(), &loss.device())?.to_dtype(loss.dtype())?;
    let mut pending: HashMap<u64, Tensor> = HashMap::from([(root.id(), seed)]);
    let mut grads = Gradients::default();
    for node in order.iter().rev() {
        let Some(grad) = pending.remove(&node.id()) else { continue };
        if let Op::Leaf = node.op() {
            grads.by_leaf.insert(node.id(), grad);
            continue;
        }
        let inputs = node.op().inputs();
        for (input, g) in inputs.iter().zip(input_grads(node.op(), &grad)?) {
            let (Some(g), Some(n)) = (g, input.node()) else { continue };
            let g = g.to_dtype(input.dtype())?;
            let sum = match pending.remove(&n.id()) {
                Some(acc) => acc.add(&g)?,
                None => g,
            };
            pending.insert(n.id(), sum);
        }
    }
    Ok(grads)
}

/// Every node reachable from `root`, each after all the nodes it reads (inputs
/// first). Iterative, since a UNet's record is thousands of ops deep.
fn topological_order(root: &Arc<Node>) -> Vec<Arc<Node>> {
    let mut order = vec![];
    let mut expanded = std::collections::HashSet::new();
    let mut stack: Vec<(Arc<Node>, bool)> = vec![(root.clone(), false)];
    while let Some((node, done)) = stack.pop() {
        if done {
            order.push(node);
            continue;
        }
        // A node is expanded once; in a DAG it is finished before any reader of it is.
        if !expanded.insert(node.id()) {
            continue;
        }
        stack.push((node.clone(), true));
        for input in node.op().inputs() {
            if let Some(n) = input.node() {
                if !expanded.contains(&n.id()) {
                    stack.push((n.clone(), false));
                }
            }
        }
    }
    order
}
