//! Run checkpoints: one safetensors file holding the student (its family's key names — fairseq's
//! for data2vec 2.0, unilm's for BEiT v2, timm's `VisionTransformer` names for a timm ViT — so it
//! is also a loadable student; a width connector as `connector.weight`/`connector.bias`), the
//! AdamW moments (`optim.exp_avg.<key>`, `optim.exp_avg_sq.<key>`)
//! and, in the metadata, the architecture and the training state. Written to a temporary file and
//! renamed, so a crash never leaves a half-written checkpoint.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{Context, bail};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};
use burn_store::{BurnToPyTorchAdapter, ModuleSnapshot};
use serde::{Deserialize, Serialize};

use super::window::WindowState;
use kdlab_model::model::Encoder;
use kdlab_model::optim::{AdamW, GradScaler, Moments};
use kdlab_model::pair::Student;
use kdlab_model::weights::Architecture;
use kdlab_model::weights::layout::{
    KDLAB_ARCHITECTURE_KEY, KDLAB_FORMAT, KDLAB_FORMAT_KEY, fairseq_name, kdlab_path_of_fairseq,
};
use kdlab_model::weights::write::write_f32_tensors;

pub const TRAIN_STATE_KEY: &str = "kdlab.train_state";
pub const CONFIG_KEY: &str = "kdlab.config";
const EXP_AVG: &str = "optim.exp_avg.";
const EXP_AVG_SQ: &str = "optim.exp_avg_sq.";

/// Where training stands; with the seed, this fixes the data order and augmentation to come.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimiser steps done.
    pub step: usize,
    pub epoch: usize,
    /// Micro-batches of `epoch` already consumed.
    pub batch_in_epoch: usize,
    pub best_val_loss: Option<f64>,
    /// AdamW's per-parameter step counts (by fairseq key).
    pub optim_steps: BTreeMap<String, u64>,
    /// The losses since the last metrics line, so that a resumed run logs the same means as
    /// one that never stopped (absent in checkpoints of kdlab before 0.1.1: an empty window).
    #[serde(default)]
    pub loss_window: LossWindowState,
    /// The `[target_var, pred_var]` and gradient-norm windows, for the same reason (absent
    /// before kdlab 0.1.2: empty windows).
    #[serde(default, skip_serializing_if = "WindowState::is_empty")]
    pub spread_window: WindowState,
    #[serde(default, skip_serializing_if = "WindowState::is_empty")]
    pub grad_norm_window: WindowState,
    /// f16's loss scale (absent in other precisions and in checkpoints written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_scaler: Option<GradScaler>,
}

impl TrainState {
    /// Nothing done yet.
    pub fn start() -> Self {
        Self {
            step: 0,
            epoch: 0,
            batch_in_epoch: 0,
            best_val_loss: None,
            optim_steps: BTreeMap::new(),
            loss_window: LossWindowState::default(),
            spread_window: WindowState::default(),
            grad_norm_window: WindowState::default(),
            grad_scaler: None,
        }
    }
}

/// What a run's plan allows the training state of its checkpoint to be.
#[derive(Debug, Clone, Copy)]
pub struct StateBounds {
    /// Optimiser steps of the whole schedule.
    pub total_steps: usize,
    pub epochs: usize,
    /// Micro-batches an epoch can have (one device taking them all).
    pub batches_per_epoch: usize,
}

impl TrainState {
    /// Checks a state read from a checkpoint against the run it resumes and against itself: a
    /// crafted or damaged file is refused with the field, never believed (a step past the
    /// schedule, an epoch that cannot be, a per-parameter step count above the run's).
    pub fn check(&self, bounds: &StateBounds) -> Result<(), String> {
        let field = |name: &str, value: String, rule: String| {
            Err(format!("{TRAIN_STATE_KEY}.{name} is {value}: {rule}"))
        };
        if self.step > bounds.total_steps {
            return field(
                "step",
                self.step.to_string(),
                format!("the run's schedule has {} steps", bounds.total_steps),
            );
        }
        if self.epoch > bounds.epochs {
            return field(
                "epoch",
                self.epoch.to_string(),
                format!("the run has {} epochs", bounds.epochs),
            );
        }
        if self.batch_in_epoch > bounds.batches_per_epoch {
            return field(
                "batch_in_epoch",
                self.batch_in_epoch.to_string(),
                format!("an epoch has at most {} batches", bounds.batches_per_epoch),
            );
        }
        if let Some(loss) = self.best_val_loss
            && !(loss.is_finite() && loss >= 0.0)
        {
            return field(
                "best_val_loss",
                format!("{loss:?}"),
                "a mean squared error is finite and not below zero".into(),
            );
        }
        if let Some((key, steps)) = self
            .optim_steps
            .iter()
            .find(|(_, steps)| **steps > self.step as u64)
        {
            return field(
                &format!("optim_steps['{key}']"),
                steps.to_string(),
                format!("more updates than the run's {} steps", self.step),
            );
        }
        let windows = [
            ("loss_window.sum", vec![self.loss_window.sum]),
            ("spread_window.sums", self.spread_window.sums.clone()),
            ("grad_norm_window.sums", self.grad_norm_window.sums.clone()),
        ];
        for (name, sums) in windows {
            if let Some(bad) = sums.iter().find(|v| !v.is_finite()) {
                return field(
                    name,
                    bad.to_string(),
                    "a sum of finite metrics is finite".into(),
                );
            }
        }
        if let Some(scaler) = &self.grad_scaler
            && !(scaler.scale.is_finite() && scaler.scale > 0.0)
        {
            return field(
                "grad_scaler.scale",
                format!("{:?}", scaler.scale),
                "a loss scale is finite and above zero".into(),
            );
        }
        Ok(())
    }
}

