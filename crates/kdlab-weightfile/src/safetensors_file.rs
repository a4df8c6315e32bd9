//! safetensors: an 8-byte header length, a JSON header, the tensors' bytes. The `safetensors`
//! crate checks the header (its size, the offsets lying inside the file, lengths matching shape
//! and dtype); this module maps its dtypes and keeps the bytes for `read_f32`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;

use crate::elements::Dtype;
use crate::{Error, Format, Limits, Location, Source, TensorInfo, WeightFile};

/// An 8-byte little-endian header length, then a JSON object.
pub(crate) fn looks_like(head: &[u8]) -> bool {
    head.len() >= 9
        && head[8] == b'{'
        && u64::from_le_bytes(head[..8].try_into().unwrap_or([0; 8])) > 1
}

pub(crate) fn open(mut file: File, limits: Limits) -> Result<WeightFile, Error> {
    use std::io::Seek;
    file.rewind()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let invalid = |e: safetensors::SafeTensorError| {
        Error::invalid(format!("not a valid safetensors file ({e})"))
    };
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(invalid)?;
    let metadata = header
        .metadata()
        .clone()
        .map(|m| m.into_iter().collect())
        .unwrap_or_default();
    // Checks every tensor's offsets against the file and its shape and dtype.
    let parsed = safetensors::SafeTensors::deserialize(&bytes).map_err(invalid)?;
    let base = bytes.as_ptr() as usize;
    let mut tensors = BTreeMap::new();
    for (key, view) in parsed.tensors() {
        let start = view.data().as_ptr() as usize - base;
        tensors.insert(
            key,
            TensorInfo {
                dtype: dtype(view.dtype()),
                shape: view.shape().to_vec(),
                location: Location::Bytes {
                    start,
                    end: start + view.data().len(),
                },
            },
        );
    }
    Ok(WeightFile {
        format: Format::Safetensors,
        tensors,
        unreadable: BTreeMap::new(),
        metadata,
        pickle: None,
        limits,
        source: std::rc::Rc::new(Source::Safetensors(bytes)),
    })
}

fn dtype(dtype: safetensors::Dtype) -> Dtype {
    use safetensors::Dtype as S;
    match dtype {
        S::F32 => Dtype::F32,
        S::F16 => Dtype::F16,
        S::BF16 => Dtype::BF16,
        S::F64 => Dtype::F64,
        S::I64 => Dtype::I64,
        S::I32 => Dtype::I32,
        S::I16 => Dtype::I16,
        S::I8 => Dtype::I8,
        S::U8 => Dtype::U8,
        S::BOOL => Dtype::Bool,
        other => Dtype::Other(format!("{other:?}")),
    }
}
