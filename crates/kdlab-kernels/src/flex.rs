//! The kernels on burn's CPU backend tensors (f32 `FlexTensor`s).

use burn::backend::flex::FlexTensor;
use burn::tensor::{Shape, TensorData};

use super::cpu::{self, Heads};

/// The elements of `tensor` in row-major order (copied only when it is a strided view).
fn values(tensor: &FlexTensor) -> FlexTensor {
    tensor.to_contiguous()
}

fn as_f32(contiguous: &FlexTensor) -> &[f32] {
    &contiguous.storage::<f32>()[..contiguous.layout().num_elements()]
}

fn tensor(values: Vec<f32>, shape: impl Into<Shape>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape.into()))
}

pub fn gelu(x: &FlexTensor) -> FlexTensor {
    let x = values(x);
    let mut y = vec![0.0; x.layout().num_elements()];
    cpu::gelu(as_f32(&x), &mut y);
    tensor(y, x.layout().shape().clone())
}

pub fn gelu_backward(x: &FlexTensor, dy: &FlexTensor) -> FlexTensor {
    let (x, dy) = (values(x), values(dy));
    let mut dx = vec![0.0; x.layout().num_elements()];
    cpu::gelu_backward(as_f32(&x), as_f32(&dy), &mut dx);
    tensor(dx, x.layout().shape().clone())
}

/// `tensor`'s elements contiguous in a buffer of its own when `tensor` was the only handle.
fn owned(tensor: FlexTensor) -> FlexTensor {
    tensor.to_contiguous()
}

/// One AdamW update; returns the parameter and the two moments.
pub fn adamw(
    param: FlexTensor,
    grad: &FlexTensor,
    exp_avg: FlexTensor,
    exp_avg_sq: FlexTensor,
    scalars: cpu::AdamWScalars,
) -> [FlexTensor; 3] {
    let n = param.layout().num_elements();
    let [mut p, mut m, mut v] = [param, exp_avg, exp_avg_sq].map(owned);
    let g = values(grad);
    // Copies only what is still shared (copy on write).
    cpu::adamw(
        &mut p.storage_mut::<f32>()[..n],
        as_f32(&g),
        &mut m.storage_mut::<f32>()[..n],
        &mut v.storage_mut::<f32>()[..n],
        scalars,
    );
    [p, m, v]
}

/// The data2vec target of `[B, T, D]` layer results, and its backward state when `keep`.
pub fn kd_target(
    layers: &[FlexTensor],
    eps: f64,
    keep: bool,
) -> (FlexTensor, Option<cpu::TargetSaved>) {
    let shape = layers[0].layout().shape().clone();
    let dims = [shape[0], shape[1], shape[2]];
    let layers: Vec<FlexTensor> = layers.iter().map(values).collect();
    let slices: Vec<&[f32]> = layers.iter().map(as_f32).collect();
    let (target, saved) = cpu::kd_target(&slices, dims, eps as f32, keep);
    (tensor(target, shape), saved)
}

/// `kd_target` of layer results stacked as `[L, B, T, D]`, read in place from the one buffer.
pub fn kd_target_stacked(
    stacked: &FlexTensor,
    eps: f64,
    keep: bool,
) -> (FlexTensor, Option<cpu::TargetSaved>) {
    let stacked = values(stacked);
    let shape = stacked.layout().shape();
    let dims = [shape[1], shape[2], shape[3]];
    let slices: Vec<&[f32]> = as_f32(&stacked)
        .chunks_exact(dims.iter().product())
        .collect();
    let (target, saved) = cpu::kd_target(&slices, dims, eps as f32, keep);
    (tensor(target, dims), saved)
}

/// The gradient of `kd_target` with respect to the stacked layer results, `[L, B, T, D]`.
pub fn kd_target_backward(saved: &cpu::TargetSaved, grad: &FlexTensor) -> FlexTensor {
    let grad = values(grad);
    let shape = grad.layout().shape();
    let dims = [shape[0], shape[1], shape[2]];
    let layers = saved.inv_std_tokens.len() / (dims[0] * dims[2]);
    let grads = cpu::kd_target_backward(saved, as_f32(&grad), dims);
    tensor(grads, [layers, dims[0], dims[1], dims[2]])
}

/// The sizes of the attention over `qkv` (`[B, T, 3D]`) with `heads` heads.
pub fn heads_of(qkv: &FlexTensor, heads: usize) -> Heads {
    let dims = qkv.layout().shape();
    let (batch, tokens, width3) = (dims[0], dims[1], dims[2]);
    Heads {
        batch,
        tokens,
        heads,
        head_dim: width3 / 3 / heads,
    }
}

/// Attention output `[B, T, D]` and, when `keep_probs`, the weights `[B, H, T, T]`.
pub fn attention(
    qkv: &FlexTensor,
    heads: usize,
    bias: Option<&FlexTensor>,
    keep_probs: bool,
) -> (FlexTensor, Option<FlexTensor>) {
    let shape = heads_of(qkv, heads);
    let (qkv, bias) = (values(qkv), bias.map(values));
    let (b, t, h) = (shape.batch, shape.tokens, shape.heads);
    let mut out = vec![0.0; b * t * shape.width()];
    let mut probs = keep_probs.then(|| vec![0.0; b * h * t * t]);
    cpu::attention_forward(
        as_f32(&qkv),
        bias.as_ref().map(as_f32),
        shape,
        &mut out,
        probs.as_deref_mut(),
    );
    (
        tensor(out, [b, t, shape.width()]),
        probs.map(|p| tensor(p, [b, h, t, t])),
    )
}

/// The gradient of `attention` (no bias) with respect to `qkv`.
pub fn attention_backward(
    qkv: &FlexTensor,
    probs: &FlexTensor,
    heads: usize,
    grad_out: &FlexTensor,
) -> FlexTensor {
    let shape = heads_of(qkv, heads);
    let (qkv, probs, grad_out) = (values(qkv), values(probs), values(grad_out));
    let mut dqkv = vec![0.0; qkv.layout().num_elements()];
    cpu::attention_backward(
        as_f32(&qkv),
        as_f32(&probs),
        as_f32(&grad_out),
        shape,
        &mut dqkv,
    );
    tensor(dqkv, qkv.layout().shape().clone())
}
