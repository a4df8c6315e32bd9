//! Reading a command's input tensor from a safetensors file.

use std::path::Path;

use anyhow::{Context, bail};
use burn::tensor::{DType, TensorData};

/// Reads the tensor `name` as f32, whatever float type the file stores.
pub fn read_f32(path: &Path, name: &str) -> anyhow::Result<TensorData> {
    let bytes = kdlab_weightfile::read_regular(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let file = safetensors::SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{} is not a valid safetensors file", path.display()))?;
    let view = file.tensor(name).with_context(|| {
        format!(
            "{} has no tensor '{name}' (it has {:?})",
            path.display(),
            file.names()
        )
    })?;
    let dtype = match view.dtype() {
        safetensors::Dtype::F32 => DType::F32,
        safetensors::Dtype::F16 => DType::F16,
        safetensors::Dtype::BF16 => DType::BF16,
        safetensors::Dtype::F64 => DType::F64,
        other => bail!(
            "{}: tensor '{name}' is {other:?}; expected a float tensor",
            path.display()
        ),
    };
    let data = TensorData::from_bytes_vec(view.data().to_vec(), view.shape().to_vec(), dtype)
        .convert_dtype(DType::F32);
    // NaN or infinite pixels make every feature NaN: refused by name, not computed with.
    let values = data
        .as_slice::<f32>()
        .map_err(|e| anyhow::anyhow!("{}: tensor '{name}': {e:?}", path.display()))?;
    let mut bad = values.iter().enumerate().filter(|(_, v)| !v.is_finite());
    if let Some((first, value)) = bad.next() {
        bail!(
            "{}: tensor '{name}' holds {} non-finite value(s) (the first, {value}, at element \
             {first}); the inputs must be finite",
            path.display(),
            1 + bad.count()
        );
    }
    Ok(data)
}
