//! Where each model looks: the CLS token's attention over the patches, per head, in the last
//! block (DINO's `visualize_attention.py`, unilm BEiT's: `attentions[0, :, 0, 1:]`), and
//! attention rollout over all blocks (Abnar & Zuidema 2020, "Quantifying Attention Flow in
//! Transformers"; as vit-explain's `rollout`: heads averaged, `(A + I) / 2` with rows
//! renormalised, multiplied from the first block to the last, the CLS row over the patches).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use image::RgbImage;
use kdlab_model::model::resample::Interpolation;

use super::colormap::{Colormap, ValueRange};
use super::render::{colour_bar, figure, overlay};

/// One model's attention maps for one image, each over the `grid × grid` patches (row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelAttention {
    /// The last block's CLS row per head, `[H][N]`.
    pub heads: Vec<Vec<f32>>,
    /// Attention rollout of all blocks, the CLS row, `[N]`.
    pub rollout: Vec<f32>,
}

impl ModelAttention {
    /// The same maps resampled from a `from`×`from` patch grid to `to`×`to` (bilinear): a
    /// teacher on another grid drawn on the student's.
    pub fn on_grid(self, from: usize, to: usize) -> Self {
        if from == to {
            return self;
        }
        let weights = Interpolation::Bilinear.weights(from, to);
        let resample = |map: &[f32]| -> Vec<f32> {
            let mut out = vec![0f32; to * to];
            for r in 0..to {
                for c in 0..to {
                    let mut value = 0f32;
                    for i in 0..from {
                        let wr = weights[r * from + i];
                        if wr == 0.0 {
                            continue;
                        }
                        for j in 0..from {
                            value += wr * weights[c * from + j] * map[i * from + j];
                        }
                    }
                    out[r * to + c] = value;
                }
            }
            out
        };
        Self {
            heads: self.heads.iter().map(|h| resample(h)).collect(),
            rollout: resample(&self.rollout),
        }
    }

    /// The mean over heads of the last block's CLS row.
    pub fn head_mean(&self) -> Vec<f32> {
        let count = self.heads.len().max(1) as f32;
        let patches = self.heads.first().map_or(0, Vec::len);
        (0..patches)
            .map(|i| self.heads.iter().map(|h| h[i]).sum::<f32>() / count)
            .collect()
    }
}

/// Teacher and student attention for one image.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionMaps {
    pub grid: usize,
    pub teacher: ModelAttention,
    pub student: ModelAttention,
}

/// Which attention picture to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionView {
    /// One head of the last block.
    Head(usize),
    /// The mean over the last block's heads.
    HeadMean,
    Rollout,
}

impl AttentionView {
    pub fn label(self) -> String {
        match self {
            Self::Head(h) => format!("head {h}"),
            Self::HeadMean => "mean of heads".into(),
            Self::Rollout => "rollout".into(),
        }
    }

    pub fn values(self, model: &ModelAttention) -> Vec<f32> {
        match self {
            Self::Head(h) => model.heads.get(h).cloned().unwrap_or_default(),
            Self::HeadMean => model.head_mean(),
            Self::Rollout => model.rollout.clone(),
        }
    }
}

/// Per image of the batch: the last block's CLS row over the patches per head, `[B, H, N]`;
/// the `prefix` tokens (CLS, registers) come before the patches.
///
/// # Shapes
/// - last: `[B, H, T, T]` → `[B, H, T − prefix]`
pub fn cls_attention<B: Backend>(last: Tensor<B, 4>, prefix: usize) -> Tensor<B, 3> {
    let [batch, heads, tokens, _] = last.dims();
    last.slice([0..batch, 0..heads, 0..1, prefix..tokens])
        .reshape([batch, heads, tokens - prefix])
}

