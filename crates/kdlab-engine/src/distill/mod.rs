//! The distillation: a run from its request to its outcome. `train` checks everything it can
//! before a tensor exists (the config, the weights files against it, the data against the
//! batch), opens or creates the run directory, then runs the `Trainer` on the session's backend.
//!
//! The `Trainer` (`trainer`) is the loop; the devices a step spans are its `Replicas`
//! (`replicas`): its own device alone, or every device of a data-parallel run (`parallel`).
//! Both compute a batch with `kd_step`, the KD forward/backward the bench measures too.

pub mod checkpoint;
pub mod collapse;
pub mod data;
pub mod events;
mod kd_step;
pub mod parallel;
pub mod probe;
mod replicas;
mod trainer;
pub mod validation;
pub mod window;

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub use data::TrainingData;
pub use events::{Event, NonFiniteLoss, Outcome};
pub use kd_step::{KdStep, kd_backward, student_backward};

use crate::backend::Selected;
use crate::config::{ConfigError, Devices, ParallelConfig, RunConfig};
use crate::session::fetch::fetch_weights;
use crate::session::run_status::{RunLease, RunStatus};
use crate::session::{EngineError, ModelPlan, RunDir, Session, on_backend};
use kdlab_hub::Fetcher;
use parallel::World;
use trainer::Trainer;

/// Where a run computes: its devices on this node (the first is the trainer's own) and the
/// world they belong to.
pub(crate) struct Placement<'a, D> {
    pub world: World,
    pub selected: &'a Selected,
    pub devices: &'a [D],
}

/// Where a run starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunStart {
    /// A new run directory under `runs_dir`.
    Fresh { runs_dir: PathBuf },
    /// An existing run directory, from its last checkpoint.
    Resume { run_dir: PathBuf },
}

/// Stop and pause, raised from another thread (Ctrl-C, the app's buttons).
#[derive(Debug, Clone, Default)]
pub struct TrainControl {
    stop: Arc<AtomicBool>,
    pause: Arc<AtomicBool>,
}

impl TrainControl {
    /// Stops at `stop` (Ctrl-C's flag, say) and never pauses.
    pub fn with_stop(stop: Arc<AtomicBool>) -> Self {
        Self {
            stop,
            pause: Arc::default(),
        }
    }

    /// Save a checkpoint after the current batch and return.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Hold between batches (true) or go on (false).
    pub fn set_paused(&self, paused: bool) {
        self.pause.store(paused, Ordering::SeqCst);
    }

    pub fn pause_requested(&self) -> bool {
        self.pause.load(Ordering::SeqCst)
    }
}

/// What to train.
#[derive(Debug, Clone)]
pub struct TrainRequest {
    pub start: RunStart,
    /// The config to train with; None resumes with the run's own `config.ron` (required for a
    /// fresh run).
    pub config: Option<RunConfig>,
    /// Stop after this many optimiser steps in total (the schedule still spans the epochs).
    pub max_steps: Option<usize>,
    pub control: TrainControl,
    /// `--devices`, `--nodes`, … over the config's `parallel` (a resumed run may change them:
    /// checkpoints do not depend on the device count).
    pub parallel: ParallelOverrides,
}

/// The command line's (or the app's) say over `parallel`; None keeps the config's.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParallelOverrides {
    pub devices: Option<Devices>,
    pub nodes: Option<usize>,
    pub node_rank: Option<usize>,
    pub coordinator: Option<String>,
}

impl ParallelOverrides {
    pub fn apply(&self, parallel: &mut ParallelConfig) {
        if let Some(devices) = &self.devices {
            parallel.devices = devices.clone();
        }
        if let Some(nodes) = self.nodes {
            parallel.nodes = nodes;
        }
        if let Some(rank) = self.node_rank {
            parallel.node_rank = rank;
        }
        if let Some(coordinator) = &self.coordinator {
            parallel.coordinator = Some(coordinator.clone());
        }
    }
}

/// How a run ended, and where it is.
#[derive(Debug, Clone)]
pub struct Finished {
    pub outcome: Outcome,
    pub run: RunDir,
    /// `(node_rank, nodes)` of a multi-node run; node R > 0 wrote nothing into `run`.
    pub node: Option<(usize, usize)>,
}

/// A run with everything checked: what `Trainer` starts from.
pub(crate) struct RunPlan {
    pub config: RunConfig,
    pub models: ModelPlan,
    pub data: TrainingData,
    pub resume: bool,
    pub max_steps: Option<usize>,
}

/// Where the run directory comes from.
enum Destination<'a> {
    Existing(RunDir),
    New { runs_dir: &'a std::path::Path },
}

