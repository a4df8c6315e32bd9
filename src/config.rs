//! The run configuration (RON): every field has a default, and an invalid file names the file,
//! the line and column, and the field, before anything starts.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::{BeitV2Config, BlockSelection, Data2Vec2Config};

/// One distillation run. `configs/*.ron` document each field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// Names the run directory `runs/<name>-<UTC timestamp>/`.
    pub name: String,
    /// Seeds initialisation, data order and augmentation.
    pub seed: u64,
    pub teacher: TeacherConfig,
    pub student: StudentConfig,
    pub data: DataConfig,
    pub optim: OptimConfig,
    pub precision: Precision,
    /// Log a metrics line every N optimiser steps.
    pub log_every: usize,
    /// Also compute the validation loss every N steps (it always runs after each epoch).
    pub val_every: Option<usize>,
    /// The images whose per-patch maps are saved after every epoch (the app's timeline).
    pub probe: ProbeConfig,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            name: "run".into(),
            seed: 42,
            teacher: TeacherConfig::default(),
            student: StudentConfig::default(),
            data: DataConfig::default(),
            optim: OptimConfig::default(),
            precision: Precision::F32,
            log_every: 10,
            val_every: None,
            probe: ProbeConfig::default(),
        }
    }
}

/// A fixed set of images followed through training: after each epoch their per-patch maps are
/// written to the run's `heatmaps/epoch-NNN/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProbeConfig {
    /// Image files; empty = the first `count` validation images (training images without any).
    pub images: Vec<PathBuf>,
    /// How many images to take when `images` is empty; 0 turns the heatmaps off.
    pub count: usize,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            images: Vec::new(),
            count: 4,
        }
    }
}

/// The frozen teacher: published weights, or a random BEiT v2 of the given shape (demo).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TeacherConfig {
    /// unilm `.pth` or timm safetensors; the architecture is read from the file.
    pub weights: Option<PathBuf>,
    /// Required without weights; with weights, checked against the file.
    pub architecture: Option<BeitV2Config>,
}

impl Default for TeacherConfig {
    fn default() -> Self {
        Self {
            weights: None,
            architecture: Some(BeitV2Config::vit_base_patch16_224()),
        }
    }
}

/// The student: a pretrained data2vec 2.0 model cut to `blocks`, or a random one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StudentConfig {
    /// fairseq `.pt` (or a kdlab file); the architecture is read from the file.
    pub weights: Option<PathBuf>,
    /// Required without weights (random init); with weights, checked against the file.
    pub architecture: Option<Data2Vec2Config>,
    /// Which main blocks to keep (prenet blocks are always kept).
    pub blocks: BlockSelection,
}

impl Default for StudentConfig {
    fn default() -> Self {
        Self {
            weights: None,
            architecture: Some(Data2Vec2Config::vit_base_patch16_224()),
            blocks: BlockSelection::FirstMain(6),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// Image folder: `<class>/*` sub-folders or a flat folder (relative to the config file).
    pub train: PathBuf,
    /// Validation folder; without one, `val_fraction` of the training images are held out.
    pub val: Option<PathBuf>,
    pub val_fraction: f64,
    /// Each epoch visits every training image this many times (tiny data sets).
    pub repeats: usize,
    /// Decode/augment threads.
    pub workers: usize,
    /// Batches prepared ahead of the device.
    pub prefetch_batches: usize,
    /// RandomResizedCrop area range and aspect-ratio range.
    pub crop_scale: (f64, f64),
    pub crop_ratio: (f64, f64),
    pub hflip_probability: f64,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            train: PathBuf::from("data/train"),
            val: None,
            val_fraction: 0.0,
            repeats: 1,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            prefetch_batches: 4,
            crop_scale: (0.08, 1.0),
            crop_ratio: (3.0 / 4.0, 4.0 / 3.0),
            hflip_probability: 0.5,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    /// lr = base_lr × batch_size × grad_accum_steps / 256.
    pub base_lr: f64,
    /// Images per forward pass.
    pub batch_size: usize,
    /// Forward passes per optimiser step (global batch = batch_size × grad_accum_steps).
    pub grad_accum_steps: usize,
    pub epochs: usize,
    /// Stops earlier (the schedule still spans `epochs`).
    pub max_steps: Option<usize>,
    /// Linear warm-up from 0 over this fraction of all steps, then cosine to 0.
    pub warmup_fraction: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    /// Decoupled decay on matrices only (not biases, norms, positions or the CLS token).
    pub weight_decay: f64,
    /// Clip the global gradient norm (PyTorch `clip_grad_norm_`).
    pub clip_grad_norm: Option<f64>,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            base_lr: 5e-4,
            batch_size: 256,
            grad_accum_steps: 1,
            epochs: 10,
            max_steps: None,
            warmup_fraction: 0.1,
            betas: (0.9, 0.98),
            eps: 1e-6,
            weight_decay: 0.01,
            clip_grad_norm: None,
        }
    }
}

