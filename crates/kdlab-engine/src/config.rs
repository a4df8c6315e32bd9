//! The run configuration (RON): every field has a default, and an invalid file names the file,
//! the line and column, and the field, before anything starts. `RunConfig::problems` lists every
//! rule the config breaks (with the field's path), so nothing that would fail inside the models
//! reaches them.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use burn::tensor::DType;
use serde::{Deserialize, Serialize};

use crate::data::image_file::{DecodeLimits, PILLOW_MAX_IMAGE_PIXELS};
use kdlab_hub::WeightsName;
use kdlab_model::model::{BeitV2Config, BlockSelection, Data2Vec2Config, VitConfig};
use kdlab_model::optim::AdamWSettings;

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
    /// Data-parallel training over devices and machines (`--devices`, `--nodes`, …).
    pub parallel: ParallelConfig,
    /// The watch on `target_var` / `pred_var` (fairseq data2vec's collapse check).
    pub collapse: CollapseConfig,
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
            parallel: ParallelConfig::default(),
            collapse: CollapseConfig::default(),
        }
    }
}

/// When the logged spreads of target and prediction (`target_var`, `pred_var`: the mean over
/// dimensions of the standard deviation over the batch's tokens) count as a collapse.
/// Defaults are fairseq data2vec's `min_target_var` and `min_pred_var`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollapseConfig {
    /// A warning (log, terminal, app) when a metrics line's `pred_var` is below this.
    pub min_pred_var: f64,
    /// The same for `target_var` (a frozen teacher's targets rarely move; a broken input does).
    pub min_target_var: f64,
    /// Stop the run, as fairseq does, instead of warning only.
    pub stop: bool,
}

impl Default for CollapseConfig {
    fn default() -> Self {
        Self {
            min_pred_var: 0.01,
            min_target_var: 0.1,
            stop: false,
        }
    }
}

/// Data-parallel training: a replica of both models on every device of every node, each taking
/// a disjoint shard of every batch; `optim.batch_size` stays the batch over all of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ParallelConfig {
    /// The devices of the backend on this node: a count (`2`: the first two) or ordinals
    /// (`[0, 2, 3]`). The CPU backend has one device; a count there is that many workers on it.
    pub devices: Devices,
    /// Machines in the run, each with the same number of devices.
    pub nodes: usize,
    /// This machine's place among them, 0-based; node 0 hosts the coordinator and writes the run.
    pub node_rank: usize,
    /// `HOST:PORT` of node 0's coordinator (needed with `nodes` > 1). Node R also serves its
    /// gradients on PORT + 1 + R.
    pub coordinator: Option<String>,
    /// A device that waits this long in one gradient exchange stops the run (a peer that hangs
    /// or a node that disappeared); PyTorch's NCCL default is 10 minutes too.
    pub timeout_s: u64,
}

impl Default for ParallelConfig {
    fn default() -> Self {
        Self {
            devices: Devices::Count(1),
            nodes: 1,
            node_rank: 0,
            coordinator: None,
            timeout_s: 600,
        }
    }
}

/// Which devices of the backend a node trains on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Devices {
    /// The first N (on the CPU: N workers).
    Count(usize),
    /// These ordinals.
    List(Vec<usize>),
}

