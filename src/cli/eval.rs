//! `kdlab eval knn|linear`: how well a student's (or the teacher's) frozen features classify a
//! labelled data set, with the teacher beside it on request.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use anyhow::bail;
use burn::tensor::backend::AutodiffBackend;
use indicatif::{ProgressBar, ProgressStyle};

use crate::backend::{OnAutodiffBackend, Selected};
use crate::config::RunConfig;
use crate::distill::run_dir::{checkpoint_in, run_of_checkpoint, utc_timestamp};
use crate::eval::report::{json_summary, table};
use crate::eval::{
    DatasetKind, EvalConfig, EvalEvent, EvalRequest, EvalResult, Method, ModelSpec, Pooling,
    evaluate,
};
use crate::weights::read::quietly_catch;

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("model").required(true).args(["checkpoint", "weights"])))]
pub struct EvalArgs {
    /// k-NN (no training) or the linear probe.
    #[arg(value_enum)]
    method: Method,
    /// Evaluation settings (RON, e.g. configs/eval_cifar10_linear.ron); the flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// A run checkpoint or run directory: evaluates its student; results go into the run.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Any weights file: a BEiT v2 teacher, a data2vec 2.0 model (see --depth), a kdlab checkpoint.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// With --weights of a data2vec 2.0 model: keep the prenet and the first N main blocks.
    #[arg(long, requires = "weights")]
    depth: Option<usize>,
    /// Also evaluate the teacher, beside the student: the run's own (no value) or this file.
    #[arg(long, num_args = 0..=1, value_name = "WEIGHTS")]
    teacher: Option<Option<PathBuf>>,
    /// Training images: a folder of class folders, or a CIFAR binary release folder.
    #[arg(long)]
    train: Option<PathBuf>,
    /// Evaluation images (for CIFAR: defaults to the test split next to --train).
    #[arg(long)]
    val: Option<PathBuf>,
    #[arg(long, value_enum)]
    dataset: Option<DatasetKind>,
    /// Image feature: mean of the patch tokens (the thesis) or the CLS token.
    #[arg(long, value_enum)]
    pooling: Option<Pooling>,
    /// k-NN: neighbours that vote (default 20).
    #[arg(long)]
    k: Option<usize>,
    /// k-NN: vote temperature (default 0.07).
    #[arg(long)]
    temperature: Option<f64>,
    /// Linear probe: epochs (default 90).
    #[arg(long)]
    epochs: Option<usize>,
    /// Linear probe: batch size (default 256).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Linear probe: peak learning rate (default 1e-3).
    #[arg(long)]
    lr: Option<f64>,
    /// Linear probe: weight decay of the Linear's matrix (default 0).
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Where results go (default: the run directory of --checkpoint, else runs/eval-<UTC time>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print one JSON object (top1, top5, … and a "teacher" object with --teacher) on stdout.
    #[arg(long)]
    json: bool,
}

impl EvalArgs {
    fn settings(&self) -> anyhow::Result<EvalConfig> {
        self.warn_about_flags_of_the_other_method();
        let mut config = match &self.config {
            Some(path) => EvalConfig::load(path)?,
            None => EvalConfig::default(),
        };
        if let Some(train) = &self.train {
            config.train = Some(train.clone());
        }
        if let Some(val) = &self.val {
            config.val = Some(val.clone());
        }
        config.dataset = self.dataset.unwrap_or(config.dataset);
        config.pooling = self.pooling.unwrap_or(config.pooling);
        config.knn.k = self.k.unwrap_or(config.knn.k);
        config.knn.temperature = self.temperature.unwrap_or(config.knn.temperature);
        let linear = &mut config.linear;
        linear.epochs = self.epochs.unwrap_or(linear.epochs);
        linear.batch_size = self.batch_size.unwrap_or(linear.batch_size);
        linear.lr = self.lr.unwrap_or(linear.lr);
        linear.weight_decay = self.weight_decay.unwrap_or(linear.weight_decay);
        if linear.warmup_epochs >= linear.epochs {
            // Fewer epochs than the default warm-up: keep a tenth of them for it.
            linear.warmup_epochs = linear.epochs / 10;
        }
        config
            .validate()
            .map_err(|(field, message)| anyhow::anyhow!("eval setting {field}: {message}"))?;
        if config.train.is_none() {
            bail!("no training images: give --train (or train: in the eval config)");
        }
        Ok(config)
    }

