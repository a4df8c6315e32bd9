//! The Run panel: start, pause, stop and resume a training run; live curves, speed, ETA, log.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use egui_plot::{HLine, Legend, Line, Plot, PlotPoints, Points};

use super::training_job::{JobMessage, TrainingJob};
use kdlab_engine::backend::BackendChoice;
use kdlab_engine::config::{Devices, RunConfig};
use kdlab_engine::distill::{
    Event, Outcome, ParallelOverrides, RunStart, TrainControl, TrainRequest,
};
use kdlab_engine::session::fetch::Download;
use kdlab_engine::session::{MetricsLine, RunDir};

const LOG_LINES: usize = 500;
const TRAIN_COLOUR: egui::Color32 = egui::Color32::from_rgb(230, 120, 60);
const VAL_COLOUR: egui::Color32 = egui::Color32::from_rgb(90, 160, 230);

#[derive(Debug, Clone, PartialEq)]
pub enum RunState {
    Idle,
    Running,
    /// Pause was asked for; the batch in flight finishes first.
    Pausing,
    /// The loop holds between batches (it said so).
    Paused,
    Stopping,
    Finished(String),
    Failed(String),
}

/// What the panel knows about the current (or last) run, built from the job's messages.
#[derive(Debug)]
pub struct RunProgress {
    pub state: RunState,
    pub backend: Option<String>,
    pub run_dir: Option<PathBuf>,
    pub total_steps: usize,
    pub step: usize,
    pub epoch: usize,
    /// (step, value) points.
    pub loss: Vec<[f64; 2]>,
    pub val_loss: Vec<[f64; 2]>,
    pub lr: Vec<[f64; 2]>,
    /// The collapse watch: (step, target_var) and (step, pred_var).
    pub target_var: Vec<[f64; 2]>,
    pub pred_var: Vec<[f64; 2]>,
    /// `collapse.min_pred_var` of the run, drawn under the curves.
    pub pred_var_floor: Option<f64>,
    pub img_per_s: Option<f64>,
    timing: Option<(Instant, usize)>,
    /// A weights name being downloaded before the run starts.
    pub download: Option<DownloadRow>,
    pub log: VecDeque<String>,
}

/// The download in flight, with what its speed is measured from.
#[derive(Debug, Clone)]
pub struct DownloadRow {
    pub now: Download,
    since: Instant,
    /// Bytes at `since` (a resumed download starts with some).
    from: u64,
}

impl DownloadRow {
    /// Bytes per second since this download (or its verification) began.
    pub fn speed(&self) -> Option<f64> {
        let seconds = self.since.elapsed().as_secs_f64();
        (seconds > 0.2).then(|| self.now.done.saturating_sub(self.from) as f64 / seconds)
    }

    pub fn eta(&self) -> Option<Duration> {
        let left = self.now.total?.saturating_sub(self.now.done) as f64;
        self.speed()
            .filter(|s| *s > 0.0)
            .map(|s| Duration::from_secs_f64(left / s))
    }
}

impl Default for RunProgress {
    fn default() -> Self {
        Self {
            state: RunState::Idle,
            backend: None,
            run_dir: None,
            total_steps: 0,
            step: 0,
            epoch: 0,
            loss: Vec::new(),
            val_loss: Vec::new(),
            lr: Vec::new(),
            target_var: Vec::new(),
            pred_var: Vec::new(),
            pred_var_floor: None,
            img_per_s: None,
            timing: None,
            download: None,
            log: VecDeque::new(),
        }
    }
}

impl RunProgress {
    fn say(&mut self, line: String) {
        if self.log.len() == LOG_LINES {
            self.log.pop_front();
        }
        self.log.push_back(line);
    }