impl Devices {
    /// Parses `--devices`: `N` or a comma-separated list of ordinals (`0,2,3`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |part: &str| {
            format!(
                "`{part}` is not a device count or ordinal: give N (the first N devices) or a list such as 0,2,3"
            )
        };
        if !text.contains(',') {
            let n = text.trim();
            return n.parse().map(Self::Count).map_err(|_| bad(n));
        }
        text.split(',')
            .map(|p| p.trim().parse().map_err(|_| bad(p.trim())))
            .collect::<Result<Vec<usize>, _>>()
            .map(Self::List)
    }

    /// The ordinals, in order.
    pub fn ordinals(&self) -> Vec<usize> {
        match self {
            Self::Count(n) => (0..*n).collect(),
            Self::List(list) => list.clone(),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Self::Count(n) => *n,
            Self::List(list) => list.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ParallelConfig {
    /// Devices over all nodes: each takes `batch_size / world_size` images of every batch.
    pub fn world_size(&self) -> usize {
        self.nodes * self.devices.len()
    }

    fn problems(&self, batch_size: usize, found: &mut Problems) {
        match &self.devices {
            Devices::Count(n) => found.in_range("parallel.devices", *n, limits::DEVICES),
            Devices::List(list) => {
                if list.is_empty() || list.len() > *limits::DEVICES.end() {
                    found.push(
                        "parallel.devices",
                        format!(
                            "a list needs 1 to {} ordinals, has {}",
                            limits::DEVICES.end(),
                            list.len()
                        ),
                    );
                }
                let mut seen = list.clone();
                seen.sort_unstable();
                seen.dedup();
                if seen.len() != list.len() {
                    found.push(
                        "parallel.devices",
                        format!("{list:?} names a device twice; each device holds one replica"),
                    );
                }
            }
        }
        found.in_range("parallel.nodes", self.nodes, limits::NODES);
        if self.node_rank >= self.nodes.max(1) {
            found.push(
                "parallel.node_rank",
                format!(
                    "must be below parallel.nodes ({}), is {}",
                    self.nodes, self.node_rank
                ),
            );
        }
        match &self.coordinator {
            None if self.nodes > 1 => found.push(
                "parallel.coordinator",
                format!(
                    "{} nodes need the HOST:PORT of node 0's coordinator (--coordinator)",
                    self.nodes
                ),
            ),
            Some(address) => {
                if let Err(why) = coordinator_port(address) {
                    found.push("parallel.coordinator", why);
                }
            }
            None => {}
        }
        found.in_range("parallel.timeout_s", self.timeout_s, 1..=86_400);
        let world = self.world_size();
        if world > 1 && batch_size > 0 && !batch_size.is_multiple_of(world) {
            found.push(
                "optim.batch_size",
                format!(
                    "{batch_size} images do not split evenly over {world} devices ({} node(s) × {}); \
                     make it a multiple of {world} (the batch is over all devices)",
                    self.nodes,
                    self.devices.len()
                ),
            );
        }
    }
}

/// The port of a `HOST:PORT` coordinator address, or why it is not one.
pub fn coordinator_port(address: &str) -> Result<u16, String> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("`{address}` is not HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("`{address}`: `{port}` is not a port number"))?;
    if host.is_empty() || port == 0 || port == u16::MAX {
        return Err(format!("`{address}` needs a host and a port in 1..=65534"));
    }
    Ok(port)
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

/// The frozen teacher: published weights of any family, or a random BEiT v2 (`architecture`) or
/// timm ViT (`vit`) of the given shape (demo).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TeacherConfig {
    /// unilm `.pth`, timm safetensors (BEiT v2, ViT, DeiT, DeiT III, DINOv2, DINOv3 with the
    /// `config.json` beside it) or a kdlab file; or a name: `hf:ORG/REPO[@REVISION][/FILE]` or
    /// a short name (`kdlab fetch --list`), fetched into the cache on first use. The
    /// architecture is read from the file.
    pub weights: Option<PathBuf>,
    /// Written by kdlab: the file a weights name resolved to and its sha256, so that a run's
    /// config.ron says exactly which weights it used (and a resumed run checks it has them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetched: Option<FetchedWeights>,
    /// A random BEiT v2 without weights; with weights, checked against the file.
    pub architecture: Option<BeitV2Config>,
    /// A random timm ViT (any family) without weights; with weights, checked against the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vit: Option<VitConfig>,
    /// The size the teacher sees (default: its own; a timm ViT's positions are resampled).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_size: Option<usize>,
    /// Its input normalisation (default: `pretrained_cfg` of its config.json, else ImageNet's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub normalization: Option<NormalizationConfig>,
    /// On patch grids other than the student's, resample the teacher's averaged representation
    /// to the student's grid (bilinear, CLS kept) before its final layer norm.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub resample_to_student_grid: bool,
}

impl Default for TeacherConfig {
    fn default() -> Self {
        Self {
            weights: None,
            fetched: None,
            architecture: Some(BeitV2Config::vit_base_patch16_224()),
            vit: None,
            image_size: None,
            normalization: None,
            resample_to_student_grid: false,
        }
    }
}

/// A run's name names its folder under the runs folder (`<name>-<UTC time>`): one folder name,
/// so that no name can leave it or reach another run's.
pub fn check_run_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 100 {
        return Err(format!("is {} bytes long; at most 100", name.len()));
    }
    if name == "."
        || name == ".."
        || name.contains(['/', '\\', ':'])
        || name.chars().any(char::is_control)
    {
        return Err(format!(
            "must be one folder name (no `/`, `\\`, `:`, control characters, `.` or `..`), is {name:?}"
        ));
    }
    Ok(())
}

/// What a weights name resolved to when the run started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchedWeights {
    /// The name as `weights` gives it (a record of another name is stale and fetched anew).
    pub name: String,
    pub file: PathBuf,
    pub sha256: String,
    /// The hub name at its commit, or the URL.
    pub source: String,
}

