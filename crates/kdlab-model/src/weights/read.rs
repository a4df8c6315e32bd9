//! Reading tensors (names, shapes, lazy data) and any stored config from a weights file.
//!
//! `kdlab_weightfile` reads the file as the untrusted input it is (a pickle reader that runs
//! nothing, every tensor checked against the bytes the file holds, non-finite weights refused);
//! this module names its tensors as a state dict and hands them to burn-store as snapshots.

use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;

use burn::module::ParamId;
use burn::tensor::{DType, Shape, TensorData};
use burn_store::{TensorSnapshot, TensorSnapshotError};
use kdlab_weightfile::{Dtype, WeightFile};
use serde_json::Value;

use super::WeightsError;

/// A weights file as read: tensors by their key in the file, plus whatever config it carries.
pub struct RawWeights {
    /// Their data, read on demand, come as f32 (f16 and bf16 widened); a tensor of another
    /// dtype is listed (its shape tells the architecture) and refused when read.
    pub tensors: BTreeMap<String, TensorSnapshot>,
    /// Tensors kdlab must not load, with why (`is stored as int64; …`): checked before a model
    /// is built from them.
    pub refused: BTreeMap<String, String>,
    /// fairseq `cfg.model`, as plain JSON.
    pub fairseq_cfg: Option<Value>,
    /// safetensors `__metadata__`.
    pub metadata: BTreeMap<String, String>,
    pub format: FileFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    Pytorch,
    Safetensors,
}

/// Where a state dict may sit inside a PyTorch checkpoint dict.
const STATE_DICT_KEYS: [&str; 4] = ["model", "state_dict", "module", "model_state_dict"];

pub fn read_weights(path: &Path) -> Result<RawWeights, WeightsError> {
    let read_error = |message: String| WeightsError::Read {
        path: path.to_path_buf(),
        message,
    };
    let file = WeightFile::open(path).map_err(|e| read_error(e.to_string()))?;
    let format = match file.format {
        kdlab_weightfile::Format::Safetensors => FileFormat::Safetensors,
        _ => FileFormat::Pytorch,
    };
    // A checkpoint dict's state dict (`model.…`) is the model's; the rest (optimiser history,
    // EMA copies) is not.
    let prefix = STATE_DICT_KEYS
        .iter()
        .map(|k| format!("{k}."))
        .find(|p| file.tensors().any(|(k, _)| k.starts_with(p.as_str())))
        .filter(|_| format == FileFormat::Pytorch);
    let state_key = |key: &str| -> Option<String> {
        match &prefix {
            Some(p) => key.strip_prefix(p.as_str()).map(str::to_string),
            None => Some(key.to_string()),
        }
    };
    let mut tensors = BTreeMap::new();
    let mut refused = BTreeMap::new();
    for (key, info) in file.tensors() {
        let Some(name) = state_key(key) else {
            continue;
        };
        let dtype = match info.dtype {
            ref d if d.is_float_weight() => DType::F32,
            Dtype::F64 => DType::F64,
            Dtype::I64 => DType::I64,
            Dtype::I32 => DType::I32,
            Dtype::I16 => DType::I16,
            Dtype::I8 => DType::I8,
            _ => DType::U8,
        };
        if !info.dtype.is_float_weight() {
            refused.insert(
                name.clone(),
                format!(
                    "is stored as {}; kdlab reads weights stored as f32, f16 or bf16",
                    info.dtype
                ),
            );
        }
        let Some(reader) = file.reader(key) else {
            continue;
        };
        let shape = info.shape.clone();
        let data_fn = Rc::new(move || {
            reader
                .read_f32()
                .map(|values| TensorData::new(values, shape.clone()))
                .map_err(|e| TensorSnapshotError::DataError(e.to_string()))
        });
        tensors.insert(
            name.clone(),
            snapshot(data_fn, dtype, info.shape.clone(), &name),
        );
    }
    for (key, why) in file.unreadable() {
        if let Some(name) = state_key(key) {
            refused.insert(name, why.clone());
        }
    }
    let fairseq_cfg = if tensors.keys().any(|k| k.starts_with("modality_encoders.")) {
        file.pickle_value("cfg")
            .map_err(|e| read_error(format!("its 'cfg' cannot be read: {e}")))?
            .and_then(|cfg| cfg.get("model").cloned())
    } else {
        None
    };
    Ok(RawWeights {
        tensors,
        refused,
        fairseq_cfg,
        metadata: file.metadata.clone(),
        format,
    })
}

/// A snapshot named after the file's key, with lazily read data.
pub fn snapshot(
    data_fn: Rc<dyn Fn() -> Result<TensorData, TensorSnapshotError>>,
    dtype: DType,
    shape: Vec<usize>,
    key: &str,
) -> TensorSnapshot {
    TensorSnapshot::from_closure(
        data_fn,
        dtype,
        Shape::from(shape),
        key.split('.').map(str::to_string).collect(),
        vec![],
        ParamId::new(),
    )
}
