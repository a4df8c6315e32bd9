//! Shared test helpers: fixtures, goldens and tolerances.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{DType, TensorData};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// All tensors of a safetensors file, as f32 (ints and f64 scalars converted).
pub fn read_all(path: &Path) -> BTreeMap<String, TensorData> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            let dtype = match view.dtype() {
                safetensors::Dtype::F32 => DType::F32,
                safetensors::Dtype::F64 => DType::F64,
                safetensors::Dtype::I64 => DType::I64,
                safetensors::Dtype::U8 => DType::U8,
                other => panic!("unexpected dtype {other:?}"),
            };
            let data =
                TensorData::from_bytes_vec(view.data().to_vec(), view.shape().to_vec(), dtype);
            (name, data)
        })
        .collect()
}

pub fn golden() -> BTreeMap<String, TensorData> {
    read_all(&fixture("golden_tiny.safetensors"))
}

pub fn to_f32(data: &TensorData) -> Vec<f32> {
    data.clone()
        .convert_dtype(DType::F32)
        .into_vec::<f32>()
        .unwrap()
}

/// Max |a − b| after checking the shapes agree.
pub fn max_abs_diff(name: &str, actual: &TensorData, expected: &TensorData) -> f32 {
    assert_eq!(actual.shape, expected.shape, "{name}: shape");
    to_f32(actual)
        .iter()
        .zip(to_f32(expected))
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

#[track_caller]
pub fn assert_close(name: &str, actual: &TensorData, expected: &TensorData, tolerance: f32) {
    let diff = max_abs_diff(name, actual, expected);
    assert!(
        diff <= tolerance,
        "{name}: max |Δ| = {diff:e} > {tolerance:e}"
    );
}

/// Writes f32 tensors into a safetensors file (with optional metadata).
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, Vec<u8>, safetensors::Dtype)],
    metadata: Option<std::collections::HashMap<String, String>>,
) {
    let views: Vec<_> = tensors
        .iter()
        .map(|(n, s, b, d)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, metadata, path).unwrap();
}

/// Every tensor of a safetensors file as (name, shape, bytes, dtype).
pub fn raw_tensors(path: &Path) -> Vec<(String, Vec<usize>, Vec<u8>, safetensors::Dtype)> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<_> = file
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec(), v.dtype()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}