/// Trains (or resumes) a run: the one entry the CLI and the app share.
pub fn train(
    session: &Session,
    request: &TrainRequest,
    on_event: &mut dyn FnMut(Event),
) -> Result<Finished, EngineError> {
    let destination = match &request.start {
        RunStart::Resume { run_dir } => Destination::Existing(RunDir::resumable(run_dir)?),
        RunStart::Fresh { runs_dir } => Destination::New { runs_dir },
    };
    let mut config = match (&request.config, &destination) {
        (Some(config), _) => config.clone(),
        (None, Destination::Existing(run)) => run.read_config()?,
        (None, Destination::New { .. }) => {
            return Err(EngineError::Failed(anyhow::anyhow!(
                "a new run needs a config"
            )));
        }
    };
    request.parallel.apply(&mut config.parallel);
    // The config's own rules first: opening files and listing folders for a broken config is
    // wasted work.
    config.validate()?;
    // Weights given by name become files of the cache (downloaded on first use; Stop cancels),
    // recorded in the config the run directory keeps.
    fetch_weights(&mut config, &Fetcher::from_env(), &mut |download| {
        on_event(Event::Download(download));
        match request.control.stop_requested() {
            true => ControlFlow::Break(()),
            false => ControlFlow::Continue(()),
        }
    })?;
    let resumed_from = match &destination {
        Destination::Existing(run) => Some(run.last_checkpoint()),
        Destination::New { .. } => None,
    };
    // The weights files and the data are checked together: all their problems in one report.
    let (models, data) = both(
        ModelPlan::resolve(&config, resumed_from.as_deref()),
        TrainingData::open(&config),
    )?;
    let plan = RunPlan {
        models,
        data,
        resume: resumed_from.is_some(),
        max_steps: request.max_steps,
        config,
    };
    if let Some(warning) = session.precision_warning(plan.config.precision) {
        on_event(Event::Warning(warning));
    }
    if !plan.models.pair.keeps_class_token() {
        on_event(Event::Warning(
            "the teacher and the student do not both have a CLS token: the target is over the \
             patches only"
                .into(),
        ));
    }
    let world = World::of(&plan.config.parallel);
    // Only now, with nothing left to refuse, does a new run directory appear — on node 0: the
    // other nodes of a multi-node run write nothing (node 0 names the run and writes it).
    let run = match destination {
        Destination::Existing(run) => run,
        Destination::New { runs_dir } if world.writes_run() => {
            RunDir::create(runs_dir, &plan.config.name, &plan.config)?
        }
        Destination::New { runs_dir } => RunDir::at(runs_dir),
    };
    // The run is this process's until it ends: another writer is refused, and the folder says
    // who writes it and, at the end, how it ended (status.json).
    let lease = match world.writes_run() {
        true => Some(RunLease::take(&run)?),
        false => None,
    };
    let batch_size = plan.config.optim.batch_size;
    let outcome = on_backend!(session, Some(batch_size), |B, device| {
        let devices = parallel::peer_devices::<B>(session.backend(), &device, &world)?;
        let place = Placement {
            world: world.clone(),
            selected: session.backend(),
            devices: &devices,
        };
        let (trainer, student) = Trainer::<B>::new(&plan, &run, &request.control, on_event, place)?;
        trainer.run(student)
    });
    // What stopped the run is in its log too, not only on the terminal that started it.
    if let Err(error) = &outcome
        && world.writes_run()
    {
        run.append_log(&format!("error: {error}"));
    }
    if let Some(lease) = lease {
        let at = crate::session::utc_timestamp();
        let step = || crate::session::runs::last_step(&run);
        let status = match &outcome {
            Ok(Outcome::Completed) => RunStatus::Finished { step: step(), at },
            Ok(Outcome::ReachedMaxSteps) => RunStatus::ReachedMaxSteps { step: step(), at },
            Ok(Outcome::Interrupted) => RunStatus::Interrupted { step: step(), at },
            Err(error) => RunStatus::Failed {
                message: error.to_string(),
                at,
            },
        };
        if let Err(e) = lease.finish(&status) {
            run.append_log(&format!(
                "warning: the run's status was not recorded: {e:#}"
            ));
        }
    }
    let outcome = outcome?;
    let node = world
        .is_multi_node()
        .then_some((world.node_rank, world.nodes));
    Ok(Finished { outcome, run, node })
}

/// Both results, or one error holding every problem of the two.
fn both<A, B>(a: Result<A, ConfigError>, b: Result<B, ConfigError>) -> Result<(A, B), ConfigError> {
    match (a, b) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        (
            Err(ConfigError::Invalid { problems, .. }),
            Err(ConfigError::Invalid { problems: more, .. }),
        ) => Err(ConfigError::Invalid {
            path: None,
            problems: problems.into_iter().chain(more).collect(),
        }),
        (Err(e), _) | (_, Err(e)) => Err(e),
    }
}