impl FetchedWeights {
    /// The file `weights` stands for: the fetched file when this record is of that name.
    pub fn file_for<'a>(record: Option<&'a Self>, weights: &'a Path) -> &'a Path {
        match record {
            Some(record) if Path::new(&record.name) == weights => &record.file,
            _ => weights,
        }
    }
}

/// A model's input normalisation: `(x/255 − mean)/std` per channel.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NormalizationConfig {
    pub mean: (f64, f64, f64),
    pub std: (f64, f64, f64),
}

impl NormalizationConfig {
    fn problems(&self, field: &str, found: &mut Problems) {
        let (m, s) = (self.mean, self.std);
        if ![m.0, m.1, m.2].iter().all(|v| v.is_finite()) {
            found.push(format!("{field}.mean"), format!("must be finite, is {m:?}"));
        }
        if ![s.0, s.1, s.2].iter().all(|v| v.is_finite() && *v > 0.0) {
            found.push(
                format!("{field}.std"),
                format!("must be positive, is {s:?}"),
            );
        }
    }
}

/// The student: a pretrained model cut to `blocks` (data2vec 2.0 as in the thesis, or any
/// family), a random one, or a model of the teacher's own blocks (`from_teacher`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StudentConfig {
    /// fairseq `.pt`, timm safetensors (with config.json) or a kdlab file, or a name as for
    /// the teacher; the architecture is read from the file.
    pub weights: Option<PathBuf>,
    /// Written by kdlab, as for the teacher.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetched: Option<FetchedWeights>,
    /// A random data2vec 2.0 without weights; with weights, checked against the file.
    pub architecture: Option<Data2Vec2Config>,
    /// Which blocks to keep (data2vec 2.0: main blocks; the prenet blocks are always kept).
    pub blocks: BlockSelection,
    /// A random timm ViT (any family) without weights; with weights, checked against the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vit: Option<VitConfig>,
    /// The student is the teacher's patch embedding, tokens and `blocks` of its blocks (the
    /// seed's DistilBERT-style baseline), initialised from the teacher and then trained.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub from_teacher: bool,
    /// The size the student sees (default: its own; a timm ViT's positions are resampled).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_size: Option<usize>,
    /// Its input normalisation (default: `pretrained_cfg` of its config.json, else ImageNet's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub normalization: Option<NormalizationConfig>,
    /// A width connector (a Linear from the student's width to the teacher's, trained with it):
    /// required when the widths differ, refused when they do not.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub connector: bool,
}

impl Default for StudentConfig {
    fn default() -> Self {
        Self {
            weights: None,
            fetched: None,
            architecture: Some(Data2Vec2Config::vit_base_patch16_224()),
            blocks: BlockSelection::FirstMain(6),
            vit: None,
            from_teacher: false,
            image_size: None,
            normalization: None,
            connector: false,
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
    /// Larger images (width × height) are skipped and reported instead of decoded: a small file
    /// can hold a huge picture (a decompression bomb). Pillow refuses the same size.
    pub max_image_pixels: u64,
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
            max_image_pixels: PILLOW_MAX_IMAGE_PIXELS,
        }
    }
}

impl DataConfig {
    pub fn decode_limits(&self) -> DecodeLimits {
        DecodeLimits {
            max_pixels: self.max_image_pixels,
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

    pub fn adamw(&self) -> AdamWSettings {
        AdamWSettings {
            beta1: self.betas.0,
            beta2: self.betas.1,
            eps: self.eps,
            weight_decay: self.weight_decay,
        }
    }
}

/// What both models compute their matrix products in (`model::Autocast`, PyTorch's autocast
/// rule); the student's weights stay f32 (master weights) in every precision, and `f16` adds
/// dynamic loss scaling (`optim::GradScaler`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
    F16,
}

impl Precision {
    pub fn compute_dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
            Self::F16 => DType::F16,
        }
    }

    /// Whether training needs dynamic loss scaling (f16's range is too narrow for small
    /// gradients; bf16 has f32's).
    pub fn scales_loss(self) -> bool {
        self == Self::F16
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
        }
    }
}

