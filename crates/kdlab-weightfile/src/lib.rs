//! Weights files read as the untrusted input they are.
//!
//! A `.pth`/`.pt` is a zip (PyTorch ≥ 1.6) or a legacy stream of pickles and storages; either way
//! its structure is a pickle, and a pickle is a program. This crate runs none of it: `pickle`
//! rebuilds only containers, numbers, strings and the descriptions of tensors, without recursion,
//! with memo entries shared rather than copied, and within a budget of bytes and objects. Every
//! tensor is then checked against the file before anything is read: its storage is there and
//! holds what it declares, its view (offset, shape, strides) lies inside it without overlapping
//! itself, and its dtype is named. Data are read only on demand, only the bytes a tensor needs,
//! strides honoured, and refused when not finite. safetensors files go through the `safetensors`
//! crate, which checks their offsets, and the same dtype and finiteness rules.
//!
//! Errors name what they are about (the tensor's key, the zip entry, the opcode and its offset);
//! the caller adds the file's path.

mod elements;
pub mod pickle;
mod regular;
mod safetensors_file;
mod torch;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::rc::Rc;

pub use elements::Dtype;
pub use regular::{open_regular, read_regular, read_regular_to_string};

/// What a file may make the reader build, at most. Real checkpoints stay far below: the largest
/// fairseq pickle (model, cfg, optimiser history) holds about 20,000 objects in 2 MB.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of one pickle.
    pub pickle_bytes: u64,
    /// Objects one pickle may create or push (values, container items, stack entries).
    pub pickle_objects: usize,
    /// How deep containers may nest where the reader walks them (the tensors, a config).
    pub depth: usize,
    /// Objects a walk may visit (a shared object is visited once per reference).
    pub visits: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            pickle_bytes: 256 << 20,
            pickle_objects: 8 << 20,
            depth: 100,
            visits: 4 << 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The file's structure (container, pickle) breaks a rule.
    #[error("{0}")]
    Invalid(String),
    /// One tensor breaks a rule.
    #[error("tensor '{key}' {message}")]
    Tensor { key: String, message: String },
}

impl Error {
    fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }
}

/// Which kind of file it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// PyTorch ≥ 1.6: a zip of `data.pkl` and one entry per storage.
    PytorchZip,
    /// PyTorch < 1.6: pickles, then the storages one after the other.
    PytorchLegacy,
    Safetensors,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::PytorchZip => "PyTorch zip checkpoint",
            Self::PytorchLegacy => "PyTorch legacy (pre-1.6) checkpoint",
            Self::Safetensors => "safetensors file",
        })
    }
}

/// A tensor as the file describes it; its data are read by `WeightFile::read_f32`.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    location: Location,
}

/// Where a tensor's elements are, already checked against the file.
#[derive(Debug, Clone)]
enum Location {
    /// A view of a PyTorch storage: element offset and strides, in elements.
    Storage {
        storage: torch::StorageId,
        offset: u64,
        strides: Vec<u64>,
    },
    /// A contiguous byte range of a safetensors file.
    Bytes { start: usize, end: usize },
}

/// A weights file, opened and checked; tensor data are read on demand.
pub struct WeightFile {
    pub format: Format,
    tensors: BTreeMap<String, TensorInfo>,
    /// Tensors present in the file that kdlab cannot read (quantised, sparse, …), with why.
    unreadable: BTreeMap<String, String>,
    /// A safetensors file's `__metadata__`.
    pub metadata: BTreeMap<String, String>,
    /// A PyTorch file's pickle (its root object), for the values beside the tensors.
    pickle: Option<pickle::Pickle>,
    limits: Limits,
    source: Rc<Source>,
}

/// What tensor data are read from.
enum Source {
    Torch(torch::Storages),
    Safetensors(Vec<u8>),
}

impl WeightFile {
    pub fn open(path: &Path) -> Result<Self, Error> {
        Self::open_with(path, Limits::default())
    }

