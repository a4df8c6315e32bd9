//! Resampling a square grid of tokens to another grid size, as PyTorch's `F.interpolate` does:
//! bicubic with antialias (timm's `resample_abs_pos_embed`, for learned positions) and bilinear
//! (kdlab's grid matching of two models' averaged representations).
//!
//! Both modes are separable and linear, so each is two matrix products with weights computed on
//! the host from the sizes alone: any backend runs them, and autodiff sees ordinary operations.
//!
//! Upstream: PyTorch `aten/src/ATen/native/UpSample.h` (`area_pixel_compute_source_index`,
//! `_compute_indices_min_size_weights_aa`, `aa_filter` for bicubic with a = −0.5); timm
//! `layers/pos_embed.py`.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

/// How one axis is resampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interpolation {
    /// `mode='bicubic', antialias=True, align_corners=False` (timm's position resampling).
    BicubicAntialias,
    /// `mode='bilinear', align_corners=False`, no antialias.
    Bilinear,
}

impl Interpolation {
    /// Weights `[output, input]`: output sample `o` is `Σ_i w[o, i] · x[i]`.
    pub fn weights(self, input: usize, output: usize) -> Vec<f32> {
        match self {
            Self::BicubicAntialias => bicubic_antialias_weights(input, output),
            Self::Bilinear => bilinear_weights(input, output),
        }
    }
}

/// Keys' cubic convolution kernel with a = −0.5: PyTorch's antialiased bicubic filter and
/// Pillow's bicubic (the image resize of `kdlab_engine::data::resize` uses it too).
pub fn keys_cubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

fn bicubic_antialias_weights(input: usize, output: usize) -> Vec<f32> {
    let scale = input as f64 / output as f64;
    // The filter widens by the scale when shrinking: that is the antialias.
    let (support, inverse_scale) = if scale >= 1.0 {
        (2.0 * scale, 1.0 / scale)
    } else {
        (2.0, 1.0)
    };
    let mut weights = vec![0f32; output * input];
    for o in 0..output {
        let center = scale * (o as f64 + 0.5);
        // C++ truncation toward zero, then clamped, as PyTorch computes the window.
        let first = ((center - support + 0.5) as i64).max(0) as usize;
        let last = ((center + support + 0.5) as i64).min(input as i64).max(0) as usize;
        let taps: Vec<f64> = (first..last)
            .map(|i| keys_cubic((i as f64 - center + 0.5) * inverse_scale))
            .collect();
        let total: f64 = taps.iter().sum();
        for (i, w) in (first..last).zip(taps) {
            weights[o * input + i] = if total != 0.0 { w / total } else { w } as f32;
        }
    }
    weights
}

fn bilinear_weights(input: usize, output: usize) -> Vec<f32> {
    let scale = input as f64 / output as f64;
    let mut weights = vec![0f32; output * input];
    for o in 0..output {
        let source = (scale * (o as f64 + 0.5) - 0.5).max(0.0);
        let i0 = (source.floor() as usize).min(input - 1);
        let i1 = (i0 + 1).min(input - 1);
        let t = source - i0 as f64;
        weights[o * input + i0] += (1.0 - t) as f32;
        weights[o * input + i1] += t as f32;
    }
    weights
}

/// Resamples tokens on a `from`×`from` grid (row-major) to a `to`×`to` grid.
///
/// # Shapes
/// - tokens: `[B, from², D]` → `[B, to², D]`, in the input's type
pub fn resample_grid<B: Backend>(
    tokens: Tensor<B, 3>,
    from: usize,
    to: usize,
    mode: Interpolation,
) -> Tensor<B, 3> {
    if from == to {
        return tokens;
    }
    let [batch, count, dim] = tokens.dims();
    debug_assert_eq!(count, from * from, "a square grid of tokens");
    let device = tokens.device();
    let weights =
        Tensor::<B, 2>::from_data(TensorData::new(mode.weights(from, to), [to, from]), &device)
            .cast(tokens.dtype());
    let weights = weights.unsqueeze::<3>().expand([batch, to, from]);
    // Rows: [B, from(r), from(c)·D] → [B, to(r), from(c)·D].
    let rows = weights
        .clone()
        .matmul(tokens.reshape([batch, from, from * dim]));
    // Columns: bring c in front, [B, from(c), to(r)·D] → [B, to(c), to(r)·D].
    let columns = rows
        .reshape([batch, to, from, dim])
        .swap_dims(1, 2)
        .reshape([batch, from, to * dim]);
    weights
        .matmul(columns)
        .reshape([batch, to, to, dim]) // [B, c, r, D]
        .swap_dims(1, 2)
        .reshape([batch, to * to, dim])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_output_sample_is_a_weighted_average() {
        for mode in [Interpolation::BicubicAntialias, Interpolation::Bilinear] {
            for (input, output) in [(4, 6), (37, 16), (6, 4), (5, 5)] {
                let w = mode.weights(input, output);
                for o in 0..output {
                    let sum: f32 = w[o * input..(o + 1) * input].iter().sum();
                    assert!((sum - 1.0).abs() < 1e-6, "{mode:?} {input}→{output}: {sum}");
                }
            }
        }
    }

    #[test]
    fn the_same_size_is_the_identity() {
        for mode in [Interpolation::BicubicAntialias, Interpolation::Bilinear] {
            let w = mode.weights(5, 5);
            for o in 0..5 {
                for i in 0..5 {
                    let expected = if o == i { 1.0 } else { 0.0 };
                    assert!((w[o * 5 + i] - expected).abs() < 1e-6, "{mode:?}");
                }
            }
        }
    }

    #[test]
    fn bilinear_halving_averages_neighbours() {
        // 4 → 2: sources at 0.5 and 2.5, each the mean of two inputs.
        let w = Interpolation::Bilinear.weights(4, 2);
        assert_eq!(w, vec![0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.5, 0.5]);
    }
}
