//! The training loop as a small type. One `Trainer` per run; the student flows through `run`
//! (AdamW takes it and returns the updated one), everything else the loop needs is here.
//!
//! Per batch: hold while paused, forward/backward (`accumulate`), and every
//! `grad_accum_steps` batches an optimiser `step`, then `log_if_due`, `validate_if_due` and
//! the stop checks. Per epoch: validate, heatmaps, checkpoint (`end_epoch`).
//!
//! One loop for one device and for many: the trainer drives the devices of a step as
//! `Replicas` — `OneDevice` for a one-device run, `parallel::Peers` for a data-parallel one.
//! Data-parallel, the loop is the same on every node: it loads the node's part of each batch,
//! `Peers` spreads it over the node's devices and exchanges the gradients, and the numbers
//! every decision rests on (losses, the stop) are the run's, summed over all devices, so all
//! nodes decide alike. Node 0 alone writes the run.
//!
//! What the loop keeps is grouped by what it is for: `RunOutputs` (where the run writes and
//! whom it tells), `Progress` (where it stands and may go), `RunModels` (the models and what
//! they are fed) and the metric windows.

mod models;
mod outputs;
mod progress;

use std::sync::Arc;

use burn::tensor::backend::{AutodiffBackend, Backend};

use super::checkpoint::{self, StateBounds, TrainState};
use super::collapse::{RepresentationCollapse, collapse_sign};
use super::events::{Event, NonFiniteLoss, Outcome};
use super::parallel::{Origin, Peers};
use super::replicas::{OneDevice, Replicas};
use super::window::MetricWindows;
use super::{Placement, RunPlan, TrainControl};
use crate::data::loader::{BatchStream, LoaderSettings, epoch_order, spawn_epoch};
use crate::inspect::Provenance;
use crate::session::{MetricsLine, RunDir};
use kdlab_model::optim::{StepOutcome, StudentOptimizer};
use kdlab_model::pair::Student;
use models::RunModels;
use outputs::RunOutputs;
use progress::{Progress, Speed, StepLimits};

/// A resumed run's training state and AdamW moments, from its last checkpoint.
/// Both are checked first, against the run's plan, the student and each other.
fn restore<B: Backend, AB: Backend>(
    plan: &RunPlan,
    run: &RunDir,
    student: &Student<AB>,
    optimizer: &mut StudentOptimizer<B>,
    out: &mut RunOutputs<'_>,
    device: &B::Device,
) -> anyhow::Result<TrainState> {
    let last = run.last_checkpoint();
    let (state, moments) = checkpoint::load_training_state(&last, device)?;
    let config = &plan.config;
    let bounds = StateBounds {
        total_steps: StepLimits::of(plan).total_steps,
        epochs: config.optim.epochs,
        batches_per_epoch: (plan.data.train.entries.len() * config.data.repeats)
            .div_ceil(config.optim.batch_size.max(1)),
    };
    let refused = |why: String| {
        anyhow::anyhow!(
            "{} cannot be resumed: {why} (the file was damaged or altered; resume from a copy, \
             or start the run again)",
            last.display()
        )
    };
    state.check(&bounds).map_err(refused)?;
    optimizer.adamw.state = moments;
    optimizer.adamw.check_state(student).map_err(refused)?;
    if optimizer.scaler.is_some() {
        optimizer.scaler = state.grad_scaler.or(optimizer.scaler);
    }
    out.log(&format!(
        "resumed from {} at step {}",
        last.display(),
        state.step
    ));
    Ok(state)
}

