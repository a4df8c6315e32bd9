//! Frozen features of a labelled image set: one forward pass per image (validation transform),
//! pooled from the last hidden state, kept on disk so that a second method or a rerun with other
//! probe settings costs no forward pass at all.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::settings::Pooling;
use crate::data::loader::{LoaderSettings, Transform, spawn_epoch};
use crate::data::{ImageSource, Normalization, validation_transform_with};
use crate::session::Interrupted;
use kdlab_model::model::Encoder;

/// Pooled features `[len, dim]` row-major and the class of each row.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureSet {
    pub dim: usize,
    pub values: Vec<f32>,
    pub labels: Vec<usize>,
    /// Images that could not be decoded, with the reason; they have no row.
    pub skipped: Vec<(PathBuf, String)>,
}

impl FeatureSet {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// The image feature the protocol uses, `[B, D]`, from the last hidden state `[B, P + N, D]`
/// with `prefix` = P tokens (CLS first, then registers) before the patches.
pub fn pool<B: Backend>(
    last_hidden: Tensor<B, 3>,
    pooling: Pooling,
    prefix: usize,
) -> Tensor<B, 2> {
    let [batch, tokens, dim] = last_hidden.dims();
    match pooling {
        Pooling::MeanPatch => last_hidden
            .narrow(1, prefix, tokens - prefix)
            .mean_dim(1)
            .reshape([batch, dim]),
        Pooling::Cls => last_hidden.narrow(1, 0, 1).reshape([batch, dim]),
    }
}

pub struct Extraction<'a, B: Backend> {
    pub encoder: &'a Encoder<B>,
    pub image_size: usize,
    pub normalization: Normalization,
    pub pooling: Pooling,
    pub batch_size: usize,
    pub workers: usize,
    pub device: &'a B::Device,
    pub stop: &'a AtomicBool,
}

impl<B: Backend> Extraction<'_, B> {
    /// Features of every image of `source`, in order; `progress(done, total)` after each batch.
    pub fn run(
        &self,
        source: Arc<dyn ImageSource>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> anyhow::Result<FeatureSet> {
        let total = source.len();
        let size = self.image_size as u32;
        let norm = self.normalization;
        let transform: Transform =
            Arc::new(move |img, _rng| validation_transform_with(img, size, norm));
        let settings = LoaderSettings::in_order(self.batch_size, self.workers);
        let order: Vec<usize> = (0..total).collect();
        let mut set = FeatureSet {
            dim: 0,
            values: Vec::new(),
            labels: Vec::new(),
            skipped: Vec::new(),
        };
        let mut done = 0;
        for batch in spawn_epoch(source, order, 0, 0, &settings, transform) {
            if self.stop.load(Ordering::Relaxed) {
                return Err(Interrupted.into());
            }
            done += batch.len + batch.skipped.len();
            set.skipped.extend(batch.skipped);
            if batch.len > 0 {
                let s = self.image_size;
                let images = Tensor::<B, 4>::from_data(
                    TensorData::new(batch.pixels, [batch.len, 3, s, s]),
                    self.device,
                );
                let features = pool(
                    self.encoder.forward(images).last_hidden,
                    self.pooling,
                    self.encoder.tokens().prefix(),
                );
                set.dim = features.dims()[1];
                set.values.extend(
                    features
                        .into_data()
                        .convert::<f32>()
                        .into_vec::<f32>()
                        .map_err(|e| anyhow::anyhow!("reading features back: {e:?}"))?,
                );
                set.labels.extend(batch.labels);
            }
            progress(done, total);
        }
        anyhow::ensure!(
            !set.is_empty(),
            "none of the {total} images could be read (first: {})",
            set.skipped
                .first()
                .map_or_else(String::new, |(p, why)| format!("{}: {why}", p.display()))
        );
        Ok(set)
    }
}

/// Feature files in a folder, each found by a key that names everything the features depend on.
pub struct FeatureCache {
    pub dir: PathBuf,
}

impl FeatureCache {
    fn file(&self, key: &str) -> PathBuf {
        // The file name only spreads keys over files; the full key inside decides a hit.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut hasher);
        self.dir
            .join(format!("features-{:016x}.safetensors", hasher.finish()))
    }

    /// The features stored under `key`, if any; an unreadable file is a miss, not an error.
    pub fn load(&self, key: &str) -> Option<FeatureSet> {
        let bytes = std::fs::read(self.file(key)).ok()?;
        let tensors = safetensors::SafeTensors::deserialize(&bytes).ok()?;
        let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).ok()?;
        let metadata = metadata.metadata().as_ref()?;
        if metadata.get("key").map(String::as_str) != Some(key) {
            return None;
        }
        let floats = |name: &str| -> Option<(Vec<usize>, Vec<f32>)> {
            let view = tensors.tensor(name).ok()?;
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            Some((view.shape().to_vec(), values))
        };
        let (shape, values) = floats("features")?;
        let (_, labels) = floats("labels")?;
        let skipped: Vec<(PathBuf, String)> =
            serde_json::from_str(metadata.get("skipped")?).ok()?;
        (shape.len() == 2 && shape[0] == labels.len()).then(|| FeatureSet {
            dim: shape[1],
            values,
            labels: labels.into_iter().map(|l| l as usize).collect(),
            skipped,
        })
    }

    pub fn store(&self, key: &str, set: &FeatureSet) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        let path = self.file(key);
        // Labels as f32 are exact far beyond any class count.
        let labels: Vec<f32> = set.labels.iter().map(|&l| l as f32).collect();
        let tensors = [
            (
                "features".to_string(),
                TensorData::new(set.values.clone(), [set.len(), set.dim]),
            ),
            ("labels".to_string(), TensorData::new(labels, [set.len()])),
        ];
        let metadata = HashMap::from([
            ("key".to_string(), key.to_string()),
            ("skipped".to_string(), serde_json::to_string(&set.skipped)?),
        ]);
        kdlab_model::weights::write::write_f32_tensors(&path, &tensors, Some(metadata))?;
        Ok(path)
    }
}

/// What identifies a file's contents well enough for a cache: path, size and modification time.
pub fn file_fingerprint(path: &Path) -> String {
    let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let meta = std::fs::metadata(path).ok();
    let modified = meta
        .as_ref()
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!(
        "{} ({} bytes, modified {modified})",
        canonical.display(),
        meta.map_or(0, |m| m.len())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn mean_patch_pooling_leaves_out_the_cls_token() {
        let device = Default::default();
        // Two tokens of width 2 after CLS: [CLS=100, (1,2), (3,4)].
        let x = Tensor::<Flex, 3>::from_data([[[100.0, 100.0], [1.0, 2.0], [3.0, 4.0]]], &device);
        let mean = pool(x.clone(), Pooling::MeanPatch, 1).into_data();
        assert_eq!(mean.to_vec::<f32>().unwrap(), [2.0, 3.0]);
        let cls = pool(x, Pooling::Cls, 1).into_data();
        assert_eq!(cls.to_vec::<f32>().unwrap(), [100.0, 100.0]);
    }

    #[test]
    fn the_cache_returns_what_was_stored_under_the_same_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FeatureCache {
            dir: dir.path().join("features"),
        };
        let set = FeatureSet {
            dim: 2,
            values: vec![1.0, 2.0, 3.0, 4.0],
            labels: vec![0, 7],
            skipped: vec![(PathBuf::from("bad.jpg"), "truncated".into())],
        };
        cache.store("model a; data b", &set).unwrap();
        assert_eq!(cache.load("model a; data b"), Some(set));
        assert_eq!(cache.load("model a; data c"), None);
    }
}
