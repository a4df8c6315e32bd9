//! `kdlab train`: a distillation run from a config, with a progress bar; Ctrl-C saves and exits.

use std::path::PathBuf;
use std::process::ExitCode;

use super::{Downloads, Progress};
use kdlab_engine::backend::BackendChoice;
use kdlab_engine::config::{Devices, RunConfig};
use kdlab_engine::distill::{
    Event, Outcome, ParallelOverrides, RunStart, TrainControl, TrainRequest, train,
};
use kdlab_engine::session::RunDir;

#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Run configuration (RON). With --resume it defaults to the run's own config.ron.
    #[arg(long, required_unless_present = "resume")]
    config: Option<PathBuf>,
    /// Continue the run in this directory from its checkpoints/last.safetensors. With --set,
    /// only what does not change what is trained may be set: parallel.*, data.workers,
    /// data.prefetch_batches and optim.max_steps (the run's config.ron stays as it was written).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Stop after this many optimiser steps in total (the schedule still spans the config's epochs).
    #[arg(long)]
    max_steps: Option<usize>,
    /// Where new run directories go.
    #[arg(long, default_value = "runs")]
    runs_dir: PathBuf,
    /// Data-parallel on this node's devices: N (the first N; on the CPU, N workers) or
    /// ordinals such as 0,2,3. optim.batch_size stays the batch over all devices.
    #[arg(long, value_parser = Devices::parse)]
    devices: Option<Devices>,
    /// Machines in the run (each with the same --devices).
    #[arg(long)]
    nodes: Option<usize>,
    /// This machine's rank among --nodes, 0-based (node 0 coordinates and writes the run).
    #[arg(long)]
    node_rank: Option<usize>,
    /// HOST:PORT of node 0's coordinator; node R also serves tensors on PORT + 1 + R.
    #[arg(long)]
    coordinator: Option<String>,
    // A new run's config.ron records the config with these set.
    #[command(flatten)]
    set: super::SetArgs,
}

/// What `--set` may change on `--resume`: how the run is carried out, not what it computes, so
/// that the continued run is still the one its config.ron and checkpoints describe (the
/// devices, as `--devices` may change them; the data threads; an earlier stop, as
/// `--max-steps`). The run's config.ron is not rewritten on a resume, so an override of the
/// model, the data or the schedule would leave it describing another run: those are refused.
const SETTABLE_ON_RESUME: [&str; 4] = [
    "parallel",
    "data.workers",
    "data.prefetch_batches",
    "optim.max_steps",
];

/// The config to train with: the file (or, resuming with overrides, the run's config.ron) with
/// `--set` applied and checked; None lets the engine read the run's own.
fn config(args: &TrainArgs) -> anyhow::Result<Option<RunConfig>> {
    if args.resume.is_some() {
        let refused = args.set.overrides.iter().find(|one| {
            !SETTABLE_ON_RESUME
                .iter()
                .any(|settable| one.is_within(settable))
        });
        if let Some(one) = refused {
            return Err(one
                .refused(format!(
                    "a resumed run keeps the model, data and schedule of its config.ron; with \
                     --resume only {} can be set",
                    SETTABLE_ON_RESUME.join(", ")
                ))
                .into());
        }
    }
    Ok(match (&args.config, &args.resume) {
        (Some(path), _) => Some(args.set.load_run_config(path)?),
        (None, Some(run_dir)) if !args.set.is_empty() => {
            let run = RunDir::resumable(run_dir)?;
            Some(args.set.load_run_config(&run.config_file())?)
        }
        (None, _) => None,
    })
}

