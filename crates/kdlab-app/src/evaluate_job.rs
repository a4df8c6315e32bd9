//! An evaluation on a background thread: the same `eval::evaluate` as `kdlab eval`, reporting
//! through a channel that the Evaluate panel drains each frame.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::Receiver;

use kdlab_engine::backend::BackendChoice;
use kdlab_engine::eval::{EvalEvent, EvalRequest, EvalResult, evaluate};
use kdlab_engine::session::device_threads::{Lane, run_on};
use kdlab_engine::session::{EngineError, Session};

#[derive(Debug, Clone)]
pub enum EvalMessage {
    Backend(String),
    Event(EvalEvent),
    /// Ok(None): stopped by the user.
    Finished(Result<Option<Vec<EvalResult>>, String>),
}

pub struct EvalJob {
    pub messages: Receiver<EvalMessage>,
    stop: Arc<AtomicBool>,
}

impl EvalJob {
    /// `wake` follows every message.
    pub fn start(
        request: EvalRequest,
        backend: BackendChoice,
        wake: impl Fn() + Send + 'static,
    ) -> Self {
        let (sender, messages) = crossbeam_channel::unbounded();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = stop.clone();
        run_on(Lane::Evaluate, move || {
            let send = |m: EvalMessage| {
                let _ = sender.send(m);
                wake();
            };
            let result = Session::open(backend).and_then(|session| {
                send(EvalMessage::Backend(session.describe()));
                evaluate(&session, &request, &stop_flag, &mut |event| {
                    send(EvalMessage::Event(event))
                })
            });
            let finished = match result {
                Ok(results) => Ok(Some(results)),
                Err(EngineError::Interrupted) => Ok(None),
                Err(e) => Err(e.to_string()),
            };
            send(EvalMessage::Finished(finished));
        });
        Self { messages, stop }
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