/// The devices the run's steps span: the trainer's own for a one-device run; else also the
/// other devices and nodes, their replicas copied from this trainer's models and optimiser
/// (restored, on a resume).
fn start_replicas<B: AutodiffBackend>(
    plan: &RunPlan,
    control: &TrainControl,
    place: Placement<'_, B::Device>,
    models: &RunModels<B>,
    student: &Student<B>,
    optimizer: &StudentOptimizer<B::InnerBackend>,
    out: &mut RunOutputs<'_>,
) -> anyhow::Result<Box<dyn Replicas<B>>> {
    let config = &plan.config;
    if !place.world.is_parallel() {
        let one = OneDevice::<B>::new(
            models.device.clone(),
            control.clone(),
            config.optim.grad_accum_steps,
            models.views,
        );
        let replicas: Box<dyn Replicas<B>> = Box::new(one);
        return Ok(replicas);
    }
    let origin = Origin {
        teacher: &models.teacher,
        student,
        optimizer,
        config: Arc::new(config.clone()),
        val: plan.data.val.clone(),
        views: models.views,
    };
    let peers = Peers::start(
        place.world,
        place.selected,
        place.devices,
        origin,
        control.clone(),
    )?;
    out.log(&format!(
        "data-parallel over {} device(s) in all: {} on this node (node {} of {})",
        peers.world.size(),
        peers.names().join(", "),
        peers.world.node_rank,
        peers.world.nodes
    ));
    let replicas: Box<dyn Replicas<B>> = Box::new(peers);
    Ok(replicas)
}

/// One run's loop: the plan it follows, what it writes, where it stands, its models and
/// optimiser, the devices its steps span and the metric windows.
pub(super) struct Trainer<'a, B: AutodiffBackend> {
    plan: &'a RunPlan,
    control: &'a TrainControl,
    out: RunOutputs<'a>,
    progress: Progress,
    models: RunModels<B>,
    optimizer: StudentOptimizer<B::InnerBackend>,
    /// The devices each step spans: this one alone, or every device of a data-parallel run.
    replicas: Box<dyn Replicas<B>>,
    /// The losses, spreads and gradient norms since the last metrics line.
    windows: MetricWindows<B::InnerBackend>,
}

impl<'a, B: AutodiffBackend> Trainer<'a, B> {
    /// Builds the models, restores a resumed run's state, starts the step's devices and
    /// prepares the probe set; returns the trainer and the student it trains.
    pub(super) fn new(
        plan: &'a RunPlan,
        run: &'a RunDir,
        control: &'a TrainControl,
        on_event: &'a mut dyn FnMut(Event),
        place: Placement<'_, B::Device>,
    ) -> anyhow::Result<(Self, Student<B>)> {
        let config = &plan.config;
        let devices = place.devices;
        let device = &devices[0];
        let (models, student) = RunModels::<B>::build(plan, device)?;
        let writes = place.world.writes_run();
        let mut out = RunOutputs::open(run, on_event, config, writes)?;
        let mut optimizer = StudentOptimizer::<B::InnerBackend>::new(
            config.optim.adamw(),
            config.optim.clip_grad_norm,
            config.precision.scales_loss(),
        );
        let state = if plan.resume {
            let state = restore(plan, run, &student, &mut optimizer, &mut out, device)?;
            if writes {
                if let Some(cut) = run.cut_metrics_after(state.step)? {
                    out.warn(cut);
                }
                // TensorBoard is a convenience: a file it cannot cut is said, not fatal.
                let cut = run
                    .cut_tensorboard_after(state.step)
                    .unwrap_or_else(|e| vec![format!("TensorBoard files not cut back: {e:#}")]);
                for line in cut {
                    out.warn(line);
                }
            }
            state
        } else {
            TrainState::start()
        };
        let windows = MetricWindows::<B::InnerBackend>::restore(
            &state.loss_window.into(),
            &state.spread_window,
            &state.grad_norm_window,
            device,
        );
        let progress = Progress::new(plan, state);
        let replicas = start_replicas(
            plan, control, place, &models, &student, &optimizer, &mut out,
        )?;
        let mut trainer = Self {
            plan,
            control,
            out,
            progress,
            models,
            optimizer,
            replicas,
            windows,
        };
        trainer.announce();
        if writes {
            // What the data folders' scan left out, then the probe images that cannot be read.
            let data = &plan.data;
            let listed = data
                .train
                .skipped
                .iter()
                .chain(data.val.iter().flat_map(|v| &v.skipped));
            trainer.out.report_skipped(listed.cloned().collect());
            let skipped = trainer.models.prepare_probe(plan)?;
            trainer.out.report_skipped(skipped);
        }
        Ok((trainer, student))
    }

