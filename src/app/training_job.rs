//! A training run on a background thread: the same `distill::train` as the CLI, reporting through
//! a channel; the UI polls it each frame and is woken by `request_repaint`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use burn::tensor::backend::AutodiffBackend;
use crossbeam_channel::Receiver;

use crate::backend::{BackendChoice, OnAutodiffBackend};
use crate::config::RunConfig;
use crate::distill::run_dir::RunDir;
use crate::distill::train::{Event, Outcome, TrainOptions, explain_device_panic, train};
use crate::weights::read::quietly_catch;

/// What the worker tells the UI.
#[derive(Debug, Clone)]
pub enum JobMessage {
    Backend(String),
    Event(Event),
    Finished(Result<Outcome, String>),
}

/// Where a run starts.
#[derive(Debug, Clone)]
pub enum StartFrom {
    /// A new run directory under `runs_dir`.
    Fresh { runs_dir: PathBuf },
    /// An existing run directory, from its `checkpoints/last`.
    Resume { run_dir: PathBuf },
}

pub struct TrainingJob {
    messages: Receiver<JobMessage>,
    stop: Arc<AtomicBool>,
    pause: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TrainingJob {
    /// Starts the run; `wake` is called after every message (the UI's `request_repaint`).
    pub fn start(
        config: RunConfig,
        backend: BackendChoice,
        from: StartFrom,
        max_steps: Option<usize>,
        wake: impl Fn() + Send + 'static,
    ) -> Self {
        let (sender, messages) = crossbeam_channel::unbounded();
        let stop = Arc::new(AtomicBool::new(false));
        let pause = Arc::new(AtomicBool::new(false));
        let options = TrainOptions {
            max_steps,
            stop: stop.clone(),
            pause: pause.clone(),
            resume: matches!(from, StartFrom::Resume { .. }),
        };
        let thread = std::thread::Builder::new()
            .name("kdlab-train".into())
            .spawn(move || {
                let send = |m: JobMessage| {
                    let _ = sender.send(m);
                    wake();
                };
                let result = run(&config, backend, &from, &options, &send);
                send(JobMessage::Finished(result.map_err(|e| format!("{e:#}"))));
            })
            .ok();
        Self {
            messages,
            stop,
            pause,
            thread,
        }
    }

    /// Messages that arrived since the last call.
    pub fn drain(&self) -> Vec<JobMessage> {
        self.messages.try_iter().collect()
    }

    pub fn set_paused(&self, paused: bool) {
        self.pause.store(paused, Ordering::SeqCst);
    }

    pub fn is_paused(&self) -> bool {
        self.pause.load(Ordering::SeqCst)
    }

    /// Asks the loop to save a checkpoint and return (it finishes its current batch first).
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops the run with a checkpoint and waits for it (closing the window).
    pub fn stop_and_wait(&mut self) {
        self.request_stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(
    config: &RunConfig,
    backend: BackendChoice,
    from: &StartFrom,
    options: &TrainOptions,
    send: &dyn Fn(JobMessage),
) -> anyhow::Result<Outcome> {
    if let Err((field, message)) = config.validate() {
        anyhow::bail!("{field}: {message}");
    }
    let selected = backend.select()?;
    send(JobMessage::Backend(selected.to_string()));
    let mut run_dir = match from {
        StartFrom::Fresh { runs_dir } => RunDir::create(runs_dir, &config.name, &config.to_ron())?,
        StartFrom::Resume { run_dir } => RunDir::open(run_dir)?,
    };
    let batch_size = config.optim.batch_size;
    quietly_catch(|| {
        selected.run_autodiff(Train {
            config,
            run: &mut run_dir,
            options,
            send,
        })
    })
    .map_err(|panic| explain_device_panic(&panic, batch_size))?
}

struct Train<'a> {
    config: &'a RunConfig,
    run: &'a mut RunDir,
    options: &'a TrainOptions,
    send: &'a dyn Fn(JobMessage),
}

impl OnAutodiffBackend for Train<'_> {
    type Output = anyhow::Result<Outcome>;

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let send = self.send;
        train::<B>(self.config, self.run, self.options, &device, &mut |event| {
            send(JobMessage::Event(event));
        })
    }
}

impl Drop for TrainingJob {
    fn drop(&mut self) {
        self.stop_and_wait();
    }
}
