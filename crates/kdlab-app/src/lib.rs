//! The desktop app (eframe/egui): Setup, Run, Runs, Inspect and Evaluate panels over the same engine as
//! the CLI: each job calls the engine entry its command calls (`distill::train`,
//! `eval::evaluate`, `inspect::inspect`) on a worker thread that sends messages and wakes the
//! UI; the engine never imports egui. `KdlabApp::ui` is the whole app, so tests drive exactly what the window
//! shows.

mod cka_view;
mod evaluate_job;
pub mod evaluate_panel;
mod inspect_job;
pub mod inspect_panel;
pub mod run_panel;
pub mod runs_panel;
mod runs_watch;
pub mod setup_panel;
pub mod training_job;

use std::path::{Path, PathBuf};

use crossbeam_channel::Receiver;

pub use evaluate_panel::EvaluatePanel;
pub use inspect_panel::{InspectPanel, View};
use kdlab_engine::backend::{BackendChoice, detect_devices};
use kdlab_engine::config::RunConfig;
pub use run_panel::{RunPanel, RunSetup, RunState};
pub use runs_panel::RunsPanel;
pub use setup_panel::SetupPanel;

/// The config the app opens with.
pub const DEMO_CONFIG: &str = "configs/demo.ron";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Tab {
    Setup,
    Run,
    /// Every run of the runs folder, any one followed live.
    Runs,
    Inspect,
    Evaluate,
}

pub struct KdlabApp {
    pub tab: Tab,
    pub setup: SetupPanel,
    pub run: RunPanel,
    pub runs: RunsPanel,
    pub inspect: InspectPanel,
    pub evaluate: EvaluatePanel,
    devices: Option<Receiver<Vec<String>>>,
}

impl KdlabApp {
    /// The app with `config` (from `path`, when it came from a file); device discovery starts
    /// in the background.
    pub fn new(config: RunConfig, path: Option<PathBuf>) -> Self {
        let (sender, receiver) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            let _ = sender.send(detect_devices());
        });
        let setup = SetupPanel::new(config, path, Vec::new());
        let mut inspect = InspectPanel::default();
        inspect.refresh(&setup.config, &setup.runs_dir);
        let mut evaluate = EvaluatePanel::default();
        evaluate.refresh(&setup.runs_dir);
        Self {
            tab: Tab::Setup,
            setup,
            run: RunPanel::default(),
            runs: RunsPanel::default(),
            inspect,
            evaluate,
            devices: Some(receiver),
        }
    }

    /// Uses these device lines instead of discovering the devices (stable pictures in tests).
    pub fn with_detected_devices(mut self, devices: Vec<String>) -> Self {
        self.setup.detected = devices;
        self.devices = None;
        self
    }

    /// Opens `path` (default: the demo config), or the built-in defaults with the error shown.
    pub fn open(path: Option<&Path>) -> Self {
        let path = path.unwrap_or(Path::new(DEMO_CONFIG));
        match RunConfig::load(path) {
            Ok(config) => Self::new(config, Some(path.to_path_buf())),
            Err(e) => {
                let mut app = Self::new(RunConfig::default(), None);
                app.setup.notice = Some(Err(e.to_string()));
                app
            }
        }
    }

    pub fn ui(&mut self, ui: &mut egui::Ui) {
        if let Some(receiver) = &self.devices
            && let Ok(devices) = receiver.try_recv()
        {
            self.setup.detected = devices;
            self.devices = None;
        }
        self.run.poll();
        egui::Panel::top("tabs").show(ui, |ui| {
            ui.horizontal(|ui| {
                ui.heading("kdlab");
                ui.separator();
                for (tab, label) in [
                    (Tab::Setup, "Setup"),
                    (Tab::Run, "Run"),
                    (Tab::Runs, "Runs"),
                    (Tab::Inspect, "Inspect"),
                    (Tab::Evaluate, "Evaluate"),
                ] {
                    if ui.selectable_label(self.tab == tab, label).clicked() && self.tab != tab {
                        self.tab = tab;
                        match tab {
                            Tab::Inspect => self
                                .inspect
                                .refresh(&self.setup.config, &self.setup.runs_dir),
                            Tab::Evaluate => self.evaluate.refresh(&self.setup.runs_dir),
                            Tab::Setup | Tab::Run | Tab::Runs => {}
                        }
                    }
                }
                ui.separator();
                self.status_ui(ui);
            });
        });
        if self.tab == Tab::Runs {
            // Its worker reads the folder; here only what it sent is taken in.
            self.runs.poll(&self.setup.runs_dir, ui.ctx());
        }
        egui::CentralPanel::default().show(ui, |ui| match self.tab {
            Tab::Setup => self.setup.ui(ui),
            Tab::Run => {
                let problem = self.setup.problem_summary();
                let setup = RunSetup {
                    config: &self.setup.config,
                    problem: problem.as_deref(),
                    backend: self.setup.backend,
                    runs_dir: &self.setup.runs_dir,
                };
                self.run.ui(ui, &setup);
            }
            Tab::Runs => self.runs.ui(ui, &self.setup.runs_dir),
            Tab::Inspect => self.inspect.ui(ui, &self.setup.config, self.setup.backend),
            Tab::Evaluate => self.evaluate.ui(
                ui,
                &self.setup.config,
                &self.setup.runs_dir,
                self.setup.backend,
            ),
        });
    }

    fn status_ui(&self, ui: &mut egui::Ui) {
        let progress = &self.run.progress;
        match &progress.state {
            RunState::Idle => ui.weak(format!("{} · ready", self.setup.config.name)),
            RunState::Failed(_) => ui.colored_label(ui.visuals().error_fg_color, "run failed"),
            state => ui.label(format!(
                "{} · step {}/{}{}",
                self.setup.config.name,
                progress.step,
                progress.total_steps,
                match state {
                    RunState::Paused => " · paused",
                    RunState::Pausing => " · pausing",
                    _ => "",
                }
            )),
        };
    }

    /// Starts a new run with the Setup panel's config (the Run panel's Start).
    pub fn start_run(&mut self, ctx: &egui::Context) {
        let start = kdlab_engine::distill::RunStart::Fresh {
            runs_dir: self.setup.runs_dir.clone(),
        };
        self.run
            .start(start, Some(&self.setup.config), self.setup.backend, ctx);
    }

    /// Stops a running training with a checkpoint (the window is closing).
    pub fn shut_down(&mut self) {
        self.run.shut_down();
    }

    /// Where runs go and where Inspect looks for checkpoints (its choices start over).
    pub fn set_runs_dir(&mut self, runs_dir: &Path) {
        self.setup.runs_dir = runs_dir.to_path_buf();
        self.inspect.checkpoint = None;
        self.inspect.timeline_run = None;
        self.inspect.refresh(&self.setup.config, runs_dir);
        self.evaluate.checkpoint = None;
        self.evaluate.refresh(runs_dir);
    }

    pub fn set_backend(&mut self, backend: BackendChoice) {
        self.setup.backend = backend;
    }
}