/// The sum (an f32, as the device summed it) and count of the losses since the last line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LossWindowState {
    pub sum: f64,
    pub count: usize,
}

impl From<LossWindowState> for WindowState {
    fn from(loss: LossWindowState) -> Self {
        Self {
            sums: vec![loss.sum],
            count: loss.count,
        }
    }
}

impl From<WindowState> for LossWindowState {
    fn from(window: WindowState) -> Self {
        Self {
            sum: window.sums.first().copied().unwrap_or(0.0),
            count: window.count,
        }
    }
}

/// The student's tensors under its family's names (and the connector's), f32.
pub fn student_tensors<B: Backend>(student: &Student<B>) -> Vec<(String, TensorData)> {
    let fairseq = matches!(student.encoder, Encoder::Data2Vec2(_));
    named_f32(student, |path| file_key(path, fairseq))
}

/// A bare data2vec 2.0 module's tensors under fairseq names, f32 (what a data2vec 2.0 student's
/// checkpoint holds; the parity tests compare with the fairseq goldens by these names).
pub fn data2vec2_tensors<B: Backend, M: ModuleSnapshot<B>>(
    module: &M,
) -> Vec<(String, TensorData)> {
    named_f32(module, fairseq_name)
}

/// An encoder's tensors as its family's own files name them (`kdlab export`): fairseq's for
/// data2vec 2.0, unilm's for BEiT v2, timm's for a timm ViT (`Eva`'s `gamma_1`/`gamma_2` for
/// DINOv3), f32.
pub fn encoder_tensors<B: Backend>(encoder: &Encoder<B>) -> Vec<(String, TensorData)> {
    named_f32(encoder, |path| match encoder {
        Encoder::Data2Vec2(_) => fairseq_name(path),
        Encoder::BeitV2(_) => path.to_string(),
        Encoder::Vit(_) => kdlab_model::weights::timm_vit::file_key(path, eva_names(encoder)),
    })
}

/// Every tensor of `module` (PyTorch naming, enum variants skipped) renamed by `name`, as f32.
fn named_f32<B: Backend, M: ModuleSnapshot<B>>(
    module: &M,
    name: impl Fn(&str) -> String,
) -> Vec<(String, TensorData)> {
    module
        .collect(None, Some(Box::new(BurnToPyTorchAdapter)), true)
        .into_iter()
        .filter_map(|s| {
            let data = s.to_data().ok()?.convert_dtype(DType::F32);
            Some((name(&s.full_path()), data))
        })
        .collect()
}

/// Whether timm names this encoder's layer scales as `Eva` does (DINOv3).
fn eva_names<B: Backend>(encoder: &Encoder<B>) -> bool {
    matches!(encoder, Encoder::Vit(vit) if vit.family().is_eva())
}

/// A parameter path of `Student` (`encoder.…`, `connector.…`) → the file's key.
fn file_key(path: &str, fairseq: bool) -> String {
    match path.strip_prefix("encoder.") {
        Some(rest) if fairseq => fairseq_name(rest),
        Some(rest) => rest.to_string(),
        None => path.to_string(),
    }
}

/// The inverse of `file_key`.
fn model_path(key: &str, fairseq: bool) -> String {
    if key.starts_with("connector.") {
        return key.to_string();
    }
    let inner = if fairseq {
        kdlab_path_of_fairseq(key).unwrap_or_else(|| key.to_string())
    } else {
        key.to_string()
    };
    format!("encoder.{inner}")
}

/// The metadata that makes a safetensors file a kdlab file of `architecture`.
pub fn kdlab_metadata(architecture: &Architecture) -> anyhow::Result<HashMap<String, String>> {
    Ok(HashMap::from([
        (KDLAB_FORMAT_KEY.to_string(), KDLAB_FORMAT.to_string()),
        (
            KDLAB_ARCHITECTURE_KEY.to_string(),
            serde_json::to_string(architecture).context("the architecture as JSON")?,
        ),
    ]))
}

/// Writes the student, its optimiser moments and the state.
pub fn save<B: Backend>(
    path: &Path,
    student: &Student<B>,
    architecture: &Architecture,
    optimizer: &AdamW<B>,
    state: &TrainState,
    config_ron: &str,
) -> anyhow::Result<()> {
    let mut tensors = student_tensors(student);
    let fairseq = matches!(student.encoder, Encoder::Data2Vec2(_));
    let mut state = state.clone();
    state.optim_steps.clear();
    for (path, m) in &optimizer.state {
        let key = file_key(path, fairseq);
        tensors.push((format!("{EXP_AVG}{key}"), m.exp_avg.to_data()));
        tensors.push((format!("{EXP_AVG_SQ}{key}"), m.exp_avg_sq.to_data()));
        state.optim_steps.insert(key, m.step);
    }
    let mut metadata = kdlab_metadata(architecture)?;
    metadata.insert(TRAIN_STATE_KEY.into(), serde_json::to_string(&state)?);
    metadata.insert(CONFIG_KEY.into(), config_ron.to_string());
    write_f32_tensors(path, &tensors, Some(metadata))
}

