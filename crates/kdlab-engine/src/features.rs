//! `features`: one model's layer results, final hidden state and KD target for a batch of
//! images, on the session's backend (what `kdlab features` writes, for comparison with PyTorch).

use std::time::Instant;

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor, TensorData};

use crate::session::{Session, on_backend};
use kdlab_model::pair::target_tokens;
use kdlab_model::target::prepare_target;
use kdlab_model::weights::Checkpoint;

/// A model's outputs as f32 tensors (`layer.{i}`, `final`, `target`) and what they took.
pub struct Features {
    pub tensors: Vec<(String, TensorData)>,
    /// The batch size.
    pub images: usize,
    pub load_secs: f64,
    /// The forward pass and the target, after the weights are on the device.
    pub forward_secs: f64,
}

/// The outputs of the checkpoint's encoder, keeping the selectable blocks `keep` (all when
/// `None`; data2vec 2.0 keeps its prenet), for `images` `[B, 3, S, S]`, already normalised, at
/// their own size S (a timm ViT's learned positions are resampled for it once, as timm does).
pub fn features(
    session: &Session,
    checkpoint: &Checkpoint,
    keep: Option<Vec<usize>>,
    images: TensorData,
) -> anyhow::Result<Features> {
    Ok(on_backend!(session, None, |B, device| {
        features_on::<<B as AutodiffBackend>::InnerBackend>(
            checkpoint,
            keep.as_deref(),
            images,
            &device,
        )
    })?)
}

/// Every layer result (all tokens, the model's own order), the final hidden state and the
/// target (over CLS + patches: registers dropped) of `images`, as f32.
fn features_on<B: Backend>(
    checkpoint: &Checkpoint,
    keep: Option<&[usize]>,
    images: TensorData,
    device: &B::Device,
) -> anyhow::Result<Features> {
    let started = Instant::now();
    let size = images.shape.get(2).copied();
    let encoder = checkpoint.load_encoder_blocks::<B>(keep, size, device)?;
    let images = Tensor::from_data(images, device);
    let batch = images.dims()[0];
    B::sync(device)?;
    let loaded = Instant::now();
    let output = encoder.forward(images);
    let layers: Vec<_> = output
        .layer_results
        .iter()
        .map(|h| target_tokens(h.clone(), output.tokens, output.tokens.class_token))
        .collect();
    let target = prepare_target(&layers);
    let f32_data = |t: Tensor<B, 3>| t.cast(DType::F32).into_data();
    let mut tensors: Vec<(String, TensorData)> = output
        .layer_results
        .into_iter()
        .enumerate()
        .map(|(i, layer)| (format!("layer.{i}"), f32_data(layer)))
        .collect();
    tensors.push(("final".into(), f32_data(output.last_hidden)));
    tensors.push(("target".into(), f32_data(target)));
    Ok(Features {
        tensors,
        images: batch,
        load_secs: (loaded - started).as_secs_f64(),
        forward_secs: loaded.elapsed().as_secs_f64(),
    })
}
