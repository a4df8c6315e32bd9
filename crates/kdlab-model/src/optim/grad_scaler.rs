//! Dynamic loss scaling for f16 training, as `torch.amp.GradScaler` with its defaults: the loss
//! is multiplied by the scale before backward so that small gradients survive f16's range; at
//! the step the gradients are divided by it again; a step whose gradients hold an inf or NaN is
//! skipped and the scale halved, and after 2000 finite steps in a row the scale doubles.
//!
//! Upstream: pytorch `torch/amp/grad_scaler.py` (`unscale_`, `step`, `update`) and
//! `aten/src/ATen/native/cuda/AmpKernels.cu` (`_amp_update_scale_`).

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};
use serde::{Deserialize, Serialize};

use super::grads::{param_ids, scale_all, with_grad};

/// `GradScaler(init_scale=2**16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000)`.
pub const INIT_SCALE: f64 = 65536.0;
pub const GROWTH_FACTOR: f64 = 2.0;
pub const BACKOFF_FACTOR: f64 = 0.5;
pub const GROWTH_INTERVAL: u32 = 2000;

/// The scaler's state; it goes into the checkpoint, so a resumed f16 run scales as before.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GradScaler {
    /// What the loss is multiplied by before backward.
    pub scale: f64,
    /// Finite steps in a row since the scale last changed.
    pub growth_tracker: u32,
}

impl Default for GradScaler {
    fn default() -> Self {
        Self {
            scale: INIT_SCALE,
            growth_tracker: 0,
        }
    }
}

impl GradScaler {
    /// Divides every gradient by the scale and says whether all of them are finite; when not,
    /// the step must be skipped (`update(false)`).
    ///
    /// One reduction per parameter and a single read of the device: the sum of a tensor is
    /// finite exactly when its elements are (barring an f32 overflow of the sum itself, which
    /// would skip a step whose gradients are beyond any use anyway).
    pub fn unscale<AB: AutodiffBackend, M: AutodiffModule<AB>>(
        &self,
        module: &M,
        grads: &mut GradientsParams,
    ) -> bool {
        let ids = param_ids(module);
        scale_all::<AB::InnerBackend>(grads, &ids, 1.0 / self.scale);
        let sums: Vec<Tensor<AB::InnerBackend, 1>> = ids
            .iter()
            .filter_map(|&(id, rank)| with_grad(grads, id, rank, |g| g.sum()))
            .collect();
        if sums.is_empty() {
            return true;
        }
        let total: f64 = Tensor::cat(sums, 0).sum().into_scalar().elem();
        total.is_finite()
    }

    /// After a step: back off on overflow, grow after `GROWTH_INTERVAL` finite steps.
    pub fn update(&mut self, finite: bool) {
        if !finite {
            self.scale *= BACKOFF_FACTOR;
            self.growth_tracker = 0;
        } else if self.growth_tracker + 1 == GROWTH_INTERVAL {
            self.scale *= GROWTH_FACTOR;
            self.growth_tracker = 0;
        } else {
            self.growth_tracker += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scale_halves_on_overflow_and_doubles_after_the_interval() {
        let mut scaler = GradScaler::default();
        scaler.update(false);
        assert_eq!(scaler.scale, INIT_SCALE / 2.0);
        for _ in 0..GROWTH_INTERVAL - 1 {
            scaler.update(true);
        }
        assert_eq!(
            scaler.scale,
            INIT_SCALE / 2.0,
            "not before 2000 finite steps"
        );
        scaler.update(true);
        assert_eq!((scaler.scale, scaler.growth_tracker), (INIT_SCALE, 0));
        scaler.update(true);
        scaler.update(false);
        assert_eq!((scaler.scale, scaler.growth_tracker), (INIT_SCALE / 2.0, 0));
    }
}
