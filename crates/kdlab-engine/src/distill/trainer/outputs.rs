//! Where a run writes and whom it tells: the run directory (metrics, log, checkpoints,
//! heatmaps — node 0 alone writes it) and the caller's events, with what was said already so
//! that it is said once.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::Context;
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;

use crate::config::RunConfig;
use crate::distill::checkpoint::{self, TrainState};
use crate::distill::collapse::CollapseSign;
use crate::distill::events::Event;
use crate::session::{MetricsLine, RunDir, RunRecorder};
use kdlab_model::optim::AdamW;
use kdlab_model::pair::Student;
use kdlab_model::weights::Architecture;

/// The run directory and the caller's events, as this node writes and tells them.
pub(super) struct RunOutputs<'a> {
    run: &'a RunDir,
    recorder: RunRecorder,
    on_event: &'a mut dyn FnMut(Event),
    /// The config as the checkpoints carry it.
    config_ron: String,
    /// Whether this node writes the run (node 0).
    writes: bool,
    /// Unreadable files are reported once, however often the epochs meet them.
    reported: HashSet<PathBuf>,
    /// The collapse watch warned and the spreads have not recovered since (one warning per fall).
    collapse_warned: bool,
}

impl<'a> RunOutputs<'a> {
    /// Node 0 (`writes`) records into `run`; the other nodes of a multi-node run write nothing.
    pub(super) fn open(
        run: &'a RunDir,
        on_event: &'a mut dyn FnMut(Event),
        config: &RunConfig,
        writes: bool,
    ) -> anyhow::Result<Self> {
        let recorder = if writes {
            run.recorder()?
        } else {
            RunRecorder::discarding()
        };
        Ok(Self {
            run,
            recorder,
            on_event,
            config_ron: config.to_ron()?,
            writes,
            reported: HashSet::new(),
            collapse_warned: false,
        })
    }

    pub(super) fn run(&self) -> &'a RunDir {
        self.run
    }

    pub(super) fn log(&mut self, message: &str) {
        self.recorder.log(message);
    }

    pub(super) fn metrics(&mut self, line: &MetricsLine) -> anyhow::Result<()> {
        self.recorder.metrics(line)
    }

    pub(super) fn images(&mut self, step: usize, dir: &Path) {
        self.recorder.images(step, dir);
    }

    pub(super) fn event(&mut self, event: Event) {
        (self.on_event)(event);
    }

    /// Logs and announces files that could not be read, once each.
    pub(super) fn report_skipped(&mut self, skipped: Vec<(PathBuf, String)>) {
        for (path, reason) in skipped {
            if self.reported.insert(path.clone()) {
                self.log(&format!("skipped {}: {reason}", path.display()));
                self.event(Event::SkippedFile { path, reason });
            }
        }
    }

    /// Warns of a collapse `sign` at `step`, once per fall: again only after the spreads
    /// recovered (`collapse_recovered`).
    pub(super) fn warn_collapse(&mut self, step: usize, sign: &CollapseSign) {
        if self.collapse_warned {
            return;
        }
        self.collapse_warned = true;
        self.warn(format!("step {step}: {sign}"));
    }

    /// A warning: in the log (as `warning: …`) and to whoever follows the run.
    pub(super) fn warn(&mut self, warning: String) {
        self.log(&format!("warning: {warning}"));
        self.event(Event::Warning(warning));
    }

    /// The spreads are above their floors: the next fall is warned of again.
    pub(super) fn collapse_recovered(&mut self) {
        self.collapse_warned = false;
    }

    /// Saves `checkpoints/last` and says so (node 0; the others write nothing).
    pub(super) fn save_checkpoint<B: AutodiffBackend>(
        &mut self,
        student: &Student<B>,
        architecture: &Architecture,
        adamw: &AdamW<B::InnerBackend>,
        state: &TrainState,
    ) -> anyhow::Result<()> {
        if !self.writes {
            return Ok(());
        }
        let path = self.run.last_checkpoint();
        checkpoint::save(
            &path,
            &student.valid(),
            architecture,
            adamw,
            state,
            &self.config_ron,
        )?;
        self.event(Event::CheckpointSaved(path));
        Ok(())
    }

    /// Copies `checkpoints/last` to `checkpoints/best` (node 0).
    pub(super) fn keep_last_as_best(&self) -> anyhow::Result<()> {
        if !self.writes {
            return Ok(());
        }
        let (last, best) = (self.run.last_checkpoint(), self.run.best_checkpoint());
        std::fs::copy(&last, &best).with_context(|| format!("cannot write {}", best.display()))?;
        Ok(())
    }
}
