//! The linear probe: a LayerNorm and a Linear layer trained with cross-entropy on frozen,
//! pooled features (the thesis' linear evaluation: only LN + Linear learn). Because the features
//! are computed once, an epoch costs a few matrix products, not a pass through the backbone.

use std::sync::atomic::{AtomicBool, Ordering};

use burn::module::{AutodiffModule, Module};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::features::FeatureSet;
use super::knn::NORM_EPS;
use super::metrics::{rank_classes, score};
use super::settings::LinearSettings;
use crate::data::loader::mix_seed;
use crate::session::Interrupted;
use kdlab_model::model::generator::{materialize, seeded};
use kdlab_model::optim::{AdamW, AdamWSettings, CosineWithWarmup};

/// Validation rows scored per forward pass.
const EVAL_ROWS: usize = 4096;

#[derive(Module, Debug)]
pub struct LinearProbe<B: Backend> {
    pub norm: LayerNorm<B>,
    pub head: Linear<B>,
}

impl<B: Backend> LinearProbe<B> {
    /// LayerNorm at identity; the head as MAE's probe (weights N(0, 0.01²), zero bias).
    pub fn new(dim: usize, classes: usize, device: &B::Device) -> Self {
        Self {
            norm: LayerNormConfig::new(dim)
                .with_epsilon(NORM_EPS)
                .init(device),
            head: LinearConfig::new(dim, classes)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: 0.01,
                })
                .init(device),
        }
    }

    /// `[B, D]` features → `[B, classes]` logits.
    pub fn forward(&self, features: Tensor<B, 2>) -> Tensor<B, 2> {
        self.head.forward(self.norm.forward(features))
    }
}

/// One line of the probe's training history.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EpochLine {
    /// 1-based.
    pub epoch: usize,
    /// Mean training cross-entropy over the epoch.
    pub loss: f64,
    pub val_top1: f64,
}

pub struct Probed {
    /// Top-5 classes of each validation feature after the last epoch.
    pub rankings: Vec<Vec<usize>>,
    pub history: Vec<EpochLine>,
}

/// Trains a probe on `train` and ranks the classes of `val`; `on_epoch` sees each epoch's line.
pub fn train_probe<B: AutodiffBackend>(
    train: &FeatureSet,
    val: &FeatureSet,
    classes: usize,
    settings: &LinearSettings,
    device: &B::Device,
    stop: &AtomicBool,
    on_epoch: &mut dyn FnMut(&EpochLine),
) -> anyhow::Result<Probed> {
    anyhow::ensure!(
        train.dim == val.dim,
        "training features have {} dimensions but validation features {}",
        train.dim,
        val.dim
    );
    let (n, dim) = (train.len(), train.dim);
    let mut probe = seeded::<B, _>(device, settings.seed, || {
        materialize(LinearProbe::<B>::new(dim, classes, device))
    });
    // The features live on the device once; each batch is gathered there.
    let features = Tensor::<B::InnerBackend, 2>::from_data(
        TensorData::new(train.values.clone(), [n, dim]),
        device,
    );
    let labels = Tensor::<B::InnerBackend, 1, Int>::from_data(
        TensorData::new(train.labels.iter().map(|&l| l as i64).collect(), [n]),
        device,
    );
    let steps_per_epoch = n.div_ceil(settings.batch_size);
    let schedule = CosineWithWarmup {
        peak_lr: settings.lr,
        warmup_steps: settings.warmup_epochs * steps_per_epoch,
        total_steps: settings.epochs * steps_per_epoch,
    };
    // PyTorch's AdamW defaults; decay (if any) on the head's weight matrix only.
    let mut optimizer = AdamW::<B::InnerBackend>::new(AdamWSettings {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: settings.weight_decay,
    });
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let mut history = Vec::with_capacity(settings.epochs);
    let mut rankings = Vec::new();
    let mut step = 0;
    for epoch in 0..settings.epochs {
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix_seed(&[
            settings.seed,
            epoch as u64,
            3,
        ])));
        let mut loss_sum = Tensor::<B::InnerBackend, 1>::zeros([1], device);
        for batch in order.chunks(settings.batch_size) {
            if stop.load(Ordering::Relaxed) {
                return Err(Interrupted.into());
            }
            let index = Tensor::<B::InnerBackend, 1, Int>::from_data(
                TensorData::new(batch.iter().map(|&i| i as i64).collect(), [batch.len()]),
                device,
            );
            let x = Tensor::<B, 2>::from_inner(features.clone().select(0, index.clone()));
            let y = Tensor::<B, 1, Int>::from_inner(labels.clone().select(0, index));
            let loss = loss_fn.forward(probe.forward(x), y);
            // Summed on the device: one read per epoch, not one per step.
            loss_sum = loss_sum + loss.clone().inner().mul_scalar(batch.len() as f64);
            let grads = GradientsParams::from_grads(loss.backward(), &probe);
            probe = optimizer.step(schedule.lr(step), probe, grads);
            step += 1;
        }
        let loss = loss_sum.into_scalar().elem::<f64>() / n as f64;
        anyhow::ensure!(
            loss.is_finite(),
            "the probe's loss became {loss} in epoch {}: lower linear.lr (now {})",
            epoch + 1,
            settings.lr
        );
        rankings = rank_validation(&probe.valid(), val, classes, device)?;
        let line = EpochLine {
            epoch: epoch + 1,
            loss,
            val_top1: score(&rankings, &val.labels, classes).top1,
        };
        on_epoch(&line);
        history.push(line);
    }
    Ok(Probed { rankings, history })
}

/// The probe's top-5 classes for every validation feature.
fn rank_validation<B: Backend>(
    probe: &LinearProbe<B>,
    val: &FeatureSet,
    classes: usize,
    device: &B::Device,
) -> anyhow::Result<Vec<Vec<usize>>> {
    let mut rankings = Vec::with_capacity(val.len());
    for rows in val.values.chunks(EVAL_ROWS * val.dim) {
        let len = rows.len() / val.dim;
        let x = Tensor::<B, 2>::from_data(TensorData::new(rows.to_vec(), [len, val.dim]), device);
        let logits = probe
            .forward(x)
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("reading the probe's logits back: {e:?}"))?;
        rankings.extend(logits.chunks_exact(classes).map(|l| rank_classes(l, 5)));
    }
    Ok(rankings)
}
