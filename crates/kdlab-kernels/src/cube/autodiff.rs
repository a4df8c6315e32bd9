//! The student's attention as an operation of `Autodiff<Fusion<CubeBackend>>` with the fused
//! backward: the graph keeps the projections, the output and each row's log-sum-exp
//! (`[B, H, T]`), never the `[B, H, T, T]` weights that burn's autodiff would keep.

use std::marker::PhantomData;

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::tensor::ops::FloatTensor;
use burn_cubecl::{BoolElement, CubeRuntime};
use burn_fusion::Fusion;

use super::fusion::{self, Cube, FusedTensor};

/// The fusion backend the autodiff graph runs on.
pub type Fused<R, BT> = Fusion<Cube<R, BT>>;

struct AttentionBackward<R, BT>(PhantomData<fn() -> (R, BT)>);

// By hand: a derive would ask the runtime and the bool type to be `Debug` too.
impl<R, BT> std::fmt::Debug for AttentionBackward<R, BT> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AttentionBackward")
    }
}

/// What the backward reads: the projections, the output, its log-sum-exp and the head count.
type Saved<R> = (FusedTensor<R>, FusedTensor<R>, FusedTensor<R>, usize);

impl<R: CubeRuntime, BT: BoolElement> Backward<Fused<R, BT>, 1> for AttentionBackward<R, BT> {
    type State = Saved<R>;

    fn backward(self, ops: Ops<Saved<R>, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (qkv, out, lse, heads) = ops.state;
        unary::<Fused<R, BT>, _>(ops.parents, ops.node, grads, |grad_out| {
            fusion::backward::<R, BT>(qkv, out, lse, grad_out, heads)
        });
    }
}

/// Attention without bias over packed projections `[B, T, 3D]` → `[B, T, D]`.
pub fn attention<R: CubeRuntime, BT: BoolElement>(
    qkv: FloatTensor<Autodiff<Fused<R, BT>>>,
    heads: usize,
) -> FloatTensor<Autodiff<Fused<R, BT>>> {
    match AttentionBackward::<R, BT>(PhantomData)
        .prepare::<NoCheckpointing>([qkv.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let [out, lse] = fusion::forward::<R, BT>(qkv.primitive.clone(), heads, None);
            prep.finish((qkv.primitive, out.clone(), lse, heads), out)
        }
        OpsKind::UnTracked(prep) => {
            let [out, _] = fusion::forward::<R, BT>(qkv.primitive, heads, None);
            prep.finish(out)
        }
    }
}
