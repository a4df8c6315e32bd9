//! Loading the published checkpoints: layout detection, architecture inference, key mapping and
//! shape checks, then burn-store applies the tensors.

pub mod expected;
pub mod layout;
pub mod read;
pub mod write;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use burn::backend::Flex;
use burn::tensor::DType;
use burn::tensor::backend::Backend;
use burn_store::{ModuleSnapshot, PyTorchToBurnAdapter, TensorSnapshot};

use crate::model::generator::{materialize, unseeded};
use crate::model::{BeitV2, BlockSelection, Data2Vec2, Encoder};
use expected::{ExpectedParam, expected_params};
pub use layout::{Architecture, KeyTarget, Layout};
pub use read::RawWeights;

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("cannot read weights file {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error(
        "{path} is not a checkpoint kdlab knows: expected a unilm BEiT v2 .pth, a timm BEiT v2 \
         safetensors, a fairseq data2vec 2.0 .pt or a kdlab file; its first keys are {first_keys:?}"
    )]
    UnknownLayout {
        path: PathBuf,
        first_keys: Vec<String>,
    },
    #[error("{path} ({layout}): cannot infer the architecture: {message}")]
    Architecture {
        path: PathBuf,
        layout: &'static str,
        message: String,
    },
    #[error(
        "{path}: key '{key}' has shape {found:?}, but the {layout} architecture inferred from \
         the file expects {expected:?}"
    )]
    ShapeMismatch {
        path: PathBuf,
        layout: &'static str,
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{path}: keys the model needs are missing: {keys:?}")]
    MissingKeys { path: PathBuf, keys: Vec<String> },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// How a checkpoint's keys meet the module kdlab builds for it.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    /// File key → kdlab parameter path (PyTorch naming).
    pub used: BTreeMap<String, String>,
    pub ignored_keys: Vec<String>,
    /// Named as the file would name them.
    pub missing_keys: Vec<String>,
    pub shape_mismatches: Vec<(String, Vec<usize>, Vec<usize>)>,
    /// Parameters of the module kdlab builds (frozen ones included).
    pub parameters: usize,
}

/// A weights file, opened and understood, with its tensors not yet read.
pub struct Checkpoint {
    pub path: PathBuf,
    pub layout: Layout,
    pub architecture: Architecture,
    raw: RawWeights,
}

impl Checkpoint {
    pub fn open(path: impl AsRef<Path>) -> Result<Self, WeightsError> {
        let path = path.as_ref();
        Self::from_raw(path, read::read_weights(path)?)
    }

    /// From tensors already read (or described, as the full-size key manifests are).
    pub fn from_raw(path: &Path, raw: RawWeights) -> Result<Self, WeightsError> {
        let layout = layout::detect_layout(&raw).ok_or_else(|| WeightsError::UnknownLayout {
            path: path.to_path_buf(),
            first_keys: raw.tensors.keys().take(8).cloned().collect(),
        })?;
        let architecture = layout::infer_architecture(layout, &raw).map_err(|message| {
            WeightsError::Architecture {
                path: path.to_path_buf(),
                layout: layout.name(),
                message,
            }
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            layout,
            architecture,
            raw,
        })
    }

    /// Matches the file's keys with the module's parameters; allocates no weights.
    pub fn plan(&self) -> LoadPlan {
        let device = Default::default();
        // Constructing draws from the shared generator (CLS tokens): under its lock.
        let expected = unseeded(|| match &self.architecture {
            Architecture::BeitV2(c) => expected_params(&c.init::<Flex>(&device)),
            Architecture::Data2Vec2(c) => expected_params(&c.init::<Flex>(&device)),
        });
        self.plan_against(&expected)
    }

    fn plan_against(&self, expected: &[ExpectedParam]) -> LoadPlan {
        let mut used = BTreeMap::new();
        let mut ignored_keys = Vec::new();
        for key in self.raw.tensors.keys() {
            match layout::key_target(self.layout, &self.architecture, key) {
                KeyTarget::Param(path) => {
                    used.insert(key.clone(), path);
                }
                KeyTarget::Ignored => ignored_keys.push(key.clone()),
            }
        }
        let by_path: BTreeMap<&str, &ExpectedParam> =
            expected.iter().map(|p| (p.path.as_str(), p)).collect();
        // Keys that map to no parameter of this architecture are unused too.
        used.retain(|key, path| {
            let known = by_path.contains_key(path.as_str());
            if !known {
                ignored_keys.push(key.clone());
            }
            known
        });
        ignored_keys.sort();
        let provided: BTreeSet<&str> = used.values().map(String::as_str).collect();
        let missing_keys = expected
            .iter()
            .filter(|p| !provided.contains(p.path.as_str()))
            .map(|p| self.file_key_for(&p.path))
            .collect();
        let shape_mismatches = used
            .iter()
            .filter_map(|(key, path)| {
                let found = self.raw.tensors[key].shape.to_vec();
                let wanted = &by_path[path.as_str()].shape;
                (&found != wanted).then(|| (key.clone(), wanted.clone(), found))
            })
            .collect();
        LoadPlan {
            used,
            ignored_keys,
            missing_keys,
            shape_mismatches,
            parameters: expected
                .iter()
                .map(|p| p.shape.iter().product::<usize>())
                .sum(),
        }
    }