/// The ranges the counts of a config must lie in; the Setup panel's editors use the same.
/// Beyond them a value is a typo, not a run (a million decode threads, a 10⁹ batch).
pub mod limits {
    use std::ops::RangeInclusive;

    pub const BATCH_SIZE: RangeInclusive<usize> = 1..=65_536;
    pub const GRAD_ACCUM_STEPS: RangeInclusive<usize> = 1..=1_024;
    pub const EPOCHS: RangeInclusive<usize> = 1..=100_000;
    pub const STEPS: RangeInclusive<usize> = 1..=100_000_000;
    pub const REPEATS: RangeInclusive<usize> = 1..=100_000;
    pub const WORKERS: RangeInclusive<usize> = 1..=1_024;
    pub const PREFETCH_BATCHES: RangeInclusive<usize> = 1..=1_024;
    pub const PROBE_COUNT: RangeInclusive<usize> = 0..=256;
    pub const MAX_IMAGE_PIXELS: RangeInclusive<u64> = 1..=1 << 40;
    pub const DEVICES: RangeInclusive<usize> = 1..=64;
    pub const NODES: RangeInclusive<usize> = 1..=1_024;
}

/// One broken rule: the field's path in the config (`optim.batch_size`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub field: String,
    pub message: String,
}

impl ConfigProblem {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Whether this problem is about `field` or a part of it (`student.architecture` holds
    /// `student.architecture.embed_dim`).
    pub fn is_about(&self, field: &str) -> bool {
        self.field
            .strip_prefix(field)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
    }
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
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
    #[error("{}", describe_problems(path.as_deref(), problems))]
    Invalid {
        /// The file the config came from (None: edited in the app, built in code).
        path: Option<PathBuf>,
        problems: Vec<ConfigProblem>,
    },
    #[error("cannot write the config as RON: {0}")]
    Serialize(String),
    /// A `--set PATH=VALUE` (crate::overrides) that names no field or does not fit its field.
    #[error("--set {setting}: {message}")]
    Override {
        /// `PATH=VALUE` as given.
        setting: String,
        message: String,
    },
}

impl ConfigError {
    /// Every broken rule, or Ok.
    pub fn check(path: Option<&Path>, problems: Vec<ConfigProblem>) -> Result<(), Self> {
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Self::Invalid {
                path: path.map(Path::to_path_buf),
                problems,
            })
        }
    }

    /// The broken rules, if that is what this error is.
    pub fn problems(&self) -> &[ConfigProblem] {
        match self {
            Self::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

fn describe_problems(path: Option<&Path>, problems: &[ConfigProblem]) -> String {
    let prefix = path.map_or_else(String::new, |p| format!("{}: ", p.display()));
    match problems {
        [one] => format!("{prefix}{one}"),
        many => {
            let mut text = format!("{prefix}{} problems in the config:", many.len());
            for problem in many {
                text.push_str(&format!("\n  {problem}"));
            }
            text
        }
    }
}

/// Reads and parses a RON file, then lets `finish` resolve relative paths against the file's
/// folder and list what is wrong; every error names the file (and the line, or the fields).
pub fn load_ron<T: serde::de::DeserializeOwned>(
    path: &Path,
    finish: impl FnOnce(&mut T, &Path) -> Vec<ConfigProblem>,
) -> Result<T, ConfigError> {
    load_ron_edited(path, Ok, finish)
}

/// As `load_ron`, with `edit` (the command line's `--set`) applied between parsing and
/// `finish`: an edited value is resolved and checked as one of the file's, and a broken value
/// of the file that the edit replaces is no error.
pub fn load_ron_edited<T: serde::de::DeserializeOwned>(
    path: &Path,
    edit: impl FnOnce(T) -> Result<T, ConfigError>,
    finish: impl FnOnce(&mut T, &Path) -> Vec<ConfigProblem>,
) -> Result<T, ConfigError> {
    let text =
        kdlab_weightfile::read_regular_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    let config: T = ron::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        line: e.span.start.line,
        column: e.span.start.col,
        message: e.code.to_string(),
    })?;
    let mut config = edit(config)?;
    let problems = finish(&mut config, path.parent().unwrap_or(Path::new(".")));
    ConfigError::check(Some(path), problems)?;
    Ok(config)
}