    pub fn open_with(path: &Path, limits: Limits) -> Result<Self, Error> {
        let mut file = open_regular(path)?;
        let mut head = [0u8; 16];
        let len = read_head(&mut file, &mut head)?;
        let head = &head[..len];
        if len == 0 {
            return Err(Error::invalid("the file is empty"));
        }
        if safetensors_file::looks_like(head) {
            safetensors_file::open(file, limits)
        } else if head.starts_with(b"PK\x03\x04") {
            torch::open_zip(file, limits)
        } else if torch::looks_legacy(head) {
            torch::open_legacy(file, limits)
        } else {
            Err(Error::invalid(format!(
                "not a PyTorch checkpoint (zip or legacy) nor a safetensors file: it begins with \
                 {}",
                printable(head)
            )))
        }
    }

    /// The tensors kdlab can read, by key (nested dicts joined with `.`), in key order.
    pub fn tensors(&self) -> impl Iterator<Item = (&str, &TensorInfo)> {
        self.tensors.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn tensor(&self, key: &str) -> Option<&TensorInfo> {
        self.tensors.get(key)
    }

    /// Tensors the file holds in a form kdlab does not read, with the reason.
    pub fn unreadable(&self) -> &BTreeMap<String, String> {
        &self.unreadable
    }

    /// A tensor's elements as f32 (f16 and bf16 widened), refused unless its dtype is f32, f16
    /// or bf16 and every element is finite.
    pub fn read_f32(&self, key: &str) -> Result<Vec<f32>, Error> {
        self.reader(key)
            .ok_or_else(|| Error::Tensor {
                key: key.to_string(),
                message: "is not in the file".into(),
            })?
            .read_f32()
    }

    /// A handle that reads one tensor later (it keeps the file open).
    pub fn reader(&self, key: &str) -> Option<TensorReader> {
        let info = self.tensors.get(key)?.clone();
        Some(TensorReader {
            key: key.to_string(),
            info,
            source: Rc::clone(&self.source),
        })
    }

    /// The value under `key` of the pickle's top-level dict, as JSON (containers, numbers,
    /// strings, booleans; anything else is null), if the file is a pickle that has one.
    pub fn pickle_value(&self, key: &str) -> Result<Option<serde_json::Value>, Error> {
        match &self.pickle {
            Some(p) => p.root_entry_json(key, &self.limits),
            None => Ok(None),
        }
    }
}

impl fmt::Debug for WeightFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeightFile")
            .field("format", &self.format)
            .field("tensors", &self.tensors.len())
            .field("unreadable", &self.unreadable)
            .finish_non_exhaustive()
    }
}

/// One tensor of a `WeightFile`, readable on its own.
#[derive(Clone)]
pub struct TensorReader {
    key: String,
    info: TensorInfo,
    source: Rc<Source>,
}

impl TensorReader {
    pub fn read_f32(&self) -> Result<Vec<f32>, Error> {
        let tensor_error = |message: String| Error::Tensor {
            key: self.key.clone(),
            message,
        };
        let dtype = &self.info.dtype;
        if !dtype.is_float_weight() {
            return Err(tensor_error(format!(
                "is stored as {dtype}; kdlab reads weights stored as f32, f16 or bf16"
            )));
        }
        let bytes = match (&*self.source, &self.info.location) {
            (
                Source::Torch(storages),
                Location::Storage {
                    storage,
                    offset,
                    strides,
                },
            ) => storages
                .read_view(*storage, *offset, &self.info.shape, strides)
                .map_err(|e| match e {
                    Error::Io(io) => tensor_error(format!("cannot be read: {io}")),
                    other => other,
                })?,
            (Source::Safetensors(file), Location::Bytes { start, end }) => {
                file[*start..*end].to_vec()
            }
            _ => unreachable!("a tensor's location comes from its own file"),
        };
        elements::finite_f32(dtype, &bytes).map_err(tensor_error)
    }
}

fn read_head(file: &mut std::fs::File, head: &mut [u8]) -> std::io::Result<usize> {
    use std::io::Read;
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// The first bytes of a file, as text where they are text.
fn printable(head: &[u8]) -> String {
    let text: String = head
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                (b as char).to_string()
            } else {
                format!("\\x{b:02x}")
            }
        })
        .collect();
    format!("\"{text}\"")
}
