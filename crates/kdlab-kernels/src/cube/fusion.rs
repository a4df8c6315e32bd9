//! The kernels as operations of burn's fusion backend (what `Cuda` and `Wgpu` are): each call is
//! queued on the tensors' stream as a custom operation, as burn-vision queues its own kernels,
//! and runs in order with the fused element-wise work around it.

use std::marker::PhantomData;

use burn::tensor::{DType, Shape};
use burn_cubecl::fusion::FusionCubeRuntime;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime};
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{FusionRuntime, FusionTensor};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, TensorIr};

use super::launch;

/// The backend under the fusion layer: f32 by default, tensors of any float type.
pub type Cube<R, BT> = CubeBackend<R, f32, i32, BT>;
/// A float tensor of `Fusion<Cube<R, BT>>`.
pub type FusedTensor<R> = FusionTensor<FusionCubeRuntime<R>>;
type Handles<R> = HandleContainer<<FusionCubeRuntime<R> as FusionRuntime>::FusionHandle>;

/// `[out, lse]` of `launch::forward` on fusion tensors.
pub fn forward<R: CubeRuntime, BT: BoolElement>(
    qkv: FusedTensor<R>,
    heads: usize,
    bias: Option<FusedTensor<R>>,
) -> [FusedTensor<R>; 2] {
    let client = qkv.client.clone();
    let [batch, tokens, width] = [qkv.shape[0], qkv.shape[1], qkv.shape[2]];
    let streams = OperationStreams::with_inputs(std::iter::once(&qkv).chain(bias.as_ref()));
    let out = TensorIr::uninit(
        client.create_empty_handle(),
        Shape::from(vec![batch, tokens, width / 3]),
        qkv.dtype,
    );
    let lse = TensorIr::uninit(
        client.create_empty_handle(),
        Shape::from(vec![batch, heads, tokens]),
        DType::F32,
    );
    let mut inputs = vec![qkv.into_ir()];
    inputs.extend(bias.map(FusionTensor::into_ir));
    let desc = CustomOpIr::new("kdlab_attention_forward", &inputs, &[out, lse]);
    let op = Forward::<R, BT> {
        desc: desc.clone(),
        heads,
        backend: PhantomData,
    };
    let outputs = client.register(streams, OperationIr::Custom(desc), op);
    outputs
        .try_into()
        .unwrap_or_else(|_| unreachable!("the operation was registered with two outputs"))
}

/// `launch::backward` on fusion tensors.
pub fn backward<R: CubeRuntime, BT: BoolElement>(
    qkv: FusedTensor<R>,
    out: FusedTensor<R>,
    lse: FusedTensor<R>,
    grad_out: FusedTensor<R>,
    heads: usize,
) -> FusedTensor<R> {
    let client = qkv.client.clone();
    let streams = OperationStreams::with_inputs([&qkv, &out, &lse, &grad_out]);
    let grad_qkv = TensorIr::uninit(client.create_empty_handle(), qkv.shape.clone(), qkv.dtype);
    let inputs = [qkv, out, lse, grad_out].map(FusionTensor::into_ir);
    let desc = CustomOpIr::new("kdlab_attention_backward", &inputs, &[grad_qkv]);
    let op = Backward::<R, BT> {
        desc: desc.clone(),
        heads,
        backend: PhantomData,
    };
    let mut outputs = client.register(streams, OperationIr::Custom(desc), op);
    outputs.remove(0)
}

struct Forward<R, BT> {
    desc: CustomOpIr,
    heads: usize,
    backend: PhantomData<fn() -> (R, BT)>,
}

impl<R: CubeRuntime, BT: BoolElement> Operation<FusionCubeRuntime<R>> for Forward<R, BT> {
    fn execute(&self, handles: &mut Handles<R>) {
        let inputs = &self.desc.inputs;
        let qkv = handles.get_float_tensor::<Cube<R, BT>>(&inputs[0]);
        let bias = inputs
            .get(1)
            .map(|bias| handles.get_float_tensor::<Cube<R, BT>>(bias));
        let (out, lse) = launch::forward(qkv, self.heads, bias);
        let outputs = &self.desc.outputs;
        handles.register_float_tensor::<Cube<R, BT>>(&outputs[0].id, out);
        handles.register_float_tensor::<Cube<R, BT>>(&outputs[1].id, lse);
    }
}

struct Backward<R, BT> {
    desc: CustomOpIr,
    heads: usize,
    backend: PhantomData<fn() -> (R, BT)>,
}

impl<R: CubeRuntime, BT: BoolElement> Operation<FusionCubeRuntime<R>> for Backward<R, BT> {
    fn execute(&self, handles: &mut Handles<R>) {
        let ([qkv, out, lse, grad_out], [grad_qkv]) = self.desc.as_fixed::<4, 1>();
        let [qkv, out, lse, grad_out] =
            [qkv, out, lse, grad_out].map(|t| handles.get_float_tensor::<Cube<R, BT>>(t));
        let grad = launch::backward(qkv, out, lse, grad_out, self.heads);
        handles.register_float_tensor::<Cube<R, BT>>(&grad_qkv.id, grad);
    }
}

// By hand: a derive would ask the runtime and the bool type to be `Debug` too.
impl<R, BT> std::fmt::Debug for Forward<R, BT> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "attention forward, {} heads", self.heads)
    }
}

impl<R, BT> std::fmt::Debug for Backward<R, BT> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "attention backward, {} heads", self.heads)
    }
}
