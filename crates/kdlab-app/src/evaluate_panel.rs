//! The Evaluate panel: k-NN or linear probe of a checkpoint's student (and the teacher beside
//! it) on labelled images, run on a worker thread; a results table that keeps every result of
//! the run, the selected result's confusion matrix and, for the probe, its accuracy per epoch.

use std::path::{Path, PathBuf};

use egui::{ColorImage, DragValue, Grid, Sense, TextureHandle, TextureOptions, Ui, Vec2};
use egui_plot::{Line, Plot, PlotPoints};

use super::evaluate_job::{EvalJob, EvalMessage};
use super::inspect_panel::{checkpoint_labels, checkpoint_ui, preferred, runs_in};
use super::setup_panel::{folder_ui, optional_folder_ui};
use kdlab_engine::backend::BackendChoice;
use kdlab_engine::config::RunConfig;
use kdlab_engine::eval::report::EvalResult;
use kdlab_engine::eval::{
    DatasetKind, EvalConfig, EvalEvent, EvalRequest, Method, ModelSpec, Pooling, read_saved,
    results_dir,
};
use kdlab_engine::inspect::colormap::{Colormap, ValueRange, colours};
use kdlab_engine::session::RunDir;

const LOG_LINES: usize = 200;

pub struct EvaluatePanel {
    pub method: Method,
    /// The student: a run checkpoint.
    pub checkpoint: Option<PathBuf>,
    /// Also evaluate the teacher of the checkpoint's run (else of the Setup panel's config).
    pub with_teacher: bool,
    pub settings: EvalConfig,
    /// Every result shown in the table: those saved in the checkpoint's run, then new ones.
    pub results: Vec<EvalResult>,
    pub selected: Option<usize>,
    pub log: Vec<String>,
    pub error: Option<String>,
    /// (stage, done, total) of the running evaluation.
    pub progress: Option<(String, usize, usize)>,
    job: Option<EvalJob>,
    runs: Vec<(PathBuf, Vec<PathBuf>)>,
    /// The run whose saved results are in the table.
    results_of: Option<RunDir>,
    confusion_texture: Option<(String, TextureHandle)>,
}

impl Default for EvaluatePanel {
    fn default() -> Self {
        Self {
            method: Method::Knn,
            checkpoint: None,
            with_teacher: true,
            settings: EvalConfig::default(),
            results: Vec::new(),
            selected: None,
            log: Vec::new(),
            error: None,
            progress: None,
            job: None,
            runs: Vec::new(),
            results_of: None,
            confusion_texture: None,
        }
    }
}

impl EvaluatePanel {
    pub fn is_busy(&self) -> bool {
        self.job.is_some()
    }

    /// Re-reads the runs' checkpoints; keeps a valid choice, else the newest run's best.
    pub fn refresh(&mut self, runs_dir: &Path) {
        self.runs = runs_in(runs_dir);
        if self.checkpoint.as_ref().is_none_or(|c| !c.exists()) {
            self.checkpoint = self.runs.first().and_then(|(_, c)| preferred(c));
        }
        self.load_saved_results();
    }

    /// Shows the saved results of the chosen checkpoint's run (when the run changed).
    fn load_saved_results(&mut self) {
        let run = self.checkpoint.as_deref().and_then(RunDir::of_checkpoint);
        if run != self.results_of {
            let saved = run.as_ref().map(read_saved).unwrap_or_default();
            for unreadable in saved.unreadable {
                self.say(format!("warning: {unreadable}"));
            }
            self.results = saved.results;
            self.selected = self.results.len().checked_sub(1);
            self.results_of = run;
            // Nothing chosen yet: start from the data of the run's last evaluation.
            if self.settings.train.is_none()
                && let Some(last) = self.results.last()
            {
                self.settings.dataset = last.dataset;
                self.settings.train = Some(last.train.clone());
                self.settings.val = Some(last.val.clone());
            }
        }
    }

