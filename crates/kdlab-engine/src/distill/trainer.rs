//! The training loop as a small type. One `Trainer` per run; the student flows through `run`
//! (AdamW takes it and returns the updated one), everything else the loop needs is here.
//!
//! Per batch: hold while paused, forward/backward (`accumulate`), and every
//! `grad_accum_steps` batches an optimiser `step`, then `log_if_due`, `validate_if_due` and
//! the stop checks. Per epoch: validate, heatmaps, checkpoint (`end_epoch`).
//!
//! Data-parallel (`parallel`), the loop is the same on every node: it loads the node's part of
//! each batch, `Peers` spreads it over the node's devices and exchanges the gradients, and the
//! numbers every decision rests on (losses, the stop) are the run's, summed over all devices,
//! so all nodes decide alike. Node 0 alone writes the run.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};

use super::checkpoint::{self, TrainState};
use super::collapse::{RepresentationCollapse, collapse_sign, spread, token_moments};
use super::data::TrainingData;
use super::events::{Event, NonFiniteLoss, Outcome};
use super::parallel::{Origin, Peers};
use super::probe::ProbeSet;
use super::validation::validation_loss;
use super::window::DeviceWindow;
use super::{Placement, RunPlan, TrainControl};
use crate::config::RunConfig;
use crate::data::loader::{BatchStream, LoaderSettings, Part, Transform, epoch_order, spawn_epoch};
use crate::data::train_transform;
use crate::inspect::Provenance;
use crate::session::{MetricsLine, Models, RunDir, RunRecorder, teacher_target};
use kdlab_model::model::{BeitV2, Data2Vec2};
use kdlab_model::optim::{CosineWithWarmup, StepOutcome, StudentOptimizer};
use kdlab_model::target::{kd_loss, prepare_target};
use kdlab_model::weights::Architecture;

/// Where the run may go: the schedule's length and where this invocation stops.
struct StepLimits {
    total_steps: usize,
    /// `--max-steps` (or `optim.max_steps`), at most `total_steps`; the schedule is unchanged.
    max_steps: usize,
}

impl StepLimits {
    fn of(plan: &RunPlan) -> Self {
        let total_steps = plan.data.steps_per_epoch * plan.config.optim.epochs;
        Self {
            total_steps,
            max_steps: plan
                .max_steps
                .or(plan.config.optim.max_steps)
                .map_or(total_steps, |m| m.min(total_steps)),
        }
    }
}

/// A resumed run's training state and AdamW moments, from its last checkpoint.
fn restore<B: Backend>(
    run: &RunDir,
    optimizer: &mut StudentOptimizer<B>,
    recorder: &mut RunRecorder,
    device: &B::Device,
) -> anyhow::Result<TrainState> {
    let last = run.last_checkpoint();
    let (state, moments) = checkpoint::load_training_state(&last, device)?;
    optimizer.adamw.state = moments;
    if optimizer.scaler.is_some() {
        optimizer.scaler = state.grad_scaler.or(optimizer.scaler);
    }
    recorder.log(&format!(
        "resumed from {} at step {}",
        last.display(),
        state.step
    ));
    Ok(state)
}

/// The training transform at the model's input size, as the config sets it.
fn augmentation(config: &RunConfig, size: usize) -> Transform {
    let d = &config.data;
    let (scale, ratio, flip) = (d.crop_scale, d.crop_ratio, d.hflip_probability);
    Arc::new(move |img, rng| train_transform(img, size as u32, scale, ratio, flip, rng))
}