impl OptimConfig {
    pub fn global_batch(&self) -> usize {
        self.batch_size * self.grad_accum_steps
    }

    pub fn peak_lr(&self) -> f64 {
        self.base_lr * self.global_batch() as f64 / 256.0
    }
}

/// What runs in reduced precision. burn 0.21 has no autocast and no f32 master weights, so the
/// student always trains in f32; `bf16`/`f16` run the frozen teacher's forward in that type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
    F16,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        field: &'static str,
        message: String,
    },
}

/// Reads and parses a RON file, then lets `finish` resolve relative paths against the file's
/// folder and validate; every error names the file (and the line, or the field).
pub fn load_ron<T: serde::de::DeserializeOwned>(
    path: &Path,
    finish: impl FnOnce(&mut T, &Path) -> Result<(), (&'static str, String)>,
) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut config: T = ron::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        line: e.span.start.line,
        column: e.span.start.col,
        message: e.code.to_string(),
    })?;
    finish(&mut config, path.parent().unwrap_or(Path::new("."))).map_err(|(field, message)| {
        ConfigError::Invalid {
            path: path.to_path_buf(),
            field,
            message,
        }
    })?;
    Ok(config)
}

impl RunConfig {
    /// Reads, parses and validates; relative paths are resolved against the file's folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        load_ron(path, |config: &mut Self, base| {
            config.resolve_paths(base);
            config.validate()
        })
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() && !p.exists() {
                let candidate = base.join(&*p);
                if candidate.exists() {
                    *p = candidate;
                }
            }
        };
        resolve(&mut self.data.train);
        self.data.val.iter_mut().for_each(resolve);
        self.teacher.weights.iter_mut().for_each(resolve);
        self.student.weights.iter_mut().for_each(resolve);
        self.probe.images.iter_mut().for_each(resolve);
    }

    /// The first problem found, as (field, message).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let positive = |field: &'static str, v: usize| {
            if v == 0 {
                Err((field, "must be at least 1".to_string()))
            } else {
                Ok(())
            }
        };
        positive("optim.batch_size", self.optim.batch_size)?;
        positive("optim.grad_accum_steps", self.optim.grad_accum_steps)?;
        positive("optim.epochs", self.optim.epochs)?;
        positive("data.repeats", self.data.repeats)?;
        positive("data.workers", self.data.workers)?;
        positive("data.prefetch_batches", self.data.prefetch_batches)?;
        positive("log_every", self.log_every)?;
        if let Some(n) = self.val_every {
            positive("val_every", n)?;
        }
        let fraction = |field, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err((field, format!("must be in [0, 1], is {v}")))
            }
        };
        fraction("optim.warmup_fraction", self.optim.warmup_fraction)?;
        fraction("data.hflip_probability", self.data.hflip_probability)?;
        if !(0.0..1.0).contains(&self.data.val_fraction) {
            return Err((
                "data.val_fraction",
                format!("must be in [0, 1), is {}", self.data.val_fraction),
            ));
        }
        let (lo, hi) = self.data.crop_scale;
        if !(0.0 < lo && lo <= hi && hi <= 1.0) {
            return Err((
                "data.crop_scale",
                format!("needs 0 < min ≤ max ≤ 1, is ({lo}, {hi})"),
            ));
        }
        let (lo, hi) = self.data.crop_ratio;
        if !(0.0 < lo && lo <= hi) {
            return Err((
                "data.crop_ratio",
                format!("needs 0 < min ≤ max, is ({lo}, {hi})"),
            ));
        }
        if !(self.optim.base_lr > 0.0 && self.optim.base_lr.is_finite()) {
            return Err((
                "optim.base_lr",
                format!("must be positive, is {}", self.optim.base_lr),
            ));
        }
        let (b1, b2) = self.optim.betas;
        if !((0.0..1.0).contains(&b1) && (0.0..1.0).contains(&b2)) {
            return Err((
                "optim.betas",
                format!("each must be in [0, 1), are ({b1}, {b2})"),
            ));
        }
        if self.optim.weight_decay < 0.0 {
            return Err(("optim.weight_decay", "must not be negative".into()));
        }
        if let Some(c) = self.optim.clip_grad_norm
            && c <= 0.0
        {
            return Err(("optim.clip_grad_norm", format!("must be positive, is {c}")));
        }
        if self.teacher.weights.is_none() && self.teacher.architecture.is_none() {
            return Err((
                "teacher",
                "give `weights` or an `architecture` for a random teacher".into(),
            ));
        }
        if self.student.weights.is_none() && self.student.architecture.is_none() {
            return Err((
                "student",
                "give `weights` or an `architecture` for a random student".into(),
            ));
        }
        if let Some(t) = &self.teacher.architecture {
            check_shape(
                "teacher.architecture",
                t.image_size,
                t.patch_size,
                t.embed_dim,
                t.num_heads,
            )?;
            positive("teacher.architecture", t.depth.min(t.mlp_hidden_dim))?;
        }
        if let Some(s) = &self.student.architecture {
            check_shape(
                "student.architecture",
                s.image_size,
                s.patch_size,
                s.embed_dim,
                s.num_heads,
            )?;
            positive("student.architecture", s.mlp_hidden_dim)?;
        }
        if let (Some(t), Some(s)) = (&self.teacher.architecture, &self.student.architecture)
            && (t.image_size, t.patch_size) != (s.image_size, s.patch_size)
        {
            return Err((
                "student.architecture",
                format!(
                    "teacher sees {}px images in {}px patches, student {}px in {}px: they must agree (same tokens)",
                    t.image_size, t.patch_size, s.image_size, s.patch_size
                ),
            ));
        }
        Ok(())
    }

    pub fn to_ron(&self) -> String {
        ron::ser::to_string_pretty(self, ron::ser::PrettyConfig::default()).unwrap_or_default()
    }
}

