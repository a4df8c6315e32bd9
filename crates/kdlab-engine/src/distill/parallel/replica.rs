//! A follower: the replica on one of the node's other devices, on its own long-lived thread
//! (`device_threads::Lane::Replica`). It does what the run's trainer tells it, in the same
//! order as the trainer's own device, and keeps the same weights because it applies the same
//! step to the same summed gradients.

use std::path::PathBuf;
use std::sync::Arc;

use burn::collective::{CollectiveConfig, finish_collective, register};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use crossbeam_channel::{Receiver, Sender};

use super::exchange::{Exchange, ExchangeError};
use super::peer::PeerStep;
use crate::config::RunConfig;
use crate::data::ImageFolder;
use crate::data::loader::Part;
use crate::data::views::Views;
use crate::distill::validation::validation_sum;
use kdlab_model::guard::quietly_catch;
use kdlab_model::optim::StudentOptimizer;
use kdlab_model::pair::{Student, Teacher};

/// What the trainer asks of a follower.
pub enum Command {
    /// Forward and backward of its shard of a micro-batch (`[len, 3, S, S]` pixels).
    Accumulate {
        pixels: Vec<f32>,
        len: usize,
        weight: f64,
        loss_scale: f64,
    },
    /// Exchange and optimiser step.
    Step { lr: f64 },
    /// Its shard of the validation loss, exchanged.
    Validate,
}

/// A follower's answer to `Step` and `Validate` (its failures go to `Health`).
pub enum Reply {
    Stepped,
    Validated { skipped: Vec<(PathBuf, String)> },
}

/// Everything a follower holds.
pub struct Replica<B: AutodiffBackend> {
    pub name: String,
    pub teacher: Teacher<B::InnerBackend>,
    pub student: Student<B>,
    pub optimizer: StudentOptimizer<B::InnerBackend>,
    pub exchange: Exchange<B::InnerBackend>,
    pub collective: CollectiveConfig,
    pub config: Arc<RunConfig>,
    pub val: Option<Arc<ImageFolder>>,
    pub val_part: Part,
    pub val_batch: usize,
    pub views: Views,
}

impl<B: AutodiffBackend> Replica<B> {
    /// Registers, then serves commands until the trainer hangs up or something fails (the
    /// failure is recorded for the whole run, which releases the other peers).
    pub fn serve(self, commands: Receiver<Command>, replies: Sender<Reply>) {
        let (name, health, peer) = (
            self.name.clone(),
            self.exchange.health.clone(),
            self.exchange.peer,
        );
        let outcome = quietly_catch(move || self.run(&commands, &replies));
        let failure = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(ExchangeError::Cancelled)) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(panic) => Some(panic),
        };
        if let Some(why) = failure {
            health.fail(format!("{name} failed: {why}"));
        }
        let _ = quietly_catch(|| finish_collective::<B::InnerBackend>(peer));
    }

    fn run(
        mut self,
        commands: &Receiver<Command>,
        replies: &Sender<Reply>,
    ) -> Result<(), ExchangeError> {
        {
            let _waiting = self.exchange.health.waiting(self.exchange.local);
            register::<B::InnerBackend>(
                self.exchange.peer,
                self.exchange.device.clone(),
                self.collective.clone(),
            )?;
        }
        let mut step = PeerStep::<B>::default();
        let device = self.exchange.device.clone();
        let fault = injected_fault(self.exchange.local);
        let mut micro_batches = 0;
        for command in commands {
            match command {
                Command::Accumulate {
                    pixels,
                    len,
                    weight,
                    loss_scale,
                } => {
                    micro_batches += 1;
                    if fault == Some(micro_batches) {
                        panic!("injected fault (KDLAB_FAULT) at micro-batch {micro_batches}");
                    }
                    let images = (len > 0).then(|| self.views.split(pixels, len, &device));
                    step.add(
                        &self.teacher,
                        &self.student,
                        images,
                        weight,
                        loss_scale,
                        &device,
                    );
                }
                Command::Step { lr } => {
                    let (student, _) =
                        step.step(&self.exchange, &mut self.optimizer, self.student, lr, false)?;
                    self.student = student;
                    if replies.send(Reply::Stepped).is_err() {
                        return Ok(());
                    }
                }
                Command::Validate => {
                    let skipped = self.validate()?;
                    if replies.send(Reply::Validated { skipped }).is_err() {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    fn validate(&self) -> Result<Vec<(PathBuf, String)>, ExchangeError> {
        let Some(folder) = &self.val else {
            return Ok(Vec::new());
        };
        let (sum, skipped) = validation_sum(
            &self.config,
            &self.teacher,
            &self.student.valid(),
            folder,
            self.views,
            self.val_part,
            self.val_batch,
        )
        .map_err(|e| ExchangeError::Failed(format!("{e:#}")))?;
        self.exchange
            .sum_numbers(&[sum.total as f32, sum.images as f32])?;
        Ok(skipped)
    }
}

/// `KDLAB_FAULT=D:N` makes the follower on local device D fail at its N-th micro-batch: the
/// stand-in, in the fault tests, for a device that fails mid-run (out of memory, a driver
/// error). Only in a build with the `fault-injection` feature, which the tests enable.
#[cfg(feature = "fault-injection")]
fn injected_fault(local: usize) -> Option<usize> {
    let spec = std::env::var("KDLAB_FAULT").ok()?;
    let (device, at) = spec.split_once(':')?;
    (device.trim().parse() == Ok(local)).then(|| at.trim().parse().ok())?
}

/// A shipped build fails only for real.
#[cfg(not(feature = "fault-injection"))]
fn injected_fault(_local: usize) -> Option<usize> {
    None
}
