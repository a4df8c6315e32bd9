//! A training run on the app's training thread (`device_threads`): the same `distill::train` as `kdlab train`, its
//! events sent through a channel that the Run panel drains each frame (woken by `wake`).

use crossbeam_channel::Receiver;

use kdlab_engine::backend::BackendChoice;
use kdlab_engine::distill::{Event, Outcome, TrainControl, TrainRequest, train};
use kdlab_engine::session::Session;
use kdlab_engine::session::device_threads::{JobHandle, Lane, run_on};

/// What the worker tells the UI.
#[derive(Debug, Clone)]
pub enum JobMessage {
    Backend(String),
    Event(Event),
    Finished(Result<Outcome, String>),
}

pub struct TrainingJob {
    messages: Receiver<JobMessage>,
    control: TrainControl,
    job: JobHandle,
}

impl TrainingJob {
    /// Starts the run; `wake` is called after every message (the UI's `request_repaint`).
    pub fn start(
        request: TrainRequest,
        backend: BackendChoice,
        wake: impl Fn() + Send + 'static,
    ) -> Self {
        let (sender, messages) = crossbeam_channel::unbounded();
        let control = request.control.clone();
        let job = run_on(Lane::Train, move || {
            let send = |m: JobMessage| {
                let _ = sender.send(m);
                wake();
            };
            let result = Session::open(backend).and_then(|session| {
                send(JobMessage::Backend(session.describe()));
                train(&session, &request, &mut |event| {
                    send(JobMessage::Event(event))
                })
            });
            let finished = result.map(|f| f.outcome).map_err(|e| e.to_string());
            send(JobMessage::Finished(finished));
        });
        Self {
            messages,
            control,
            job,
        }
    }

    /// Messages that arrived since the last call.
    pub fn drain(&self) -> Vec<JobMessage> {
        self.messages.try_iter().collect()
    }

    pub fn set_paused(&self, paused: bool) {
        self.control.set_paused(paused);
    }

    pub fn is_paused(&self) -> bool {
        self.control.pause_requested()
    }

    /// Asks the loop to save a checkpoint and return (it finishes its current batch first).
    pub fn request_stop(&self) {
        self.control.request_stop();
    }

    pub fn is_running(&self) -> bool {
        !self.job.is_finished()
    }

    /// Stops the run with a checkpoint and waits for it (closing the window).
    pub fn stop_and_wait(&mut self) {
        self.request_stop();
        self.job.wait();
    }
}

impl Drop for TrainingJob {
    fn drop(&mut self) {
        self.stop_and_wait();
    }
}