pub(super) struct Trainer<'a, B: AutodiffBackend> {
    config: &'a RunConfig,
    run: &'a RunDir,
    control: &'a TrainControl,
    on_event: &'a mut dyn FnMut(Event),
    recorder: RunRecorder,
    config_ron: String,
    device: B::Device,
    teacher: BeitV2<B::InnerBackend>,
    student_architecture: Architecture,
    optimizer: StudentOptimizer<B::InnerBackend>,
    schedule: CosineWithWarmup,
    limits: StepLimits,
    state: TrainState,
    data: &'a TrainingData,
    size: usize,
    augment: Transform,
    probe: Option<ProbeSet>,
    accumulator: GradientsAccumulator<Data2Vec2<B>>,
    accumulated: usize,
    /// The losses since the last metrics line (one per micro-batch).
    window: DeviceWindow<B::InnerBackend>,
    /// `[target_var, pred_var]` of each micro-batch since the last line.
    spreads: DeviceWindow<B::InnerBackend>,
    /// The gradient norm of each applied step since the last line.
    grad_norms: DeviceWindow<B::InnerBackend>,
    /// The collapse watch warned and the spreads have not recovered since (one warning per fall).
    collapse_warned: bool,
    speed: Speed,
    last_lr: f64,
    /// Unreadable files are reported once, however often the epochs meet them.
    reported: HashSet<PathBuf>,
    /// The other devices and nodes of a data-parallel run.
    peers: Option<Peers<B>>,
    /// Whether this node writes the run (node 0).
    writes: bool,
    /// Nodes in the run: each loads an equal part of every batch.
    nodes: usize,
    /// A stop all trainers agreed on at the last exchange (Ctrl-C on any node).
    stop_agreed: bool,
}

impl<'a, B: AutodiffBackend> Trainer<'a, B> {
    /// Builds the models, restores a resumed run's state and prepares the probe set; returns
    /// the trainer and the student it trains.
    pub(super) fn new(
        plan: &'a RunPlan,
        run: &'a RunDir,
        control: &'a TrainControl,
        on_event: &'a mut dyn FnMut(Event),
        place: Placement<'_, B::Device>,
    ) -> anyhow::Result<(Self, Data2Vec2<B>)> {
        let config = &plan.config;
        let devices = place.devices;
        let device = &devices[0];
        let Models { teacher, student } = plan.models.build::<B>(device)?;
        let (size, grid) = plan.models.geometry();
        let writes = place.world.writes_run();
        let mut recorder = if writes {
            run.recorder()?
        } else {
            RunRecorder::discarding()
        };
        let mut optimizer = StudentOptimizer::new(
            config.optim.adamw(),
            config.optim.clip_grad_norm,
            config.precision.scales_loss(),
        );
        let state = if plan.resume {
            restore(run, &mut optimizer, &mut recorder, device)?
        } else {
            TrainState::start()
        };
        let limits = StepLimits::of(plan);
        let mut trainer = Self {
            config,
            run,
            control,
            on_event,
            recorder,
            config_ron: config.to_ron()?,
            device: device.clone(),
            student_architecture: plan.models.student_architecture(),
            optimizer,
            schedule: CosineWithWarmup {
                peak_lr: config.optim.peak_lr(),
                warmup_steps: (config.optim.warmup_fraction * limits.total_steps as f64) as usize,
                total_steps: limits.total_steps,
            },
            limits,
            window: DeviceWindow::restore(1, &state.loss_window.into(), device),
            spreads: DeviceWindow::restore(2, &state.spread_window, device),
            grad_norms: DeviceWindow::restore(1, &state.grad_norm_window, device),
            collapse_warned: false,
            state,
            data: &plan.data,
            size,
            augment: augmentation(config, size),
            probe: None,
            accumulator: GradientsAccumulator::new(),
            accumulated: 0,
            speed: Speed::start(),
            last_lr: 0.0,
            reported: HashSet::new(),
            teacher,
            peers: None,
            writes,
            nodes: place.world.nodes,
            stop_agreed: false,
        };
        if place.world.is_parallel() {
            trainer.start_peers(place, plan, &student)?;
        }
        trainer.announce();
        if writes {
            let paths = plan.data.probe_paths(config);
            let (probe, skipped) =
                ProbeSet::prepare(&paths, config, &trainer.teacher, size, grid, device)?;
            trainer.report_skipped(skipped);
            trainer.probe = probe;
        }
        Ok((trainer, student))
    }

