//! DINOv3's 2-D rotary positions (timm `RotaryEmbeddingDinoV3` with its defaults: coordinates
//! normalised separately per axis, `ij` indexing, no offset, no training-time coordinate
//! augmentation, `rotate_half` layout), applied to q and k of the patch tokens only.
//!
//! For a head width hd there are hd/4 periods `temperature^(2k / (hd/2))`. Patch (r, c) of an
//! h×w grid sits at `(2(r + ½)/h − 1, 2(c + ½)/w − 1)`; its angles are `2π·coord/period` for the
//! row coordinate (hd/4 of them) then the column (hd/4), repeated twice to hd.
//! `x ↦ x·cos + rotate_half(x)·sin`, `rotate_half([a | b]) = [−b | a]`.
//!
//! Upstream: timm `layers/pos_embed_sincos.py` (`make_coords_dinov3`, `RotaryEmbeddingDinoV3`,
//! `apply_rot_embed_cat`), `models/eva.py` (`EvaAttention.forward`).

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

/// The sin and cos tables of one grid, prefix rows included (sin 0, cos 1: not rotated).
#[derive(Debug, Clone)]
pub struct RotaryTables<B: Backend> {
    /// `[T, hd]`
    pub sin: Tensor<B, 2>,
    /// `[T, hd]`
    pub cos: Tensor<B, 2>,
}

/// `[T·hd]` sin and cos values for `prefix` unrotated tokens and a `grid`×`grid` patch grid, in
/// f32 as timm computes them.
pub fn rotary_values(
    grid: usize,
    prefix: usize,
    head_dim: usize,
    temperature: f64,
) -> (Vec<f32>, Vec<f32>) {
    let quarter = head_dim / 4;
    let periods: Vec<f32> = (0..quarter)
        .map(|k| (temperature as f32).powf(2.0 * k as f32 / (head_dim / 2) as f32))
        .collect();
    let coord = |i: usize| 2.0 * ((i as f32 + 0.5) / grid as f32) - 1.0;
    let tokens = prefix + grid * grid;
    let mut sin = vec![0f32; tokens * head_dim];
    let mut cos = vec![1f32; tokens * head_dim];
    for r in 0..grid {
        for c in 0..grid {
            let t = prefix + r * grid + c;
            let mut angles = Vec::with_capacity(head_dim);
            for axis in [coord(r), coord(c)] {
                angles.extend(
                    periods
                        .iter()
                        .map(|p| 2.0 * std::f32::consts::PI * axis / p),
                );
            }
            let row = t * head_dim;
            for (j, angle) in angles.iter().chain(angles.iter()).enumerate() {
                sin[row + j] = angle.sin();
                cos[row + j] = angle.cos();
            }
        }
    }
    (sin, cos)
}

impl<B: Backend> RotaryTables<B> {
    pub fn new(
        grid: usize,
        prefix: usize,
        head_dim: usize,
        temperature: f64,
        device: &B::Device,
    ) -> Self {
        let tokens = prefix + grid * grid;
        let (sin, cos) = rotary_values(grid, prefix, head_dim, temperature);
        let table = |v| Tensor::from_data(TensorData::new(v, [tokens, head_dim]), device);
        Self {
            sin: table(sin),
            cos: table(cos),
        }
    }

    /// Rotates q and k inside packed projections, every head alike.
    ///
    /// # Shapes
    /// - qkv: `[B, T, 3D]`, columns `[q | k | v]` (any float type) → the same
    pub fn apply(&self, qkv: Tensor<B, 3>, num_heads: usize) -> Tensor<B, 3> {
        let [batch, tokens, width3] = qkv.dims();
        let dim = width3 / 3;
        let head_dim = dim / num_heads;
        let dtype = qkv.dtype();
        let sin = self
            .sin
            .clone()
            .cast(dtype)
            .reshape([1, tokens, 1, head_dim]);
        let cos = self
            .cos
            .clone()
            .cast(dtype)
            .reshape([1, tokens, 1, head_dim]);
        let qk = qkv.clone().narrow(2, 0, 2 * dim); // [B, T, 2D]
        let v = qkv.narrow(2, 2 * dim, dim);
        let heads = qk.reshape([batch, tokens, 2 * num_heads, head_dim]);
        let half = head_dim / 2;
        let first = heads.clone().narrow(3, 0, half);
        let second = heads.clone().narrow(3, half, half);
        let rotated = Tensor::cat(vec![second.neg(), first], 3);
        let qk = heads * cos + rotated * sin;
        Tensor::cat(vec![qk.reshape([batch, tokens, 2 * dim]), v], 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_tokens_are_not_rotated_and_patches_are() {
        let (sin, cos) = rotary_values(2, 3, 8, 100.0);
        assert!(sin[..3 * 8].iter().all(|&s| s == 0.0));
        assert!(cos[..3 * 8].iter().all(|&c| c == 1.0));
        // Patch (0, 0): both coordinates −½, the first period 1 → angle −π.
        assert!((cos[3 * 8] + 1.0).abs() < 1e-6);
        // The two halves are the same angles.
        assert_eq!(sin[3 * 8..3 * 8 + 4], sin[3 * 8 + 4..4 * 8]);
    }
}
