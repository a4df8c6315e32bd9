//! The devices one training step spans, behind one interface, so that the trainer's loop is
//! the same for one device and for many: `OneDevice` is the plain loop (the whole batch on the
//! trainer's device, AdamW on the accumulated gradients); `parallel::Peers` spreads this node's
//! part of every batch over its devices and exchanges the gradients with the whole run before
//! the (identical) step on every device.

use std::path::PathBuf;
use std::sync::Arc;

use burn::module::AutodiffModule;
use burn::optim::GradientsAccumulator;
use burn::tensor::backend::AutodiffBackend;

use super::TrainControl;
use super::collapse::spread;
use super::kd_step::kd_backward;
use super::validation::validation_loss;
use super::window::MetricWindows;
use crate::config::RunConfig;
use crate::data::ImageFolder;
use crate::data::loader::Part;
use crate::data::views::Views;
use kdlab_model::optim::{StepOutcome, StudentOptimizer};
use kdlab_model::pair::{Student, Teacher};

/// The devices one training step spans, as the trainer drives them: micro-batches in, one
/// optimiser step per global batch, validation, and the run's stop.
///
/// The losses and spreads go into the trainer's `windows` at the moment the run's numbers are
/// known (one device: at once, per micro-batch, so that a checkpoint taken with an
/// accumulation pending holds them; data-parallel: after the exchange that sums them), in the
/// order the one-device loop always added them, so numbers and saved windows do not change.
pub(super) trait Replicas<B: AutodiffBackend> {
    /// The part of every batch this node loads.
    fn part(&self) -> Part;

    /// Forward and backward of one micro-batch (`len` images of this node's part, `pixels`
    /// as the loader made them); its gradients join those of the global batch. Returns the
    /// images the run computed on, for the speed.
    fn accumulate(
        &mut self,
        teacher: &Teacher<B::InnerBackend>,
        student: &Student<B>,
        pixels: Vec<f32>,
        len: usize,
        loss_scale: f64,
        windows: &mut MetricWindows<B::InnerBackend>,
    ) -> anyhow::Result<usize>;

    /// One AdamW update of `student` with the gradients of the global batch; what it did.
    fn step(
        &mut self,
        optimizer: &mut StudentOptimizer<B::InnerBackend>,
        student: Student<B>,
        lr: f64,
        windows: &mut MetricWindows<B::InnerBackend>,
    ) -> anyhow::Result<(Student<B>, StepOutcome)>;

    /// The validation loss over `folder` (each model at its own view), and the files this node
    /// could not read.
    fn validate(
        &mut self,
        config: &RunConfig,
        teacher: &Teacher<B::InnerBackend>,
        student: &Student<B>,
        folder: &Arc<ImageFolder>,
    ) -> anyhow::Result<(f64, Vec<(PathBuf, String)>)>;

    /// Whether the run stops after the step just taken (Ctrl-C, the app's Stop): one device,
    /// asked for by now; data-parallel, asked for on some node, as the step's exchange said,
    /// so that every node stops at the same step.
    fn stop_requested(&self) -> bool;

    /// Data-parallel, where this process stands: `(node_rank, nodes, devices in all)`.
    fn parallel(&self) -> Option<(usize, usize, usize)>;

    /// The end of a run that completed (or stopped) normally; dropped without it, the devices
    /// take the run as failed.
    fn finish(self: Box<Self>);
}

/// The plain loop: the whole batch on the trainer's device.
pub(super) struct OneDevice<B: AutodiffBackend> {
    device: B::Device,
    control: TrainControl,
    /// The gradients of the micro-batches since the last step.
    accumulator: GradientsAccumulator<Student<B>>,
    grad_accum_steps: usize,
    /// What each model sees (how a batch's pixels split).
    views: Views,
}

impl<B: AutodiffBackend> OneDevice<B> {
    pub(super) fn new(
        device: B::Device,
        control: TrainControl,
        grad_accum_steps: usize,
        views: Views,
    ) -> Self {
        Self {
            device,
            control,
            accumulator: GradientsAccumulator::new(),
            grad_accum_steps,
            views,
        }
    }
}

impl<B: AutodiffBackend> Replicas<B> for OneDevice<B> {
    fn part(&self) -> Part {
        Part::WHOLE
    }

    fn accumulate(
        &mut self,
        teacher: &Teacher<B::InnerBackend>,
        student: &Student<B>,
        pixels: Vec<f32>,
        len: usize,
        loss_scale: f64,
        windows: &mut MetricWindows<B::InnerBackend>,
    ) -> anyhow::Result<usize> {
        let images = self.views.split(pixels, len, &self.device);
        // The micro-batches of a global batch are averaged here, in the gradients' scale.
        let grad_scale = loss_scale / self.grad_accum_steps as f64;
        let step = kd_backward(teacher, student, images, grad_scale);
        self.accumulator.accumulate(student, step.grads);
        windows.loss.add(step.loss);
        windows.spreads.add(spread(step.moments));
        Ok(len)
    }

    fn step(
        &mut self,
        optimizer: &mut StudentOptimizer<B::InnerBackend>,
        student: Student<B>,
        lr: f64,
        _windows: &mut MetricWindows<B::InnerBackend>,
    ) -> anyhow::Result<(Student<B>, StepOutcome)> {
        let grads = self.accumulator.grads();
        Ok(optimizer.step(lr, student, grads))
    }

    fn validate(
        &mut self,
        config: &RunConfig,
        teacher: &Teacher<B::InnerBackend>,
        student: &Student<B>,
        folder: &Arc<ImageFolder>,
    ) -> anyhow::Result<(f64, Vec<(PathBuf, String)>)> {
        validation_loss(config, teacher, &student.valid(), folder, self.views)
    }

    fn stop_requested(&self) -> bool {
        self.control.stop_requested()
    }

    fn parallel(&self) -> Option<(usize, usize, usize)> {
        None
    }

    fn finish(self: Box<Self>) {}
}
