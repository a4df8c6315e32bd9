//! What a training run tells whoever started it (the CLI's progress bar, the app's Run panel),
//! and how it ends.

use std::path::PathBuf;

use crate::session::MetricsLine;
use crate::session::fetch::Download;

#[derive(Debug, Clone)]
pub enum Event {
    Started {
        run_dir: PathBuf,
        total_steps: usize,
        steps_per_epoch: usize,
        start_step: usize,
        train_images: usize,
        val_images: usize,
        /// Data-parallel, where this process stands: `(node_rank, nodes, devices in all)`.
        parallel: Option<(usize, usize, usize)>,
    },
    /// A weights name being downloaded before the run starts (or its file being verified).
    Download(Download),
    /// Something the user should know before it costs them (bf16 on the CPU).
    Warning(String),
    /// A metrics line was written.
    Step(MetricsLine),
    Validation {
        step: usize,
        epoch: usize,
        val_loss: f64,
    },
    SkippedFile {
        path: PathBuf,
        reason: String,
    },
    CheckpointSaved(PathBuf),
    /// The probe set's maps for the student after `epoch` epochs are in `dir`.
    Heatmaps {
        epoch: usize,
        dir: PathBuf,
    },
    /// The loop is holding between batches after `step` (the app's Pause took effect).
    Paused {
        step: usize,
    },
    /// The loop goes on after a pause.
    Continued,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    ReachedMaxSteps,
    Interrupted,
}

impl Outcome {
    /// What happened, for people.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Completed => "finished",
            Self::ReachedMaxSteps => "stopped at the step limit (max steps)",
            Self::Interrupted => "interrupted; resume continues it",
        }
    }
}

/// The loss went NaN or infinite from weights and moments that were checked finite when they
/// were loaded: the training itself diverged, so the advice is about the training.
#[derive(Debug, thiserror::Error)]
#[error(
    "the loss became {loss} by step {step} (epoch {epoch}); the run stopped{}. Lower \
     optim.base_lr, set optim.clip_grad_norm, or use precision f32.",
    if *kept_checkpoint { " and the last good checkpoint is kept" } else { " before its first checkpoint" }
)]
pub struct NonFiniteLoss {
    pub step: usize,
    pub epoch: usize,
    pub loss: f64,
    /// Whether the run has a checkpoint from before (a resume point).
    pub kept_checkpoint: bool,
}