    pub fn apply(&mut self, message: JobMessage) {
        match message {
            JobMessage::Backend(name) => {
                self.say(format!("backend {name}"));
                self.backend = Some(name);
            }
            JobMessage::Event(event) => self.apply_event(event),
            JobMessage::Finished(Ok(outcome)) => {
                let text = match outcome {
                    Outcome::Completed => "finished",
                    Outcome::ReachedMaxSteps => "stopped at max steps",
                    Outcome::Interrupted => "stopped; Resume continues it",
                };
                self.say(text.to_string());
                self.state = RunState::Finished(text.to_string());
            }
            JobMessage::Finished(Err(error)) => {
                self.say(format!("error: {error}"));
                self.state = RunState::Failed(error);
            }
        }
    }

    fn apply_event(&mut self, event: Event) {
        match event {
            Event::Started {
                run_dir,
                total_steps,
                steps_per_epoch,
                start_step,
                train_images,
                val_images,
                parallel,
            } => {
                self.say(format!(
                    "run {} · {train_images} train / {val_images} val images · {steps_per_epoch} steps per epoch",
                    run_dir.display()
                ));
                if let Some((_, _, devices)) = parallel {
                    self.say(format!("data-parallel over {devices} devices"));
                }
                self.download = None;
                self.run_dir = Some(run_dir);
                self.total_steps = total_steps;
                self.step = start_step;
                self.timing = Some((Instant::now(), start_step));
            }
            Event::Step(line) => self.add_step(&line),
            Event::Validation {
                step,
                epoch,
                val_loss,
            } => {
                self.val_loss.push([step as f64, val_loss]);
                self.say(format!("step {step} epoch {epoch}: val_loss {val_loss:.5}"));
            }
            Event::SkippedFile { path, reason } => {
                self.say(format!("warning: skipped {}: {reason}", path.display()));
            }
            Event::CheckpointSaved(path) => self.say(format!("saved {}", path.display())),
            Event::Heatmaps { epoch, dir } => {
                self.say(format!("heatmaps after epoch {epoch} in {}", dir.display()));
            }
            Event::Warning(warning) => self.say(format!("warning: {warning}")),
            Event::Download(now) => self.apply_download(now),
            Event::Paused { step } => {
                self.step = step;
                if self.state == RunState::Pausing {
                    self.state = RunState::Paused;
                }
                self.say(format!("paused after step {step}"));
            }
            Event::Continued => self.say("continued".into()),
        }
    }

    /// A training line's values on the curves (validation comes as its own event).
    fn add_step(&mut self, line: &MetricsLine) {
        self.step = line.step;
        self.epoch = line.epoch;
        let x = line.step as f64;
        if let Some(loss) = line.loss {
            self.loss.push([x, loss]);
        }
        if let Some(lr) = line.lr {
            self.lr.push([x, lr]);
        }
        if let Some(v) = line.target_var {
            self.target_var.push([x, v]);
        }
        if let Some(v) = line.pred_var {
            self.pred_var.push([x, v]);
        }
        self.img_per_s = line.img_per_s.or(self.img_per_s);
    }

    /// A line of a run's `metrics.jsonl` (a run followed from its folder): the same curves its
    /// own events draw.
    pub fn add_metrics(&mut self, line: &MetricsLine) {
        self.add_step(line);
        if let Some(val_loss) = line.val_loss {
            self.val_loss.push([line.step as f64, val_loss]);
        }
    }

    /// The curves start over (the followed file was cut back or removed).
    pub fn clear_curves(&mut self) {
        for curve in [
            &mut self.loss,
            &mut self.val_loss,
            &mut self.lr,
            &mut self.target_var,
            &mut self.pred_var,
        ] {
            curve.clear();
        }
    }

    fn apply_download(&mut self, now: Download) {
        let same = self
            .download
            .as_ref()
            .is_some_and(|row| row.now.file == now.file && row.now.verifying == now.verifying);
        if !same {
            let what = if now.verifying {
                "verifying"
            } else {
                "downloading"
            };
            let resumed = match now.resumed_from {
                0 => String::new(),
                bytes => format!(" (resuming at {})", megabytes(bytes)),
            };
            self.say(format!("{what} {}{resumed}", now.file));
            self.download = Some(DownloadRow {
                from: now.done,
                since: Instant::now(),
                now,
            });
        } else if let Some(row) = &mut self.download {
            row.now = now;
        }
    }

