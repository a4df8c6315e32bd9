//! The Runs panel: every run of the runs folder — started here, by `kdlab --no-gui train` in
//! another process, or on a server whose run folder is mounted or synced — with its state, where
//! it stands and its models; the selected run followed live (its curves and log) while whoever
//! trains it writes its folder. The folder is read by a worker (`RunsWatch`); drawing reads no
//! file.

use std::path::{Path, PathBuf};

use kdlab_engine::session::run_status::RunStatus;
use kdlab_engine::session::runs::{Poll, RunState, RunSummary, differences};

use super::run_panel::{RunProgress, log_ui, plots_ui};
use super::runs_watch::{RunsWatch, Update};

#[derive(Default)]
pub struct RunsPanel {
    pub runs: Vec<RunSummary>,
    /// Per run, the settings that set it apart from the others (`runs::differences`).
    pub differences: Vec<Vec<String>>,
    /// Why the folder cannot be listed (not a folder, no permission, …).
    pub listing_error: Option<String>,
    /// Whether the worker has listed the folder yet (until then the list is not "empty").
    pub listed: bool,
    pub selected: Option<PathBuf>,
    /// The selected run's curves and log, from its files.
    pub followed: RunProgress,
    watch: Option<RunsWatch>,
}

impl RunsPanel {
    /// Takes in what the worker found; starts it (again) for `runs_dir`.
    pub fn poll(&mut self, runs_dir: &Path, ctx: &egui::Context) {
        if self.watch.as_ref().map(|w| w.runs_dir.as_path()) != Some(runs_dir) {
            let ctx = ctx.clone();
            self.watch = Some(RunsWatch::start(runs_dir.to_path_buf(), move || {
                ctx.request_repaint()
            }));
            self.runs.clear();
            self.listing_error = None;
            self.listed = false;
            self.select(None);
        }
        let Some(watch) = &self.watch else { return };
        for update in watch.drain() {
            match update {
                Update::Listing(Ok(runs)) => {
                    self.listed = true;
                    self.differences = differences(&runs);
                    self.runs = runs;
                    self.listing_error = None;
                    // Opened on a folder: the newest run is followed at once (a headless run
                    // just started, most often).
                    if self.selected.is_none()
                        && let Some(newest) = self
                            .runs
                            .iter()
                            .filter(|r| r.is_run)
                            .max_by(|a, b| a.started.cmp(&b.started))
                    {
                        let newest = newest.dir.clone();
                        self.select(Some(newest));
                    }
                }
                Update::Listing(Err(error)) => {
                    self.listed = true;
                    self.runs.clear();
                    self.listing_error = Some(error);
                }
                Update::Metrics { run, poll } if Some(&run) == self.selected.as_ref() => {
                    let lines = match poll {
                        Poll::More(lines) => lines,
                        Poll::Restarted(lines) => {
                            self.followed.clear_curves();
                            lines
                        }
                        Poll::Missing => {
                            self.followed.clear_curves();
                            Vec::new()
                        }
                    };
                    for line in &lines {
                        self.followed.add_metrics(line);
                    }
                }
                Update::Log { run, lines } if Some(&run) == self.selected.as_ref() => {
                    self.followed.log = lines.into();
                }
                Update::Metrics { .. } | Update::Log { .. } => {}
            }
        }
    }

    /// Follows `run` (or none): its curves and log start over.
    pub fn select(&mut self, run: Option<PathBuf>) {
        self.followed = RunProgress::default();
        self.selected = run.clone();
        if let Some(watch) = &self.watch {
            watch.follow(run);
        }
    }

