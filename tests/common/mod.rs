//! Shared test helpers: fixtures, goldens and tolerances.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{DType, TensorData};
use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

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

pub const CLASSES: [&str; 4] = ["blue", "green", "red", "stripes"];

/// A side×side image of `kind`: a noisy solid colour, or noisy black-and-white vertical stripes.
pub fn synthetic_image(kind: usize, side: u32, rng: &mut ChaCha8Rng) -> RgbImage {
    let brightness = rng.random_range(0.6..1.0);
    let phase = rng.random_range(0..4);
    RgbImage::from_fn(side, side, |x, _| {
        let mut noise = || rng.random_range(-30i32..30);
        let base: [f32; 3] = match kind {
            0 => [30.0, 40.0, 220.0],
            1 => [40.0, 200.0, 50.0],
            2 => [210.0, 40.0, 30.0],
            _ if (x + phase) % 4 < 2 => [230.0; 3],
            _ => [20.0; 3],
        };
        Rgb(base.map(|v| ((v * brightness) as i32 + noise()).clamp(0, 255) as u8))
    })
}

/// `<root>/{train,val}/<class>/NN.png`; with `shuffled`, the folder an image lands in is drawn
/// independently of what it shows.
pub fn synthetic_folders(
    root: &Path,
    train_per_class: usize,
    val_per_class: usize,
    shuffled: bool,
) -> (PathBuf, PathBuf) {
    let mut rng = ChaCha8Rng::seed_from_u64(if shuffled { 11 } else { 5 });
    for (split, per_class) in [("train", train_per_class), ("val", val_per_class)] {
        for (kind, _) in CLASSES.iter().enumerate() {
            for i in 0..per_class {
                let label = if shuffled {
                    rng.random_range(0..CLASSES.len())
                } else {
                    kind
                };
                let dir = root.join(split).join(CLASSES[label]);
                std::fs::create_dir_all(&dir).unwrap();
                synthetic_image(kind, 24, &mut rng)
                    .save(dir.join(format!("{kind}-{i:02}.png")))
                    .unwrap();
            }
        }
    }
    (root.join("train"), root.join("val"))
}