/// Attention rollout of the blocks' weights (first block first), the CLS row over the patches
/// (after the `prefix` tokens: CLS, registers).
///
/// # Shapes
/// - each of weights: `[B, H, T, T]` → `[B, T − prefix]`
pub fn rollout<B: Backend>(weights: &[Tensor<B, 4>], prefix: usize) -> Option<Tensor<B, 2>> {
    let [batch, _, tokens, _] = weights.first()?.dims();
    let device = weights[0].device();
    let eye: Tensor<B, 3> = Tensor::<B, 2>::eye(tokens, &device)
        .unsqueeze::<3>()
        .expand([batch, tokens, tokens]);
    let mut result = eye.clone();
    for layer in weights {
        let fused = layer.clone().mean_dim(1).squeeze_dim::<3>(1); // [B, T, T]
        let a = (fused + eye.clone()).div_scalar(2.0);
        let a = a.clone() / a.sum_dim(2);
        result = a.matmul(result);
    }
    Some(
        result
            .slice([0..batch, 0..1, prefix..tokens])
            .reshape([batch, tokens - prefix]),
    )
}

/// The maps of every image of a batch, from one model's block weights.
pub fn model_attention<B: Backend>(
    weights: &[Tensor<B, 4>],
    prefix: usize,
) -> anyhow::Result<Vec<ModelAttention>> {
    let (Some(last), Some(rolled)) = (weights.last(), rollout(weights, prefix)) else {
        anyhow::bail!("the model has no attention blocks");
    };
    let [batch, heads, tokens, _] = last.dims();
    let patches = tokens - prefix;
    let read = |t: Tensor<B, 3>| -> anyhow::Result<Vec<f32>> {
        t.into_data()
            .convert::<f32>()
            .to_vec()
            .map_err(|e| anyhow::anyhow!("reading the attention maps back: {e:?}"))
    };
    let cls = read(cls_attention(last.clone(), prefix))?;
    let rolled = read(rolled.unsqueeze::<3>())?;
    Ok((0..batch)
        .map(|b| ModelAttention {
            heads: (0..heads)
                .map(|h| cls[(b * heads + h) * patches..][..patches].to_vec())
                .collect(),
            rollout: rolled[b * patches..][..patches].to_vec(),
        })
        .collect())
}