    /// The other devices and nodes of a data-parallel run, their replicas copied from this
    /// trainer's models and optimiser (restored, on a resume).
    fn start_peers(
        &mut self,
        place: Placement<'_, B::Device>,
        plan: &RunPlan,
        student: &Data2Vec2<B>,
    ) -> anyhow::Result<()> {
        let origin = Origin {
            teacher: &self.teacher,
            student,
            optimizer: &self.optimizer,
            config: Arc::new(self.config.clone()),
            val: plan.data.val.clone(),
            size: self.size,
        };
        let peers = Peers::start(place.world, place.selected, place.devices, origin)?;
        self.recorder.log(&format!(
            "data-parallel over {} device(s) in all: {} on this node (node {} of {})",
            peers.world.size(),
            peers.names().join(", "),
            peers.world.node_rank,
            peers.world.nodes
        ));
        self.peers = Some(peers);
        Ok(())
    }

    fn announce(&mut self) {
        let event = Event::Started {
            run_dir: self.run.root().to_path_buf(),
            total_steps: self.limits.max_steps,
            steps_per_epoch: self.data.steps_per_epoch,
            start_step: self.state.step,
            train_images: self.data.train.entries.len(),
            val_images: self.data.val.as_ref().map_or(0, |v| v.entries.len()),
            parallel: self
                .peers
                .as_ref()
                .map(|p| (p.world.node_rank, p.world.nodes, p.world.size())),
        };
        (self.on_event)(event);
    }

    /// Trains until the schedule ends, the step limit is reached or a stop is asked for.
    pub(super) fn run(mut self, mut student: Data2Vec2<B>) -> anyhow::Result<Outcome> {
        if self.state.step == 0 {
            self.write_heatmaps(&student)?;
        }
        while self.state.step < self.limits.max_steps && self.state.epoch < self.config.optim.epochs
        {
            let (trained, stop) = self.run_epoch(student)?;
            student = trained;
            if let Some(outcome) = stop {
                self.checkpoint(&student)?;
                self.recorder.log(&format!(
                    "{} at step {}",
                    outcome.describe(),
                    self.state.step
                ));
                if let Some(peers) = self.peers.take() {
                    peers.finish();
                }
                return Ok(outcome);
            }
            self.end_epoch(&student)?;
        }
        if let Some(peers) = self.peers.take() {
            peers.finish();
        }
        Ok(Outcome::Completed)
    }

    /// The rest of the current epoch; `.1` is why it stopped early.
    fn run_epoch(
        &mut self,
        mut student: Data2Vec2<B>,
    ) -> anyhow::Result<(Data2Vec2<B>, Option<Outcome>)> {
        for batch in self.epoch_batches() {
            self.hold_while_paused();
            self.report_skipped(batch.skipped);
            self.state.batch_in_epoch = batch.index + 1;
            if batch.len == 0 {
                continue;
            }
            self.accumulate(&student, batch.pixels, batch.len)?;
            if self.accumulated < self.config.optim.grad_accum_steps {
                continue;
            }
            student = self.step(student)?;
            self.log_if_due()?;
            self.validate_if_due(&student)?;
            if let Some(outcome) = self.stop_reason() {
                return Ok((student, Some(outcome)));
            }
        }
        Ok((student, None))
    }

    /// The epoch's batches from where it stands, in the order fixed by (seed, epoch).
    fn epoch_batches(&self) -> BatchStream {
        let config = self.config;
        let order = epoch_order(
            self.data.train.entries.len(),
            config.data.repeats,
            config.seed,
            self.state.epoch,
            true,
        );
        let loader = LoaderSettings {
            batch_size: config.optim.batch_size,
            workers: config.data.workers,
            prefetch_batches: config.data.prefetch_batches,
            drop_last: true,
            seed: config.seed,
            // This node's part; a one-node run loads the whole batch.
            part: self
                .peers
                .as_ref()
                .map_or(Part::WHOLE, |p| p.world.node_part()),
        };
        spawn_epoch(
            self.data.train.clone(),
            order,
            self.state.batch_in_epoch,
            self.state.epoch,
            &loader,
            self.augment.clone(),
        )
    }

