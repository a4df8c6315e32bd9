//! An evaluation on a background thread: the same `eval::evaluate` as `kdlab eval`, reporting
//! through a channel that the Evaluate panel drains each frame.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::backend::AutodiffBackend;
use crossbeam_channel::Receiver;

use crate::backend::{BackendChoice, OnAutodiffBackend};
use crate::distill::train::explain_device_panic;
use crate::eval::features::Stopped;
use crate::eval::{EvalEvent, EvalRequest, EvalResult, evaluate};
use crate::weights::read::quietly_catch;

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
    /// `request.backend` is filled in with the device chosen here; `wake` follows every message.
    pub fn start(
        mut request: EvalRequest,
        backend: BackendChoice,
        wake: impl Fn() + Send + 'static,
    ) -> Self {
        let (sender, messages) = crossbeam_channel::unbounded();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = stop.clone();
        std::thread::spawn(move || {
            let send = |m: EvalMessage| {
                let _ = sender.send(m);
                wake();
            };
            let result = backend
                .select()
                .map_err(|e| e.to_string())
                .and_then(|selected| {
                    send(EvalMessage::Backend(selected.to_string()));
                    request.backend = selected.to_string();
                    let batch_size = request.config.batch_size;
                    quietly_catch(|| {
                        selected.run_autodiff(Task {
                            request: &request,
                            stop: &stop_flag,
                            send: &send,
                        })
                    })
                    .map_err(|panic| format!("{:#}", explain_device_panic(&panic, batch_size)))
                });
            let finished = match result {
                Ok(Ok(results)) => Ok(Some(results)),
                Ok(Err(e)) if e.is::<Stopped>() => Ok(None),
                Ok(Err(e)) => Err(format!("{e:#}")),
                Err(e) => Err(e),
            };
            send(EvalMessage::Finished(finished));
        });
        Self { messages, stop }
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

struct Task<'a> {
    request: &'a EvalRequest,
    stop: &'a AtomicBool,
    send: &'a dyn Fn(EvalMessage),
}

impl OnAutodiffBackend for Task<'_> {
    type Output = anyhow::Result<Vec<EvalResult>>;

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        evaluate::<B>(self.request, &device, self.stop, &mut |event| {
            (self.send)(EvalMessage::Event(event))
        })
    }
}