    /// Why nothing can be evaluated yet (checked every frame, so it touches no file).
    pub fn problem(&self) -> Option<String> {
        if self.checkpoint.is_none() {
            return Some("choose a student checkpoint (train a run first, or Open… a file)".into());
        }
        if self.settings.train.is_none() {
            return Some("choose the training images".into());
        }
        if self.settings.dataset == DatasetKind::Folder && self.settings.val.is_none() {
            return Some("choose the validation images (a folder of class folders)".into());
        }
        self.settings
            .problems()
            .first()
            .map(|problem| problem.to_string())
    }

    /// What Evaluate runs: the student, the teacher of its run (else of the Setup panel's
    /// config) and where the results go — the rules `kdlab eval` follows.
    pub fn request(
        &self,
        setup_config: &RunConfig,
        runs_dir: &Path,
    ) -> Result<EvalRequest, String> {
        if let Some(problem) = self.problem() {
            return Err(problem);
        }
        let Some(checkpoint) = self.checkpoint.clone() else {
            return Err("choose a student checkpoint".into());
        };
        let mut models = vec![ModelSpec::Weights {
            path: checkpoint.clone(),
            depth: None,
        }];
        if self.with_teacher {
            models.push(
                ModelSpec::teacher_of_run(&checkpoint, Some(setup_config))
                    .map_err(|e| e.to_string())?,
            );
        }
        Ok(EvalRequest {
            method: self.method,
            models,
            config: self.settings.clone(),
            out: results_dir(None, Some(&checkpoint), runs_dir),
        })
    }

    pub fn start(
        &mut self,
        setup_config: &RunConfig,
        runs_dir: &Path,
        backend: BackendChoice,
        ctx: &egui::Context,
    ) {
        match self.request(setup_config, runs_dir) {
            Ok(request) => {
                let ctx = ctx.clone();
                self.error = None;
                self.log.clear();
                self.progress = Some(("starting".into(), 0, 0));
                self.job = Some(EvalJob::start(request, backend, move || {
                    ctx.request_repaint()
                }));
            }
            Err(e) => self.error = Some(e),
        }
    }

    /// Applies the worker's messages.
    pub fn poll(&mut self) {
        let Some(job) = &self.job else { return };
        let messages: Vec<EvalMessage> = job.messages.try_iter().collect();
        for message in messages {
            match message {
                EvalMessage::Backend(name) => self.say(format!("backend {name}")),
                EvalMessage::Event(event) => self.apply(event),
                EvalMessage::Finished(outcome) => {
                    match outcome {
                        Ok(Some(_)) => self.say("done".into()),
                        Ok(None) => self.say("stopped; nothing written".into()),
                        Err(e) => {
                            self.say(format!("failed: {e}"));
                            self.error = Some(e);
                        }
                    }
                    self.progress = None;
                    self.job = None;
                }
            }
        }
    }

    fn apply(&mut self, event: EvalEvent) {
        match event {
            EvalEvent::Note(note) => self.say(note),
            EvalEvent::Skipped { path, reason } => {
                self.say(format!("warning: skipped {}: {reason}", path.display()))
            }
            EvalEvent::Progress { stage, done, total } => {
                self.progress = Some((stage, done, total));
            }
            EvalEvent::Epoch { model, line } => {
                self.progress = Some((
                    format!(
                        "{}: linear probe, loss {:.4}, val top-1 {:.1}%",
                        model.name(),
                        line.loss,
                        100.0 * line.val_top1
                    ),
                    line.epoch,
                    self.settings.linear.epochs,
                ));
            }
            EvalEvent::Finished { result, file } => {
                self.say(result.summary_line(&file));
                // A rerun of the same evaluation replaces its row.
                let same = |r: &EvalResult| {
                    (r.method, r.model, r.dataset) == (result.method, result.model, result.dataset)
                };
                self.results.retain(|r| !same(r));
                self.results.push(*result);
                self.selected = Some(self.results.len() - 1);
            }
        }
    }

    fn say(&mut self, line: String) {
        self.log.push(line);
        let excess = self.log.len().saturating_sub(LOG_LINES);
        self.log.drain(..excess);
    }

