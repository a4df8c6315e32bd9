//! The kernels as operations of `Autodiff<Flex>`, each with its backward pass.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::tensor::ops::FloatTensor;

use std::sync::Arc;

use super::{cpu, flex};

/// A float tensor of `Autodiff<Flex>`: the flex tensor and its node in the graph.
pub type AutodiffFlexTensor = FloatTensor<Autodiff<Flex>>;

#[derive(Debug)]
struct GeluBackward;

impl Backward<Flex, 1> for GeluBackward {
    /// The input.
    type State = FlexTensor;

    fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let x = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |dy| {
            flex::gelu_backward(&x, &dy)
        });
    }
}

pub fn gelu(x: AutodiffFlexTensor) -> AutodiffFlexTensor {
    match GeluBackward
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let y = flex::gelu(&x.primitive);
            prep.finish(x.primitive, y)
        }
        OpsKind::UnTracked(prep) => prep.finish(flex::gelu(&x.primitive)),
    }
}

#[derive(Debug)]
struct TargetBackward;

/// The backward state of the target, shared (it is large) between clones of the graph's steps.
#[derive(Clone)]
struct TargetState(Arc<cpu::TargetSaved>);

impl std::fmt::Debug for TargetState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TargetState")
    }
}

impl Backward<Flex, 1> for TargetBackward {
    type State = TargetState;

    fn backward(self, ops: Ops<TargetState, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let saved = ops.state.0;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            flex::kd_target_backward(&saved, &grad)
        });
    }
}

/// The data2vec target of layer results stacked as `[L, B, T, D]`.
pub fn kd_target(stacked: AutodiffFlexTensor, eps: f64) -> AutodiffFlexTensor {
    match TargetBackward
        .prepare::<NoCheckpointing>([stacked.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (target, saved) = flex::kd_target_stacked(&stacked.primitive, eps, true);
            let saved = saved.expect("the backward state was asked for");
            prep.finish(TargetState(Arc::new(saved)), target)
        }
        OpsKind::UnTracked(prep) => {
            prep.finish(flex::kd_target_stacked(&stacked.primitive, eps, false).0)
        }
    }
}

#[derive(Debug)]
struct AttentionBackward;

impl Backward<Flex, 1> for AttentionBackward {
    /// The packed projections, the attention weights and the number of heads.
    type State = (FlexTensor, FlexTensor, usize);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (qkv, probs, heads) = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            flex::attention_backward(&qkv, &probs, heads, &grad)
        });
    }
}

/// Attention without bias over packed projections (the student's; it has no position bias).
pub fn attention(qkv: AutodiffFlexTensor, heads: usize) -> AutodiffFlexTensor {
    match AttentionBackward
        .prepare::<NoCheckpointing>([qkv.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (out, probs) = flex::attention(&qkv.primitive, heads, None, true);
            let probs = probs.expect("the weights were asked for");
            prep.finish((qkv.primitive, probs, heads), out)
        }
        OpsKind::UnTracked(prep) => {
            prep.finish(flex::attention(&qkv.primitive, heads, None, false).0)
        }
    }
}
