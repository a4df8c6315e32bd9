//! Writing f32 tensors as safetensors, atomically (temporary file + rename), so a crash never
//! leaves a half-written output or checkpoint.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use burn::tensor::TensorData;

/// Writes next to `path` and renames, so a reader never sees a half-written file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp: PathBuf = {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(".tmp");
        path.with_file_name(name)
    };
    // A part written before a full disk stopped it is removed: only whole files are left.
    let written = std::fs::write(&tmp, bytes)
        .with_context(|| format!("cannot write {}", tmp.display()))
        .and_then(|()| {
            std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
        });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// f32 tensors by name, with optional `__metadata__`.
pub fn write_f32_tensors(
    path: &Path,
    tensors: &[(String, TensorData)],
    metadata: Option<HashMap<String, String>>,
) -> anyhow::Result<()> {
    let views = tensors
        .iter()
        .map(|(name, data)| {
            safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                data.shape.to_vec(),
                data.as_bytes(),
            )
            .map(|view| (name.clone(), view))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bytes = safetensors::serialize(views, metadata)?;
    write_atomically(path, &bytes)
}
