//! Loading the published checkpoints: layout detection, architecture inference, key mapping and
//! shape checks, then burn-store applies the tensors.

pub mod expected;
pub mod layout;
pub mod read;
pub mod timm_vit;
pub mod write;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use burn::backend::Flex;
use burn::tensor::DType;
use burn::tensor::backend::Backend;
use burn_store::{ModuleSnapshot, PyTorchToBurnAdapter, TensorSnapshot, TensorSnapshotError};

use crate::model::generator::{materialize, unseeded};
use crate::model::{BeitV2, BlockSelection, Data2Vec2, Encoder, Vit};
use expected::{ExpectedParam, expected_params};
pub use layout::{Architecture, KeyTarget, Layout};
pub use read::RawWeights;
pub use timm_vit::{Preprocessing, TimmConfig};

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("cannot read weights file {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error(
        "{path} is not a checkpoint kdlab knows: expected a unilm BEiT v2 .pth, a timm BEiT v2 \
         safetensors, a fairseq data2vec 2.0 .pt, a timm ViT/DeiT/DINOv2/DINOv3 safetensors or a \
         kdlab file; its first keys are {first_keys:?}"
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
    /// The input size and normalisation timm's `config.json` states (`pretrained_cfg`).
    pub preprocessing: Option<Preprocessing>,
    raw: RawWeights,
}

impl Checkpoint {
    pub fn open(path: impl AsRef<Path>) -> Result<Self, WeightsError> {
        let path = path.as_ref();
        let raw = read::read_weights(path)?;
        // Only a timm ViT reads its config.json: a stray one beside another layout is no concern.
        let config = if layout::detect_layout(&raw) == Some(Layout::VitTimm) {
            TimmConfig::find(path).map_err(|message| WeightsError::Invalid {
                path: path.to_path_buf(),
                message,
            })?
        } else {
            None
        };
        Self::from_raw_with_config(path, raw, config)
    }

    /// From tensors already read (or described, as the full-size key manifests are).
    pub fn from_raw(path: &Path, raw: RawWeights) -> Result<Self, WeightsError> {
        Self::from_raw_with_config(path, raw, None)
    }

