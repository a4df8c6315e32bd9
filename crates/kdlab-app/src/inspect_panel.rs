//! The Inspect panel (SPEC.md §4): per-patch cosine or squared error over an image, for a
//! checkpoint, the difference between two checkpoints, teacher/student PCA views, and a timeline
//! over the per-epoch maps a run saved.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use egui::{ColorImage, Sense, TextureHandle, TextureOptions, Ui, Vec2};
use image::RgbImage;

use super::cka_view::{self, CkaTimeline};
use super::inspect_job::spawn;
use kdlab_engine::backend::BackendChoice;
use kdlab_engine::config::RunConfig;
use kdlab_engine::data::decode_rgb;
use kdlab_engine::data::image_file::DecodeLimits;
use kdlab_engine::data::resize::resize_bicubic;
use kdlab_engine::inspect::colormap::{Colormap, ValueRange, colours};
use kdlab_engine::inspect::patch_maps::difference;
use kdlab_engine::inspect::render::{display_side, format_value, grid_image, overlay};
use kdlab_engine::inspect::{AttentionView, HeatmapRecord, InspectRequest, Inspected, Metric};
use kdlab_engine::session::RunDir;
use kdlab_engine::session::run_dir::runs_with_checkpoints;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum View {
    /// The chosen checkpoint's map.
    Map,
    /// Checkpoint B's map minus checkpoint A's.
    Difference,
    /// Teacher and student patches as RGB in the teacher's PCA basis.
    Pca,
    /// The CLS token's attention per head in both models' last block, or rollout.
    Attention,
    /// Linear CKA of every teacher layer with every student layer, and over the epochs.
    Cka,
    /// The maps a run saved after each epoch.
    Timeline,
}

impl View {
    const ALL: [View; 6] = [
        View::Map,
        View::Difference,
        View::Pca,
        View::Attention,
        View::Cka,
        View::Timeline,
    ];

    fn label(self) -> &'static str {
        match self {
            View::Map => "Map",
            View::Difference => "Difference",
            View::Pca => "PCA",
            View::Attention => "Attention",
            View::Cka => "Layer CKA",
            View::Timeline => "Timeline",
        }
    }
}

/// What one heat picture shows.
struct HeatPicture<'a> {
    base: &'a RgbImage,
    values: Vec<f32>,
    grid: usize,
    cls: f32,
    colormap: Colormap,
    range: ValueRange,
    title: String,
}

/// A run's heatmap folders, re-read at most once a second rather than every frame (a running
/// training adds an epoch now and then).
struct TimelineListing {
    run: PathBuf,
    read_at: Instant,
    epochs: Vec<(usize, PathBuf)>,
    /// Probe stems of each epoch folder.
    stems: Vec<Vec<String>>,
}

impl TimelineListing {
    fn read(run: &Path) -> Self {
        let epochs = RunDir::at(run).heatmap_epochs();
        let stems = epochs
            .iter()
            .map(|(_, dir)| RunDir::probe_stems(dir))
            .collect();
        Self {
            run: run.to_path_buf(),
            read_at: Instant::now(),
            epochs,
            stems,
        }
    }

    fn is_fresh_for(&self, run: &Path) -> bool {
        self.run == run && self.read_at.elapsed() < Duration::from_secs(1)
    }
}

/// What an analysis was asked for, on which backend: a new one starts when this changes.
#[derive(Debug, Clone, PartialEq)]
struct Asked {
    backend: BackendChoice,
    request: InspectRequest,
}

impl Asked {
    fn without_comparison(&self) -> Self {
        let mut plain = self.clone();
        plain.request.compare = None;
        plain
    }
}

/// Run directories that hold checkpoints, newest first, as (folder, checkpoints).
pub(super) fn runs_in(runs_dir: &Path) -> Vec<(PathBuf, Vec<PathBuf>)> {
    runs_with_checkpoints(runs_dir)
        .into_iter()
        .map(|(run, checkpoints)| (run.root().to_path_buf(), checkpoints))
        .collect()
}

/// A run's saved map for one probe image and epoch, with the image it was computed on.
struct TimelineFrame {
    json: PathBuf,
    record: HeatmapRecord,
    display: RgbImage,
}