    fn announce(&mut self) {
        let data = &self.plan.data;
        let event = Event::Started {
            run_dir: self.out.run().root().to_path_buf(),
            total_steps: self.progress.limits.max_steps,
            steps_per_epoch: data.steps_per_epoch,
            start_step: self.progress.state.step,
            train_images: data.train.entries.len(),
            val_images: data.val.as_ref().map_or(0, |v| v.entries.len()),
            parallel: self.replicas.parallel(),
        };
        self.out.event(event);
    }

    /// Trains until the schedule ends, the step limit is reached or a stop is asked for.
    pub(super) fn run(mut self, mut student: Student<B>) -> anyhow::Result<Outcome> {
        if self.progress.state.step == 0 {
            self.write_heatmaps_or_warn(&student);
        }
        let epochs = self.plan.config.optim.epochs;
        let (first_step, had_steps) = (
            self.progress.state.step,
            self.progress.has_steps_left(epochs),
        );
        while self.progress.has_steps_left(epochs) {
            let (trained, stop) = self.run_epoch(student)?;
            student = trained;
            if let Some(outcome) = stop {
                self.checkpoint(&student)?;
                self.out.log(&format!(
                    "{} at step {}",
                    outcome.describe(),
                    self.progress.state.step
                ));
                self.replicas.finish();
                return Ok(outcome);
            }
            self.end_epoch(&student)?;
        }
        self.replicas.finish();
        if had_steps && self.progress.state.step == first_step {
            // Every batch came out empty: nothing was trained, which is no finished run.
            anyhow::bail!(
                "the run took no training step from step {first_step}: every batch of the \
                 remaining epochs was empty (each of its images skipped as unreadable, as the \
                 lines above say)"
            );
        }
        Ok(Outcome::Completed)
    }