/// Writes any config as pretty RON.
pub fn to_ron<T: Serialize>(config: &T) -> Result<String, ConfigError> {
    ron::ser::to_string_pretty(config, ron::ser::PrettyConfig::default())
        .map_err(|e| ConfigError::Serialize(e.to_string()))
}

/// Collects broken rules with their field paths.
#[derive(Default)]
pub struct Problems(pub Vec<ConfigProblem>);

impl Problems {
    pub fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigProblem::new(field, message));
    }

    pub fn in_range<N: PartialOrd + std::fmt::Display>(
        &mut self,
        field: &str,
        value: N,
        range: RangeInclusive<N>,
    ) {
        if !range.contains(&value) {
            self.push(
                field,
                format!("must be in {}..={}, is {value}", range.start(), range.end()),
            );
        }
    }

    /// A finite number in `[min, max]` (NaN and ±∞ are never in range).
    pub fn in_interval(&mut self, field: &str, value: f64, min: f64, max: f64) {
        if !(value >= min && value <= max) {
            self.push(field, format!("must be in [{min}, {max}], is {value}"));
        }
    }

    pub fn positive(&mut self, field: &str, value: f64) {
        if !(value.is_finite() && value > 0.0) {
            self.push(field, format!("must be a positive number, is {value}"));
        }
    }

    /// The rules of a model architecture, under `prefix` (`student.architecture`).
    pub fn architecture(&mut self, prefix: &str, found: Vec<kdlab_model::model::rules::Problem>) {
        for (field, message) in found {
            self.push(format!("{prefix}.{field}"), message);
        }
    }
}