    pub fn ui(
        &mut self,
        ui: &mut Ui,
        setup_config: &RunConfig,
        runs_dir: &Path,
        backend: BackendChoice,
    ) {
        self.poll();
        ui.horizontal_top(|ui| {
            ui.vertical(|ui| {
                ui.set_max_width(620.0);
                self.form_ui(ui);
                ui.add_space(6.0);
                self.actions_ui(ui, setup_config, runs_dir, backend);
                self.log_ui(ui);
            });
            ui.separator();
            ui.vertical(|ui| self.results_ui(ui));
        });
    }

    fn form_ui(&mut self, ui: &mut Ui) {
        let labels = checkpoint_labels(&self.runs);
        let idle = self.job.is_none();
        let mut notes = Vec::new();
        ui.add_enabled_ui(idle, |ui| {
            Grid::new("evaluate-form")
                .num_columns(2)
                .spacing([12.0, 6.0])
                .show(ui, |ui| {
                    ui.label("method");
                    ui.horizontal(|ui| {
                        ui.radio_value(&mut self.method, Method::Knn, "k-NN")
                            .on_hover_text("cosine k-nearest neighbours, temperature-weighted vote (DINO)");
                        ui.radio_value(&mut self.method, Method::Linear, "linear probe")
                            .on_hover_text("LayerNorm + Linear trained on the frozen features");
                    });
                    ui.end_row();

                    ui.label("student");
                    checkpoint_ui(ui, "evaluate-checkpoint", &mut self.checkpoint, &labels, false);
                    ui.end_row();

                    ui.label("teacher");
                    ui.checkbox(&mut self.with_teacher, "evaluate the teacher beside it")
                        .on_hover_text("the teacher of the checkpoint's run (its weights, or the random demo teacher from the seed)");
                    ui.end_row();

                    let settings = &mut self.settings;
                    ui.label("dataset");
                    egui::ComboBox::from_id_salt("evaluate-dataset")
                        .selected_text(dataset_label(settings.dataset))
                        .show_ui(ui, |ui| {
                            for kind in [DatasetKind::Folder, DatasetKind::Cifar10, DatasetKind::Cifar100] {
                                ui.selectable_value(&mut settings.dataset, kind, dataset_label(kind));
                            }
                        });
                    ui.end_row();

                    ui.label("training images");
                    ui.horizontal(|ui| {
                        let mut train = settings.train.clone().unwrap_or_default();
                        folder_ui(ui, &mut train);
                        settings.train = (!train.as_os_str().is_empty()).then_some(train);
                    });
                    ui.end_row();

                    ui.label("validation images");
                    ui.horizontal(|ui| {
                        optional_folder_ui(ui, &mut settings.val);
                        if settings.dataset != DatasetKind::Folder && settings.val.is_none() {
                            ui.weak("the test split next to the training files");
                        }
                    });
                    ui.end_row();

                    ui.label("feature");
                    egui::ComboBox::from_id_salt("evaluate-pooling")
                        .selected_text(pooling_label(settings.pooling))
                        .show_ui(ui, |ui| {
                            for p in [Pooling::MeanPatch, Pooling::Cls] {
                                ui.selectable_value(&mut settings.pooling, p, pooling_label(p));
                            }
                        });
                    ui.end_row();

                    match self.method {
                        Method::Knn => {
                            ui.label("neighbours, temperature");
                            ui.horizontal(|ui| {
                                ui.add(DragValue::new(&mut settings.knn.k).range(1..=1000).prefix("k "));
                                ui.add(
                                    DragValue::new(&mut settings.knn.temperature)
                                        .range(0.001..=10.0)
                                        .speed(0.001)
                                        .prefix("T "),
                                );
                            });
                            ui.end_row();
                        }
                        Method::Linear => {
                            let mut epochs = settings.linear.epochs;
                            ui.label("epochs, warm-up, batch");
                            ui.horizontal(|ui| {
                                // As `--epochs` does: a warm-up that no longer fits is cut, and said so.
                                if ui.add(DragValue::new(&mut epochs).range(1..=1000)).changed()
                                    && let Some(note) = settings.set_linear_epochs(epochs)
                                {
                                    notes.push(note);
                                }
                                let linear = &mut settings.linear;
                                ui.add(DragValue::new(&mut linear.warmup_epochs).range(0..=999));
                                ui.add(DragValue::new(&mut linear.batch_size).range(1..=65536));
                            });
                            ui.end_row();
                            ui.label("lr, weight decay");
                            let linear = &mut settings.linear;
                            ui.horizontal(|ui| {
                                ui.add(DragValue::new(&mut linear.lr).range(1e-6..=10.0).speed(1e-4).max_decimals(6));
                                ui.add(DragValue::new(&mut linear.weight_decay).range(0.0..=1.0).speed(1e-3).max_decimals(4));
                            });
                            ui.end_row();
                        }
                    }
                });
        });
        for note in notes {
            self.say(note);
        }
        self.load_saved_results();
    }