    /// The rest of the current epoch; `.1` is why it stopped early.
    fn run_epoch(
        &mut self,
        mut student: Student<B>,
    ) -> anyhow::Result<(Student<B>, Option<Outcome>)> {
        for batch in self.epoch_batches() {
            self.hold_while_paused();
            self.out.report_skipped(batch.skipped);
            self.progress.state.batch_in_epoch = batch.index + 1;
            if batch.len == 0 {
                continue;
            }
            self.accumulate(&student, batch.pixels, batch.len)?;
            if self.progress.accumulated < self.plan.config.optim.grad_accum_steps {
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
        let (config, data) = (&self.plan.config, &self.plan.data);
        let state = &self.progress.state;
        let order = epoch_order(
            data.train.entries.len(),
            config.data.repeats,
            config.seed,
            state.epoch,
            true,
        );
        let loader = LoaderSettings {
            batch_size: config.optim.batch_size,
            workers: config.data.workers,
            prefetch_batches: config.data.prefetch_batches,
            drop_last: true,
            seed: config.seed,
            // This node's part; a one-node run loads the whole batch.
            part: self.replicas.part(),
        };
        spawn_epoch(
            data.train.clone(),
            order,
            state.batch_in_epoch,
            state.epoch,
            &loader,
            self.models.augment.clone(),
        )
    }

    /// Forward and backward of one batch; its gradients join those of the global batch.
    fn accumulate(
        &mut self,
        student: &Student<B>,
        pixels: Vec<f32>,
        len: usize,
    ) -> anyhow::Result<()> {
        let loss_scale = self.optimizer.loss_scale();
        let images = self.replicas.accumulate(
            &self.models.teacher,
            student,
            pixels,
            len,
            loss_scale,
            &mut self.windows,
        )?;
        self.progress.count_micro_batch(images);
        Ok(())
    }

    /// One AdamW update with the accumulated gradients (unscaled in f16, clipped when
    /// configured). A step whose f16 gradients overflowed leaves the student as it was but
    /// counts, as in PyTorch's loop: the schedule and the data move on.
    fn step(&mut self, student: Student<B>) -> anyhow::Result<Student<B>> {
        let lr = self.progress.begin_step();
        let (student, outcome) =
            self.replicas
                .step(&mut self.optimizer, student, lr, &mut self.windows)?;
        self.progress.state.step += 1;
        if let Some(norm) = self.optimizer.take_grad_norm() {
            self.windows.grad_norms.add(norm);
        }
        if let StepOutcome::SkippedOverflow { scale } = outcome {
            self.out.log(&format!(
                "step {}: the f16 gradients overflowed; update skipped, loss scale now {scale}",
                self.progress.state.step
            ));
        }
        Ok(student)
    }

    /// A metrics line every `log_every` steps and at the schedule's end, with the mean loss
    /// since the previous line. A stop in between writes none: the window goes into the
    /// checkpoint, so a resumed run logs exactly the lines an uninterrupted one does.
    fn log_if_due(&mut self) -> anyhow::Result<()> {
        if !self.progress.line_due(self.plan.config.log_every) {
            return Ok(());
        }
        let step = self.progress.state.step;
        let mean = self.windows.loss.take_means().map_or(0.0, |m| m[0]);
        self.ensure_finite(mean)?;
        let spreads = self.windows.spreads.take_means();
        let line = MetricsLine {
            step,
            epoch: self.progress.state.epoch,
            loss: Some(mean),
            lr: Some(self.progress.last_lr),
            img_per_s: Some(self.progress.speed.take_rate()),
            target_var: spreads.as_ref().map(|s| s[0]),
            pred_var: spreads.as_ref().map(|s| s[1]),
            grad_norm: self.windows.grad_norms.take_means().map(|n| n[0]),
            val_loss: None,
        };
        self.out.metrics(&line)?;
        self.out.event(Event::Step(line.clone()));
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
        let collapse = &self.plan.config.collapse;
        let Some(sign) = collapse_sign(collapse, target_var, pred_var) else {
            self.out.collapse_recovered();
            return Ok(());
        };
        let (step, epoch) = (self.progress.state.step, self.progress.state.epoch);
        if collapse.stop {
            self.out
                .log(&format!("step {step}: {sign}; stopping (collapse.stop)"));
            return Err(RepresentationCollapse { sign, step, epoch });
        }
        self.out.warn_collapse(step, &sign);
        Ok(())
    }

    fn validate_if_due(&mut self, student: &Student<B>) -> anyhow::Result<()> {
        let step = self.progress.state.step;
        if self
            .plan
            .config
            .val_every
            .is_some_and(|every| step.is_multiple_of(every))
        {
            self.validate(student)?;
        }
        Ok(())
    }

    fn stop_reason(&self) -> Option<Outcome> {
        // Data-parallel, every node stops at the step the exchange said someone asked to.
        if self.replicas.stop_requested() {
            Some(Outcome::Interrupted)
        } else if self.progress.reached_max_steps() {
            Some(Outcome::ReachedMaxSteps)
        } else {
            None
        }
    }

    /// Validation, the probe maps and a checkpoint; the best checkpoint when validation improved.
    fn end_epoch(&mut self, student: &Student<B>) -> anyhow::Result<()> {
        let window = self.windows.loss.peek_sums()[0];
        self.ensure_finite(window)?;
        let improved = self.validate(student)?;
        self.progress.next_epoch();
        // The epoch's training is kept first: maps that cannot be written cost only the maps.
        self.checkpoint(student)?;
        if improved {
            self.out.keep_last_as_best()?;
        }
        self.write_heatmaps_or_warn(student);
        Ok(())
    }

    /// Saves `checkpoints/last` — never a student that met a non-finite loss.
    fn checkpoint(&mut self, student: &Student<B>) -> anyhow::Result<()> {
        let state = &mut self.progress.state;
        state.loss_window = self.windows.loss.state().into();
        state.spread_window = self.windows.spreads.state();
        state.grad_norm_window = self.windows.grad_norms.state();
        state.grad_scaler = self.optimizer.scaler;
        self.ensure_finite(self.progress.state.loss_window.sum)?;
        self.out.save_checkpoint(
            student,
            &self.models.student_architecture,
            &self.optimizer.adamw,
            &self.progress.state,
        )
    }

    /// The validation loss, recorded; whether it is the best so far (false without a folder).
    fn validate(&mut self, student: &Student<B>) -> anyhow::Result<bool> {
        let plan = self.plan;
        let Some(folder) = &plan.data.val else {
            return Ok(false);
        };
        let (val_loss, skipped) =
            self.replicas
                .validate(&plan.config, &self.models.teacher, student, folder)?;
        self.out.report_skipped(skipped);
        let (step, epoch) = (self.progress.state.step, self.progress.state.epoch);
        self.out.metrics(&MetricsLine {
            step,
            epoch,
            val_loss: Some(val_loss),
            ..MetricsLine::default()
        })?;
        self.out.log(&format!(
            "step {step} epoch {epoch}: val_loss {val_loss:.6}"
        ));
        self.out.event(Event::Validation {
            step,
            epoch,
            val_loss,
        });
        Ok(self.progress.record_val_loss(val_loss))
    }

    /// The probe maps, or a warning in the log and the run's events when they cannot be written
    /// (a full disk, a folder taken away): the run goes on, as it does when TensorBoard fails.
    fn write_heatmaps_or_warn(&mut self, student: &Student<B>) {
        if let Err(error) = self.write_heatmaps(student) {
            let epoch = self.progress.state.epoch;
            self.out.warn(format!(
                "the probe maps of epoch {epoch} were not written: {error:#}"
            ));
        }
    }

    /// The probe set's maps for the student as it is now, into `heatmaps/epoch-NNN`.
    fn write_heatmaps(&mut self, student: &Student<B>) -> anyhow::Result<()> {
        let (step, epoch) = (self.progress.state.step, self.progress.state.epoch);
        let dir = self.out.run().epoch_heatmaps(epoch);
        let provenance = Provenance {
            checkpoint: None,
            epoch: Some(epoch),
            step: Some(step),
        };
        if self.models.write_probe(student, &dir, &provenance)? {
            self.out.images(step, &dir);
            self.out.event(Event::Heatmaps { epoch, dir });
        }
        Ok(())
    }

    /// Waits between batches while the app's Pause holds, saying when it starts and ends.
    fn hold_while_paused(&mut self) {
        let control = self.control;
        if !control.pause_requested() || control.stop_requested() {
            return;
        }
        self.out.event(Event::Paused {
            step: self.progress.state.step,
        });
        while control.pause_requested() && !control.stop_requested() {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        self.progress.speed = Speed::start();
        self.out.event(Event::Continued);
    }

    /// Stops the run (logged) when the losses since the last check were not all finite.
    fn ensure_finite(&mut self, loss: f64) -> Result<(), NonFiniteLoss> {
        if loss.is_finite() {
            return Ok(());
        }
        let (step, epoch) = (self.progress.state.step, self.progress.state.epoch);
        self.out
            .log(&format!("non-finite loss {loss} in the steps up to {step}"));
        Err(NonFiniteLoss {
            step,
            epoch,
            loss,
            kept_checkpoint: self.out.run().last_checkpoint().is_file(),
        })
    }
}
