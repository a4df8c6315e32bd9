//! What an evaluation does (RON, `configs/eval_*.ron`): the labelled data, how features are
//! pooled, and the k-NN and linear-probe settings. Command-line flags override the file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, ConfigProblem, Problems, limits};

/// k-NN or linear probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Cosine k-nearest neighbours with DINO's temperature-weighted vote; no training.
    Knn,
    /// LayerNorm + Linear trained on the frozen features (the thesis' linear evaluation).
    Linear,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Self::Knn => "knn",
            Self::Linear => "linear",
        }
    }
}

/// How labelled images are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DatasetKind {
    /// ImageNet-style folders: `<dir>/<class>/<image>`.
    #[default]
    Folder,
    /// The CIFAR-10 binary release (`data_batch_*.bin`, `test_batch.bin`).
    Cifar10,
    /// The CIFAR-100 binary release (`train.bin`, `test.bin`), fine labels.
    Cifar100,
}

impl DatasetKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Folder => "folder",
            Self::Cifar10 => "cifar10",
            Self::Cifar100 => "cifar100",
        }
    }
}

/// Which tokens of the last hidden state make an image's feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// The mean of the patch tokens, CLS excluded (the thesis' protocol).
    #[default]
    MeanPatch,
    /// The CLS token.
    Cls,
}

impl Pooling {
    pub fn name(self) -> &'static str {
        match self {
            Self::MeanPatch => "mean_patch",
            Self::Cls => "cls",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KnnSettings {
    /// Neighbours that vote.
    pub k: usize,
    /// Each neighbour votes exp(similarity / temperature) for its class.
    pub temperature: f64,
}

impl Default for KnnSettings {
    /// DINO's `eval_knn.py` defaults (k = 20, T = 0.07).
    fn default() -> Self {
        Self {
            k: 20,
            temperature: 0.07,
        }
    }
}

/// The probe's training. The thesis names the protocol (mean-pooled patch tokens → LayerNorm →
/// Linear, only LN + Linear trained) but not these numbers; the defaults are MAE's linear-probe
/// schedule (90 epochs, 10 of warm-up, no weight decay) with AdamW in place of LARS.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinearSettings {
    pub epochs: usize,
    pub batch_size: usize,
    /// Peak learning rate (not scaled by the batch size).
    pub lr: f64,
    /// Decoupled decay of the Linear's weight matrix only.
    pub weight_decay: f64,
    /// Linear warm-up from 0, then cosine to 0 over the remaining epochs.
    pub warmup_epochs: usize,
    /// Seeds the head's initialisation and the order of the features.
    pub seed: u64,
}

impl Default for LinearSettings {
    fn default() -> Self {
        Self {
            epochs: 90,
            batch_size: 256,
            lr: 1e-3,
            weight_decay: 0.0,
            warmup_epochs: 10,
            seed: 0,
        }
    }
}

/// One evaluation set-up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    pub dataset: DatasetKind,
    /// Training images: a folder of class folders, or the CIFAR release folder (or one `.bin`).
    pub train: Option<PathBuf>,
    /// Evaluation images; for CIFAR it defaults to the test split next to `train`.
    pub val: Option<PathBuf>,
    pub pooling: Pooling,
    /// Images per forward pass when extracting features.
    pub batch_size: usize,
    /// Threads decoding and resizing images.
    pub workers: usize,
    pub knn: KnnSettings,
    pub linear: LinearSettings,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            dataset: DatasetKind::Folder,
            train: None,
            val: None,
            pooling: Pooling::MeanPatch,
            batch_size: 64,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            knn: KnnSettings::default(),
            linear: LinearSettings::default(),
        }
    }
}

