//! One peer's share of a data-parallel step, the same on the trainer's own device and on every
//! follower: forward and backward of its shard of each micro-batch, then the exchange and the
//! (identical) AdamW step.
//!
//! Each shard's loss is the mean over its images, so a peer weights its gradients by
//! `images / nominal shard size` and the summed gradients are divided by the summed weights:
//! with full shards that is the mean over peers — the one-device gradient of the whole batch,
//! not `world_size` times it — and a shard that lost unreadable files counts for the images it
//! had.

use burn::optim::GradientsAccumulator;
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;

use super::exchange::{Exchange, ExchangeError};
use crate::distill::collapse::spread;
use crate::distill::kd_step::kd_backward;
use kdlab_model::optim::{StepOutcome, StudentOptimizer};
use kdlab_model::pair::{Student, Teacher};

/// A shard's images as the teacher and as the student see them.
type ViewImages<B> = (Tensor<B, 4>, Tensor<B, 4>);

/// What a step did, as every trainer of the run sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    pub outcome: StepOutcome,
    /// The loss of each micro-batch over all devices (its images' mean).
    pub losses: Vec<f64>,
    /// Some trainer asked to stop (Ctrl-C on any node): all stop after this step.
    pub stop: bool,
    /// `[target_var, pred_var]` of each micro-batch over all devices, from the summed moments
    /// (the collapse watch; the same numbers one device computes for the whole batch).
    pub spreads: Vec<[f64; 2]>,
}

/// The micro-batches a peer computed since its last step.
pub struct PeerStep<B: AutodiffBackend> {
    grads: GradientsAccumulator<Student<B>>,
    /// `loss × weight` of each micro-batch, on the device.
    weighted_losses: Vec<Tensor<B::InnerBackend, 1>>,
    weights: Vec<f32>,
    /// `token_moments` of each micro-batch's shard (zeros for a shard without images).
    moments: Vec<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> Default for PeerStep<B> {
    fn default() -> Self {
        Self {
            grads: GradientsAccumulator::new(),
            weighted_losses: Vec::new(),
            weights: Vec::new(),
            moments: Vec::new(),
        }
    }
}

impl<B: AutodiffBackend> PeerStep<B> {
    /// Forward and backward of this peer's shard (`images`, None when none of its files could
    /// be read); `weight` is its images over the nominal shard size, `grad_scale` the loss
    /// scale (f16). The step divides by the weights summed over peers and micro-batches, so
    /// the micro-batches are averaged there, not here.
    pub fn add(
        &mut self,
        teacher: &Teacher<B::InnerBackend>,
        student: &Student<B>,
        images: Option<ViewImages<B::InnerBackend>>,
        weight: f64,
        grad_scale: f64,
        device: &B::Device,
    ) {
        match images {
            Some(images) => {
                let step = kd_backward(teacher, student, images, grad_scale * weight);
                self.grads.accumulate(student, step.grads);
                self.weighted_losses.push(step.loss.mul_scalar(weight));
                self.moments.push(step.moments);
            }
            None => {
                self.weighted_losses.push(Tensor::zeros([1], device));
                // The moments are over the target's width (the teacher's).
                let dim = student.pair.teacher.embed_dim;
                self.moments.push(Tensor::zeros([4 * dim + 1], device));
            }
        }
        self.weights.push(weight as f32);
    }

    /// Exchanges the gradients with every peer and applies the optimiser step to `student`.
    pub fn step(
        &mut self,
        exchange: &Exchange<B::InnerBackend>,
        optimizer: &mut StudentOptimizer<B::InnerBackend>,
        student: Student<B>,
        lr: f64,
        stop: bool,
    ) -> Result<(Student<B>, StepReport), ExchangeError> {
        let micro = self.weights.len();
        let grads = self.grads.grads();
        let mut numbers: Vec<Tensor<B::InnerBackend, 1>> =
            std::mem::take(&mut self.weighted_losses);
        let mut flags = std::mem::take(&mut self.weights);
        flags.push(if stop { 1.0 } else { 0.0 });
        numbers.push(Tensor::from_floats(flags.as_slice(), &exchange.device));
        let moments = std::mem::take(&mut self.moments);
        let moments_len = moments.first().map_or(0, |m| m.dims()[0]);
        numbers.extend(moments);
        let mut summed = exchange.sum_gradients(&student, grads, Tensor::cat(numbers, 0))?;
        let n = std::mem::take(&mut summed.numbers);
        if n.len() != (2 + moments_len) * micro + 1 {
            return Err(ExchangeError::Failed(format!(
                "peers disagree on the micro-batches per step: {} numbers for {micro}",
                n.len()
            )));
        }
        let (losses, weights) = (&n[..micro], &n[micro..2 * micro]);
        let total_weight: f64 = weights.iter().map(|&w| w as f64).sum();
        let losses = losses
            .iter()
            .zip(weights)
            .map(|(&l, &w)| l as f64 / (w as f64).max(f64::MIN_POSITIVE))
            .collect();
        let spreads = n[2 * micro + 1..]
            .chunks_exact(moments_len.max(1))
            .map(|m| {
                let s = spread(Tensor::<B::InnerBackend, 1>::from_floats(
                    m,
                    &exchange.device,
                ));
                let s: Vec<f32> = s.into_data().convert::<f32>().to_vec().unwrap_or_default();
                [
                    s.first().copied().unwrap_or(f32::NAN) as f64,
                    s.get(1).copied().unwrap_or(f32::NAN) as f64,
                ]
            })
            .collect();
        let grads = summed.into_gradients(1.0 / total_weight.max(f64::MIN_POSITIVE));
        let (student, outcome) = optimizer.step(lr, student, grads);
        Ok((
            student,
            StepReport {
                outcome,
                losses,
                stop: n[2 * micro] > 0.0,
                spreads,
            },
        ))
    }
}