    /// Forward and backward of one batch; its gradients join those of the global batch.
    fn accumulate(
        &mut self,
        student: &Data2Vec2<B>,
        pixels: Vec<f32>,
        len: usize,
    ) -> anyhow::Result<()> {
        let size = self.size;
        let loss_scale = self.optimizer.loss_scale();
        if let Some(peers) = &mut self.peers {
            // No 1/grad_accum_steps here: the exchange divides by the summed shard weights,
            // which count the micro-batches too.
            let nominal = self.config.optim.batch_size / self.nodes;
            peers.accumulate(&self.teacher, student, pixels, len, nominal, loss_scale)?;
            self.accumulated += 1;
            // Every node takes an equal part: the run's images are this node's times the nodes.
            self.speed.images += len * self.nodes;
            return Ok(());
        }
        let images = Tensor::<B::InnerBackend, 4>::from_data(
            TensorData::new(pixels, [len, 3, size, size]),
            &self.device,
        );
        let grad_scale = loss_scale / self.config.optim.grad_accum_steps as f64;
        let step = kd_backward(&self.teacher, student, images, grad_scale);
        self.accumulator.accumulate(student, step.grads);
        self.accumulated += 1;
        self.window.add(step.loss);
        self.spreads.add(spread(step.moments));
        self.speed.images += len;
        Ok(())
    }

    /// One AdamW update with the accumulated gradients (unscaled in f16, clipped when
    /// configured). A step whose f16 gradients overflowed leaves the student as it was but
    /// counts, as in PyTorch's loop: the schedule and the data move on.
    fn step(&mut self, student: Data2Vec2<B>) -> anyhow::Result<Data2Vec2<B>> {
        self.accumulated = 0;
        self.last_lr = self.schedule.lr(self.state.step);
        let (student, outcome) = match &mut self.peers {
            Some(peers) => {
                let stop = self.control.stop_requested();
                let (student, report) =
                    peers.step(&mut self.optimizer, student, self.last_lr, stop)?;
                for loss in report.losses {
                    self.window
                        .add(Tensor::from_floats([loss as f32], &self.device));
                }
                for [target_var, pred_var] in report.spreads {
                    let pair = [target_var as f32, pred_var as f32];
                    self.spreads.add(Tensor::from_floats(pair, &self.device));
                }
                self.stop_agreed = report.stop;
                (student, report.outcome)
            }
            None => {
                let grads = self.accumulator.grads();
                self.optimizer.step(self.last_lr, student, grads)
            }
        };
        self.state.step += 1;
        if let Some(norm) = self.optimizer.take_grad_norm() {
            self.grad_norms.add(norm);
        }
        if let StepOutcome::SkippedOverflow { scale } = outcome {
            self.recorder.log(&format!(
                "step {}: the f16 gradients overflowed; update skipped, loss scale now {scale}",
                self.state.step
            ));
        }
        Ok(student)
    }

    /// A metrics line every `log_every` steps and at the schedule's end, with the mean loss
    /// since the previous line. A stop in between writes none: the window goes into the
    /// checkpoint, so a resumed run logs exactly the lines an uninterrupted one does.
    fn log_if_due(&mut self) -> anyhow::Result<()> {
        let step = self.state.step;
        if !(step.is_multiple_of(self.config.log_every) || step == self.limits.total_steps) {
            return Ok(());
        }
        let mean = self.window.take_means().map_or(0.0, |m| m[0]);
        self.ensure_finite(mean)?;
        let spreads = self.spreads.take_means();
        let line = MetricsLine {
            step,
            epoch: self.state.epoch,
            loss: Some(mean),
            lr: Some(self.last_lr),
            img_per_s: Some(self.speed.take_rate()),
            target_var: spreads.as_ref().map(|s| s[0]),
            pred_var: spreads.as_ref().map(|s| s[1]),
            grad_norm: self.grad_norms.take_means().map(|n| n[0]),
            val_loss: None,
        };
        self.recorder.metrics(&line)?;
        (self.on_event)(Event::Step(line.clone()));
        if let (Some(target_var), Some(pred_var)) = (line.target_var, line.pred_var) {
            self.watch_collapse(target_var, pred_var)?;
        }
        Ok(())
    }

