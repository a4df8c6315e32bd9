//! The Runs panel's worker: reads the runs folder and the followed run's files off the UI thread
//! and sends what changed. It polls once a second — what network mounts and synced folders need,
//! where file events do not arrive — and wakes the UI only when something changed.

use std::path::PathBuf;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use kdlab_engine::session::RunDir;
use kdlab_engine::session::runs::{MetricsTail, Poll, RunSummary, RunsFolder};

const EVERY: Duration = Duration::from_secs(1);
/// The end of a followed run's log that is shown.
pub const LOG_TAIL: usize = 500;

/// What the worker found.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// The runs folder's runs, or why it cannot be listed.
    Listing(Result<Vec<RunSummary>, String>),
    /// New metrics lines of the followed run (or all of them, after a cut).
    Metrics { run: PathBuf, poll: Poll },
    /// The last lines of the followed run's log.
    Log { run: PathBuf, lines: Vec<String> },
}

/// A worker thread watching one runs folder; it ends when this is dropped.
pub struct RunsWatch {
    pub runs_dir: PathBuf,
    follow: Sender<Option<PathBuf>>,
    updates: Receiver<Update>,
}

impl RunsWatch {
    pub fn start(runs_dir: PathBuf, wake: impl Fn() + Send + 'static) -> Self {
        let (follow, follows) = crossbeam_channel::unbounded();
        let (send, updates) = crossbeam_channel::unbounded();
        let folder = runs_dir.clone();
        std::thread::spawn(move || watch(folder, follows, send, wake));
        Self {
            runs_dir,
            follow,
            updates,
        }
    }

    /// Follows this run (its metrics from the start, its log), or none.
    pub fn follow(&self, run: Option<PathBuf>) {
        let _ = self.follow.send(run);
    }

    pub fn drain(&self) -> Vec<Update> {
        self.updates.try_iter().collect()
    }
}

fn watch(
    runs_dir: PathBuf,
    follows: Receiver<Option<PathBuf>>,
    send: Sender<Update>,
    wake: impl Fn(),
) {
    let mut folder = RunsFolder::default();
    let mut last_listing = None;
    let mut followed: Option<(PathBuf, MetricsTail, Option<u64>)> = None;
    loop {
        let mut changed = false;
        let listing = match folder.list(&runs_dir) {
            // No runs yet: the folder appears with the first one.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            other => other
                .map_err(|e| format!("cannot list the runs folder {}: {e}", runs_dir.display())),
        };
        if last_listing.as_ref() != Some(&listing) {
            last_listing = Some(listing.clone());
            changed |= send.send(Update::Listing(listing)).is_ok();
        }
        if let Some((run, tail, log_len)) = &mut followed {
            let poll = tail.poll();
            if poll != Poll::More(Vec::new()) {
                let update = Update::Metrics {
                    run: run.clone(),
                    poll,
                };
                changed |= send.send(update).is_ok();
            }
            let log = RunDir::at(&*run).log_file();
            let len = std::fs::metadata(&log).map(|m| m.len()).ok();
            if len != *log_len {
                *log_len = len;
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let lines: Vec<String> = text.lines().map(str::to_string).collect();
                let tail = lines[lines.len().saturating_sub(LOG_TAIL)..].to_vec();
                let update = Update::Log {
                    run: run.clone(),
                    lines: tail,
                };
                changed |= send.send(update).is_ok();
            }
        }
        if changed {
            wake();
        }
        match follows.recv_timeout(EVERY) {
            Ok(run) => {
                followed = run.map(|run| {
                    let tail = MetricsTail::new(&RunDir::at(&run));
                    (run, tail, None)
                });
            }
            Err(RecvTimeoutError::Timeout) => {}
            // The panel is gone.
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}