pub fn run(args: TrainArgs, backend: BackendChoice) -> anyhow::Result<ExitCode> {
    let start = match (&args.resume, &args.config) {
        (Some(run_dir), _) => RunStart::Resume {
            run_dir: run_dir.clone(),
        },
        (None, Some(_)) => RunStart::Fresh {
            runs_dir: args.runs_dir.clone(),
        },
        (None, None) => {
            return Err(super::Usage("give --config C.ron, or --resume RUN_DIR".into()).into());
        }
    };
    // Read before the backend is chosen: a broken config is reported as what it is.
    let config = config(&args)?;
    let session = super::open_session(backend)?;
    let request = TrainRequest {
        start,
        config,
        max_steps: args.max_steps,
        control: TrainControl::with_stop(super::ctrl_c_flag()),
        parallel: ParallelOverrides {
            devices: args.devices,
            nodes: args.nodes,
            node_rank: args.node_rank,
            coordinator: args.coordinator,
        },
    };
    let progress = Progress::new("{spinner} step {pos}/{len} [{wide_bar}] {msg} ETA {eta}")?;
    let mut downloads = Downloads::default();
    let finished = train(&session, &request, &mut |event| {
        show(&progress, &mut downloads, event)
    })?;
    drop(progress);
    // Interrupted (Ctrl-C, SIGTERM) is 130, its checkpoint written.
    let code = match finished.outcome {
        Outcome::Interrupted => ExitCode::from(130),
        Outcome::Completed | Outcome::ReachedMaxSteps => ExitCode::SUCCESS,
    };
    if let Some((rank, nodes)) = finished.node.filter(|&(rank, _)| rank > 0) {
        eprintln!("kdlab: node {rank} of {nodes} done; node 0 wrote the run");
        return Ok(code);
    }
    let message = match finished.outcome {
        Outcome::Completed => "finished",
        Outcome::ReachedMaxSteps => "stopped at --max-steps",
        Outcome::Interrupted => "interrupted; resume with --resume",
    };
    eprintln!(
        "kdlab: {message}; checkpoint {}",
        finished.run.last_checkpoint().display()
    );
    Ok(code)
}

/// The progress bar and the lines above it.
fn show(progress: &Progress, downloads: &mut Downloads, event: Event) {
    let bar = &progress.bar;
    if !matches!(event, Event::Download(_)) {
        downloads.finish();
    }
    match event {
        Event::Started {
            run_dir,
            total_steps,
            start_step,
            train_images,
            val_images,
            steps_per_epoch,
            parallel,
        } => {
            match parallel {
                Some((rank, nodes, _)) if rank > 0 => progress.say(format!(
                    "kdlab: node {rank} of {nodes}; node 0 writes the run directory"
                )),
                _ => progress.say(format!("kdlab: run directory {}", run_dir.display())),
            }
            if let Some((_, nodes, devices)) = parallel {
                progress.say(format!(
                    "kdlab: data-parallel over {devices} devices on {nodes} node(s)"
                ));
            }
            progress.say(format!(
                "kdlab: {train_images} training and {val_images} validation images, \
                 {steps_per_epoch} steps per epoch"
            ));
            bar.set_length(total_steps as u64);
            bar.set_position(start_step as u64);
        }
        Event::Warning(warning) => progress.say(format!("kdlab: warning: {warning}")),
        Event::Download(download) => downloads.show(download),
        Event::Step(m) => {
            bar.set_position(m.step as u64);
            if let (Some(loss), Some(lr), Some(speed)) = (m.loss, m.lr, m.img_per_s) {
                let spread = match (m.target_var, m.pred_var) {
                    (Some(t), Some(p)) => format!(" target_var {t:.3} pred_var {p:.3}"),
                    _ => String::new(),
                };
                bar.set_message(format!(
                    "loss {loss:.4} lr {lr:.2e}{spread} {speed:.1} img/s"
                ));
            }
        }
        Event::Validation {
            step,
            epoch,
            val_loss,
        } => progress.say(format!(
            "kdlab: step {step} epoch {epoch}: val_loss {val_loss:.5}"
        )),
        Event::SkippedFile { path, reason } => progress.say(format!(
            "kdlab: warning: skipped {}: {reason}",
            path.display()
        )),
        Event::CheckpointSaved(_)
        | Event::Heatmaps { .. }
        | Event::Paused { .. }
        | Event::Continued => {}
    }
}