    /// Warns once per fall when a spread is below its floor (`collapse`), and stops the run
    /// when `collapse.stop` asks to. Every node sees the run's summed spreads, so all agree.
    fn watch_collapse(
        &mut self,
        target_var: f64,
        pred_var: f64,
    ) -> Result<(), RepresentationCollapse> {
        let collapse = &self.config.collapse;
        let Some(sign) = collapse_sign(collapse, target_var, pred_var) else {
            self.collapse_warned = false;
            return Ok(());
        };
        let (step, epoch) = (self.state.step, self.state.epoch);
        if collapse.stop {
            self.recorder
                .log(&format!("step {step}: {sign}; stopping (collapse.stop)"));
            return Err(RepresentationCollapse { sign, step, epoch });
        }
        if !self.collapse_warned {
            self.collapse_warned = true;
            let warning = format!("step {step}: {sign}");
            self.recorder.log(&format!("warning: {warning}"));
            (self.on_event)(Event::Warning(warning));
        }
        Ok(())
    }

    fn validate_if_due(&mut self, student: &Data2Vec2<B>) -> anyhow::Result<()> {
        let step = self.state.step;
        if self
            .config
            .val_every
            .is_some_and(|every| step.is_multiple_of(every))
        {
            self.validate(student)?;
        }
        Ok(())
    }

    fn stop_reason(&self) -> Option<Outcome> {
        let limits = &self.limits;
        // Data-parallel, every node stops at the step the exchange said someone asked to.
        let stop = match &self.peers {
            Some(_) => self.stop_agreed,
            None => self.control.stop_requested(),
        };
        if stop {
            Some(Outcome::Interrupted)
        } else if self.state.step >= limits.max_steps && limits.max_steps < limits.total_steps {
            Some(Outcome::ReachedMaxSteps)
        } else {
            None
        }
    }

    /// Validation, the probe maps and a checkpoint; the best checkpoint when validation improved.
    fn end_epoch(&mut self, student: &Data2Vec2<B>) -> anyhow::Result<()> {
        let window = self.window.peek_sums()[0];
        self.ensure_finite(window)?;
        let improved = self.validate(student)?;
        self.state.epoch += 1;
        self.state.batch_in_epoch = 0;
        self.write_heatmaps(student)?;
        self.checkpoint(student)?;
        if improved && self.writes {
            let (last, best) = (self.run.last_checkpoint(), self.run.best_checkpoint());
            std::fs::copy(&last, &best)
                .with_context(|| format!("cannot write {}", best.display()))?;
        }
        Ok(())
    }

    /// Saves `checkpoints/last` — never a student that met a non-finite loss.
    fn checkpoint(&mut self, student: &Data2Vec2<B>) -> anyhow::Result<()> {
        self.state.loss_window = self.window.state().into();
        self.state.spread_window = self.spreads.state();
        self.state.grad_norm_window = self.grad_norms.state();
        self.state.grad_scaler = self.optimizer.scaler;
        self.ensure_finite(self.state.loss_window.sum)?;
        if !self.writes {
            return Ok(());
        }
        let path = self.run.last_checkpoint();
        checkpoint::save(
            &path,
            &student.valid(),
            &self.student_architecture,
            &self.optimizer.adamw,
            &self.state,
            &self.config_ron,
        )?;
        (self.on_event)(Event::CheckpointSaved(path));
        Ok(())
    }

    /// The validation loss, recorded; whether it is the best so far (false without a folder).
    fn validate(&mut self, student: &Data2Vec2<B>) -> anyhow::Result<bool> {
        let Some(folder) = &self.data.val else {
            return Ok(false);
        };
        let (val_loss, skipped) = match &mut self.peers {
            Some(peers) => {
                peers.validate(self.config, &self.teacher, student, folder, self.size)?
            }
            None => validation_loss(
                self.config,
                &self.teacher,
                &student.valid(),
                folder,
                self.size,
            )?,
        };
        self.report_skipped(skipped);
        let (step, epoch) = (self.state.step, self.state.epoch);
        self.recorder.metrics(&MetricsLine {
            step,
            epoch,
            val_loss: Some(val_loss),
            ..MetricsLine::default()
        })?;
        self.recorder.log(&format!(
            "step {step} epoch {epoch}: val_loss {val_loss:.6}"
        ));
        (self.on_event)(Event::Validation {
            step,
            epoch,
            val_loss,
        });
        let improved = self.state.best_val_loss.is_none_or(|best| val_loss < best);
        if improved {
            self.state.best_val_loss = Some(val_loss);
        }
        Ok(improved)
    }

