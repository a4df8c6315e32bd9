//! The student's optimiser step as PyTorch's AMP training loop runs it:
//! `scaler.scale(loss).backward(); scaler.unscale_(opt); clip_grad_norm_(…); scaler.step(opt);
//! scaler.update()` — with f32 gradients of the f32 master weights, whatever the compute type.

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};

use burn::tensor::Tensor;

use super::{AdamW, AdamWSettings, GradScaler, clip_grad_norm, grad_norm};

/// What a step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StepOutcome {
    Applied,
    /// f16 gradients overflowed: the weights and the moments are unchanged; the loss scale is
    /// now `scale`.
    SkippedOverflow {
        scale: f64,
    },
}

pub struct StudentOptimizer<B: Backend> {
    pub adamw: AdamW<B>,
    /// Dynamic loss scaling (f16 only: bf16 has f32's range).
    pub scaler: Option<GradScaler>,
    pub clip_grad_norm: Option<f64>,
    /// The global L2 norm of the (unscaled, unclipped) gradients of the last applied step, on
    /// the device: logged as `grad_norm`, read back only when a metrics line is due.
    last_grad_norm: Option<Tensor<B, 1>>,
}

impl<B: Backend> StudentOptimizer<B> {
    pub fn new(settings: AdamWSettings, clip_grad_norm: Option<f64>, loss_scaling: bool) -> Self {
        Self {
            adamw: AdamW::new(settings),
            scaler: loss_scaling.then(GradScaler::default),
            clip_grad_norm,
            last_grad_norm: None,
        }
    }

    /// What the loss is multiplied by before backward (1 without loss scaling); constant until
    /// the next `step`, so the micro-batches of one global batch share it.
    pub fn loss_scale(&self) -> f64 {
        self.scaler.map_or(1.0, |s| s.scale)
    }

    /// The global gradient norm of the last applied step (None after a skipped one).
    pub fn take_grad_norm(&mut self) -> Option<Tensor<B, 1>> {
        self.last_grad_norm.take()
    }

    /// One update of `module` from the gradients of the scaled loss.
    pub fn step<AB, M>(
        &mut self,
        lr: f64,
        module: M,
        mut grads: GradientsParams,
    ) -> (M, StepOutcome)
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AB>,
    {
        if let Some(scaler) = &mut self.scaler {
            let finite = scaler.unscale::<AB, M>(&module, &mut grads);
            scaler.update(finite);
            if !finite {
                let scale = scaler.scale;
                return (module, StepOutcome::SkippedOverflow { scale });
            }
        }
        self.last_grad_norm = grad_norm::<AB, M>(&module, &grads);
        if let Some(max_norm) = self.clip_grad_norm {
            clip_grad_norm::<AB, M>(&module, &mut grads, max_norm);
        }
        (self.adamw.step(lr, module, grads), StepOutcome::Applied)
    }
}