    /// Flags of the method not run are accepted (a config may hold both), but said to be unused.
    fn warn_about_flags_of_the_other_method(&self) {
        let unused: Vec<&str> = match self.method {
            Method::Knn => [
                ("--epochs", self.epochs.is_some()),
                ("--batch-size", self.batch_size.is_some()),
                ("--lr", self.lr.is_some()),
                ("--weight-decay", self.weight_decay.is_some()),
            ]
            .into_iter()
            .filter_map(|(flag, given)| given.then_some(flag))
            .collect(),
            Method::Linear => [
                ("--k", self.k.is_some()),
                ("--temperature", self.temperature.is_some()),
            ]
            .into_iter()
            .filter_map(|(flag, given)| given.then_some(flag))
            .collect(),
        };
        if !unused.is_empty() {
            eprintln!(
                "kdlab: warning: {} {} no effect on `eval {}`",
                unused.join(", "),
                if unused.len() == 1 { "has" } else { "have" },
                self.method.name()
            );
        }
    }
}

/// The run directory of `--checkpoint` (a run directory, or a checkpoint in one).
fn run_dir_of(checkpoint: &Path) -> Option<PathBuf> {
    if checkpoint.is_dir() {
        return Some(checkpoint.to_path_buf());
    }
    run_of_checkpoint(checkpoint)
}

pub fn run(args: EvalArgs, backend: Selected) -> anyhow::Result<ExitCode> {
    let config = args.settings()?;
    let run_dir = args.checkpoint.as_deref().and_then(run_dir_of);
    let mut models = Vec::new();
    if let Some(checkpoint) = &args.checkpoint {
        models.push(ModelSpec::Weights {
            path: checkpoint_in(checkpoint),
            depth: None,
        });
    }
    if let Some(weights) = &args.weights {
        models.push(ModelSpec::Weights {
            path: weights.clone(),
            depth: args.depth,
        });
    }
    match &args.teacher {
        None => {}
        Some(Some(path)) => models.push(ModelSpec::Weights {
            path: path.clone(),
            depth: None,
        }),
        Some(None) => {
            let Some(run) = &run_dir else {
                bail!(
                    "--teacher without a file takes the teacher from the run's config.ron, which \
                     needs --checkpoint in a run directory; otherwise name it: --teacher WEIGHTS"
                );
            };
            models.push(ModelSpec::RunTeacher(Box::new(RunConfig::load(
                &run.join("config.ron"),
            )?)));
        }
    }
    let out_dir = match (&args.out, &run_dir) {
        (Some(out), _) => out.clone(),
        (None, Some(run)) => run.clone(),
        (None, None) => PathBuf::from("runs").join(format!("eval-{}", utc_timestamp())),
    };
    let request = EvalRequest {
        method: args.method,
        models,
        config,
        out_dir,
        backend: backend.to_string(),
    };
    let stop = super::ctrl_c_flag();
    let batch_size = request.config.batch_size;
    let results = quietly_catch(|| {
        backend.run_autodiff(Eval {
            request: &request,
            stop: &stop,
        })
    })
    .map_err(|panic| crate::distill::train::explain_device_panic(&panic, batch_size))?;
    let results = match results {
        Err(e) if e.is::<crate::eval::features::Stopped>() => {
            eprintln!("kdlab: evaluation interrupted; nothing written");
            return Ok(ExitCode::from(130));
        }
        other => other?,
    };
    eprintln!("{}", table(&results));
    if args.json {
        println!("{}", serde_json::to_string(&json_summary(&results))?);
    }
    Ok(ExitCode::SUCCESS)
}

struct Eval<'a> {
    request: &'a EvalRequest,
    stop: &'a AtomicBool,
}

impl OnAutodiffBackend for Eval<'_> {
    type Output = anyhow::Result<Vec<EvalResult>>;

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} [{wide_bar}] {pos}/{len} ETA {eta}")?
                .progress_chars("=> "),
        );
        let say = |message: String| {
            if bar.is_hidden() {
                eprintln!("{message}");
            } else {
                bar.println(message);
            }
        };
        let mut stage = String::new();
        let mut on_event = |event: EvalEvent| match event {
            EvalEvent::Note(note) => say(format!("kdlab: {note}")),
            EvalEvent::Skipped { path, reason } => say(format!(
                "kdlab: warning: skipped {}: {reason}",
                path.display()
            )),
            EvalEvent::Progress {
                stage: now,
                done,
                total,
            } => {
                if now != stage {
                    bar.reset();
                    bar.set_message(now.clone());
                    stage = now;
                }
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            }
            EvalEvent::Epoch { model, line } => {
                let now = format!("{}: linear probe epochs", model.name());
                if now != stage {
                    bar.reset();
                    bar.set_length(self.request.config.linear.epochs as u64);
                    stage = now;
                }
                bar.set_message(format!(
                    "{stage} (loss {:.4}, val top-1 {:.2}%)",
                    line.loss,
                    100.0 * line.val_top1
                ));
                bar.set_position(line.epoch as u64);
            }
            EvalEvent::Finished { result, file } => {
                bar.finish_and_clear();
                stage.clear();
                say(format!("kdlab: {}", result.summary_line(&file)));
            }
        };
        let results = evaluate::<B>(self.request, &device, self.stop, &mut on_event);
        bar.finish_and_clear();
        results
    }
}
