//! Weighted k-nearest-neighbour classification of frozen features, as DINO's `eval_knn.py`:
//! cosine similarity to every training feature, the k most similar vote for their class with
//! weight exp(similarity / T).
//!
//! Features are first put through a parameter-free LayerNorm (the thesis' protocol: pooled
//! tokens → LayerNorm), then scaled to unit length so that the dot product is the cosine.

use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::features::FeatureSet;
use super::metrics::rank_classes;
use super::settings::KnnSettings;
use crate::session::Interrupted;

/// LayerNorm's epsilon in BEiT's and timm's `fc_norm` (`partial(nn.LayerNorm, eps=1e-6)`).
pub const NORM_EPS: f64 = 1e-6;

/// Rows of similarities computed at once: about 256 MiB of f32 per block.
const SIMILARITY_BLOCK: usize = 1 << 26;

/// `[n, dim]` features → LayerNorm over dim (no affine) → unit L2 norm, on the device.
pub fn normalised<B: Backend>(set: &FeatureSet, device: &B::Device) -> Tensor<B, 2> {
    let x = Tensor::<B, 2>::from_data(
        TensorData::new(set.values.clone(), [set.len(), set.dim]),
        device,
    );
    let (var, mean) = x.clone().var_mean_bias(1);
    let x = (x - mean) / (var + NORM_EPS).sqrt();
    let norm = x.clone().square().sum_dim(1).sqrt().clamp_min(1e-12);
    x / norm
}

/// For each validation feature, the classes by decreasing vote (at most five).
pub fn knn_rankings<B: Backend>(
    train: &FeatureSet,
    val: &FeatureSet,
    classes: usize,
    settings: &KnnSettings,
    device: &B::Device,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(usize, usize),
) -> anyhow::Result<Vec<Vec<usize>>> {
    anyhow::ensure!(
        train.dim == val.dim,
        "training features have {} dimensions but validation features {}",
        train.dim,
        val.dim
    );
    let k = settings.k.min(train.len());
    let train_t = normalised::<B>(train, device).transpose(); // [D, N]
    let val_x = normalised::<B>(val, device);
    let rows = (SIMILARITY_BLOCK / train.len().max(1)).clamp(1, 1024);
    let mut rankings = Vec::with_capacity(val.len());
    let mut start = 0;
    while start < val.len() {
        if stop.load(Ordering::Relaxed) {
            return Err(Interrupted.into());
        }
        let len = rows.min(val.len() - start);
        let similarity = val_x.clone().narrow(0, start, len).matmul(train_t.clone()); // [len, N]
        let (values, indices) = similarity.topk_with_indices(k, 1);
        let values = values
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("reading similarities back: {e:?}"))?;
        let indices = indices
            .into_data()
            .convert::<i64>()
            .into_vec::<i64>()
            .map_err(|e| anyhow::anyhow!("reading neighbour indices back: {e:?}"))?;
        for (sims, neighbours) in values.chunks_exact(k).zip(indices.chunks_exact(k)) {
            let mut votes = vec![0f32; classes];
            for (&similarity, &neighbour) in sims.iter().zip(neighbours) {
                let class = train.labels[neighbour as usize];
                votes[class] += (f64::from(similarity) / settings.temperature).exp() as f32;
            }
            rankings.push(rank_classes(&votes, 5));
        }
        start += len;
        progress(start, val.len());
    }
    Ok(rankings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    fn set(rows: &[[f32; 3]], labels: &[usize]) -> FeatureSet {
        FeatureSet {
            dim: 3,
            values: rows.iter().flatten().copied().collect(),
            labels: labels.to_vec(),
            skipped: Vec::new(),
        }
    }

    #[test]
    fn the_nearer_weighted_neighbours_outvote_the_many_far_ones() {
        // Class 0 points along +x, class 1 along +y (after LayerNorm, which centres each row).
        let train = set(
            &[
                [5.0, 0.0, 0.0],
                [4.0, 0.1, 0.0],
                [0.0, 5.0, 0.0],
                [0.1, 4.0, 0.0],
                [0.0, 3.0, 0.2],
            ],
            &[0, 0, 1, 1, 1],
        );
        let val = set(&[[3.0, 0.2, 0.1], [0.1, 3.0, 0.0]], &[0, 1]);
        let settings = KnnSettings {
            k: 5,
            temperature: 0.07,
        };
        let device = Default::default();
        let stop = AtomicBool::new(false);
        let rankings =
            knn_rankings::<Flex>(&train, &val, 2, &settings, &device, &stop, &mut |_, _| {})
                .unwrap();
        assert_eq!(rankings, [vec![0, 1], vec![1, 0]]);
    }

    #[test]
    fn normalised_rows_have_zero_mean_and_unit_length() {
        let x = normalised::<Flex>(&set(&[[1.0, 2.0, 6.0]], &[0]), &Default::default());
        let v = x.into_data().to_vec::<f32>().unwrap();
        assert!(v.iter().sum::<f32>().abs() < 1e-6);
        assert!((v.iter().map(|a| a * a).sum::<f32>() - 1.0).abs() < 1e-5);
    }
}
