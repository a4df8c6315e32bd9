//! The command line: clap definitions and the headless commands.

mod bench;
mod eval;
mod export;
mod features;
mod fetch;
mod heatmap;
mod inspect;
pub mod tensor_file;
mod train;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{ArgAction, CommandFactory, Parser, Subcommand};
use serde::Serialize;
use serde::de::DeserializeOwned;

use kdlab_engine::backend::BackendChoice;
use kdlab_engine::config::{ConfigError, RunConfig};
use kdlab_engine::overrides::{ConfigOverride, apply_overrides, mark_overridden};
use kdlab_engine::session::fetch::{Download, fetch_weights, fetch_weights_arg};
use kdlab_engine::session::{EngineError, Interrupted, Session};
use kdlab_hub::Fetcher;

/// Distil a BEiT v2 teacher into a data2vec 2.0 student on burn, and see per patch where the
/// student matches the teacher.
#[derive(Debug, Parser)]
#[command(name = "kdlab", version, about, long_about = None)]
pub struct Cli {
    /// Run headless (the commands never need a display either way).
    #[arg(long, global = true)]
    pub no_gui: bool,

    /// Compute backend: auto picks CUDA, then a WGPU GPU adapter, then the CPU.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto, global = true)]
    pub backend: BackendChoice,

    /// Never touch the network: weights names come from the cache or fail naming what is
    /// missing (as HF_HUB_OFFLINE=1).
    #[arg(long, global = true)]
    pub offline: bool,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Open the desktop app (what `kdlab` with no command does), optionally with a config, a
    /// panel and the run already started.
    App(kdlab_app::AppArgs),
    /// Distil the teacher into the student as a config describes; writes a run directory.
    Train(train::TrainArgs),
    /// Run one model on a batch and write every layer result, the final hidden state and the
    /// prepared KD target.
    Features(features::FeaturesArgs),
    /// Say which layout a weights file is, the architecture it holds and how its keys load.
    Inspect(inspect::InspectArgs),
    /// Write the per-patch similarity and error maps and PCA views of images, with their values.
    Heatmap(heatmap::HeatmapArgs),
    /// Judge a student's (or the teacher's) frozen features by k-NN or a linear probe on
    /// labelled images (folders, CIFAR-10/100).
    Eval(eval::EvalArgs),
    /// Images per second of the KD step, the teacher forward, the student step and the data
    /// pipeline, and the device memory (compare with bench/reference.py).
    Bench(bench::BenchArgs),
    /// Write a run's student in data2vec 2.0 (fairseq) key names.
    Export(export::ExportArgs),
    /// Download models by name into the caches (the Hugging Face hub's, shared with Python;
    /// kdlab's for files outside the hub), resuming and verifying; --list shows the names.
    Fetch(fetch::FetchArgs),
}

/// A mistake in how a command was called (a required option left out): exit 2, as clap's own.
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// The exit code of a failed command (SPEC): 2 for a usage or config mistake, 130 for a stop
/// asked for (Ctrl-C, SIGTERM), 1 for anything else.
pub fn exit_code(error: &anyhow::Error) -> ExitCode {
    for cause in error.chain() {
        if cause.is::<ConfigError>() || cause.is::<Usage>() {
            return ExitCode::from(2);
        }
        if cause.is::<Interrupted>() {
            return ExitCode::from(130);
        }
        match cause.downcast_ref::<EngineError>() {
            Some(EngineError::Config(_)) => return ExitCode::from(2),
            Some(EngineError::Interrupted) => return ExitCode::from(130),
            _ => {}
        }
    }
    ExitCode::FAILURE
}

pub fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    if cli.offline {
        // `--offline` is HF_HUB_OFFLINE=1 for everything this process fetches.
        // SAFETY: set right after parsing, before any thread exists (main starts none, and no
        // command has run yet), so no one reads the environment concurrently.
        unsafe { std::env::set_var("HF_HUB_OFFLINE", "1") };
    }
    match cli.command {
        None if cli.no_gui => {
            Cli::command().print_help()?;
            println!();
            Ok(ExitCode::SUCCESS)
        }
        None => {
            kdlab_app::run_app(kdlab_app::AppArgs::default(), cli.backend)?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::App(args)) => {
            kdlab_app::run_app(args, cli.backend)?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Features(args)) => features::run(args, cli.backend),
        Some(Command::Inspect(args)) => inspect::run(args),
        Some(Command::Train(args)) => train::run(args, cli.backend),
        Some(Command::Export(args)) => export::run(args),
        Some(Command::Eval(args)) => eval::run(args, cli.backend),
        Some(Command::Bench(args)) => bench::run(args, cli.backend),
        Some(Command::Heatmap(args)) => heatmap::run(args, cli.backend),
        Some(Command::Fetch(args)) => fetch::run(args),
    }
}

/// `--set PATH=VALUE`, for every command that reads a config (train, eval, bench, heatmap).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SetArgs {
    /// Set one field of the config by its path: PATH=VALUE, VALUE written in RON as in the file
    /// (optim.base_lr=1e-3, data.workers=4, precision=bf16, parallel.devices=[0, 1],
    /// student.blocks=FirstMain(4), optim.max_steps=3 or Some(3), val_every=None, a bare word
    /// or "text" for a text or path field; list items by index: probe.images.0=a.jpg).
    /// Repeatable, applied in order over the file (or the built-in config), then checked like the
    /// file; the command's own flags (--devices, --max-steps, --workers, …) win over it.
    #[arg(
        long = "set",
        value_name = "PATH=VALUE",
        value_parser = ConfigOverride::parse,
        action = ArgAction::Append
    )]
    pub overrides: Vec<ConfigOverride>,
}

