//! How a data-parallel run fails: the first failure of any peer is kept (later ones are its
//! consequences), every peer still waiting in an exchange is released, and a watchdog declares
//! the run hung when a peer waits longer than the timeout — never a silent hang.
//!
//! Releasing is burn-collective's `reset_collective`: it drops the pending all-reduce, and each
//! waiting peer's call returns an error. That works while the local collective server is free;
//! between nodes the server may itself be stuck awaiting a node that vanished, so a multi-node
//! run whose peers are still held after a grace period ends the process (as PyTorch's NCCL
//! watchdog does) — with the last good checkpoint on disk, as every checkpoint is.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use burn::collective::reset_collective;

use burn::tensor::backend::Backend;
use kdlab_model::guard::quietly_catch;

/// What the watchdog needs to know about the run.
#[derive(Debug, Clone)]
pub struct WatchSettings {
    pub timeout: Duration,
    /// Each local peer, for messages ("cuda:1", "cpu worker 1 on node 0 of 2").
    pub peers: Vec<String>,
    pub multi_node: bool,
}

#[derive(Default)]
struct State {
    failure: Option<String>,
    /// Since when each local peer has waited in an exchange.
    waiting: Vec<Option<Instant>>,
}

/// Shared by the peers of one node and its watchdog.
#[derive(Clone)]
pub struct Health {
    state: Arc<Mutex<State>>,
    finished: Arc<AtomicBool>,
    /// Releases every peer waiting in an exchange.
    release: Arc<dyn Fn() + Send + Sync>,
}

impl Health {
    /// For `peers` local peers on backend `B` (whose pending exchanges `fail` releases).
    pub fn new<B: Backend>(peers: usize) -> Self {
        Self::with_release(peers, Arc::new(reset_collective::<B>))
    }

    fn with_release(peers: usize, release: Arc<dyn Fn() + Send + Sync>) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                failure: None,
                waiting: vec![None; peers],
            })),
            finished: Arc::default(),
            release,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `message` if it is the first failure and releases every waiting peer.
    pub fn fail(&self, message: String) {
        let first = {
            let mut state = self.lock();
            let first = state.failure.is_none();
            if first {
                state.failure = Some(message);
            }
            first
        };
        if first {
            // A collective server that died already released everyone (and would panic here).
            let _ = quietly_catch(|| (self.release)());
        }
    }

    /// The first failure, if any.
    pub fn failure(&self) -> Option<String> {
        self.lock().failure.clone()
    }

    /// Marks local peer `local` as waiting in an exchange until the guard drops.
    pub fn waiting(&self, local: usize) -> Waiting<'_> {
        if let Some(slot) = self.lock().waiting.get_mut(local) {
            *slot = Some(Instant::now());
        }
        Waiting {
            health: self,
            local,
        }
    }

    /// The watchdog: checks every 100 ms until `finish`.
    pub fn watch(&self, settings: WatchSettings) -> std::thread::JoinHandle<()> {
        let health = self.clone();
        std::thread::spawn(move || health.watchdog(&settings))
    }

    /// Ends the watchdog (the run is over, whichever way).
    pub fn finish(&self) {
        self.finished.store(true, Ordering::SeqCst);
    }

    fn watchdog(&self, settings: &WatchSettings) {
        let mut declared: Option<Instant> = None;
        while !self.finished.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
            let longest = {
                let state = self.lock();
                state
                    .waiting
                    .iter()
                    .enumerate()
                    .filter_map(|(i, since)| since.map(|s| (i, s.elapsed())))
                    .max_by_key(|&(_, waited)| waited)
            };
            match (longest, declared) {
                (Some((peer, waited)), None) if waited >= settings.timeout => {
                    let name = settings.peers.get(peer).map_or("a device", String::as_str);
                    let whom = if settings.multi_node {
                        "the other nodes (one stopped, hung or lost its network)"
                    } else {
                        "the other devices"
                    };
                    self.fail(format!(
                        "{name} waited {} s in the gradient exchange for {whom}; the run is \
                         stopped as hung (parallel.timeout_s = {})",
                        waited.as_secs(),
                        settings.timeout.as_secs()
                    ));
                    declared = Some(Instant::now());
                }
                (Some(_), Some(at)) if settings.multi_node && at.elapsed() > GRACE => {
                    // Not eprintln!: with stderr gone (a closed pipe) it would panic and take
                    // the watchdog with it, leaving the process hung.
                    let _ = writeln!(
                        std::io::stderr(),
                        "kdlab: {}; the peers could not be released, so the process ends here \
                         (the last checkpoint is kept)",
                        self.failure().unwrap_or_default()
                    );
                    std::process::exit(EXIT_HUNG);
                }
                _ => {}
            }
        }
    }
}

/// How long released peers may take to return before a multi-node process is ended.
const GRACE: Duration = Duration::from_secs(10);

/// The exit status of a multi-node process ended by its watchdog.
pub const EXIT_HUNG: i32 = 3;

/// While alive, a peer is waiting in an exchange.
pub struct Waiting<'a> {
    health: &'a Health,
    local: usize,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.health.lock().waiting.get_mut(self.local) {
            *slot = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_failure_is_kept_and_releases_once() {
        let released = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = released.clone();
        let health = Health::with_release(
            2,
            Arc::new(move || {
                counter.fetch_add(1, Ordering::SeqCst);
            }),
        );
        health.fail("cpu worker 1: out of memory".into());
        health.fail("cpu worker 0: the exchange was cancelled".into());
        assert_eq!(
            health.failure().as_deref(),
            Some("cpu worker 1: out of memory")
        );
        assert_eq!(released.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_peer_waiting_past_the_timeout_fails_the_run() {
        let health = Health::with_release(2, Arc::new(|| {}));
        let watchdog = health.watch(WatchSettings {
            timeout: Duration::from_millis(300),
            peers: vec!["cpu worker 0".into(), "cpu worker 1".into()],
            multi_node: false,
        });
        let started = Instant::now();
        let waiting = health.waiting(1);
        while health.failure().is_none() && started.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(waiting);
        health.finish();
        watchdog.join().unwrap();
        let failure = health
            .failure()
            .expect("the watchdog declared the run hung");
        assert!(failure.starts_with("cpu worker 1 waited"), "{failure}");
        assert!(started.elapsed() >= Duration::from_millis(300));
    }
}