impl RunConfig {
    /// Reads, parses and validates; relative paths are resolved against the file's folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_edited(path, Ok)
    }

    /// As `load`, with `edit` (`--set`) applied to the parsed file before its paths are
    /// resolved and its rules checked.
    pub fn load_edited(
        path: &Path,
        edit: impl FnOnce(Self) -> Result<Self, ConfigError>,
    ) -> Result<Self, ConfigError> {
        load_ron_edited(path, edit, |config: &mut Self, base| {
            config.resolve_paths(base);
            config.problems()
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

    /// Every rule of the config itself that is broken (files are not opened: see the session's
    /// checks against the weights and data).
    pub fn validate(&self) -> Result<(), ConfigError> {
        ConfigError::check(None, self.problems())
    }

    /// Every broken rule, in the order of the fields.
    pub fn problems(&self) -> Vec<ConfigProblem> {
        let mut found = Problems::default();
        self.teacher.problems(&mut found);
        self.student.problems(&mut found);
        if let (Some(t), Some(s), None, None, false) = (
            &self.teacher.architecture,
            &self.student.architecture,
            &self.teacher.vit,
            &self.student.vit,
            self.student.from_teacher,
        ) && self.teacher.image_size.is_none()
            && self.student.image_size.is_none()
            && !self.student.connector
            && !self.teacher.resample_to_student_grid
        {
            shared_token_problems(t, s, &mut found);
        } else if found.0.is_empty() {
            self.random_pair_problems(&mut found);
        }
        self.data.problems(&mut found);
        self.optim.problems(&mut found);
        if let Err(rule) = check_run_name(&self.name) {
            found.push("name", rule);
        }
        found.in_range("log_every", self.log_every, limits::STEPS);
        if let Some(n) = self.val_every {
            found.in_range("val_every", n, limits::STEPS);
        }
        found.in_range("probe.count", self.probe.count, limits::PROBE_COUNT);
        self.parallel.problems(self.optim.batch_size, &mut found);
        found.in_interval(
            "collapse.min_pred_var",
            self.collapse.min_pred_var,
            0.0,
            1e3,
        );
        found.in_interval(
            "collapse.min_target_var",
            self.collapse.min_target_var,
            0.0,
            1e3,
        );
        found.0
    }

    /// Two random models (no weights files) meet as `ModelPlan::resolve` checks it — checked
    /// here too, so that the app shows a missing connector or unequal grids beside the fields
    /// while you edit.
    fn random_pair_problems(&self, found: &mut Problems) {
        use kdlab_model::pair::{KdPair, Side};
        use kdlab_model::weights::Architecture;
        let (t, s) = (&self.teacher, &self.student);
        let teacher = match (&t.weights, &t.architecture, &t.vit) {
            (None, Some(a), None) => Architecture::BeitV2(a.clone()),
            (None, None, Some(v)) => Architecture::Vit(v.clone()),
            _ => return,
        };
        let student = match (&s.weights, &s.architecture, &s.vit, s.from_teacher) {
            (None, None, None, true) => teacher.clone(),
            (None, Some(a), None, false) => Architecture::Data2Vec2(a.clone()),
            (None, None, Some(v), false) => Architecture::Vit(v.clone()),
            _ => return,
        };
        let teacher_size = t.image_size.unwrap_or(teacher.image_size());
        let student_size = match (s.image_size, s.from_teacher) {
            (Some(size), _) => size,
            (None, true) => teacher_size,
            (None, false) => student.image_size(),
        };
        let pair = KdPair {
            teacher: Side::of(&teacher, teacher_size),
            student: Side::of(&student, student_size),
            resample_grid: t.resample_to_student_grid,
        };
        let check = pair.check(teacher.patch_size(), student.patch_size(), s.connector);
        if let Err(error) = check {
            found.push(error.field(), error.to_string());
        }
    }

    pub fn to_ron(&self) -> Result<String, ConfigError> {
        to_ron(self)
    }
}

/// Teacher and student are compared token by token: same tokens, same width.
pub fn shared_token_problems(
    teacher: &BeitV2Config,
    student: &Data2Vec2Config,
    found: &mut Problems,
) {
    if (teacher.image_size, teacher.patch_size) != (student.image_size, student.patch_size) {
        found.push(
            "student.architecture.image_size",
            format!(
                "the teacher sees {}px images in {}px patches, the student {}px in {}px: they \
                 must agree (the loss compares the tokens one by one)",
                teacher.image_size, teacher.patch_size, student.image_size, student.patch_size
            ),
        );
    }
    if teacher.embed_dim != student.embed_dim {
        found.push(
            "student.architecture.embed_dim",
            format!(
                "the student's width {} differs from the teacher's {}: the target and the \
                 prediction are compared dimension by dimension",
                student.embed_dim, teacher.embed_dim
            ),
        );
    }
}

/// A weights text that is a name kdlab does not know, or a malformed `hf:` name (the file
/// itself is opened when the run starts).
fn weights_name_problems(field: &str, weights: Option<&Path>, found: &mut Problems) {
    if let Some(weights) = weights
        && let Err(error) = WeightsName::of_path(weights)
    {
        found.push(field, error.to_string());
    }
}

impl TeacherConfig {
    fn problems(&self, found: &mut Problems) {
        weights_name_problems("teacher.weights", self.weights.as_deref(), found);
        match (&self.weights, &self.architecture, &self.vit) {
            (None, None, None) => found.push(
                "teacher",
                "give `weights`, an `architecture` (BEiT v2) or a `vit` for a random teacher",
            ),
            (_, Some(_), Some(_)) => found.push(
                "teacher.vit",
                "a teacher is a BEiT v2 (`architecture`) or a timm ViT (`vit`), not both: set \
                 `architecture: None` with `vit`",
            ),
            (_, Some(architecture), None) => {
                found.architecture("teacher.architecture", architecture.problems())
            }
            (_, None, Some(vit)) => found.architecture("teacher.vit", vit.problems()),
            (Some(_), None, None) => {}
        }
        if let Some(size) = self.image_size
            && size == 0
        {
            found.push("teacher.image_size", "must be at least 1 px");
        }
        if let Some(norm) = &self.normalization {
            norm.problems("teacher.normalization", found);
        }
    }
}

impl StudentConfig {
    fn problems(&self, found: &mut Problems) {
        weights_name_problems("student.weights", self.weights.as_deref(), found);
        if let Some(size) = self.image_size
            && size == 0
        {
            found.push("student.image_size", "must be at least 1 px");
        }
        if let Some(norm) = &self.normalization {
            norm.problems("student.normalization", found);
        }
        if self.from_teacher {
            if self.weights.is_some() || self.architecture.is_some() || self.vit.is_some() {
                found.push(
                    "student.from_teacher",
                    "a student made of the teacher's blocks takes no `weights`, `architecture` \
                     or `vit` of its own: set them to None",
                );
            }
            return;
        }
        if let Some(vit) = &self.vit {
            if self.architecture.is_some() {
                found.push(
                    "student.vit",
                    "a student is a data2vec 2.0 (`architecture`) or a timm ViT (`vit`), not \
                     both: set `architecture: None` with `vit`",
                );
            } else {
                found.architecture("student.vit", vit.problems());
            }
            return;
        }
        match (&self.weights, &self.architecture) {
            (None, None) => found.push(
                "student",
                "give `weights`, an `architecture` (data2vec 2.0) or a `vit` for a random \
                 student, or `from_teacher: true`",
            ),
            (_, Some(architecture)) => {
                let broken = architecture.problems();
                let depth_known = !broken
                    .iter()
                    .any(|(f, _)| *f == "depth" || *f == "prenet_depth");
                found.architecture("student.architecture", broken);
                if depth_known
                    && let Some(message) = self
                        .blocks
                        .problem(architecture.prenet_depth, architecture.depth)
                {
                    found.push("student.blocks", message);
                }
            }
            (Some(_), None) => {}
        }
    }
}

impl DataConfig {
    fn problems(&self, found: &mut Problems) {
        if self.val.is_none() && !(self.val_fraction >= 0.0 && self.val_fraction < 1.0) {
            found.push(
                "data.val_fraction",
                format!("must be in [0, 1), is {}", self.val_fraction),
            );
        }
        found.in_range("data.repeats", self.repeats, limits::REPEATS);
        found.in_range("data.workers", self.workers, limits::WORKERS);
        found.in_range(
            "data.prefetch_batches",
            self.prefetch_batches,
            limits::PREFETCH_BATCHES,
        );
        let (lo, hi) = self.crop_scale;
        if !(0.0 < lo && lo <= hi && hi <= 1.0) {
            found.push(
                "data.crop_scale",
                format!("needs 0 < min ≤ max ≤ 1, is ({lo}, {hi})"),
            );
        }
        let (lo, hi) = self.crop_ratio;
        if !(0.0 < lo && lo <= hi && hi.is_finite()) {
            found.push(
                "data.crop_ratio",
                format!("needs 0 < min ≤ max, both finite, is ({lo}, {hi})"),
            );
        }
        found.in_interval("data.hflip_probability", self.hflip_probability, 0.0, 1.0);
        found.in_range(
            "data.max_image_pixels",
            self.max_image_pixels,
            limits::MAX_IMAGE_PIXELS,
        );
    }
}

impl OptimConfig {
    fn problems(&self, found: &mut Problems) {
        found.positive("optim.base_lr", self.base_lr);
        found.in_range("optim.batch_size", self.batch_size, limits::BATCH_SIZE);
        found.in_range(
            "optim.grad_accum_steps",
            self.grad_accum_steps,
            limits::GRAD_ACCUM_STEPS,
        );
        found.in_range("optim.epochs", self.epochs, limits::EPOCHS);
        if let Some(n) = self.max_steps {
            found.in_range("optim.max_steps", n, limits::STEPS);
        }
        found.in_interval("optim.warmup_fraction", self.warmup_fraction, 0.0, 1.0);
        let (b1, b2) = self.betas;
        if !((0.0..1.0).contains(&b1) && (0.0..1.0).contains(&b2)) {
            found.push(
                "optim.betas",
                format!("each must be in [0, 1), are ({b1}, {b2})"),
            );
        }
        // AdamW divides by √v + eps, and some gradients are exactly 0 (the key bias).
        found.positive("optim.eps", self.eps);
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            found.push(
                "optim.weight_decay",
                format!("must be 0 or more, is {}", self.weight_decay),
            );
        }
        if let Some(c) = self.clip_grad_norm {
            found.positive("optim.clip_grad_norm", c);
        }
    }
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
    fn parallel_devices_are_a_count_or_ordinals_and_must_share_the_batch() {
        let two = load_str("(parallel: (devices: 2))").unwrap();
        assert_eq!(two.parallel.devices, Devices::Count(2));
        let listed = load_str("(parallel: (devices: [0, 2, 3]), optim: (batch_size: 6))").unwrap();
        assert_eq!(listed.parallel.devices, Devices::List(vec![0, 2, 3]));
        assert_eq!(load_str(&listed.to_ron().unwrap()).unwrap(), listed);
        assert_eq!(Devices::parse("0, 2,3"), Ok(Devices::List(vec![0, 2, 3])));
        assert_eq!(Devices::parse("4"), Ok(Devices::Count(4)));
        assert!(Devices::parse("two").unwrap_err().contains("`two`"));

        let fields = |text: &str| -> Vec<String> {
            let e = load_str(text).unwrap_err();
            e.problems().iter().map(|p| p.field.clone()).collect()
        };
        let e = load_str("(optim: (batch_size: 6), parallel: (devices: 4))").unwrap_err();
        assert!(e.to_string().contains("make it a multiple of 4"), "{e}");
        assert_eq!(fields("(parallel: (nodes: 2))"), ["parallel.coordinator"]);
        assert_eq!(
            fields("(parallel: (nodes: 2, node_rank: 2, coordinator: Some(\"h:29500\")))"),
            ["parallel.node_rank"]
        );
        assert_eq!(
            fields("(parallel: (nodes: 2, coordinator: Some(\"29500\")))"),
            ["parallel.coordinator"]
        );
        assert_eq!(
            fields("(parallel: (devices: [1, 1]))"),
            ["parallel.devices"]
        );
        // 2 nodes × 3 devices: 256 does not split over 6.
        assert_eq!(
            fields("(parallel: (devices: 3, nodes: 2, coordinator: Some(\"h:1\")))"),
            ["optim.batch_size"]
        );
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
            e.contains("c.ron: optim.batch_size: must be in 1..=65536, is 0"),
            "{e}"
        );
        let e = load_str("(seed: \"x\")").unwrap_err().to_string();
        assert!(e.contains("c.ron:1:"), "{e}");
    }

    #[test]
    fn every_problem_is_listed_with_its_field() {
        let mut config = RunConfig::default();
        config.optim.batch_size = 0;
        config.data.workers = 0;
        config.optim.eps = f64::NAN;
        let student = config.student.architecture.as_mut().unwrap();
        student.embed_dim = 62;
        student.num_heads = 2;
        let fields: Vec<String> = config.problems().into_iter().map(|p| p.field).collect();
        assert_eq!(
            fields,
            [
                "student.architecture.embed_dim",
                "student.architecture.embed_dim",
                "data.workers",
                "optim.batch_size",
                "optim.eps"
            ],
            "the sin-cos width, then the teacher's width, then the counts"
        );
        let text = config.validate().unwrap_err().to_string();
        assert!(text.starts_with("5 problems in the config:"), "{text}");
    }

    #[test]
    fn zero_main_blocks_are_caught_for_every_selection() {
        for blocks in [
            BlockSelection::All,
            BlockSelection::EverySecond,
            BlockSelection::FirstMain(1),
        ] {
            let mut config = RunConfig::default();
            config.student.blocks = blocks;
            config.student.architecture.as_mut().unwrap().depth = 0;
            let problems = config.problems();
            assert_eq!(problems.len(), 1, "{blocks:?}: {problems:?}");
            assert_eq!(problems[0].field, "student.architecture.depth");
        }
        let mut config = RunConfig::default();
        config.student.blocks = BlockSelection::FirstMain(11);
        assert_eq!(config.problems()[0].field, "student.blocks");
    }

    #[test]
    fn a_problem_is_about_its_field_and_the_fields_above() {
        let p = ConfigProblem::new("student.architecture.embed_dim", "x");
        assert!(p.is_about("student.architecture") && p.is_about("student.architecture.embed_dim"));
        assert!(!p.is_about("student.arch") && !p.is_about("student.blocks"));
    }

    #[test]
    fn round_trips_through_ron() {
        let c = RunConfig::default();
        assert_eq!(ron::from_str::<RunConfig>(&c.to_ron().unwrap()).unwrap(), c);
    }
}