impl EvalConfig {
    /// Reads and parses; relative data paths are resolved against the file's folder when they
    /// do not exist as given.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_edited(path, Ok)
    }

    /// As `load`, with `edit` (`--set`) applied to the parsed file before its paths are
    /// resolved and its rules checked.
    pub fn load_edited(
        path: &Path,
        edit: impl FnOnce(Self) -> Result<Self, ConfigError>,
    ) -> Result<Self, ConfigError> {
        crate::config::load_ron_edited(path, edit, |config: &mut Self, base| {
            for p in [&mut config.train, &mut config.val].into_iter().flatten() {
                if p.is_relative() && !p.exists() && base.join(&*p).exists() {
                    *p = base.join(&*p);
                }
            }
            config.problems()
        })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        ConfigError::check(None, self.problems())
    }

    /// Every broken rule, with its field.
    pub fn problems(&self) -> Vec<ConfigProblem> {
        let mut found = Problems::default();
        found.in_range("batch_size", self.batch_size, limits::BATCH_SIZE);
        found.in_range("workers", self.workers, limits::WORKERS);
        found.in_range("knn.k", self.knn.k, 1..=1_000_000);
        found.in_range("linear.epochs", self.linear.epochs, limits::EPOCHS);
        found.in_range(
            "linear.batch_size",
            self.linear.batch_size,
            limits::BATCH_SIZE,
        );
        found.positive("knn.temperature", self.knn.temperature);
        found.positive("linear.lr", self.linear.lr);
        if !(self.linear.weight_decay.is_finite() && self.linear.weight_decay >= 0.0) {
            found.push(
                "linear.weight_decay",
                format!("must be 0 or more, is {}", self.linear.weight_decay),
            );
        }
        if self.linear.warmup_epochs >= self.linear.epochs {
            found.push(
                "linear.warmup_epochs",
                format!(
                    "must be fewer than linear.epochs ({}), is {}",
                    self.linear.epochs, self.linear.warmup_epochs
                ),
            );
        }
        found.0
    }

    /// Sets the probe's epochs (the `--epochs` flag, the Evaluate panel's field). A warm-up no
    /// longer shorter than the run is cut to a tenth of it, and the returned note says so —
    /// the CLI prints it, the app logs it.
    pub fn set_linear_epochs(&mut self, epochs: usize) -> Option<String> {
        let linear = &mut self.linear;
        linear.epochs = epochs;
        if linear.warmup_epochs < epochs || epochs == 0 {
            return None;
        }
        let before = linear.warmup_epochs;
        linear.warmup_epochs = epochs / 10;
        Some(format!(
            "linear.warmup_epochs {before} is not fewer than linear.epochs {epochs}: using {} \
             warm-up epochs (a tenth)",
            linear.warmup_epochs
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_configs_load() {
        // The repository's configs/, two folders above this crate.
        let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let cifar10 = EvalConfig::load(&configs.join("eval_cifar10_linear.ron")).unwrap();
        assert_eq!(cifar10.dataset, DatasetKind::Cifar10);
        assert_eq!(cifar10.pooling, Pooling::MeanPatch);
        let cifar100 = EvalConfig::load(&configs.join("eval_cifar100_linear.ron")).unwrap();
        assert_eq!(cifar100.dataset, DatasetKind::Cifar100);
        let imagenet = EvalConfig::load(&configs.join("eval_imagenet_linear.ron")).unwrap();
        assert_eq!(imagenet.dataset, DatasetKind::Folder);
        assert!(imagenet.val.is_some());
    }

    #[test]
    fn fewer_epochs_cut_the_default_warm_up_and_say_so() {
        let mut config = EvalConfig::default();
        let note = config.set_linear_epochs(5).unwrap();
        assert_eq!((config.linear.epochs, config.linear.warmup_epochs), (5, 0));
        assert!(note.contains("linear.warmup_epochs 10"), "{note}");
        assert!(config.problems().is_empty());
        assert_eq!(config.set_linear_epochs(90), None);
        assert_eq!(
            config.linear.warmup_epochs, 0,
            "a cut warm-up is not restored"
        );
    }

    #[test]
    fn bad_settings_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.ron");
        std::fs::write(&path, "(knn: (k: 0))").unwrap();
        let e = EvalConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("knn.k"), "{e}");
        std::fs::write(&path, "(linear: (epochs: 5, warmup_epochs: 5))").unwrap();
        let e = EvalConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("linear.warmup_epochs"), "{e}");
        std::fs::write(&path, "(knn: (k: 0), linear: (lr: -1.0))").unwrap();
        let e = EvalConfig::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("2 problems") && e.contains("knn.k") && e.contains("linear.lr"),
            "{e}"
        );
        std::fs::write(&path, "(dataset: imagenet)").unwrap();
        let e = EvalConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("e.ron:1:"), "{e}");
    }
}