impl SetArgs {
    pub fn is_empty(&self) -> bool {
        self.overrides.is_empty()
    }

    /// Whether an override sets `field` (or a part of it, or a field holding it).
    pub fn touches(&self, field: &str) -> bool {
        self.overrides.iter().any(|o| o.touches(field))
    }

    /// A run config file with the overrides applied, then resolved and checked as the file.
    pub fn load_run_config(&self, path: &Path) -> Result<RunConfig, ConfigError> {
        RunConfig::load_edited(path, |config| self.apply(config)).map_err(|e| self.mark(e))
    }

    /// `config` (one without a file) with the overrides applied; the caller checks it.
    pub fn apply<T: Serialize + DeserializeOwned>(&self, config: T) -> Result<T, ConfigError> {
        apply_overrides(config, &self.overrides)
    }

    /// Notes on every broken rule that an override set the field.
    pub fn mark(&self, error: ConfigError) -> ConfigError {
        mark_overridden(error, &self.overrides)
    }
}

/// Resolves `--backend` and says what was picked, as every computing command does.
fn open_session(choice: BackendChoice) -> anyhow::Result<Session> {
    let session = Session::open(choice)?;
    eprintln!("kdlab: backend {}", session.backend());
    if let Some(why) = session.fallback() {
        eprintln!("kdlab: {why}");
    }
    Ok(session)
}

/// A flag that Ctrl-C (or SIGTERM) raises, for commands that stop cleanly at the next step.
/// Only the first handler of a process can be installed; tests run one such command per process.
fn ctrl_c_flag() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let raised = stop.clone();
    let _ = ctrlc::set_handler(move || raised.store(true, Ordering::SeqCst));
    stop
}

/// Progress of one stage as a bar on a terminal; with stderr not a terminal the bar is hidden
/// and messages go to stderr directly.
struct Progress {
    bar: indicatif::ProgressBar,
}

impl Progress {
    fn new(template: &str) -> anyhow::Result<Self> {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(template)
                .map_err(|e| anyhow::anyhow!("progress bar template: {e}"))?
                .progress_chars("=> "),
        );
        Ok(Self { bar })
    }

    fn say(&self, message: String) {
        if self.bar.is_hidden() {
            eprintln!("{message}");
        } else {
            self.bar.println(message);
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// Downloads on a terminal: one bar per file with bytes, speed and ETA. Off a terminal the bars
/// are hidden and each file gets a line when it starts.
#[derive(Default)]
struct Downloads {
    /// The file (and whether it is being verified) the bar is for.
    current: Option<(String, bool, indicatif::ProgressBar)>,
}

impl Downloads {
    fn show(&mut self, download: Download) {
        let same = self.current.as_ref().is_some_and(|(file, verifying, _)| {
            *file == download.file && *verifying == download.verifying
        });
        if !same {
            self.finish();
            let what = if download.verifying {
                "verifying"
            } else {
                "downloading"
            };
            let bar = indicatif::ProgressBar::new(download.total.unwrap_or(0))
                .with_position(download.done)
                .with_message(format!("{what} {}", download.file));
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{msg} [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            if bar.is_hidden() {
                let resumed = match download.resumed_from {
                    0 => String::new(),
                    bytes => format!(" (resuming at {bytes} bytes)"),
                };
                eprintln!("kdlab: {what} {}{resumed}", download.file);
            }
            self.current = Some((download.file.clone(), download.verifying, bar));
        }
        if let Some((_, _, bar)) = &self.current {
            if let Some(total) = download.total {
                bar.set_length(total);
            }
            bar.set_position(download.done);
        }
    }

    fn finish(&mut self) {
        if let Some((_, _, bar)) = self.current.take() {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Downloads {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The config's weights names fetched into the cache (with bars), recorded in the config.
fn fetch_config_weights(config: &mut RunConfig) -> anyhow::Result<()> {
    let mut downloads = Downloads::default();
    fetch_weights(config, &Fetcher::from_env(), &mut |download| {
        downloads.show(download);
        std::ops::ControlFlow::Continue(())
    })?;
    Ok(())
}

/// A `--weights` argument: its file, fetched first if it is a name.
fn weights_file(weights: &Path) -> anyhow::Result<std::path::PathBuf> {
    let mut downloads = Downloads::default();
    Ok(fetch_weights_arg(
        weights,
        &Fetcher::from_env(),
        &mut |download| {
            downloads.show(download);
            std::ops::ControlFlow::Continue(())
        },
    )?)
}

/// Refuses outputs that are inputs of the same command (the same file through any path or
/// link): writing one would destroy what the command reads, and what the user keeps.
fn refuse_overwriting_inputs(outputs: &[PathBuf], inputs: &[PathBuf]) -> anyhow::Result<()> {
    for output in outputs {
        // An output that does not exist yet is no input.
        let Ok(written) = output.canonicalize() else {
            continue;
        };
        if let Some(input) = inputs
            .iter()
            .find(|input| input.canonicalize().is_ok_and(|read| read == written))
        {
            anyhow::bail!(
                "{} is {}, an input of this command: writing it would destroy it; choose another \
                 output file",
                output.display(),
                input.display()
            );
        }
    }
    Ok(())
}