    pub fn ui(&mut self, ui: &mut egui::Ui, runs_dir: &Path) {
        ui.horizontal(|ui| {
            ui.heading("Runs");
            ui.weak(runs_dir.display().to_string());
        });
        if let Some(error) = &self.listing_error {
            ui.colored_label(ui.visuals().error_fg_color, error);
        }
        let mut clicked = None;
        egui::ScrollArea::both()
            .id_salt("runs-list")
            .max_height((ui.available_height() * 0.4).max(120.0))
            .show(ui, |ui| {
                egui::Grid::new("runs")
                    .striped(true)
                    .num_columns(10)
                    .show(ui, |ui| {
                        for header in [
                            "run",
                            "state",
                            "step",
                            "epoch",
                            "loss",
                            "val loss",
                            "started (UTC)",
                            "differs in",
                            "teacher",
                            "student",
                        ] {
                            ui.strong(header);
                        }
                        ui.end_row();
                        for (i, run) in self.runs.iter().enumerate() {
                            let selected = self.selected.as_ref() == Some(&run.dir);
                            if ui.selectable_label(selected, &run.name).clicked() && run.is_run {
                                clicked = Some(run.dir.clone());
                            }
                            state_ui(ui, run, Some(36));
                            let number =
                                |v: Option<usize>| v.map_or("–".into(), |v| v.to_string());
                            ui.label(number(run.step));
                            ui.label(number(run.epoch));
                            let figure =
                                |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.4}"));
                            ui.label(figure(run.loss));
                            ui.label(figure(run.val_loss));
                            ui.label(run.started.as_deref().map_or("–".into(), readable_stamp));
                            let differs = self.differences.get(i).map_or(&[][..], |d| &d[..]);
                            let shown: Vec<&str> =
                                differs.iter().take(3).map(String::as_str).collect();
                            let text = match differs.len().saturating_sub(3) {
                                0 => shown.join(", "),
                                more => format!("{}, and {more} more", shown.join(", ")),
                            };
                            ui.label(text).on_hover_text(differs.join("\n"));
                            ui.label(run.teacher.as_deref().unwrap_or("–"));
                            ui.label(run.student.as_deref().unwrap_or("–"));
                            ui.end_row();
                            if !run.problems.is_empty() {
                                ui.label("");
                                ui.colored_label(
                                    ui.visuals().warn_fg_color,
                                    run.problems.join("; "),
                                );
                                ui.end_row();
                            }
                        }
                    });
                if self.listed && self.runs.is_empty() && self.listing_error.is_none() {
                    ui.weak(
                        "no runs yet: start one in Run, or point the runs folder at a server's",
                    );
                }
            });
        if let Some(run) = clicked {
            self.select(Some(run));
        }
        ui.separator();
        match &self.selected {
            None => {
                ui.weak("select a run to follow its curves and log");
            }
            Some(dir) => {
                if let Some(run) = self.runs.iter().find(|r| &r.dir == dir) {
                    ui.horizontal_wrapped(|ui| {
                        ui.strong(&run.name);
                        state_ui(ui, run, None);
                    });
                }
                plots_ui(ui, &self.followed);
                ui.separator();
                log_ui(ui, &self.followed.log);
            }
        }
    }
}

/// The state in a word or two, coloured: running ones green, failed red, abandoned amber; cut
/// to `at_most` characters (the list) or whole (the opened run).
fn state_ui(ui: &mut egui::Ui, run: &RunSummary, at_most: Option<usize>) {
    let (mut text, colour) = describe(&run.state);
    if let Some(n) = at_most
        && text.chars().count() > n
    {
        text = text.chars().take(n).chain(['…']).collect();
    }
    let colour = match colour {
        Tone::Live => egui::Color32::from_rgb(60, 170, 90),
        Tone::Bad => ui.visuals().error_fg_color,
        Tone::Warn => ui.visuals().warn_fg_color,
        Tone::Plain => ui.visuals().text_color(),
    };
    ui.colored_label(colour, text);
}

enum Tone {
    Live,
    Bad,
    Warn,
    Plain,
}

fn describe(state: &RunState) -> (String, Tone) {
    match state {
        RunState::Running { pid, host } => (
            match (pid, host) {
                (Some(pid), _) if *pid == std::process::id() => "running in this app".into(),
                (Some(pid), Some(host)) => format!("running (process {pid} on {host})"),
                _ => "running".into(),
            },
            Tone::Live,
        ),
        RunState::Active { ago } => (format!("being written (changed {ago} s ago)"), Tone::Live),
        RunState::Ended(RunStatus::Finished { .. }) => ("finished".into(), Tone::Plain),
        RunState::Ended(RunStatus::ReachedMaxSteps { step, .. }) => {
            (format!("stopped at its step limit ({step})"), Tone::Plain)
        }
        RunState::Ended(RunStatus::Interrupted { step, .. }) => {
            (format!("interrupted at step {step}"), Tone::Plain)
        }
        RunState::Ended(RunStatus::Failed { message, .. }) => {
            (format!("failed: {message}"), Tone::Bad)
        }
        RunState::Ended(RunStatus::Running { .. }) => ("running".into(), Tone::Live),
        RunState::Abandoned => ("stopped without a word (killed?)".into(), Tone::Warn),
        RunState::Unknown => ("–".into(), Tone::Plain),
    }
}

/// `YYYYMMDD-HHMMSS` (UTC) as `YYYY-MM-DD HH:MM`.
fn readable_stamp(stamp: &str) -> String {
    let part = |range: std::ops::Range<usize>| stamp.get(range);
    match (
        part(0..4),
        part(4..6),
        part(6..8),
        part(9..11),
        part(11..13),
    ) {
        (Some(y), Some(m), Some(d), Some(h), Some(min)) => format!("{y}-{m}-{d} {h}:{min}"),
        _ => stamp.to_string(),
    }
}