    fn file_key_for(&self, path: &str) -> String {
        match &self.architecture {
            Architecture::Data2Vec2(_) => layout::fairseq_name(path),
            Architecture::BeitV2(_) => path.to_string(),
        }
    }

    /// Loads the teacher. Fails unless the file is a BEiT v2 checkpoint.
    pub fn load_beit_v2<B: Backend>(&self, device: &B::Device) -> Result<BeitV2<B>, WeightsError> {
        match &self.architecture {
            Architecture::BeitV2(config) => {
                unseeded(|| self.apply(config.init(device)).map(materialize))
            }
            Architecture::Data2Vec2(_) => {
                Err(self.invalid("is a data2vec 2.0 checkpoint, not a BEiT v2 one"))
            }
        }
    }

    /// Loads the data2vec 2.0 encoder and keeps the selected main blocks.
    pub fn load_data2vec2<B: Backend>(
        &self,
        selection: BlockSelection,
        device: &B::Device,
    ) -> Result<Data2Vec2<B>, WeightsError> {
        let Architecture::Data2Vec2(config) = &self.architecture else {
            return Err(self.invalid("is a BEiT v2 checkpoint, not a data2vec 2.0 one"));
        };
        let keep = selection
            .main_blocks(config.prenet_depth, config.depth)
            .map_err(|message| self.invalid(&message))?;
        let model = unseeded(|| self.apply(config.init(device)).map(materialize))?;
        Ok(model.select_main_blocks(&keep))
    }

    /// Loads whichever encoder the file holds; `selection` applies to data2vec 2.0 only.
    pub fn load_encoder<B: Backend>(
        &self,
        selection: Option<BlockSelection>,
        device: &B::Device,
    ) -> Result<Encoder<B>, WeightsError> {
        match (&self.architecture, selection) {
            (Architecture::BeitV2(_), None) => Ok(Encoder::BeitV2(self.load_beit_v2(device)?)),
            (Architecture::BeitV2(_), Some(_)) => Err(self.invalid(
                "is a BEiT v2 teacher; a block selection (--depth) applies to data2vec 2.0 students only",
            )),
            (Architecture::Data2Vec2(_), selection) => Ok(Encoder::Data2Vec2(
                self.load_data2vec2(selection.unwrap_or(BlockSelection::All), device)?,
            )),
        }
    }

    fn invalid(&self, message: &str) -> WeightsError {
        WeightsError::Invalid {
            path: self.path.clone(),
            message: message.to_string(),
        }
    }

    fn apply<B: Backend, M: ModuleSnapshot<B>>(&self, mut module: M) -> Result<M, WeightsError> {
        let plan = self.plan_against(&expected_params(&module));
        if let Some((key, expected, found)) = plan.shape_mismatches.first() {
            return Err(WeightsError::ShapeMismatch {
                path: self.path.clone(),
                layout: self.layout.name(),
                key: key.clone(),
                expected: expected.clone(),
                found: found.clone(),
            });
        }
        if !plan.missing_keys.is_empty() {
            return Err(WeightsError::MissingKeys {
                path: self.path.clone(),
                keys: plan.missing_keys,
            });
        }
        let snapshots = plan
            .used
            .iter()
            .map(|(key, path)| as_f32_at(&self.raw.tensors[key], path))
            .collect();
        let result = module.apply(snapshots, None, Some(Box::new(PyTorchToBurnAdapter)), true);
        if let Some(error) = result.errors.first() {
            return Err(self.invalid(&format!("cannot load a tensor: {error}")));
        }
        if !result.missing.is_empty() {
            let keys = result
                .missing
                .iter()
                .map(|(p, _)| self.file_key_for(p))
                .collect();
            return Err(WeightsError::MissingKeys {
                path: self.path.clone(),
                keys,
            });
        }
        Ok(module)
    }
}

/// The snapshot renamed to a kdlab path, its data converted to f32 (files may hold f16/bf16).
fn as_f32_at(snapshot: &TensorSnapshot, path: &str) -> TensorSnapshot {
    let data_fn = snapshot.clone_data_fn();
    read::snapshot(
        Rc::new(move || Ok(data_fn()?.convert_dtype(DType::F32))),
        DType::F32,
        snapshot.shape.to_vec(),
        path,
    )
}