    /// Remaining time from the average pace of this session's steps.
    pub fn eta(&self) -> Option<Duration> {
        let (since, first_step) = self.timing?;
        let done = self.step.checked_sub(first_step).filter(|&d| d > 0)?;
        let per_step = since.elapsed().as_secs_f64() / done as f64;
        Some(Duration::from_secs_f64(
            per_step * self.total_steps.saturating_sub(self.step) as f64,
        ))
    }
}

/// What the Run panel takes from Setup.
#[derive(Clone, Copy)]
pub struct RunSetup<'a> {
    pub config: &'a RunConfig,
    /// What is wrong with the config; Start is disabled while there is anything.
    pub problem: Option<&'a str>,
    pub backend: BackendChoice,
    pub runs_dir: &'a std::path::Path,
}

#[derive(Default)]
pub struct RunPanel {
    job: Option<TrainingJob>,
    pub progress: RunProgress,
    /// The device-count picker; None runs on the config's `parallel.devices`.
    pub devices: Option<usize>,
}

impl RunPanel {
    pub fn is_active(&self) -> bool {
        self.job.as_ref().is_some_and(TrainingJob::is_running)
    }

    /// Takes in what the worker sent since the last frame.
    pub fn poll(&mut self) {
        let Some(job) = &self.job else { return };
        for message in job.drain() {
            self.progress.apply(message);
        }
    }

    /// Starts a run: `config` for a fresh one; a resumed one continues with its own
    /// `config.ron` (a broken one fails the run with the file's error, as `--resume` does).
    pub fn start(
        &mut self,
        start: RunStart,
        config: Option<&RunConfig>,
        backend: BackendChoice,
        ctx: &egui::Context,
    ) {
        if self.is_active() {
            return;
        }
        let resumed = matches!(start, RunStart::Resume { .. });
        let mut progress = RunProgress::default();
        if resumed {
            // Keep the curves; the resumed run continues them.
            progress.loss = std::mem::take(&mut self.progress.loss);
            progress.val_loss = std::mem::take(&mut self.progress.val_loss);
            progress.lr = std::mem::take(&mut self.progress.lr);
            progress.target_var = std::mem::take(&mut self.progress.target_var);
            progress.pred_var = std::mem::take(&mut self.progress.pred_var);
            progress.pred_var_floor = self.progress.pred_var_floor;
            progress.log = std::mem::take(&mut self.progress.log);
        }
        progress.state = RunState::Running;
        if let Some(config) = config {
            progress.pred_var_floor = Some(config.collapse.min_pred_var);
        }
        self.progress = progress;
        let request = TrainRequest {
            start,
            config: config.cloned(),
            max_steps: None,
            control: TrainControl::default(),
            parallel: ParallelOverrides {
                devices: self.devices.map(Devices::Count),
                ..ParallelOverrides::default()
            },
        };
        let ctx = ctx.clone();
        self.job = Some(TrainingJob::start(request, backend, move || {
            ctx.request_repaint()
        }));
    }

    /// Closing the window: the run saves a checkpoint before the app exits.
    pub fn shut_down(&mut self) {
        if let Some(mut job) = self.job.take() {
            job.stop_and_wait();
        }
    }

    /// Draws the panel; the app polls the job before.
    pub fn ui(&mut self, ui: &mut egui::Ui, setup: &RunSetup) {
        self.controls_ui(ui, setup);
        ui.separator();
        self.download_ui(ui);
        self.status_ui(ui);
        ui.separator();
        plots_ui(ui, &self.progress);
        ui.separator();
        log_ui(ui, &self.progress.log);
        if self.is_active() {
            // Keep the ETA ticking between messages.
            ui.ctx().request_repaint_after(Duration::from_millis(500));
        }
    }

