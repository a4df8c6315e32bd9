//! The collapse watch: how spread out the target and the prediction are over a batch's tokens,
//! as fairseq's data2vec logs them (`target_var`, `pred_var`), and the check that stops a run
//! whose representation collapsed.
//!
//! Upstream: fairseq `examples/data2vec/models/data2vec2.py`, `Data2VecMultiModel.compute_var`:
//! the tokens of the batch as rows, the unbiased variance of each dimension over them, and the
//! mean over dimensions of `sqrt(var + 1e-6)`. Under data parallelism fairseq all-reduces the
//! count, Σy and Σy² and uses `Σy²/(n−1) − (Σy)²/(n(n−1))`; kdlab always goes through those
//! sums, so one device and many give the same numbers.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};

use crate::config::CollapseConfig;

/// fairseq's `1e-6` under the square root.
const VAR_EPS: f64 = 1e-6;

/// The per-dimension sums a batch contributes, `[4·D + 1]`: Σt, Σt², Σp, Σp² over the tokens
/// of every image, then the token count. Sums of peers and of micro-batches add.
///
/// # Shapes
/// - target, prediction: `[B, T, D]` (any float type; summed in f32)
pub fn token_moments<B: Backend>(target: Tensor<B, 3>, prediction: Tensor<B, 3>) -> Tensor<B, 1> {
    let [batch, tokens, dim] = target.dims();
    let device = target.device();
    let sums = |y: Tensor<B, 3>| {
        let rows = y.cast(DType::F32).reshape([batch * tokens, dim]); // [n, D]
        [
            rows.clone().sum_dim(0).reshape([dim]),
            rows.square().sum_dim(0).reshape([dim]),
        ]
    };
    let count = Tensor::from_floats([(batch * tokens) as f32], &device);
    let [ts, tss] = sums(target);
    let [ps, pss] = sums(prediction);
    Tensor::cat(vec![ts, tss, ps, pss, count], 0)
}

/// `[target_var, pred_var]` from the (summed) moments of `token_moments`.
pub fn spread<B: Backend>(moments: Tensor<B, 1>) -> Tensor<B, 1> {
    let len = moments.dims()[0];
    let dim = (len - 1) / 4;
    let n = moments.clone().slice(len - 1..len); // [1]
    let of = |first: usize| {
        let s = moments.clone().slice(first * dim..(first + 1) * dim);
        let ss = moments.clone().slice((first + 1) * dim..(first + 2) * dim);
        let var = ss / (n.clone() - 1.0) - s.square() / (n.clone() * (n.clone() - 1.0));
        // Rounding can leave a constant dimension's variance a hair below zero.
        (var.clamp_min(0.0) + VAR_EPS).sqrt().mean()
    };
    Tensor::cat(vec![of(0), of(2)], 0)
}

/// Which of the two fell below its floor, with the values, for the log and the error.
#[derive(Debug, Clone, PartialEq)]
pub struct CollapseSign {
    pub name: &'static str,
    pub value: f64,
    pub floor: f64,
    pub field: &'static str,
}

impl std::fmt::Display for CollapseSign {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {:.4} is below {} {} — the representation may be collapsing",
            self.name, self.value, self.field, self.floor
        )
    }
}

/// The first floor the logged spreads fall below, if any.
pub fn collapse_sign(
    config: &CollapseConfig,
    target_var: f64,
    pred_var: f64,
) -> Option<CollapseSign> {
    let checks = [
        (
            "pred_var",
            pred_var,
            config.min_pred_var,
            "collapse.min_pred_var",
        ),
        (
            "target_var",
            target_var,
            config.min_target_var,
            "collapse.min_target_var",
        ),
    ];
    checks
        .into_iter()
        // NaN is not below a floor; the non-finite-loss check stops such a run.
        .find(|(_, value, floor, _)| value < floor)
        .map(|(name, value, floor, field)| CollapseSign {
            name,
            value,
            floor,
            field,
        })
}

