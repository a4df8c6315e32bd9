//! The data2vec-style KD target and loss (the thesis' `prepare_output` and `kd_loss`).
//!
//! For each model: instance norm of every layer result over the tokens, mean over layers,
//! parameter-free layer norm over channels. All of it in f32, whatever the model computed in.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};

/// eps of `F.instance_norm` and `F.layer_norm` defaults, which produced the thesis numbers.
pub const TARGET_EPS: f64 = 1e-5;

/// Normalises each sample and channel over the T tokens (biased variance, no affine).
///
/// # Shapes
/// - h: `[B, T, D]` → `[B, T, D]`
pub fn instance_norm_tokens<B: Backend>(h: Tensor<B, 3>) -> Tensor<B, 3> {
    let (var, mean) = h.clone().var_mean_bias(1); // [B, 1, D]
    (h - mean) / (var + TARGET_EPS).sqrt()
}

/// Parameter-free layer norm over D (biased variance).
pub fn layer_norm_plain<B: Backend>(h: Tensor<B, 3>) -> Tensor<B, 3> {
    let (var, mean) = h.clone().var_mean_bias(2); // [B, T, 1]
    (h - mean) / (var + TARGET_EPS).sqrt()
}

/// `layer_norm(mean_l instance_norm(H_l))`: the target (teacher) or prediction (student).
///
/// # Shapes
/// - layer_results: L tensors `[B, T, D]` → `[B, T, D]`, f32
pub fn prepare_target<B: Backend>(layer_results: &[Tensor<B, 3>]) -> Tensor<B, 3> {
    assert!(
        !layer_results.is_empty(),
        "a model has at least one layer result"
    );
    let layers = layer_results
        .iter()
        .map(|h| h.clone().cast(DType::F32))
        .collect();
    kdlab_kernels::kd_target(layers, TARGET_EPS).unwrap_or_else(prepare_target_by_tensors)
}

/// `prepare_target` as tensor operations, one by one (any backend; f32 layer results).
pub fn prepare_target_by_tensors<B: Backend>(layers: Vec<Tensor<B, 3>>) -> Tensor<B, 3> {
    layer_norm_plain(average_normalised(layers))
}

/// `mean_l instance_norm(H_l)` in f32: the target before its final layer norm (where a width
/// connector or grid matching acts, `pair`).
pub fn average_normalised<B: Backend>(layers: Vec<Tensor<B, 3>>) -> Tensor<B, 3> {
    let count = layers.len() as f64;
    layers
        .into_iter()
        .map(|h| instance_norm_tokens(h.cast(DType::F32)))
        .reduce(|acc, h| acc + h)
        .expect("a model has at least one layer result")
        / count
}

/// Mean squared error over all B·T·D elements, CLS included, in f32.
pub fn kd_loss<B: Backend>(prediction: Tensor<B, 3>, target: Tensor<B, 3>) -> Tensor<B, 1> {
    (prediction.cast(DType::F32) - target.cast(DType::F32))
        .square()
        .mean()
}