    fn actions_ui(
        &mut self,
        ui: &mut Ui,
        setup_config: &RunConfig,
        runs_dir: &Path,
        backend: BackendChoice,
    ) {
        ui.horizontal(|ui| {
            if self.job.is_none() {
                let problem = self.problem();
                let button = ui.add_enabled(problem.is_none(), egui::Button::new("▶ Evaluate"));
                if button.clicked() {
                    self.start(setup_config, runs_dir, backend, ui.ctx());
                }
                if let Some(why) = problem {
                    ui.weak(why);
                }
                if ui.button("Load settings…").clicked()
                    && let Some(path) = rfd::FileDialog::new()
                        .add_filter("eval settings", &["ron"])
                        .set_directory("configs")
                        .pick_file()
                {
                    match EvalConfig::load(&path) {
                        Ok(settings) => self.settings = settings,
                        Err(e) => self.error = Some(e.to_string()),
                    }
                }
            } else if ui.button("■ Stop").clicked()
                && let Some(job) = &self.job
            {
                job.stop();
            }
        });
        if let Some((stage, done, total)) = &self.progress {
            let fraction = if *total > 0 {
                *done as f32 / *total as f32
            } else {
                0.0
            };
            ui.add(
                egui::ProgressBar::new(fraction)
                    .text(format!("{stage} {done}/{total}"))
                    .animate(true),
            );
        }
        if let Some(error) = &self.error {
            ui.colored_label(ui.visuals().error_fg_color, format!("⚠ {error}"));
        }
    }

    fn log_ui(&self, ui: &mut Ui) {
        egui::ScrollArea::vertical()
            .id_salt("evaluate-log")
            .max_height(160.0)
            .stick_to_bottom(true)
            .show(ui, |ui| {
                for line in &self.log {
                    ui.monospace(line);
                }
            });
    }

    fn results_ui(&mut self, ui: &mut Ui) {
        ui.heading("Results");
        if self.results.is_empty() {
            ui.weak("No evaluation of this run yet.");
            return;
        }
        Grid::new("evaluate-results")
            .striped(true)
            .spacing([14.0, 4.0])
            .show(ui, |ui| {
                for title in [
                    "model",
                    "method",
                    "dataset",
                    "top-1",
                    "top-5",
                    "thesis",
                    "train / val",
                    "time",
                ] {
                    ui.strong(title);
                }
                ui.end_row();
                for (i, r) in self.results.iter().enumerate() {
                    let selected = self.selected == Some(i);
                    if ui.selectable_label(selected, r.model.name()).clicked() {
                        self.selected = Some(i);
                    }
                    ui.label(r.method.name());
                    ui.label(r.dataset.name());
                    ui.monospace(format!("{:.2}%", 100.0 * r.top1));
                    ui.monospace(format!("{:.2}%", 100.0 * r.top5));
                    ui.monospace(
                        r.published_top1()
                            .map_or_else(|| "–".into(), |p| format!("{:.1}%", 100.0 * p)),
                    );
                    ui.label(format!("{} / {}", r.train_images, r.val_images));
                    ui.label(format!("{:.1} s", r.seconds));
                    ui.end_row();
                }
            });
        let Some(result) = self.selected.and_then(|i| self.results.get(i)).cloned() else {
            return;
        };
        ui.add_space(8.0);
        ui.label(format!(
            "{} · {} · {} classes · {} features ({}) · {}",
            result.weights,
            result.method.name(),
            result.classes,
            result.feature_dim,
            result.pooling.name(),
            result.backend
        ));
        ui.horizontal_top(|ui| {
            self.confusion_ui(ui, &result);
            if !result.history.is_empty() {
                ui.vertical(|ui| {
                    ui.label("linear probe: validation top-1 per epoch");
                    let points: Vec<[f64; 2]> = result
                        .history
                        .iter()
                        .map(|l| [l.epoch as f64, 100.0 * l.val_top1])
                        .collect();
                    Plot::new("evaluate-history")
                        .width(280.0)
                        .height(220.0)
                        .x_axis_label("epoch")
                        .y_axis_label("top-1 %")
                        .show(ui, |plot| {
                            plot.line(Line::new("val top-1", PlotPoints::from(points)))
                        });
                });
            }
        });
    }