pub struct InspectPanel {
    pub image: Option<PathBuf>,
    /// None: the student as the config builds it (before training).
    pub checkpoint: Option<PathBuf>,
    pub compare: Option<PathBuf>,
    pub view: View,
    pub metric: Metric,
    pub opacity: f32,
    /// Colour range from this image's values instead of the fixed range.
    pub fit_range: bool,
    pub timeline_run: Option<PathBuf>,
    pub timeline_epoch: usize,
    pub timeline_stem: Option<String>,
    /// What the Attention view shows.
    pub attention_view: AttentionView,
    /// The CKA cell picked for the timeline: (teacher layer, student layer), from 0.
    pub cka_cell: (usize, usize),
    cka_timeline: Option<CkaTimeline>,
    candidates: Vec<PathBuf>,
    runs: Vec<(PathBuf, Vec<PathBuf>)>,
    pending: Option<(Asked, Receiver<Result<Inspected, String>>)>,
    shown: Option<(Asked, Result<Inspected, String>)>,
    frame: Option<TimelineFrame>,
    listing: Option<TimelineListing>,
    /// Bumped whenever what is shown changes; part of every texture key.
    generation: u64,
    textures: HashMap<&'static str, (String, TextureHandle)>,
}

impl Default for InspectPanel {
    fn default() -> Self {
        Self {
            image: None,
            checkpoint: None,
            compare: None,
            view: View::Map,
            metric: Metric::Cosine,
            opacity: 0.7,
            fit_range: false,
            timeline_run: None,
            // Clamped to the newest epoch when the run is read.
            timeline_epoch: usize::MAX,
            timeline_stem: None,
            attention_view: AttentionView::HeadMean,
            cka_cell: (usize::MAX, usize::MAX),
            cka_timeline: None,
            candidates: Vec::new(),
            runs: Vec::new(),
            pending: None,
            shown: None,
            frame: None,
            listing: None,
            generation: 0,
            textures: HashMap::new(),
        }
    }
}

impl InspectPanel {
    /// Re-reads the image candidates (assets/, the config's validation or training folder) and
    /// the runs' checkpoints; keeps a valid selection, else picks the first image and the
    /// newest checkpoint.
    pub fn refresh(&mut self, config: &RunConfig, runs_dir: &Path) {
        let mut candidates = folder_images(Path::new("assets"), 32);
        for folder in [
            config.data.val.as_deref(),
            Some(config.data.train.as_path()),
        ]
        .into_iter()
        .flatten()
        {
            candidates.extend(folder_images(folder, 32));
        }
        candidates.dedup();
        self.candidates = candidates;
        if self.image.is_none() {
            self.image = self.candidates.first().cloned();
        }
        self.runs = runs_in(runs_dir);
        if self.checkpoint.as_ref().is_none_or(|c| !c.exists()) {
            self.checkpoint = self.runs.first().and_then(|(_, c)| preferred(c));
        }
        if self.timeline_run.as_ref().is_none_or(|r| !r.exists()) {
            self.timeline_run = self
                .checkpoint
                .as_deref()
                .and_then(RunDir::of_checkpoint)
                .map(|run| run.root().to_path_buf())
                .or_else(|| self.runs.first().map(|(r, _)| r.clone()));
        }
    }

    /// True while an analysis is being computed.
    pub fn is_busy(&self) -> bool {
        self.pending.is_some()
    }

    /// The finished analysis, if the last one succeeded.
    pub fn inspected(&self) -> Option<&Inspected> {
        self.shown.as_ref().and_then(|(_, r)| r.as_ref().ok())
    }

    pub fn ui(&mut self, ui: &mut Ui, config: &RunConfig, backend: BackendChoice) {
        self.poll();
        self.controls_ui(ui);
        ui.separator();
        if self.view == View::Timeline {
            self.timeline_ui(ui);
        } else {
            self.request(config, backend, ui.ctx());
            self.analysis_ui(ui);
        }
    }

    fn poll(&mut self) {
        if let Some((request, receiver)) = &self.pending
            && let Ok(result) = receiver.try_recv()
        {
            self.shown = Some((request.clone(), result));
            self.pending = None;
            self.generation += 1;
        }
    }

