//! Per-patch agreement between the teacher's target Y and the student's prediction Ŷ
//! (SPEC.md §4): cos(y_i, ŷ_i) and ‖y_i − ŷ_i‖²/D for every token, CLS apart from the grid.

use serde::{Deserialize, Serialize};

/// Which per-patch number a map shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// cos(y_i, ŷ_i): 1 where the student points where the teacher does.
    #[default]
    Cosine,
    /// ‖y_i − ŷ_i‖²/D: the token's share of the KD loss.
    SquaredError,
}

impl Metric {
    pub const ALL: [Metric; 2] = [Metric::Cosine, Metric::SquaredError];

    pub fn label(self) -> &'static str {
        match self {
            Metric::Cosine => "cosine similarity",
            Metric::SquaredError => "squared error",
        }
    }

    /// Higher is better for cosine, lower for the error.
    pub fn higher_is_better(self) -> bool {
        matches!(self, Metric::Cosine)
    }
}

/// One image's per-token agreement. Grid vectors are row-major, `grid × grid` long.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatchMaps {
    pub grid: usize,
    pub cosine: Vec<f32>,
    pub squared_error: Vec<f32>,
    pub cls_cosine: f32,
    pub cls_squared_error: f32,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PatchMapError {
    #[error("target has {target} values and prediction {prediction}; they must be the same shape")]
    ShapeMismatch { target: usize, prediction: usize },
    #[error("{tokens} tokens is not 1 CLS + a square grid of patches")]
    NotSquare { tokens: usize },
}

impl PatchMaps {
    /// From one image's target and prediction, both `[T, D]` row-major with the CLS token first.
    pub fn compute(target: &[f32], prediction: &[f32], dim: usize) -> Result<Self, PatchMapError> {
        if target.len() != prediction.len() || dim == 0 || !target.len().is_multiple_of(dim) {
            return Err(PatchMapError::ShapeMismatch {
                target: target.len(),
                prediction: prediction.len(),
            });
        }
        let tokens = target.len() / dim;
        let grid =
            grid_side(tokens.saturating_sub(1)).ok_or(PatchMapError::NotSquare { tokens })?;
        let per_token = target
            .chunks_exact(dim)
            .zip(prediction.chunks_exact(dim))
            .map(|(y, y_hat)| (cosine(y, y_hat), squared_error(y, y_hat)));
        let (cosine, squared_error): (Vec<f32>, Vec<f32>) = per_token.unzip();
        Ok(Self {
            grid,
            cls_cosine: cosine[0],
            cls_squared_error: squared_error[0],
            cosine: cosine[1..].to_vec(),
            squared_error: squared_error[1..].to_vec(),
        })
    }

    pub fn values(&self, metric: Metric) -> &[f32] {
        match metric {
            Metric::Cosine => &self.cosine,
            Metric::SquaredError => &self.squared_error,
        }
    }

    pub fn cls(&self, metric: Metric) -> f32 {
        match metric {
            Metric::Cosine => self.cls_cosine,
            Metric::SquaredError => self.cls_squared_error,
        }
    }

    /// The value of the patch at (row, column).
    pub fn at(&self, metric: Metric, row: usize, column: usize) -> f32 {
        self.values(metric)[row * self.grid + column]
    }

    /// Mean over the patches (CLS excluded).
    pub fn mean(&self, metric: Metric) -> f32 {
        let values = self.values(metric);
        values.iter().sum::<f32>() / values.len().max(1) as f32
    }
}

/// `after − before` per patch and for CLS: where a later checkpoint gained or lost.
pub fn difference(
    before: &PatchMaps,
    after: &PatchMaps,
    metric: Metric,
) -> Option<(Vec<f32>, f32)> {
    (before.grid == after.grid).then(|| {
        let grid = before
            .values(metric)
            .iter()
            .zip(after.values(metric))
            .map(|(b, a)| a - b)
            .collect();
        (grid, after.cls(metric) - before.cls(metric))
    })
}