/// A ViT's geometry: whole patches, whole heads, nothing zero.
fn check_shape(
    field: &'static str,
    image_size: usize,
    patch_size: usize,
    embed_dim: usize,
    num_heads: usize,
) -> Result<(), (&'static str, String)> {
    if image_size == 0 || patch_size == 0 || !image_size.is_multiple_of(patch_size) {
        return Err((
            field,
            format!(
                "image_size {image_size} must be a positive multiple of patch_size {patch_size}"
            ),
        ));
    }
    if num_heads == 0 || embed_dim == 0 || !embed_dim.is_multiple_of(num_heads) {
        return Err((
            field,
            format!("embed_dim {embed_dim} must be a positive multiple of num_heads {num_heads}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str) -> Result<RunConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.ron");
        std::fs::write(&path, text).unwrap();
        RunConfig::load(&path)
    }

    #[test]
    fn empty_config_is_all_defaults() {
        assert_eq!(load_str("()").unwrap(), RunConfig::default());
    }

    #[test]
    fn errors_name_line_column_and_field() {
        let e = load_str("(\n  optim: (\n    batch_sise: 3,\n  ),\n)")
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.ron:3:") && e.contains("batch_sise"), "{e}");
        let e = load_str("(optim: (batch_size: 0))")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("optim.batch_size") && e.contains("at least 1"),
            "{e}"
        );
        let e = load_str("(seed: \"x\")").unwrap_err().to_string();
        assert!(e.contains("c.ron:1:"), "{e}");
    }

    #[test]
    fn round_trips_through_ron() {
        let c = RunConfig::default();
        assert_eq!(ron::from_str::<RunConfig>(&c.to_ron()).unwrap(), c);
    }
}