    fn controls_ui(&mut self, ui: &mut egui::Ui, setup: &RunSetup) {
        let RunSetup {
            config,
            problem,
            backend,
            runs_dir,
        } = *setup;
        let active = self.is_active();
        ui.horizontal(|ui| {
            let mut devices = self
                .devices
                .unwrap_or_else(|| config.parallel.devices.len())
                .max(1);
            ui.label("devices");
            let picker = egui::DragValue::new(&mut devices).range(1..=64);
            if ui
                .add_enabled(!active, picker)
                .on_hover_text(
                    "Data-parallel over the first N devices of the backend (on the CPU, N \
                     workers); optim.batch_size stays the batch over all of them",
                )
                .changed()
            {
                self.devices = Some(devices);
            }
            let can_start = !active && problem.is_none();
            if ui
                .add_enabled(can_start, egui::Button::new("▶ Start"))
                .on_hover_text("Start a new run with the Setup panel's config")
                .clicked()
            {
                let start = RunStart::Fresh {
                    runs_dir: runs_dir.to_path_buf(),
                };
                self.start(start, Some(config), backend, ui.ctx());
            }
            if let Some(job) = &self.job
                && active
            {
                let paused = job.is_paused();
                let label = if paused { "▶ Continue" } else { "⏸ Pause" };
                if ui.button(label).clicked() {
                    job.set_paused(!paused);
                    self.progress.state = if paused {
                        RunState::Running
                    } else {
                        RunState::Pausing
                    };
                }
                if ui
                    .button("■ Stop")
                    .on_hover_text("Save a checkpoint and stop")
                    .clicked()
                {
                    job.request_stop();
                    self.progress.state = RunState::Stopping;
                }
            }
            let resumable = self
                .progress
                .run_dir
                .clone()
                .filter(|d| RunDir::at(d).last_checkpoint().is_file());
            if let Some(run_dir) = resumable
                && ui
                    .add_enabled(!active, egui::Button::new("⟲ Resume"))
                    .on_hover_text(format!(
                        "Continue {} from its last checkpoint",
                        run_dir.display()
                    ))
                    .clicked()
            {
                self.start(RunStart::Resume { run_dir }, None, backend, ui.ctx());
            }
            if let Some(error) = problem {
                ui.colored_label(ui.visuals().error_fg_color, format!("Setup: {error}"));
            }
        });
    }

    /// The download before a run: file, bytes, speed, ETA, and Cancel (the part is kept, and
    /// the next Start resumes it).
    fn download_ui(&mut self, ui: &mut egui::Ui) {
        let Some(row) = &self.progress.download else {
            return;
        };
        if !self.is_active() {
            return;
        }
        let now = &row.now;
        let mut cancel = false;
        ui.horizontal_wrapped(|ui| {
            ui.strong(if now.verifying {
                "verifying"
            } else {
                "downloading"
            });
            ui.label(&now.file);
            let size = match now.total {
                Some(total) => format!("{} / {}", megabytes(now.done), megabytes(total)),
                None => megabytes(now.done),
            };
            ui.label(format!("· {size}"));
            if let Some(speed) = row.speed() {
                ui.label(format!("· {}/s", megabytes(speed as u64)));
            }
            if let Some(eta) = row.eta() {
                let secs = eta.as_secs();
                ui.label(format!("· ETA {}:{:02}", secs / 60, secs % 60));
            }
            cancel = ui
                .button("Cancel")
                .on_hover_text(
                    "Stop the download; the part downloaded is kept and the next Start resumes it",
                )
                .clicked();
        });
        if let Some(total) = now.total.filter(|t| *t > 0) {
            ui.add(egui::ProgressBar::new(now.done as f32 / total as f32).show_percentage());
        }
        if cancel && let Some(job) = &self.job {
            job.request_stop();
            self.progress.state = RunState::Stopping;
            self.progress.say(
                "download cancelled; the part downloaded is kept and the next Start resumes it"
                    .into(),
            );
        }
    }

