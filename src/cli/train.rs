//! `kdlab train`: a distillation run from a config, with a progress bar; Ctrl-C saves and exits.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use burn::tensor::backend::AutodiffBackend;
use indicatif::{ProgressBar, ProgressStyle};

use crate::backend::{OnAutodiffBackend, Selected};
use crate::config::RunConfig;
use crate::distill::run_dir::RunDir;
use crate::distill::train::{Event, Outcome, TrainOptions, explain_device_panic, train};
use crate::weights::read::quietly_catch;

#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Run configuration (RON). With --resume it defaults to the run's own config.ron.
    #[arg(long, required_unless_present = "resume")]
    config: Option<PathBuf>,
    /// Continue the run in this directory from its checkpoints/last.safetensors.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Stop after this many optimiser steps in total (the schedule still spans the config's epochs).
    #[arg(long)]
    max_steps: Option<usize>,
    /// Where new run directories go.
    #[arg(long, default_value = "runs")]
    runs_dir: PathBuf,
}

pub fn run(args: TrainArgs, backend: Selected) -> anyhow::Result<ExitCode> {
    let config_path = match (&args.config, &args.resume) {
        (Some(c), _) => c.clone(),
        (None, Some(run)) => run.join("config.ron"),
        (None, None) => unreachable!("clap requires --config without --resume"),
    };
    let config = RunConfig::load(&config_path)?;
    super::warn_about_reduced_precision_on_cpu(&backend, config.precision);
    let mut run = match &args.resume {
        Some(dir) => {
            anyhow::ensure!(
                dir.join("checkpoints/last.safetensors").exists(),
                "{} has no checkpoints/last.safetensors to resume from",
                dir.display()
            );
            RunDir::open(dir)?
        }
        None => RunDir::create(&args.runs_dir, &config.name, &config.to_ron())?,
    };
    eprintln!("kdlab: run directory {}", run.root.display());
    let stop = super::ctrl_c_flag();
    let options = TrainOptions {
        max_steps: args.max_steps,
        stop,
        pause: Arc::default(),
        resume: args.resume.is_some(),
    };
    let batch_size = config.optim.batch_size;
    let outcome = quietly_catch(|| {
        backend.run_autodiff(Train {
            config: &config,
            run: &mut run,
            options: &options,
        })
    })
    .map_err(|panic| explain_device_panic(&panic, batch_size))??;
    let message = match outcome {
        Outcome::Completed => "finished",
        Outcome::ReachedMaxSteps => "stopped at --max-steps",
        Outcome::Interrupted => "interrupted; resume with --resume",
    };
    eprintln!(
        "kdlab: {message}; checkpoint {}",
        run.last_checkpoint().display()
    );
    Ok(ExitCode::SUCCESS)
}

struct Train<'a> {
    config: &'a RunConfig,
    run: &'a mut RunDir,
    options: &'a TrainOptions,
}

impl OnAutodiffBackend for Train<'_> {
    type Output = anyhow::Result<Outcome>;

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{spinner} step {pos}/{len} [{wide_bar}] {msg} ETA {eta}")
                .context("progress bar template")?
                .progress_chars("=> "),
        );
        // A hidden bar (stderr not a terminal) prints nothing, so messages go to stderr directly.
        let say = |message: String| {
            if bar.is_hidden() {
                eprintln!("{message}");
            } else {
                bar.println(message);
            }
        };
        let mut on_event = |event: Event| match event {
            Event::Started {
                total_steps,
                start_step,
                train_images,
                val_images,
                steps_per_epoch,
                ..
            } => {
                bar.set_length(total_steps as u64);
                bar.set_position(start_step as u64);
                say(format!(
                    "kdlab: {train_images} training and {val_images} validation images, {steps_per_epoch} steps per epoch"
                ));
            }
            Event::Step(m) => {
                bar.set_position(m.step as u64);
                if let (Some(loss), Some(lr), Some(speed)) = (m.loss, m.lr, m.img_per_s) {
                    bar.set_message(format!("loss {loss:.4} lr {lr:.2e} {speed:.1} img/s"));
                }
            }
            Event::Validation {
                step,
                epoch,
                val_loss,
            } => {
                say(format!(
                    "kdlab: step {step} epoch {epoch}: val_loss {val_loss:.5}"
                ));
            }
            Event::SkippedFile { path, reason } => {
                say(format!(
                    "kdlab: warning: skipped {}: {reason}",
                    path.display()
                ));
            }
            Event::CheckpointSaved(_) | Event::Heatmaps { .. } => {}
        };
        let outcome = train::<B>(self.config, self.run, self.options, &device, &mut on_event);
        bar.finish_and_clear();
        outcome
    }
}
