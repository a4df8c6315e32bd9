//! What a run folder says about its run's state, for whoever looks at it — this process, another
//! one, the app following a headless run:
//!
//! - `run.lock`, locked by the process writing the run for as long as it writes it (an OS file
//!   lock: it is released when the process ends, even when it is killed);
//! - `status.json`, written (atomically) when the run starts and when it ends: running (pid,
//!   host), finished, stopped at its step limit, interrupted, failed (with the error).
//!
//! A second writer is refused while the lock is held: a run is never trained by two processes at
//! once (two `--resume`s, the app and a terminal).

use std::fs::{File, OpenOptions};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::run_dir::{RunDir, utc_timestamp};

pub const STATUS: &str = "status.json";
pub const LOCK: &str = "run.lock";

/// A run's state as its `status.json` records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RunStatus {
    /// Being written by process `pid` on `host` since `since` (UTC).
    Running {
        pid: u32,
        host: String,
        since: String,
    },
    Finished {
        step: usize,
        at: String,
    },
    /// Stopped at its step limit (`--max-steps`, `optim.max_steps`); resume continues it.
    ReachedMaxSteps {
        step: usize,
        at: String,
    },
    /// Stopped on request (Ctrl-C, SIGTERM, the app's Stop), its checkpoint written.
    Interrupted {
        step: usize,
        at: String,
    },
    Failed {
        message: String,
        at: String,
    },
}

impl RunStatus {
    /// Whether the run ended (rather than being written, or having been cut short unseen).
    pub fn ended(&self) -> bool {
        !matches!(self, Self::Running { .. })
    }
}

/// The writer's hold on a run: its lock, kept until `finish` or drop.
#[derive(Debug)]
pub struct RunLease {
    /// Locked; the lock goes with the handle.
    _lock: File,
    run: RunDir,
}

impl RunLease {
    /// Takes the run for this process and records it as running; refused while another process
    /// holds it.
    pub fn take(run: &RunDir) -> anyhow::Result<Self> {
        let path = run.root().join(LOCK);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = match read_status(run) {
                    Some(RunStatus::Running { pid, host, since }) => {
                        format!(" (process {pid} on {host}, since {since})")
                    }
                    _ => String::new(),
                };
                anyhow::bail!(
                    "{} is being written by another process{holder}: a run is trained by one \
                     process at a time; wait for it to end, or stop it",
                    run.root().display()
                );
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
        let lease = Self {
            _lock: lock,
            run: run.clone(),
        };
        lease.record(&RunStatus::Running {
            pid: std::process::id(),
            host: super::tensorboard::hostname(),
            since: utc_timestamp(),
        })?;
        Ok(lease)
    }

    /// Records how the run ended; the lock is released with the lease.
    pub fn finish(self, status: &RunStatus) -> anyhow::Result<()> {
        self.record(status)
    }

    fn record(&self, status: &RunStatus) -> anyhow::Result<()> {
        let json = serde_json::to_string_pretty(status)?;
        kdlab_model::weights::write::write_atomically(
            &self.run.root().join(STATUS),
            json.as_bytes(),
        )
    }
}

/// `status.json`, if there is a readable one (runs of kdlab before 0.1.1 have none).
pub fn read_status(run: &RunDir) -> Option<RunStatus> {
    let text = std::fs::read_to_string(run.root().join(STATUS)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Whether a process holds the run's lock now (`None`: the folder has no lock file, or it cannot
/// be opened). On a network mount the writer's lock may be invisible: then the folder's recent
/// changes are the only sign of life.
pub fn is_locked(run: &RunDir) -> Option<bool> {
    let file = File::open(run.root().join(LOCK)).ok()?;
    match file.try_lock_shared() {
        Ok(()) => Some(false),
        Err(std::fs::TryLockError::WouldBlock) => Some(true),
        Err(std::fs::TryLockError::Error(_)) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_writer_at_a_time_and_the_status_follows_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::at(dir.path());
        assert_eq!(is_locked(&run), None);
        let lease = RunLease::take(&run).unwrap();
        assert_eq!(is_locked(&run), Some(true));
        assert!(matches!(
            read_status(&run),
            Some(RunStatus::Running { pid, .. }) if pid == std::process::id()
        ));
        let refused = RunLease::take(&run).unwrap_err().to_string();
        assert!(
            refused.contains("is being written by another process (process"),
            "{refused}"
        );
        let done = RunStatus::Finished {
            step: 12,
            at: "20261208-000000".into(),
        };
        lease.finish(&done).unwrap();
        assert_eq!(is_locked(&run), Some(false));
        assert_eq!(read_status(&run), Some(done));
        // The next writer (a resume) takes it again.
        let again = RunLease::take(&run).unwrap();
        drop(again);
        assert_eq!(is_locked(&run), Some(false));
    }
}