/// The training state and the optimiser moments of a checkpoint (its student loads through
/// `weights::Checkpoint` like any kdlab file).
pub fn load_training_state<B: Backend>(
    path: &Path,
    device: &B::Device,
) -> anyhow::Result<(TrainState, HashMap<String, Moments<B>>)> {
    let bytes = kdlab_weightfile::read_regular(path)
        .with_context(|| format!("cannot read checkpoint {}", path.display()))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .with_context(|| format!("{} is not a kdlab checkpoint", path.display()))?;
    let file = safetensors::SafeTensors::deserialize(&bytes)?;
    let Some(state_json) = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(TRAIN_STATE_KEY))
        .cloned()
    else {
        bail!(
            "{} holds no training state (an exported student cannot be resumed)",
            path.display()
        );
    };
    let state: TrainState = serde_json::from_str(&state_json)
        .with_context(|| format!("{}: invalid {TRAIN_STATE_KEY}", path.display()))?;
    // The optimiser keys follow the student's family's names (fairseq for data2vec 2.0).
    let fairseq = match meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(KDLAB_ARCHITECTURE_KEY))
    {
        Some(json) => matches!(
            serde_json::from_str::<Architecture>(json),
            Ok(Architecture::Data2Vec2(_))
        ),
        None => true,
    };
    let tensor = |name: &str| -> anyhow::Result<Tensor<B, 1>> {
        let view = file
            .tensor(name)
            .with_context(|| format!("{}: missing optimiser tensor '{name}'", path.display()))?;
        anyhow::ensure!(
            view.dtype() == safetensors::Dtype::F32,
            "{}: optimiser tensor '{name}' is {:?}, not F32",
            path.display(),
            view.dtype()
        );
        let n = view.shape().iter().product::<usize>();
        let data = TensorData::from_bytes_vec(view.data().to_vec(), vec![n], DType::F32);
        Ok(Tensor::from_data(data, device))
    };
    let mut moments = HashMap::new();
    for (key, step) in &state.optim_steps {
        let path_in_model = model_path(key, fairseq);
        moments.insert(
            path_in_model,
            Moments {
                exp_avg: tensor(&format!("{EXP_AVG}{key}"))?,
                exp_avg_sq: tensor(&format!("{EXP_AVG_SQ}{key}"))?,
                step: *step,
            },
        );
    }
    Ok((state, moments))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: StateBounds = StateBounds {
        total_steps: 100,
        epochs: 4,
        batches_per_epoch: 50,
    };

    fn state() -> TrainState {
        TrainState {
            step: 30,
            epoch: 1,
            batch_in_epoch: 10,
            best_val_loss: Some(0.5),
            optim_steps: BTreeMap::from([("blocks.0.attn.qkv.weight".to_string(), 30)]),
            ..TrainState::start()
        }
    }

    #[test]
    fn a_state_that_cannot_be_is_refused_by_field() {
        assert_eq!(state().check(&BOUNDS), Ok(()));
        type Edit = fn(&mut TrainState);
        let cases: [(Edit, &str); 7] = [
            (
                |s| s.step = usize::MAX,
                "kdlab.train_state.step is 18446744073709551615: the run's schedule has 100 steps",
            ),
            (
                |s| s.epoch = 1_000_000,
                "kdlab.train_state.epoch is 1000000: the run has 4 epochs",
            ),
            (
                |s| s.batch_in_epoch = 1_000_000_000_000,
                "kdlab.train_state.batch_in_epoch is 1000000000000: an epoch has at most 50 batches",
            ),
            (
                |s| s.best_val_loss = Some(-1e308),
                "kdlab.train_state.best_val_loss is -1e308: a mean squared error is finite and not below zero",
            ),
            (
                |s| {
                    s.optim_steps
                        .insert("blocks.0.attn.qkv.weight".into(), u64::MAX);
                },
                "kdlab.train_state.optim_steps['blocks.0.attn.qkv.weight'] is 18446744073709551615: more updates than the run's 30 steps",
            ),
            (
                |s| s.loss_window.sum = f64::NAN,
                "kdlab.train_state.loss_window.sum is NaN: a sum of finite metrics is finite",
            ),
            (
                |s| {
                    s.grad_scaler = Some(GradScaler {
                        scale: 0.0,
                        growth_tracker: 0,
                    })
                },
                "kdlab.train_state.grad_scaler.scale is 0.0: a loss scale is finite and above zero",
            ),
        ];
        for (edit, expected) in cases {
            let mut s = state();
            edit(&mut s);
            assert_eq!(s.check(&BOUNDS), Err(expected.to_string()));
        }
    }
}