/// A run stopped by the collapse watch (`collapse.stop`).
#[derive(Debug, thiserror::Error)]
#[error(
    "{sign} by step {step} (epoch {epoch}); the run stopped (collapse.stop) and the checkpoint \
     of the last finished epoch, if any, is kept"
)]
pub struct RepresentationCollapse {
    pub sign: CollapseSign,
    pub step: usize,
    pub epoch: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::TensorData;

    type B = Flex;

    /// fairseq's single-process form, by hand: sqrt(unbiased var over rows + 1e-6), mean.
    fn by_hand(rows: &[Vec<f32>]) -> f64 {
        let n = rows.len() as f64;
        let dim = rows[0].len();
        (0..dim)
            .map(|d| {
                let mean = rows.iter().map(|r| r[d] as f64).sum::<f64>() / n;
                let var = rows
                    .iter()
                    .map(|r| (r[d] as f64 - mean).powi(2))
                    .sum::<f64>()
                    / (n - 1.0);
                (var + 1e-6).sqrt()
            })
            .sum::<f64>()
            / dim as f64
    }

    fn batch(values: &[f32], shape: [usize; 3]) -> Tensor<B, 3> {
        Tensor::from_data(TensorData::new(values.to_vec(), shape), &Default::default())
    }

    #[test]
    fn spreads_are_fairseqs_compute_var_and_sums_of_parts_give_the_whole() {
        let (b, t, d) = (2, 3, 4);
        let target: Vec<f32> = (0..b * t * d)
            .map(|i| ((i * 7 % 11) as f32) * 0.3 - 1.0)
            .collect();
        let prediction: Vec<f32> = (0..b * t * d)
            .map(|i| ((i * 5 % 13) as f32) * 0.1 + 2.0)
            .collect();
        let rows = |v: &[f32]| v.chunks(d).map(<[f32]>::to_vec).collect::<Vec<_>>();
        let whole = token_moments(batch(&target, [b, t, d]), batch(&prediction, [b, t, d]));
        let got: Vec<f32> = spread(whole.clone()).into_data().to_vec().unwrap();
        assert!(
            (got[0] as f64 - by_hand(&rows(&target))).abs() < 1e-5,
            "{got:?}"
        );
        assert!(
            (got[1] as f64 - by_hand(&rows(&prediction))).abs() < 1e-5,
            "{got:?}"
        );

        // Each image on its own device: the moments add up to the whole batch's.
        let half = t * d;
        let parts = token_moments(
            batch(&target[..half], [1, t, d]),
            batch(&prediction[..half], [1, t, d]),
        ) + token_moments(
            batch(&target[half..], [1, t, d]),
            batch(&prediction[half..], [1, t, d]),
        );
        let summed: Vec<f32> = spread(parts).into_data().to_vec().unwrap();
        assert!((summed[0] - got[0]).abs() < 1e-6 && (summed[1] - got[1]).abs() < 1e-6);
    }

    #[test]
    fn identical_tokens_have_the_floor_spread_and_are_flagged() {
        let values = vec![0.5f32; 2 * 3 * 4];
        let m = token_moments(batch(&values, [2, 3, 4]), batch(&values, [2, 3, 4]));
        let got: Vec<f32> = spread(m).into_data().to_vec().unwrap();
        assert!((got[1] as f64 - 1e-3).abs() < 1e-4, "sqrt(1e-6): {got:?}");
        let config = CollapseConfig::default();
        let sign = collapse_sign(&config, 1.0, got[1] as f64).unwrap();
        assert_eq!(sign.field, "collapse.min_pred_var");
        assert!(collapse_sign(&config, 1.0, 0.5).is_none());
        assert_eq!(
            collapse_sign(&config, 0.05, 0.5).map(|s| s.name),
            Some("target_var")
        );
        assert!(collapse_sign(&config, f64::NAN, f64::NAN).is_none());
    }
}
