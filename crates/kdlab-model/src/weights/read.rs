//! Reading tensors (names, shapes, dtypes, lazy data) and any stored config from a weights file.
//!
//! PyTorch `.pth`/`.pt` files go through burn-store's pickle reader, which rebuilds only
//! containers and tensors and never executes pickled code. Safetensors go through the
//! `safetensors` crate.

use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use burn::module::ParamId;
use burn::tensor::{DType, Shape, TensorData};
use burn_store::pytorch::PytorchReader;
use burn_store::pytorch::reader::PickleValue;
use burn_store::{TensorSnapshot, TensorSnapshotError};
use serde_json::Value;

use super::WeightsError;
use crate::guard::quietly_catch;

/// A weights file as read: tensors by their key in the file, plus whatever config it carries.
pub struct RawWeights {
    pub tensors: BTreeMap<String, TensorSnapshot>,
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

pub fn read_weights(path: &Path) -> Result<RawWeights, WeightsError> {
    let read_error = |message: String| WeightsError::Read {
        path: path.to_path_buf(),
        message,
    };
    let mut head = [0u8; 16];
    let len = {
        use std::io::Read;
        let mut file = std::fs::File::open(path).map_err(|e| read_error(e.to_string()))?;
        file.read(&mut head)
            .map_err(|e| read_error(e.to_string()))?
    };
    if len == 0 {
        return Err(read_error("the file is empty".into()));
    }
    if looks_like_safetensors(&head[..len]) {
        read_safetensors(path)
    } else {
        read_pytorch(path)
    }
}

/// safetensors: 8-byte little-endian header length, then a JSON object.
fn looks_like_safetensors(head: &[u8]) -> bool {
    head.len() >= 9
        && head[8] == b'{'
        && u64::from_le_bytes(head[..8].try_into().unwrap_or([0; 8])) > 1
}

fn read_safetensors(path: &Path) -> Result<RawWeights, WeightsError> {
    let read_error = |message: String| WeightsError::Read {
        path: path.to_path_buf(),
        message,
    };
    let bytes = Arc::new(std::fs::read(path).map_err(|e| read_error(e.to_string()))?);
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| read_error(format!("not a valid safetensors file ({e})")))?;
    // Validates that every tensor lies inside the file (a truncated file fails here).
    let file = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| read_error(format!("not a valid safetensors file ({e})")))?;
    let mut tensors = BTreeMap::new();
    for (name, view) in file.tensors() {
        let dtype = match view.dtype() {
            safetensors::Dtype::F32 => DType::F32,
            safetensors::Dtype::F16 => DType::F16,
            safetensors::Dtype::BF16 => DType::BF16,
            safetensors::Dtype::F64 => DType::F64,
            safetensors::Dtype::I64 => DType::I64,
            safetensors::Dtype::I32 => DType::I32,
            safetensors::Dtype::U8 => DType::U8,
            safetensors::Dtype::BOOL => DType::Bool(burn::tensor::BoolStore::Native),
            other => {
                return Err(read_error(format!(
                    "tensor '{name}' has dtype {other:?}, which kdlab does not read"
                )));
            }
        };
        let shape = view.shape().to_vec();
        let start = view.data().as_ptr() as usize - bytes.as_ptr() as usize;
        let range = start..start + view.data().len();
        let bytes = Arc::clone(&bytes);
        let data_shape = shape.clone();
        let data_fn = Rc::new(move || {
            Ok(TensorData::from_bytes_vec(
                bytes[range.clone()].to_vec(),
                data_shape.clone(),
                dtype,
            ))
        });
        tensors.insert(name.clone(), snapshot(data_fn, dtype, shape, &name));
    }
    Ok(RawWeights {
        tensors,
        fairseq_cfg: None,
        metadata: metadata
            .metadata()
            .clone()
            .map(|m| m.into_iter().collect())
            .unwrap_or_default(),
        format: FileFormat::Safetensors,
    })
}

/// Where a state dict may sit inside a PyTorch checkpoint dict.
const STATE_DICT_KEYS: [&str; 4] = ["model", "state_dict", "module", "model_state_dict"];

fn read_pytorch(path: &Path) -> Result<RawWeights, WeightsError> {
    let read_error = |message: String| WeightsError::Read {
        path: path.to_path_buf(),
        message,
    };
    // The pickle reader is third-party code fed with user bytes: keep a panic from taking the
    // process down and report it as the unreadable file it is.
    let reader = quietly_catch(|| PytorchReader::new(path))
        .map_err(|panic| read_error(format!("not a readable PyTorch checkpoint ({panic})")))?
        .map_err(|e| read_error(format!("not a readable PyTorch checkpoint ({e})")))?;
    let all = reader.into_tensors();
    let prefix = STATE_DICT_KEYS
        .iter()
        .map(|k| format!("{k}."))
        .find(|p| all.keys().any(|k| k.starts_with(p.as_str())));
    let mut tensors = BTreeMap::new();
    for (key, snap) in all {
        match &prefix {
            Some(p) => {
                if let Some(inner) = key.strip_prefix(p.as_str()) {
                    tensors.insert(inner.to_string(), snap);
                }
            }
            None => {
                tensors.insert(key, snap);
            }
        }
    }
    let fairseq_cfg = if tensors.keys().any(|k| k.starts_with("modality_encoders.")) {
        quietly_catch(|| PytorchReader::read_pickle_data(path, Some("cfg")))
            .ok()
            .and_then(|r| r.ok())
            .map(pickle_to_json)
            .and_then(|cfg| cfg.get("model").cloned())
    } else {
        None
    };
    Ok(RawWeights {
        tensors,
        fairseq_cfg,
        metadata: BTreeMap::new(),
        format: FileFormat::Pytorch,
    })
}

fn pickle_to_json(value: PickleValue) -> Value {
    match value {
        PickleValue::None => Value::Null,
        PickleValue::Bool(b) => Value::Bool(b),
        PickleValue::Int(i) => Value::from(i),
        PickleValue::Float(f) => Value::from(f),
        PickleValue::String(s) => Value::String(s),
        PickleValue::List(items) => Value::Array(items.into_iter().map(pickle_to_json).collect()),
        PickleValue::Dict(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, pickle_to_json(v)))
                .collect(),
        ),
        PickleValue::Bytes(_) => Value::Null,
    }
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