    /// Starts an analysis when the selection changed and none is running.
    fn request(&mut self, config: &RunConfig, backend: BackendChoice, ctx: &egui::Context) {
        let Some(image) = self.image.clone() else {
            return;
        };
        let request = Asked {
            backend,
            request: InspectRequest {
                config: config.clone(),
                image,
                checkpoint: self.checkpoint.clone(),
                compare: (self.view == View::Difference)
                    .then(|| self.compare.clone())
                    .flatten(),
            },
        };
        let current = self.shown.as_ref().map(|(r, _)| r);
        let needed = current != Some(&request)
            // Switching to Map or PCA does not need the comparison run again.
            && !(request.request.compare.is_none()
                && current.is_some_and(|c| c.without_comparison() == request));
        if needed && self.pending.is_none() {
            let ctx = ctx.clone();
            let receiver = spawn(request.request.clone(), backend, move || {
                ctx.request_repaint()
            });
            self.pending = Some((request, receiver));
        }
    }

    fn controls_ui(&mut self, ui: &mut Ui) {
        ui.horizontal(|ui| {
            for view in View::ALL {
                ui.selectable_value(&mut self.view, view, view.label());
            }
            ui.separator();
            if !matches!(self.view, View::Attention | View::Cka) {
                for metric in Metric::ALL {
                    ui.radio_value(&mut self.metric, metric, metric.label());
                }
            }
            ui.separator();
            ui.add(egui::Slider::new(&mut self.opacity, 0.0..=1.0).text("opacity"));
            ui.checkbox(&mut self.fit_range, "fit colours to values")
                .on_hover_text("off: fixed ranges (cosine 0–1, error 0–2), comparable across images and epochs");
        });
        if self.view == View::Timeline {
            return;
        }
        egui::Grid::new("inspect-choices")
            .num_columns(2)
            .show(ui, |ui| {
                ui.label("image");
                ui.horizontal(|ui| {
                    let shown = self.image.as_deref().map_or("none".into(), short_name);
                    egui::ComboBox::from_id_salt("image")
                        .selected_text(shown)
                        .width(280.0)
                        .show_ui(ui, |ui| {
                            for path in &self.candidates {
                                ui.selectable_value(
                                    &mut self.image,
                                    Some(path.clone()),
                                    short_name(path),
                                );
                            }
                        });
                    if ui.button("Open image…").clicked()
                        && let Some(path) = rfd::FileDialog::new().pick_file()
                    {
                        self.image = Some(path);
                    }
                });
                ui.end_row();
                let labels = checkpoint_labels(&self.runs);
                ui.label(if self.view == View::Difference {
                    "checkpoint A"
                } else {
                    "checkpoint"
                });
                checkpoint_ui(ui, "checkpoint", &mut self.checkpoint, &labels, true);
                ui.end_row();
                if self.view == View::Difference {
                    ui.label("checkpoint B");
                    checkpoint_ui(ui, "compare", &mut self.compare, &labels, false);
                    ui.end_row();
                }
            });
    }