impl AttentionMaps {
    /// `<stem>.attention.teacher.png`, `<stem>.attention.student.png` (image, rollout, each head,
    /// their mean) and `<stem>.attention.csv`; returns the paths.
    pub fn write(&self, dir: &Path, stem: &str, image: &RgbImage) -> anyhow::Result<Vec<PathBuf>> {
        let png = dir.join(format!("{stem}.attention.teacher.png"));
        let student_png = dir.join(format!("{stem}.attention.student.png"));
        for (path, model, who) in [
            (&png, &self.teacher, "TEACHER"),
            (&student_png, &self.student, "STUDENT"),
        ] {
            self.model_figure(image, model, who)
                .save(path)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        let csv = dir.join(format!("{stem}.attention.csv"));
        self.write_csv(&csv)
            .with_context(|| format!("cannot write {}", csv.display()))?;
        Ok(vec![png, student_png, csv])
    }

    /// The image, the rollout (its own colour range), each head of the last block and their
    /// mean; the heads and the mean share one range, fitted to them, which the bar under the
    /// last panel shows.
    fn model_figure(&self, image: &RgbImage, model: &ModelAttention, who: &str) -> RgbImage {
        let colormap = Colormap::Inferno;
        let all_heads: Vec<f32> = model.heads.concat();
        let heads_range = ValueRange::fitted(&all_heads);
        let rollout_range = ValueRange::fitted(&model.rollout);
        let mut panels = vec![
            image.clone(),
            overlay(
                image,
                &model.rollout,
                self.grid,
                colormap,
                rollout_range,
                0.8,
            ),
        ];
        let mut captions = vec![
            Some("IMAGE".to_string()),
            Some("ROLLOUT (OWN SCALE)".into()),
        ];
        for (h, head) in model.heads.iter().enumerate() {
            panels.push(overlay(image, head, self.grid, colormap, heads_range, 0.8));
            captions.push(Some(format!("HEAD {h}")));
        }
        panels.push(overlay(
            image,
            &model.head_mean(),
            self.grid,
            colormap,
            heads_range,
            0.8,
        ));
        captions.push(Some("MEAN OF HEADS".into()));
        let refs: Vec<&RgbImage> = panels.iter().collect();
        let caption_refs: Vec<Option<&str>> = captions.iter().map(|c| c.as_deref()).collect();
        let bar = colour_bar(colormap, heads_range, image.width());
        figure(
            &refs,
            &caption_refs,
            &format!("{who}: ROLLOUT, AND CLS ATTENTION OF THE LAST BLOCK PER HEAD"),
            Some(&bar),
        )
    }

    /// `model,map,token,row,column,value`: map is a head index, `mean` or `rollout`; patches
    /// only (token 1 is the first patch, as in `<stem>.csv`).
    fn write_csv(&self, path: &Path) -> std::io::Result<()> {
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        writeln!(out, "model,map,token,row,column,value")?;
        for (who, model) in [("teacher", &self.teacher), ("student", &self.student)] {
            let mut maps: Vec<(String, Vec<f32>)> = model
                .heads
                .iter()
                .enumerate()
                .map(|(h, v)| (h.to_string(), v.clone()))
                .collect();
            maps.push(("mean".into(), model.head_mean()));
            maps.push(("rollout".into(), model.rollout.clone()));
            for (name, values) in maps {
                for (i, v) in values.iter().enumerate() {
                    let (row, column) = (i / self.grid.max(1), i % self.grid.max(1));
                    writeln!(out, "{who},{name},{},{row},{column},{v}", i + 1)?;
                }
            }
        }
        out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::TensorData;

    type B = Flex;

    /// Rows of a `[T, T]` matrix that sum to one.
    fn stochastic(t: usize, seed: usize) -> Vec<f32> {
        let mut m: Vec<f32> = (0..t * t)
            .map(|i| ((i * 31 + seed * 7) % 11) as f32 + 1.0)
            .collect();
        for row in m.chunks_mut(t) {
            let sum: f32 = row.iter().sum();
            row.iter_mut().for_each(|v| *v /= sum);
        }
        m
    }

    fn matmul(a: &[f64], b: &[f64], t: usize) -> Vec<f64> {
        let mut out = vec![0.0; t * t];
        for i in 0..t {
            for j in 0..t {
                out[i * t + j] = (0..t).map(|k| a[i * t + k] * b[k * t + j]).sum();
            }
        }
        out
    }

    #[test]
    fn rollout_is_the_product_of_the_averaged_residual_weights() {
        let (t, heads, layers) = (4, 2, 3);
        let mut weights = Vec::new();
        let mut by_hand = (0..t * t)
            .map(|i| f64::from(u8::from(i / t == i % t)))
            .collect::<Vec<_>>();
        for l in 0..layers {
            let per_head: Vec<Vec<f32>> =
                (0..heads).map(|h| stochastic(t, l * heads + h)).collect();
            let values: Vec<f32> = per_head.concat();
            weights.push(Tensor::<B, 4>::from_data(
                TensorData::new(values, [1, heads, t, t]),
                &Default::default(),
            ));
            // (mean_h A + I) / 2, rows renormalised (they already sum to 1), then A · result.
            let mut a: Vec<f64> = (0..t * t)
                .map(|i| {
                    let mean = per_head.iter().map(|h| f64::from(h[i])).sum::<f64>() / heads as f64;
                    (mean + f64::from(u8::from(i / t == i % t))) / 2.0
                })
                .collect();
            for row in a.chunks_mut(t) {
                let sum: f64 = row.iter().sum();
                row.iter_mut().for_each(|v| *v /= sum);
            }
            by_hand = matmul(&a, &by_hand, t);
        }
        let maps = model_attention(&weights, 1).unwrap();
        for (got, want) in maps[0].rollout.iter().zip(&by_hand[1..t]) {
            assert!((f64::from(*got) - want).abs() < 1e-6, "{got} vs {want}");
        }
        // The last block's CLS row, per head, patches only.
        let last = stochastic(t, (layers - 1) * heads + 1);
        assert_eq!(maps[0].heads[1], last[1..t].to_vec());
        assert_eq!(maps[0].heads.len(), heads);
    }
}