    /// The probe set's maps for the student as it is now, into `heatmaps/epoch-NNN`.
    fn write_heatmaps(&mut self, student: &Data2Vec2<B>) -> anyhow::Result<()> {
        let Some(probe) = &self.probe else {
            return Ok(());
        };
        let epoch = self.state.epoch;
        let dir = self.run.epoch_heatmaps(epoch);
        let provenance = Provenance {
            checkpoint: None,
            epoch: Some(epoch),
            step: Some(self.state.step),
        };
        probe.write(
            &self.teacher,
            &student.valid(),
            &dir,
            &provenance,
            &self.device,
        )?;
        self.recorder.images(self.state.step, &dir);
        (self.on_event)(Event::Heatmaps { epoch, dir });
        Ok(())
    }

    /// Waits between batches while the app's Pause holds, saying when it starts and ends.
    fn hold_while_paused(&mut self) {
        if !self.control.pause_requested() || self.control.stop_requested() {
            return;
        }
        (self.on_event)(Event::Paused {
            step: self.state.step,
        });
        while self.control.pause_requested() && !self.control.stop_requested() {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        self.speed = Speed::start();
        (self.on_event)(Event::Continued);
    }

    /// Stops the run (logged) when the losses since the last check were not all finite.
    fn ensure_finite(&mut self, loss: f64) -> Result<(), NonFiniteLoss> {
        if loss.is_finite() {
            return Ok(());
        }
        let (step, epoch) = (self.state.step, self.state.epoch);
        self.recorder
            .log(&format!("non-finite loss {loss} in the steps up to {step}"));
        Err(NonFiniteLoss { step, epoch, loss })
    }

    /// Logs and announces files that could not be read, once each.
    fn report_skipped(&mut self, skipped: Vec<(PathBuf, String)>) {
        for (path, reason) in skipped {
            if self.reported.insert(path.clone()) {
                self.recorder
                    .log(&format!("skipped {}: {reason}", path.display()));
                (self.on_event)(Event::SkippedFile { path, reason });
            }
        }
    }
}

/// Images per second since the last metrics line (or the start, or a pause).
struct Speed {
    images: usize,
    since: Instant,
}

impl Speed {
    fn start() -> Self {
        Self {
            images: 0,
            since: Instant::now(),
        }
    }

    fn take_rate(&mut self) -> f64 {
        let rate = self.images as f64 / self.since.elapsed().as_secs_f64().max(1e-9);
        *self = Self::start();
        rate
    }
}

/// One batch's training step without the optimiser, everything left on the device.
pub struct KdStep<B: AutodiffBackend> {
    /// The KD loss (f32).
    pub loss: Tensor<B::InnerBackend, 1>,
    /// `collapse::token_moments` of target and prediction (the collapse watch).
    pub moments: Tensor<B::InnerBackend, 1>,
    /// The student's gradients of `loss × grad_scale`.
    pub grads: GradientsParams,
}

/// The KD loss of one batch and the student's gradients of `loss × grad_scale`. Each model
/// computes in its own type (`computing_in`).
pub fn kd_backward<B: AutodiffBackend>(
    teacher: &BeitV2<B::InnerBackend>,
    student: &Data2Vec2<B>,
    images: Tensor<B::InnerBackend, 4>,
    grad_scale: f64,
) -> KdStep<B> {
    let target = teacher_target(teacher, images.clone());
    student_backward(student, images, target, grad_scale)
}

/// The student's half of `kd_backward`, against a given target.
pub fn student_backward<B: AutodiffBackend>(
    student: &Data2Vec2<B>,
    images: Tensor<B::InnerBackend, 4>,
    target: Tensor<B::InnerBackend, 3>,
    grad_scale: f64,
) -> KdStep<B> {
    let prediction = prepare_target(&student.forward(Tensor::from_inner(images)).layer_results);
    let moments = token_moments(target.clone(), prediction.clone().inner());
    let loss = kd_loss(prediction, Tensor::from_inner(target));
    let value = loss.clone().inner();
    let grads = GradientsParams::from_grads(loss.mul_scalar(grad_scale).backward(), student);
    KdStep {
        loss: value,
        moments,
        grads,
    }
}