    fn analysis_ui(&mut self, ui: &mut Ui) {
        if self.pending.is_some() {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label("running teacher and student…");
            });
        }
        let Some((request, result)) = &self.shown else {
            return;
        };
        let inspected = match result {
            Ok(inspected) => inspected.clone(),
            Err(error) => {
                ui.colored_label(ui.visuals().error_fg_color, error);
                return;
            }
        };
        let source = request
            .request
            .checkpoint
            .as_deref()
            .map_or("initial student".into(), short_name);
        match self.view {
            View::Map => {
                let maps = &inspected.analysis.maps;
                let values = maps.values(self.metric).to_vec();
                let picture = HeatPicture {
                    base: &inspected.image.display,
                    range: self.range(self.metric, &values),
                    values,
                    grid: maps.grid,
                    cls: maps.cls(self.metric),
                    colormap: Colormap::for_metric(self.metric),
                    title: format!("{} · {source}", self.metric.label()),
                };
                self.heat_ui(ui, &picture);
            }
            View::Difference => {
                let Some(compared) = &inspected.compared else {
                    ui.label("Choose checkpoint B to see where it gains or loses against A.");
                    return;
                };
                let Some((values, cls)) =
                    difference(&inspected.analysis.maps, &compared.maps, self.metric)
                else {
                    ui.label("The two checkpoints have different patch grids.");
                    return;
                };
                let picture = HeatPicture {
                    base: &inspected.image.display,
                    range: ValueRange::symmetric(&values),
                    values,
                    grid: compared.maps.grid,
                    cls,
                    colormap: Colormap::Diverging,
                    title: format!("{}: B − A", self.metric.label()),
                };
                self.heat_ui(ui, &picture);
            }
            View::Pca => self.pca_ui(ui, &inspected),
            View::Attention => self.attention_ui(ui, &inspected, &source),
            View::Cka => self.cka_ui(ui, &inspected, &source),
            View::Timeline => {}
        }
    }

    fn range(&self, metric: Metric, values: &[f32]) -> ValueRange {
        if self.fit_range {
            ValueRange::fitted(values)
        } else {
            ValueRange::fixed(metric)
        }
    }

    /// A texture for `slot`, rebuilt only when `key` changes.
    fn texture(
        &mut self,
        ctx: &egui::Context,
        slot: &'static str,
        key: String,
        make: impl FnOnce() -> RgbImage,
    ) -> TextureHandle {
        if let Some((k, handle)) = self.textures.get(slot)
            && *k == key
        {
            return handle.clone();
        }
        let picture = make();
        let colour = ColorImage::from_rgb(
            [picture.width() as usize, picture.height() as usize],
            picture.as_raw(),
        );
        let handle = ctx.load_texture(slot, colour, TextureOptions::NEAREST);
        self.textures.insert(slot, (key, handle.clone()));
        handle
    }

    fn picture_side(ui: &Ui, panels: f32) -> f32 {
        ((ui.available_width() - 140.0) / panels).clamp(128.0, 448.0)
    }

    /// The image and its overlay side by side, the CLS value, hover readout and the legend.
    fn heat_ui(&mut self, ui: &mut Ui, picture: &HeatPicture) {
        let ctx = ui.ctx().clone();
        let key = format!(
            "{}-{:?}-{:?}-{}-{:?}-{:?}",
            self.generation, self.view, self.metric, self.opacity, picture.range, picture.colormap
        );
        let base = self.texture(
            &ctx,
            "image",
            format!("{}-{:?}", self.generation, self.view),
            || picture.base.clone(),
        );
        let opacity = self.opacity;
        let heat = self.texture(&ctx, "overlay", key, || {
            overlay(
                picture.base,
                &picture.values,
                picture.grid,
                picture.colormap,
                picture.range,
                opacity,
            )
        });
        let legend = self.texture(&ctx, "legend", format!("{:?}", picture.colormap), || {
            legend_strip(picture.colormap)
        });
        let side = Self::picture_side(ui, 2.0);
        ui.strong(&picture.title);
        ui.horizontal_top(|ui| {
            ui.add(egui::Image::from_texture((base.id(), Vec2::splat(side))));
            let response = ui.add(
                egui::Image::from_texture((heat.id(), Vec2::splat(side))).sense(Sense::hover()),
            );
            patch_readout(response, picture.grid, &picture.values, side);
            ui.vertical(|ui| {
                ui.label("CLS token");
                ui.heading(format_value(picture.cls));
                let mean = picture.values.iter().sum::<f32>() / picture.values.len().max(1) as f32;
                ui.label("patch mean");
                ui.heading(format_value(mean));
            });
        });
        legend_ui(ui, &legend, picture.range, side, 1);
    }

    /// The image, the teacher's and the student's map of the picked head (or their mean, or
    /// rollout), in one colour range so the two compare.
    fn attention_ui(&mut self, ui: &mut Ui, inspected: &Inspected, source: &str) {
        let attention = &inspected.attention;
        let heads = attention
            .teacher
            .heads
            .len()
            .max(attention.student.heads.len());
        ui.horizontal(|ui| {
            ui.label("show");
            let mut views = vec![AttentionView::HeadMean];
            views.extend((0..heads).map(AttentionView::Head));
            views.push(AttentionView::Rollout);
            egui::ComboBox::from_id_salt("attention-view")
                .selected_text(self.attention_view.label())
                .show_ui(ui, |ui| {
                    for view in views {
                        ui.selectable_value(&mut self.attention_view, view, view.label());
                    }
                })
                .response
                .on_hover_text(
                    "the CLS token's attention over the patches in the last block, per head or \
                     averaged; rollout: all blocks, heads averaged, with the residual (Abnar & \
                     Zuidema 2020)",
                );
        });
        let view = self.attention_view;
        let (teacher, student) = (
            view.values(&attention.teacher),
            view.values(&attention.student),
        );
        if teacher.is_empty() || student.is_empty() {
            ui.label(format!("a model has no {}", view.label()));
            return;
        }
        let range = ValueRange::fitted(&[teacher.as_slice(), student.as_slice()].concat());
        let (grid, opacity, display) = (attention.grid, self.opacity, &inspected.image.display);
        let ctx = ui.ctx().clone();
        let key = format!("{}-{view:?}-{opacity}", self.generation);
        let base = self.texture(
            &ctx,
            "image",
            format!("{}-{:?}", self.generation, self.view),
            || display.clone(),
        );
        let heat =
            |values: &[f32]| overlay(display, values, grid, Colormap::Inferno, range, opacity);
        let teacher_map = self.texture(&ctx, "attention-teacher", key.clone(), || heat(&teacher));
        let student_map = self.texture(&ctx, "attention-student", key, || heat(&student));
        let legend = self.texture(&ctx, "legend", format!("{:?}", Colormap::Inferno), || {
            legend_strip(Colormap::Inferno)
        });
        let side = Self::picture_side(ui, 3.0);
        ui.strong(format!(
            "CLS attention over the patches: {} · {source}",
            view.label()
        ));
        ui.horizontal_top(|ui| {
            for (caption, texture, values) in [
                ("image", &base, None),
                ("teacher", &teacher_map, Some(&teacher)),
                ("student", &student_map, Some(&student)),
            ] {
                ui.vertical(|ui| {
                    ui.label(caption);
                    let image = egui::Image::from_texture((texture.id(), Vec2::splat(side)));
                    let response = ui.add(image.sense(Sense::hover()));
                    if let Some(values) = values {
                        patch_readout(response, grid, values, side);
                    }
                });
            }
        });
        legend_ui(ui, &legend, range, side, 1);
    }

    /// The image's layer CKA (teacher × student) and, for the run, the picked cell over epochs.
    fn cka_ui(&mut self, ui: &mut Ui, inspected: &Inspected, source: &str) {
        let matrix = &inspected.cka;
        self.cka_cell = (
            self.cka_cell.0.min(matrix.teacher_layers.saturating_sub(1)),
            self.cka_cell.1.min(matrix.student_layers.saturating_sub(1)),
        );
        ui.strong(format!(
            "linear CKA over this image's {} tokens · {source} · rows: teacher layers, columns: \
             student layers (click a cell for its timeline)",
            inspected.analysis.maps.grid.pow(2) + 1
        ));
        ui.horizontal_top(|ui| {
            ui.vertical(|ui| cka_view::matrix_ui(ui, matrix, &mut self.cka_cell));
            ui.vertical(|ui| {
                let Some(run) = self.timeline_run.clone() else {
                    ui.label("No run yet: the timeline needs a run's per-epoch probe CKA.");
                    return;
                };
                if self
                    .cka_timeline
                    .as_ref()
                    .is_none_or(|t| !t.is_fresh_for(&run))
                {
                    self.cka_timeline = Some(CkaTimeline::read(&run));
                }
                match &self.cka_timeline {
                    Some(timeline) if !timeline.epochs.is_empty() => {
                        cka_view::timeline_ui(ui, timeline, self.cka_cell);
                    }
                    _ => {
                        ui.label(format!(
                            "{} has no heatmaps/epoch-NNN/cka.csv yet.",
                            short_name(&run)
                        ));
                    }
                }
            });
        });
    }

    fn pca_ui(&mut self, ui: &mut Ui, inspected: &Inspected) {
        let ctx = ui.ctx().clone();
        let grid = inspected.analysis.maps.grid;
        let side_px = inspected.image.display.width();
        let base = self.texture(
            &ctx,
            "image",
            format!("{}-{:?}", self.generation, self.view),
            || inspected.image.display.clone(),
        );
        let teacher = self.texture(&ctx, "pca-teacher", self.generation.to_string(), || {
            grid_image(&inspected.pca.0, grid, side_px)
        });
        let student = self.texture(&ctx, "pca-student", self.generation.to_string(), || {
            grid_image(&inspected.pca.1, grid, side_px)
        });
        let side = Self::picture_side(ui, 3.0);
        ui.strong("First three principal components of the teacher's patches as RGB; the student's patches in the same basis");
        ui.horizontal_top(|ui| {
            for (caption, texture) in [
                ("image", &base),
                ("teacher", &teacher),
                ("student", &student),
            ] {
                ui.vertical(|ui| {
                    ui.label(caption);
                    ui.add(egui::Image::from_texture((texture.id(), Vec2::splat(side))));
                });
            }
        });
    }

    fn timeline_ui(&mut self, ui: &mut Ui) {
        let run_labels: Vec<PathBuf> = self.runs.iter().map(|(r, _)| r.clone()).collect();
        ui.horizontal(|ui| {
            ui.label("run");
            egui::ComboBox::from_id_salt("timeline-run")
                .selected_text(
                    self.timeline_run
                        .as_deref()
                        .map_or("none".into(), short_name),
                )
                .show_ui(ui, |ui| {
                    for run in &run_labels {
                        ui.selectable_value(
                            &mut self.timeline_run,
                            Some(run.clone()),
                            short_name(run),
                        );
                    }
                });
        });
        let Some(run) = self.timeline_run.clone() else {
            ui.label("No run with checkpoints yet: start one in the Run panel.");
            return;
        };
        if self.listing.as_ref().is_none_or(|l| !l.is_fresh_for(&run)) {
            self.listing = Some(TimelineListing::read(&run));
        }
        let Some(listing) = &self.listing else { return };
        let epochs = listing.epochs.clone();
        if epochs.is_empty() {
            ui.label(format!(
                "{} has no heatmaps/ yet (probe.count is 0, or no epoch has finished).",
                run.display()
            ));
            return;
        }
        self.timeline_epoch = self.timeline_epoch.min(epochs.len() - 1);
        let (epoch, dir) = epochs[self.timeline_epoch].clone();
        let stems = listing.stems[self.timeline_epoch].clone();
        if self
            .timeline_stem
            .as_ref()
            .is_none_or(|s| !stems.contains(s))
        {
            self.timeline_stem = stems.first().cloned();
        }
        ui.horizontal(|ui| {
            ui.label("probe image");
            egui::ComboBox::from_id_salt("timeline-image")
                .selected_text(self.timeline_stem.clone().unwrap_or_default())
                .show_ui(ui, |ui| {
                    for stem in &stems {
                        ui.selectable_value(&mut self.timeline_stem, Some(stem.clone()), stem);
                    }
                });
            ui.label("epoch");
            ui.add(
                egui::Slider::new(&mut self.timeline_epoch, 0..=epochs.len() - 1).custom_formatter(
                    |i, _| {
                        epochs
                            .get(i as usize)
                            .map_or(String::new(), |(e, _)| e.to_string())
                    },
                ),
            );
        });
        let Some(stem) = self.timeline_stem.clone() else {
            return;
        };
        let json = dir.join(format!("{stem}.json"));
        if self.frame.as_ref().is_none_or(|f| f.json != json) {
            match load_frame(&json) {
                Ok(frame) => {
                    self.frame = Some(frame);
                    self.generation += 1;
                }
                Err(error) => {
                    ui.colored_label(ui.visuals().error_fg_color, format!("{error:#}"));
                    return;
                }
            }
        }
        let Some(frame) = self.frame.take() else {
            return;
        };
        let maps = frame.record.maps();
        let values = maps.values(self.metric).to_vec();
        let step = frame
            .record
            .step
            .map_or(String::new(), |s| format!(", step {s}"));
        let picture = HeatPicture {
            base: &frame.display,
            range: self.range(self.metric, &values),
            values,
            grid: maps.grid,
            cls: maps.cls(self.metric),
            colormap: Colormap::for_metric(self.metric),
            title: format!("{} after epoch {epoch}{step}", self.metric.label()),
        };
        self.heat_ui(ui, &picture);
        self.frame = Some(frame);
    }
}

