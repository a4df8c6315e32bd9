//! `kdlab eval knn|linear`: how well a student's (or the teacher's) frozen features classify a
//! labelled data set, with the teacher beside it on request.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::Progress;
use kdlab_engine::backend::BackendChoice;
use kdlab_engine::eval::report::{json_summary, table};
use kdlab_engine::eval::{
    DatasetKind, EvalConfig, EvalEvent, EvalRequest, Method, ModelSpec, Pooling, evaluate,
    results_dir,
};
use kdlab_engine::session::{EngineError, RunDir};

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
    // Fields of the evaluation settings (knn.k=10, linear.warmup_epochs=0, …) over the file's
    // or the defaults; the flags above win.
    #[command(flatten)]
    set: super::SetArgs,
}

impl EvalArgs {
    fn settings(&self) -> anyhow::Result<EvalConfig> {
        self.warn_about_flags_of_the_other_method();
        let set = &self.set;
        let mut config = match &self.config {
            Some(path) => EvalConfig::load_edited(path, |config| set.apply(config))
                .map_err(|e| set.mark(e))?,
            None => set.apply(EvalConfig::default())?,
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
        if let Some(epochs) = self.epochs
            && let Some(note) = config.set_linear_epochs(epochs)
        {
            eprintln!("kdlab: note: {note}");
        }
        let linear = &mut config.linear;
        linear.batch_size = self.batch_size.unwrap_or(linear.batch_size);
        linear.lr = self.lr.unwrap_or(linear.lr);
        linear.weight_decay = self.weight_decay.unwrap_or(linear.weight_decay);
        config.validate().map_err(|e| set.mark(e))?;
        if config.train.is_none() {
            return Err(super::Usage(
                "no training images: give --train (or train: in the eval config)".into(),
            )
            .into());
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

    /// The student, then the teacher beside it.
    fn models(&self) -> anyhow::Result<Vec<ModelSpec>> {
        let mut models = Vec::new();
        let checkpoint = self.checkpoint.as_deref().map(RunDir::checkpoint_in);
        if let Some(checkpoint) = &checkpoint {
            models.push(ModelSpec::Weights {
                path: checkpoint.clone(),
                depth: None,
            });
        }
        if let Some(weights) = &self.weights {
            models.push(ModelSpec::Weights {
                path: super::weights_file(weights)?,
                depth: self.depth,
            });
        }
        match (&self.teacher, &checkpoint) {
            (None, _) => {}
            (Some(Some(path)), _) => models.push(ModelSpec::Weights {
                path: super::weights_file(path)?,
                depth: None,
            }),
            (Some(None), Some(checkpoint)) => {
                models.push(ModelSpec::teacher_of_run(checkpoint, None)?)
            }
            (Some(None), None) => {
                return Err(super::Usage(
                    "--teacher without a file takes the teacher from the run's config.ron, which \
                     needs --checkpoint in a run directory; otherwise name it: --teacher WEIGHTS"
                        .into(),
                )
                .into());
            }
        }
        Ok(models)
    }
}

pub fn run(args: EvalArgs, backend: BackendChoice) -> anyhow::Result<ExitCode> {
    let request = EvalRequest {
        method: args.method,
        models: args.models()?,
        config: args.settings()?,
        out: results_dir(
            args.out.as_deref(),
            args.checkpoint.as_deref(),
            Path::new("runs"),
        ),
    };
    let session = super::open_session(backend)?;
    let stop = super::ctrl_c_flag();
    let progress = Progress::new("{spinner} {msg} [{wide_bar}] {pos}/{len} ETA {eta}")?;
    let mut stage = String::new();
    let epochs = request.config.linear.epochs;
    let results = evaluate(&session, &request, &stop, &mut |event| {
        show(&progress, &mut stage, epochs, event)
    });
    drop(progress);
    let results = match results {
        Err(EngineError::Interrupted) => {
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

/// The bar follows the current stage (extraction, neighbours, probe epochs).
fn show(progress: &Progress, stage: &mut String, epochs: usize, event: EvalEvent) {
    let bar = &progress.bar;
    match event {
        EvalEvent::Note(note) => progress.say(format!("kdlab: {note}")),
        EvalEvent::Skipped { path, reason } => progress.say(format!(
            "kdlab: warning: skipped {}: {reason}",
            path.display()
        )),
        EvalEvent::Progress {
            stage: now,
            done,
            total,
        } => {
            if now != *stage {
                bar.reset();
                bar.set_message(now.clone());
                *stage = now;
            }
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        }
        EvalEvent::Epoch { model, line } => {
            let now = format!("{}: linear probe epochs", model.name());
            if now != *stage {
                bar.reset();
                bar.set_length(epochs as u64);
                *stage = now;
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
            progress.say(format!("kdlab: {}", result.summary_line(&file)));
        }
    }
}