    fn status_ui(&self, ui: &mut egui::Ui) {
        let p = &self.progress;
        let state = match &p.state {
            RunState::Idle => "idle".to_string(),
            RunState::Running => "running".to_string(),
            RunState::Pausing => "pausing (finishing the batch)".to_string(),
            RunState::Paused => "paused".to_string(),
            RunState::Stopping => "stopping (saving a checkpoint)".to_string(),
            RunState::Finished(text) => text.clone(),
            RunState::Failed(_) => "failed".to_string(),
        };
        ui.horizontal_wrapped(|ui| {
            ui.strong(state);
            if let Some(backend) = &p.backend {
                ui.label(format!("· {backend}"));
            }
            if p.total_steps > 0 {
                ui.label(format!(
                    "· step {}/{} · epoch {}",
                    p.step, p.total_steps, p.epoch
                ));
            }
            if let Some([_, loss]) = p.loss.last() {
                ui.label(format!("· loss {loss:.4}"));
            }
            if let Some([_, val]) = p.val_loss.last() {
                ui.label(format!("· val loss {val:.4}"));
            }
            if let Some([_, lr]) = p.lr.last() {
                ui.label(format!("· lr {lr:.2e}"));
            }
            if let Some(speed) = p.img_per_s {
                ui.label(format!("· {speed:.1} img/s"));
            }
            if let Some(eta) = p.eta().filter(|_| self.is_active()) {
                let secs = eta.as_secs();
                ui.label(format!("· ETA {}:{:02}", secs / 60, secs % 60));
            }
        });
        if let RunState::Failed(error) = &p.state {
            ui.colored_label(ui.visuals().error_fg_color, error);
        }
        if p.total_steps > 0 {
            ui.add(egui::ProgressBar::new(p.step as f32 / p.total_steps as f32).show_percentage());
        }
    }
}

/// The loss, learning-rate and collapse-watch curves of a run (the Run panel's, and a run
/// followed in Runs).
pub(crate) fn plots_ui(ui: &mut egui::Ui, p: &RunProgress) {
    let height = (ui.available_height() * 0.6).clamp(120.0, 320.0);
    ui.columns(3, |columns| {
        columns[0].label("KD loss (train, validation)");
        Plot::new("loss")
            .height(height)
            .legend(Legend::default())
            .x_axis_label("step")
            .show(&mut columns[0], |plot| {
                let train = PlotPoints::from(p.loss.clone());
                let val = || PlotPoints::from(p.val_loss.clone());
                plot.line(Line::new("train", train).color(TRAIN_COLOUR));
                plot.line(Line::new("validation", val()).color(VAL_COLOUR));
                plot.points(
                    Points::new("validation", val())
                        .color(VAL_COLOUR)
                        .radius(3.0),
                );
            });
        columns[1].label("learning rate");
        Plot::new("lr")
            .height(height)
            .x_axis_label("step")
            .show(&mut columns[1], |plot| {
                plot.line(Line::new("lr", PlotPoints::from(p.lr.clone())).color(TRAIN_COLOUR));
            });
        columns[2].label("collapse watch (target_var, pred_var)");
        Plot::new("spread")
            .height(height)
            .legend(Legend::default())
            .x_axis_label("step")
            .show(&mut columns[2], |plot| {
                let target = PlotPoints::from(p.target_var.clone());
                let prediction = PlotPoints::from(p.pred_var.clone());
                plot.line(Line::new("target_var", target).color(VAL_COLOUR));
                plot.line(Line::new("pred_var", prediction).color(TRAIN_COLOUR));
                if let Some(floor) = p.pred_var_floor {
                    plot.hline(
                        HLine::new("collapse.min_pred_var", floor)
                            .color(egui::Color32::from_rgb(200, 60, 60)),
                    );
                }
            });
    });
}

/// A run's log, its end in view.
pub(crate) fn log_ui(ui: &mut egui::Ui, log: &VecDeque<String>) {
    ui.label("Log");
    egui::ScrollArea::vertical()
        .stick_to_bottom(true)
        .auto_shrink([false, false])
        .show(ui, |ui| {
            for line in log {
                ui.monospace(line);
            }
        });
}

/// Bytes as MB with one decimal (the hub's and the browsers' unit: 10^6).
fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}