fn load_frame(json: &Path) -> anyhow::Result<TimelineFrame> {
    let record = HeatmapRecord::read(json)?;
    let side = display_side(record.grid);
    let display = resize_bicubic(
        &decode_rgb(&record.image, DecodeLimits::default())?,
        side,
        side,
    );
    Ok(TimelineFrame {
        json: json.to_path_buf(),
        record,
        display,
    })
}

/// The value of the hovered patch, by row and column.
fn patch_readout(response: egui::Response, grid: usize, values: &[f32], side: f32) {
    let Some(pos) = response.hover_pos() else {
        return;
    };
    let rel = (pos - response.rect.min) / side;
    let column = ((rel.x * grid as f32) as usize).min(grid.saturating_sub(1));
    let row = ((rel.y * grid as f32) as usize).min(grid.saturating_sub(1));
    if let Some(value) = values.get(row * grid + column) {
        response.on_hover_text_at_pointer(format!(
            "patch row {row}, column {column} (token {}): {}",
            1 + row * grid + column,
            format_value(*value)
        ));
    }
}

/// The colour bar with its range under the picture in column `column` (0 = the first).
fn legend_ui(ui: &mut Ui, legend: &TextureHandle, range: ValueRange, side: f32, column: usize) {
    ui.horizontal(|ui| {
        ui.add_space(column as f32 * (side + ui.spacing().item_spacing.x));
        ui.vertical(|ui| {
            ui.add(egui::Image::from_texture((
                legend.id(),
                Vec2::new(side, 14.0),
            )));
            ui.horizontal(|ui| {
                ui.label(format_value(range.min));
                let mid = format_value((range.min + range.max) / 2.0);
                let gap = (side - 3.0 * 40.0).max(0.0) / 2.0;
                ui.add_space(gap);
                ui.label(mid);
                ui.add_space(gap);
                ui.label(format_value(range.max));
            });
        });
    });
}

