//! Long-lived threads for the app's device work.
//!
//! CubeCL gives every OS thread that touches a device a stream and a memory pool of its own, and
//! burn 0.21 never frees them (tracel-ai/burn#4792, fixed after 0.21): a thread per job would
//! leave one pool behind per Inspect or Evaluate click. So each kind of job has one thread for
//! the life of the process, started on first use, and its jobs run there one after another
//! (on a GPU they would queue on the device anyway). The CLI runs its one command on the main
//! thread and needs none of this.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, Sender};

use kdlab_model::guard::quietly_catch;

/// The kinds of device work, each with its own thread (a long training run must not hold up an
/// inspection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Train,
    Inspect,
    Evaluate,
    /// The replica on a data-parallel run's local device k ≥ 1 (device 0 is the run's own
    /// thread), reused by every run.
    Replica(usize),
}

impl Lane {
    /// The lanes every app opens (capacity only: replicas start when a run needs them).
    const COMMON: usize = 3;

    fn name(self) -> String {
        match self {
            Self::Train => "kdlab-train".into(),
            Self::Inspect => "kdlab-inspect".into(),
            Self::Evaluate => "kdlab-evaluate".into(),
            Self::Replica(k) => format!("kdlab-replica-{k}"),
        }
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// Each started lane and where its jobs go.
type Lanes = Mutex<Vec<(Lane, Sender<Job>)>>;

/// A queued or running job: whether it has finished, and waiting for it.
pub struct JobHandle {
    finished: Arc<AtomicBool>,
    done: Receiver<()>,
}

impl JobHandle {
    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::SeqCst)
    }

    /// Blocks until the job has run (at once if it has).
    pub fn wait(&self) {
        if !self.is_finished() {
            // The sender goes when the job ends, however it ends.
            let _ = self.done.recv();
        }
    }
}

/// Runs `job` on `lane`'s thread, after the jobs queued there before it. A panic that escapes
/// the job (device work itself runs under `Session::guard`) ends that job only, not the lane.
pub fn run_on(lane: Lane, job: impl FnOnce() + Send + 'static) -> JobHandle {
    let finished = Arc::new(AtomicBool::new(false));
    let (done_sender, done) = crossbeam_channel::bounded::<()>(1);
    let flag = finished.clone();
    let wrapped: Job = Box::new(move || {
        let _ = quietly_catch(job);
        flag.store(true, Ordering::SeqCst);
        drop(done_sender);
    });
    if let Err(rejected) = lane_sender(lane).send(wrapped) {
        // The lane's thread could not be started: run here rather than lose the job.
        (rejected.into_inner())();
    }
    JobHandle { finished, done }
}

fn lane_sender(lane: Lane) -> Sender<Job> {
    static LANES: OnceLock<Lanes> = OnceLock::new();
    let lanes = LANES.get_or_init(|| Mutex::new(Vec::with_capacity(Lane::COMMON)));
    let mut lanes = lanes
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((_, sender)) = lanes.iter().find(|(l, _)| *l == lane) {
        return sender.clone();
    }
    let (sender, jobs) = crossbeam_channel::unbounded::<Job>();
    let started = std::thread::Builder::new()
        .name(lane.name())
        .spawn(move || {
            for job in jobs {
                job();
            }
        });
    if started.is_ok() {
        lanes.push((lane, sender.clone()));
    }
    // Without a thread the receiver is gone and `run_on` runs the job itself.
    sender
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_of_a_lane_share_one_thread_and_a_panic_ends_only_its_job() {
        let ids = Arc::new(Mutex::new(Vec::new()));
        let mut handles = Vec::new();
        for i in 0..5 {
            let ids = ids.clone();
            handles.push(run_on(Lane::Evaluate, move || {
                if i == 2 {
                    panic!("job 2 fails");
                }
                ids.lock().unwrap().push(std::thread::current().id());
            }));
        }
        for handle in &handles {
            handle.wait();
            assert!(handle.is_finished());
        }
        let ids = ids.lock().unwrap();
        assert_eq!(ids.len(), 4, "every job but the panicking one ran");
        assert!(ids.iter().all(|id| *id == ids[0]), "all on one thread");
        assert_ne!(ids[0], std::thread::current().id());
    }
}