/// √n when n is a positive perfect square.
pub fn grid_side(patches: usize) -> Option<usize> {
    let side = (patches as f64).sqrt().round() as usize;
    (side > 0 && side * side == patches).then_some(side)
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        dot += x * y;
        aa += x * x;
        bb += y * y;
    }
    // torch.nn.functional.cosine_similarity's eps: a zero vector gives 0, not NaN.
    (dot / (aa.sqrt() * bb.sqrt()).max(1e-8)) as f32
}

fn squared_error(a: &[f32], b: &[f32]) -> f32 {
    let sum: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x - y).powi(2))
        .sum();
    (sum / a.len() as f64) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random_tokens(tokens: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..tokens * dim)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect()
    }

    #[test]
    fn identical_teacher_and_student_agree_everywhere() {
        let y = random_tokens(1 + 16, 8, 1);
        let maps = PatchMaps::compute(&y, &y, 8).unwrap();
        assert_eq!(maps.grid, 4);
        assert!(maps.cosine.iter().all(|c| (c - 1.0).abs() < 1e-6));
        assert!(maps.squared_error.iter().all(|&e| e == 0.0));
        assert!((maps.cls_cosine - 1.0).abs() < 1e-6);
    }

    #[test]
    fn a_planted_mismatch_shows_in_its_cell_only() {
        let dim = 8;
        let y = random_tokens(1 + 9, dim, 2);
        let mut y_hat = y.clone();
        // Patch (row 1, column 2) is token 1 + 1·3 + 2 = 6: flip it.
        for v in &mut y_hat[6 * dim..7 * dim] {
            *v = -*v;
        }
        let maps = PatchMaps::compute(&y, &y_hat, dim).unwrap();
        for row in 0..3 {
            for column in 0..3 {
                let cos = maps.at(Metric::Cosine, row, column);
                let err = maps.at(Metric::SquaredError, row, column);
                if (row, column) == (1, 2) {
                    assert!((cos + 1.0).abs() < 1e-6, "flipped patch has cosine {cos}");
                    assert!(err > 0.0);
                } else {
                    assert!((cos - 1.0).abs() < 1e-6);
                    assert_eq!(err, 0.0);
                }
            }
        }
        assert!((maps.cls_cosine - 1.0).abs() < 1e-6);
    }

    #[test]
    fn squared_error_is_the_token_share_of_the_mse() {
        let y = [1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let y_hat = [1.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0];
        let maps = PatchMaps::compute(&y, &y_hat, 2).unwrap();
        assert_eq!(maps.cls_squared_error, 2.0); // (0² + 2²) / 2
        assert_eq!(maps.squared_error, vec![8.0, 0.0, 0.0, 2.0]);
        assert_eq!(maps.cosine[1], 0.0, "zero vectors give 0, like torch");
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert_eq!(
            PatchMaps::compute(&[0.0; 6], &[0.0; 4], 2),
            Err(PatchMapError::ShapeMismatch {
                target: 6,
                prediction: 4
            })
        );
        assert_eq!(
            PatchMaps::compute(&[0.0; 6], &[0.0; 6], 2),
            Err(PatchMapError::NotSquare { tokens: 3 })
        );
    }

    #[test]
    fn difference_is_after_minus_before() {
        let y = random_tokens(5, 4, 3);
        let before = PatchMaps::compute(&y, &random_tokens(5, 4, 4), 4).unwrap();
        let after = PatchMaps::compute(&y, &y, 4).unwrap();
        let (grid, cls) = difference(&before, &after, Metric::Cosine).unwrap();
        for (d, b) in grid.iter().zip(&before.cosine) {
            assert!((d - (1.0 - b)).abs() < 1e-6);
        }
        assert!((cls - (1.0 - before.cls_cosine)).abs() < 1e-6);
    }
}