    /// Rows: true class, columns: predicted; colour = share of the row (recall on the diagonal).
    fn confusion_ui(&mut self, ui: &mut Ui, result: &EvalResult) {
        let confusion = &result.confusion;
        let n = confusion.classes;
        if n == 0 {
            return;
        }
        let key = format!(
            "{}-{}-{}-{}",
            result.weights,
            result.method.name(),
            result.model.name(),
            result.top1
        );
        let texture = match &self.confusion_texture {
            Some((k, t)) if *k == key => t.clone(),
            _ => {
                let shares: Vec<f32> = (0..n)
                    .flat_map(|t| {
                        let row: u32 = (0..n).map(|p| confusion.get(t, p)).sum();
                        (0..n).map(move |p| (t, p, row))
                    })
                    .map(|(t, p, row)| {
                        if row == 0 {
                            0.0
                        } else {
                            confusion.get(t, p) as f32 / row as f32
                        }
                    })
                    .collect();
                let cells = colours(
                    &shares,
                    Colormap::Viridis,
                    ValueRange { min: 0.0, max: 1.0 },
                );
                let bytes: Vec<u8> = cells.into_iter().flatten().collect();
                let image = ColorImage::from_rgb([n, n], &bytes);
                let handle = ui
                    .ctx()
                    .load_texture("confusion", image, TextureOptions::NEAREST);
                self.confusion_texture = Some((key, handle.clone()));
                handle
            }
        };
        ui.vertical(|ui| {
            ui.label("confusion (rows: true class, columns: predicted)");
            let side = 240.0;
            let response = ui.add(
                egui::Image::new(&texture)
                    .fit_to_exact_size(Vec2::splat(side))
                    .sense(Sense::hover()),
            );
            ui.weak("colour: share of the true class's images, 0 (dark) to 1 (yellow)");
            if let Some(pos) = response.hover_pos() {
                let cell = |v: f32| (((v / side) * n as f32) as usize).min(n - 1);
                let (p, t) = (
                    cell(pos.x - response.rect.left()),
                    cell(pos.y - response.rect.top()),
                );
                let name = |c: usize| {
                    result
                        .class_names
                        .get(c)
                        .cloned()
                        .unwrap_or_else(|| c.to_string())
                };
                response.on_hover_text(format!(
                    "true {}, predicted {}: {} images{}",
                    name(t),
                    name(p),
                    confusion.get(t, p),
                    confusion
                        .recall(t)
                        .filter(|_| t == p)
                        .map_or_else(String::new, |r| format!(
                            " ({:.1}% of the class)",
                            100.0 * r
                        ))
                ));
            }
        });
    }
}

fn dataset_label(kind: DatasetKind) -> &'static str {
    match kind {
        DatasetKind::Folder => "image folders (<class>/<image>)",
        DatasetKind::Cifar10 => "CIFAR-10 (binary release)",
        DatasetKind::Cifar100 => "CIFAR-100 (binary release)",
    }
}

fn pooling_label(pooling: Pooling) -> &'static str {
    match pooling {
        Pooling::MeanPatch => "mean of the patch tokens (thesis)",
        Pooling::Cls => "CLS token",
    }
}