impl eframe::App for KdlabApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        KdlabApp::ui(self, ui);
    }

    fn on_exit(&mut self) {
        self.shut_down();
    }
}

/// `kdlab app` options.
#[derive(Debug, Default, clap::Args)]
pub struct AppArgs {
    /// The config to open (default: configs/demo.ron).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The panel to show first.
    #[arg(long, value_enum)]
    pub tab: Option<Tab>,
    /// The Inspect view to show first.
    #[arg(long, value_enum)]
    pub view: Option<View>,
    /// The runs folder: where runs go, where Runs lists them and Inspect and Evaluate find
    /// checkpoints (default: runs); a server's run folder, mounted or synced, works too.
    #[arg(long, value_name = "DIR")]
    pub runs_dir: Option<PathBuf>,
    /// Start the run at once.
    #[arg(long)]
    pub start: bool,
}

/// Opens the window and returns when it is closed.
pub fn run_app(args: AppArgs, backend: BackendChoice) -> anyhow::Result<()> {
    let mut app = KdlabApp::open(args.config.as_deref());
    app.set_backend(backend);
    if let Some(tab) = args.tab {
        app.tab = tab;
    }
    if let Some(view) = args.view {
        app.inspect.view = view;
    }
    if let Some(runs_dir) = &args.runs_dir {
        app.set_runs_dir(runs_dir);
    }
    let start = args.start;
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("kdlab")
            .with_inner_size([1280.0, 800.0]),
        ..Default::default()
    };
    eframe::run_native(
        "kdlab",
        options,
        Box::new(move |cc| {
            if start {
                app.start_run(&cc.egui_ctx);
            }
            Ok(Box::new(app))
        }),
    )
        .map_err(|e| anyhow::anyhow!("cannot open the kdlab window ({e}); headless commands work with --no-gui, see kdlab --help"))
}