/// A colour map as a 256 × 1 strip.
fn legend_strip(colormap: Colormap) -> RgbImage {
    let values: Vec<f32> = (0..256).map(|i| i as f32 / 255.0).collect();
    let cells = colours(&values, colormap, ValueRange { min: 0.0, max: 1.0 });
    RgbImage::from_fn(256, 1, |x, _| image::Rgb(cells[x as usize]))
}

/// `best` when the run has one (lowest validation loss), else its first checkpoint.
pub(super) fn preferred(checkpoints: &[PathBuf]) -> Option<PathBuf> {
    checkpoints
        .iter()
        .find(|c| c.file_stem().is_some_and(|s| s == "best"))
        .or_else(|| checkpoints.first())
        .cloned()
}

pub(super) fn checkpoint_labels(runs: &[(PathBuf, Vec<PathBuf>)]) -> Vec<(PathBuf, String)> {
    runs.iter()
        .flat_map(|(run, checkpoints)| {
            checkpoints.iter().map(move |c| {
                (
                    c.clone(),
                    format!("{} / {}", short_name(run), short_name(c)),
                )
            })
        })
        .collect()
}

pub(super) fn checkpoint_ui(
    ui: &mut Ui,
    id: &str,
    selected: &mut Option<PathBuf>,
    labels: &[(PathBuf, String)],
    allow_initial: bool,
) {
    ui.horizontal(|ui| {
        let text = match selected.as_ref() {
            Some(path) => labels
                .iter()
                .find(|(p, _)| p == path)
                .map_or_else(|| path.display().to_string(), |(_, l)| l.clone()),
            None if allow_initial => "initial student (from the config)".into(),
            None => "none".into(),
        };
        egui::ComboBox::from_id_salt(id)
            .selected_text(text)
            .width(360.0)
            .show_ui(ui, |ui| {
                let none = if allow_initial {
                    "initial student (from the config)"
                } else {
                    "none"
                };
                ui.selectable_value(selected, None, none);
                for (path, label) in labels {
                    ui.selectable_value(selected, Some(path.clone()), label);
                }
            });
        if ui.button("Open…").clicked()
            && let Some(path) = rfd::FileDialog::new()
                .add_filter("checkpoint", &["safetensors"])
                .pick_file()
        {
            *selected = Some(path);
        }
    });
}

fn short_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// The first `limit` files of a folder in `ImageFolder` order (flat, or `<class>/` sub-folders),
/// reading no more of the folder than that: an ImageNet train folder lists in milliseconds.
fn folder_images(folder: &Path, limit: usize) -> Vec<PathBuf> {
    let sorted = |dir: &Path| -> Vec<PathBuf> {
        let mut children: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        children.sort();
        children
            .into_iter()
            .filter(|p| {
                !p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect()
    };
    let mut found = Vec::new();
    for child in sorted(folder) {
        if found.len() >= limit {
            break;
        }
        if child.is_dir() {
            found.extend(
                sorted(&child)
                    .into_iter()
                    .filter(|p| is_image_name(p))
                    .take(limit - found.len()),
            );
        } else if is_image_name(&child) {
            found.push(child);
        }
    }
    found
}

/// Files the Inspect image list offers (the decoder decides for "Open image…").
fn is_image_name(path: &Path) -> bool {
    path.extension().is_some_and(|e| {
        matches!(
            e.to_ascii_lowercase().to_str(),
            Some("jpg" | "jpeg" | "png" | "bmp" | "gif" | "tif" | "tiff" | "webp")
        )
    })
}