    /// From tensors already read and the timm `config.json` that goes with them.
    pub fn from_raw_with_config(
        path: &Path,
        raw: RawWeights,
        config: Option<TimmConfig>,
    ) -> Result<Self, WeightsError> {
        let layout = layout::detect_layout(&raw).ok_or_else(|| WeightsError::UnknownLayout {
            path: path.to_path_buf(),
            first_keys: raw.tensors.keys().take(8).cloned().collect(),
        })?;
        let architecture_error = |message| WeightsError::Architecture {
            path: path.to_path_buf(),
            layout: layout.name(),
            message,
        };
        let architecture = layout::infer_architecture(layout, &raw, config.as_ref())
            .map_err(architecture_error)?;
        let preprocessing = match &config {
            Some(c) => c.preprocessing().map_err(architecture_error)?,
            None => None,
        };
        Ok(Self {
            path: path.to_path_buf(),
            layout,
            architecture,
            preprocessing,
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
            Architecture::Vit(c) => expected_params(&c.init::<Flex>(&device)),
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
            Architecture::Vit(c) => {
                timm_vit::file_key(path, self.layout == Layout::VitTimm && c.family.is_eva())
            }
        }
    }

    /// Loads the teacher. Fails unless the file is a BEiT v2 checkpoint.
    pub fn load_beit_v2<B: Backend>(&self, device: &B::Device) -> Result<BeitV2<B>, WeightsError> {
        match &self.architecture {
            Architecture::BeitV2(config) => {
                unseeded(|| self.apply(config.init(device)).map(materialize))
            }
            other => Err(self.invalid(&format!(
                "is a {} checkpoint, not a BEiT v2 one",
                other.family()
            ))),
        }
    }

    /// Loads the data2vec 2.0 encoder and keeps the selected main blocks.
    pub fn load_data2vec2<B: Backend>(
        &self,
        selection: BlockSelection,
        device: &B::Device,
    ) -> Result<Data2Vec2<B>, WeightsError> {
        let Architecture::Data2Vec2(config) = &self.architecture else {
            return Err(self.invalid(&format!(
                "is a {} checkpoint, not a data2vec 2.0 one",
                self.architecture.family()
            )));
        };
        let keep = selection
            .main_blocks(config.prenet_depth, config.depth)
            .map_err(|message| self.invalid(&message))?;
        let model = unseeded(|| self.apply(config.init(device)).map(materialize))?;
        Ok(model.select_main_blocks(&keep))
    }

    /// Loads whichever encoder the file holds; `selection` applies to data2vec 2.0 only (the
    /// teacher's blocks are cut with `load_encoder_blocks`).
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
            (Architecture::Vit(_), selection) => {
                let keep = selection.map(|s| self.selected_blocks(s)).transpose()?;
                self.load_encoder_blocks(keep.as_deref(), None, device)
            }
        }
    }

    /// The blocks a selection keeps of this file's selectable blocks (data2vec 2.0: the main
    /// blocks; the prenet is always kept).
    pub fn selected_blocks(&self, selection: BlockSelection) -> Result<Vec<usize>, WeightsError> {
        selection
            .main_blocks(self.architecture.prenet_depth(), self.architecture.depth())
            .map_err(|message| self.invalid(&message))
    }

    /// Loads whichever encoder the file holds, keeping the blocks `keep` (of the selectable
    /// ones, in that order; all when `None`), to run at `image_size` (a timm ViT's learned
    /// positions are resampled once here; the others run at their own size only).
    pub fn load_encoder_blocks<B: Backend>(
        &self,
        keep: Option<&[usize]>,
        image_size: Option<usize>,
        device: &B::Device,
    ) -> Result<Encoder<B>, WeightsError> {
        let depth = self.architecture.depth();
        let all: Vec<usize> = (0..depth).collect();
        let keep = keep.unwrap_or(&all);
        if keep.is_empty() {
            return Err(self.invalid("a block selection must keep at least one block"));
        }
        if let Some(&bad) = keep.iter().find(|&&i| i >= depth) {
            return Err(self.invalid(&format!(
                "block {bad} does not exist: the model has blocks 0..{depth}"
            )));
        }
        let own_size = self.architecture.image_size();
        let patch = self.architecture.patch_size();
        if let Some(size) = image_size {
            if size == 0 || !size.is_multiple_of(patch) {
                return Err(self.invalid(&format!(
                    "image size {size} is not a positive multiple of the patch size {patch}"
                )));
            }
            if size != own_size && !self.architecture.runs_at_any_size() {
                return Err(self.invalid(&format!(
                    "a {} model runs at its own size {own_size} px only (its positions belong \
                     to that grid), asked for {size} px",
                    self.architecture.family()
                )));
            }
        }
        Ok(match &self.architecture {
            Architecture::BeitV2(_) => {
                Encoder::BeitV2(self.load_beit_v2(device)?.select_blocks(keep))
            }
            Architecture::Data2Vec2(config) => {
                let model = unseeded(|| self.apply(config.init(device)).map(materialize))?;
                Encoder::Data2Vec2(model.select_main_blocks(keep))
            }
            Architecture::Vit(config) => {
                let model: Vit<B> = unseeded(|| self.apply(config.init(device)).map(materialize))?;
                let grid = image_size.unwrap_or(own_size) / patch;
                Encoder::Vit(model.select_blocks(keep).with_position_grid(grid))
            }
        })
    }

    /// Whether the file holds a width connector (a kdlab checkpoint of a narrower student).
    pub fn has_connector(&self) -> bool {
        self.raw.tensors.contains_key("connector.weight")
    }

    /// The width connector a kdlab checkpoint of a student holds (`connector.weight`
    /// `[D_t, D_s]`, `connector.bias` `[D_t]`), if any.
    pub fn load_connector<B: Backend>(
        &self,
        device: &B::Device,
    ) -> Result<Option<burn::nn::Linear<B>>, WeightsError> {
        let (Some(weight), bias) = (
            self.raw.tensors.get("connector.weight"),
            self.raw.tensors.get("connector.bias"),
        ) else {
            return Ok(None);
        };
        let width = self.architecture.embed_dim();
        let teacher = match weight.shape.as_slice() {
            &[t, s] if s == width => t,
            other => {
                return Err(self.invalid(&format!(
                    "'connector.weight' should be [D_teacher, {width}], found {other:?}"
                )));
            }
        };
        let Some(bias) = bias.filter(|b| b.shape.as_slice() == [teacher]) else {
            return Err(self.invalid(&format!(
                "'connector.bias' should be [{teacher}] beside 'connector.weight'"
            )));
        };
        let read = |snapshot: &TensorSnapshot| {
            snapshot.to_data().map_err(|e| match e {
                TensorSnapshotError::DataError(m) | TensorSnapshotError::IoError(m) => {
                    self.invalid(&m)
                }
                other => self.invalid(&format!("cannot read the connector: {other}")),
            })
        };
        let weight = burn::tensor::Tensor::<B, 2>::from_data(read(weight)?, device);
        let bias = burn::tensor::Tensor::<B, 1>::from_data(read(bias)?, device);
        Ok(Some(burn::nn::Linear {
            // PyTorch [out, in] → burn [in, out]
            weight: burn::module::Param::from_tensor(weight.transpose()),
            bias: Some(burn::module::Param::from_tensor(bias)),
        }))
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
        if let Some((key, why)) = plan
            .used
            .keys()
            .find_map(|key| self.raw.refused.get_key_value(key))
        {
            return Err(self.invalid(&format!("key '{key}' {why}")));
        }
        // The reader's own message (key, what is wrong), kept aside: burn-store reports a data
        // error through its Debug form.
        let first_data_error = Rc::new(RefCell::new(None));
        let snapshots = plan
            .used
            .iter()
            .map(|(key, path)| as_f32_at(&self.raw.tensors[key], path, &first_data_error))
            .collect();
        let result = module.apply(snapshots, None, Some(Box::new(PyTorchToBurnAdapter)), true);
        if let Some(message) = first_data_error.borrow_mut().take() {
            return Err(self.invalid(&message));
        }
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

/// The snapshot renamed to a kdlab path, its data converted to f32 (files may hold f16/bf16);
/// the first error reading data is also kept in `first_error`.
fn as_f32_at(
    snapshot: &TensorSnapshot,
    path: &str,
    first_error: &Rc<RefCell<Option<String>>>,
) -> TensorSnapshot {
    let data_fn = snapshot.clone_data_fn();
    let first_error = Rc::clone(first_error);
    read::snapshot(
        Rc::new(move || match data_fn() {
            Ok(data) => Ok(data.convert_dtype(DType::F32)),
            Err(e) => {
                let message = match &e {
                    TensorSnapshotError::DataError(m) | TensorSnapshotError::IoError(m) => {
                        m.clone()
                    }
                    other => other.to_string(),
                };
                first_error.borrow_mut().get_or_insert(message);
                Err(e)
            }
        }),
        DType::F32,
        snapshot.shape.to_vec(),
        path,
    )
}
