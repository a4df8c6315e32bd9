//! Data-parallel distillation on burn-collective (burn's own all-reduce, between threads of this
//! process and, through a global orchestrator, between nodes): one replica of the student and
//! the frozen teacher per device, each computing a disjoint shard of every batch; gradients
//! summed over all devices before the identical AdamW step on every replica.
//!
//! The run's trainer (`distill::Trainer`) keeps device 0 of its node and drives `Peers` as its
//! `Replicas`, as a one-device run drives `OneDevice`; `Peers` holds the rest: a follower
//! thread per other device (`replica`), the exchange (`exchange`), and the health of the run
//! (`health`: the first failure, the watchdog). A one-device run never starts them.

pub mod cluster;
pub mod exchange;
pub mod health;
pub mod peer;
pub mod replica;
pub mod world;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::anyhow;
use burn::collective::{finish_collective, register};
use burn::module::{AutodiffModule, Module};
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use crossbeam_channel::{Receiver, Sender};

pub use exchange::{Exchange, ExchangeError};
pub use health::{Health, WatchSettings};
pub use peer::{PeerStep, StepReport};
pub use world::{World, peer_devices};

use crate::backend::Selected;
use crate::config::{RunConfig, coordinator_port};
use crate::data::ImageFolder;
use crate::data::loader::Part;
use crate::data::views::Views;
use crate::distill::TrainControl;
use crate::distill::replicas::Replicas;
use crate::distill::validation::{LossSum, validation_sum};
use crate::distill::window::MetricWindows;
use crate::session::device_threads::{JobHandle, Lane, run_on};
use kdlab_model::guard::quietly_catch;
use kdlab_model::optim::{AdamW, Moments, StepOutcome, StudentOptimizer};
use kdlab_model::pair::{Student, Teacher};
use replica::{Command, Replica, Reply};

/// burn-collective's local server is one per backend and process: one data-parallel run at a
/// time per process (a second waits for the first).
static ONE_RUN: Mutex<()> = Mutex::new(());

/// A follower as the trainer sees it.
struct Follower {
    commands: Option<Sender<Command>>,
    replies: Receiver<Reply>,
    job: JobHandle,
}

/// What the trainer's device shares with the rest of the run.
pub struct Peers<B: AutodiffBackend> {
    pub world: World,
    exchange: Exchange<B::InnerBackend>,
    step: PeerStep<B>,
    followers: Vec<Follower>,
    names: Vec<String>,
    health: Health,
    watchdog: Option<std::thread::JoinHandle<()>>,
    /// What each model sees (how a batch's pixels split).
    views: Views,
    /// This node's part of a batch when no file is missing (batch / nodes).
    nominal_len: usize,
    /// This node's stop request, sent to every trainer at each exchange.
    control: TrainControl,
    /// A stop all trainers agreed on at the last exchange (Ctrl-C on any node).
    stop_agreed: bool,
    finished: bool,
    _one_run: MutexGuard<'static, ()>,
}

/// What a replica is made from: the trainer's models and optimiser after restore.
pub struct Origin<'a, B: AutodiffBackend> {
    pub teacher: &'a Teacher<B::InnerBackend>,
    pub student: &'a Student<B>,
    pub optimizer: &'a StudentOptimizer<B::InnerBackend>,
    pub config: Arc<RunConfig>,
    pub val: Option<Arc<ImageFolder>>,
    pub views: Views,
}

impl<B: AutodiffBackend> Peers<B> {
    /// Starts the followers on `devices[1..]` (copies of the trainer's replica), the
    /// coordinator on node 0 of a multi-node run, the watchdog, and joins the collective.
    /// `control` is this node's: its stop request goes to every trainer at each exchange.
    pub fn start(
        world: World,
        selected: &Selected,
        devices: &[B::Device],
        origin: Origin<'_, B>,
        control: TrainControl,
    ) -> anyhow::Result<Self> {
        let one_run = ONE_RUN.lock().unwrap_or_else(|p| p.into_inner());
        let collective = world.collective_config()?;
        if world.is_multi_node() && world.node_rank == 0 {
            let coordinator = world.coordinator.as_deref().unwrap_or_default();
            cluster::start_orchestrator(
                coordinator_port(coordinator).map_err(anyhow::Error::msg)?,
            )?;
        }
        let names: Vec<String> = (0..devices.len())
            .map(|local| world.describe(local, selected))
            .collect();
        let health = Health::new::<B::InnerBackend>(devices.len());
        let watchdog = health.watch(WatchSettings {
            timeout: world.timeout,
            peers: names.clone(),
            multi_node: world.is_multi_node(),
        });
        let val_batch = (origin.config.optim.batch_size / world.size()).max(1);
        let exchange_on = |local: usize| Exchange {
            peer: world.peer(local),
            local,
            device: devices[local].clone(),
            health: health.clone(),
        };
        let mut followers = Vec::new();
        for (local, device) in devices.iter().enumerate().skip(1) {
            let replica = Replica::<B> {
                name: names[local].clone(),
                teacher: origin.teacher.clone().to_device(device),
                student: origin.student.clone().fork(device),
                optimizer: copy_optimizer(origin.optimizer, device),
                exchange: exchange_on(local),
                collective: collective.clone(),
                config: origin.config.clone(),
                val: origin.val.clone(),
                val_part: world.global_part(local),
                val_batch,
                views: origin.views,
            };
            let (commands, inbox) = crossbeam_channel::unbounded();
            let (outbox, replies) = crossbeam_channel::unbounded();
            let job = run_on(Lane::Replica(local), move || replica.serve(inbox, outbox));
            followers.push(Follower {
                commands: Some(commands),
                replies,
                job,
            });
        }
        let exchange = exchange_on(0);
        let nominal_len = origin.config.optim.batch_size / world.nodes;
        let peers = Self {
            world,
            exchange,
            step: PeerStep::default(),
            followers,
            names,
            health,
            watchdog: Some(watchdog),
            views: origin.views,
            nominal_len,
            control,
            stop_agreed: false,
            finished: false,
            _one_run: one_run,
        };
        let registered = {
            let _waiting = peers.health.waiting(0);
            let (peer, device) = (peers.exchange.peer, peers.exchange.device.clone());
            quietly_catch(|| register::<B::InnerBackend>(peer, device, collective))
                .map_err(ExchangeError::Failed)
                .and_then(|r| r.map_err(ExchangeError::from))
        };
        if let Err(e) = registered {
            return Err(peers.failed(e));
        }
        Ok(peers)
    }

    /// This node's devices' names ("cuda:1"), for the log.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    fn broadcast(&self, command: impl Fn() -> Command) -> anyhow::Result<()> {
        (0..self.followers.len()).try_for_each(|f| self.send(f, command()))
    }

    /// Queues `command` for follower `f`; a follower that is gone has failed the run.
    fn send(&self, f: usize, command: Command) -> anyhow::Result<()> {
        let sent = self.followers[f]
            .commands
            .as_ref()
            .is_some_and(|c| c.send(command).is_ok());
        if sent {
            Ok(())
        } else {
            Err(self.failed(ExchangeError::Cancelled))
        }
    }

    /// One reply from every follower, in order; one that hung up has failed the run.
    fn replies(&self) -> anyhow::Result<Vec<Reply>> {
        self.followers
            .iter()
            .map(|f| {
                f.replies
                    .recv()
                    .map_err(|_| self.failed(ExchangeError::Cancelled))
            })
            .collect()
    }

    /// The run's error: the first failure of any peer (what went wrong first, not its
    /// consequences), else this device's.
    fn failed(&self, error: ExchangeError) -> anyhow::Error {
        self.health.fail(format!("{}: {error}", self.names[0]));
        anyhow!(
            "data-parallel run stopped: {}",
            self.health.failure().unwrap_or_else(|| error.to_string())
        )
    }
}

/// The data-parallel shape of a training step: this node's part of every batch spread over its
/// devices, the gradients summed over the run's, and the run's numbers (losses, spreads, the
/// stop) as the exchange summed them, so all nodes decide alike.
impl<B: AutodiffBackend> Replicas<B> for Peers<B> {
    fn part(&self) -> Part {
        self.world.node_part()
    }

    /// Splits this node's part of a micro-batch over its devices: the followers start on
    /// theirs at once, then the trainer's device computes its own. Its losses reach the
    /// windows with the step, once the exchange has summed them.
    fn accumulate(
        &mut self,
        teacher: &Teacher<B::InnerBackend>,
        student: &Student<B>,
        pixels: Vec<f32>,
        len: usize,
        loss_scale: f64,
        _windows: &mut MetricWindows<B::InnerBackend>,
    ) -> anyhow::Result<usize> {
        // No 1/grad_accum_steps here: the exchange divides by the summed shard weights,
        // which count the micro-batches too.
        let nominal_len = self.nominal_len;
        let views = self.views;
        let per_image = views.pixels();
        let local_devices = self.world.local_devices();
        // Each shard's weight: its images over the nominal shard (batch / world size).
        let nominal_shard = (nominal_len as f64 / local_devices as f64).max(1.0);
        let shard = |local: usize| {
            let range = self.world.device_part(local).of(0..len);
            let pixels = pixels[range.start * per_image..range.end * per_image].to_vec();
            (pixels, range.len(), range.len() as f64 / nominal_shard)
        };
        for local in 1..local_devices {
            let (pixels, len, weight) = shard(local);
            let command = Command::Accumulate {
                pixels,
                len,
                weight,
                loss_scale,
            };
            self.send(local - 1, command)?;
        }
        let (shard, shard_len, weight) = shard(0);
        let device = self.exchange.device.clone();
        let images = (shard_len > 0).then(|| views.split(shard, shard_len, &device));
        self.step
            .add(teacher, student, images, weight, loss_scale, &device);
        // Every node takes an equal part: the run's images are this node's times the nodes.
        Ok(len * self.world.nodes)
    }

    /// The exchange and the optimiser step on every device; the run's losses and spreads of
    /// the step's micro-batches go into the windows, and the stop agreed on is kept.
    fn step(
        &mut self,
        optimizer: &mut StudentOptimizer<B::InnerBackend>,
        student: Student<B>,
        lr: f64,
        windows: &mut MetricWindows<B::InnerBackend>,
    ) -> anyhow::Result<(Student<B>, StepOutcome)> {
        let stop = self.control.stop_requested();
        self.broadcast(|| Command::Step { lr })?;
        let stepped = self.step.step(&self.exchange, optimizer, student, lr, stop);
        let (student, report) = stepped.map_err(|e| self.failed(e))?;
        for reply in self.replies()? {
            if !matches!(reply, Reply::Stepped) {
                return Err(self.failed(ExchangeError::Cancelled));
            }
        }
        let device = &self.exchange.device;
        for loss in report.losses {
            windows.loss.add(Tensor::from_floats([loss as f32], device));
        }
        for [target_var, pred_var] in report.spreads {
            let pair = [target_var as f32, pred_var as f32];
            windows.spreads.add(Tensor::from_floats(pair, device));
        }
        self.stop_agreed = report.stop;
        Ok((student, report.outcome))
    }

    /// The validation loss over all devices (each takes its shard of the folder), and the
    /// files this node could not read.
    fn validate(
        &mut self,
        config: &RunConfig,
        teacher: &Teacher<B::InnerBackend>,
        student: &Student<B>,
        folder: &Arc<ImageFolder>,
    ) -> anyhow::Result<(f64, Vec<(PathBuf, String)>)> {
        self.broadcast(|| Command::Validate)?;
        let batch = (config.optim.batch_size / self.world.size()).max(1);
        let part = self.world.global_part(0);
        let (own, mut skipped) = validation_sum(
            config,
            teacher,
            &student.valid(),
            folder,
            self.views,
            part,
            batch,
        )
        .inspect_err(|e| self.health.fail(format!("{}: {e:#}", self.names[0])))?;
        let summed = self
            .exchange
            .sum_numbers(&[own.total as f32, own.images as f32])
            .map_err(|e| self.failed(e))?;
        for reply in self.replies()? {
            match reply {
                Reply::Validated { skipped: theirs } => skipped.extend(theirs),
                Reply::Stepped => return Err(self.failed(ExchangeError::Cancelled)),
            }
        }
        let sum = LossSum {
            total: summed.first().copied().unwrap_or(0.0) as f64,
            images: summed.get(1).copied().unwrap_or(0.0) as usize,
        };
        Ok((sum.mean(folder)?, skipped))
    }

    fn stop_requested(&self) -> bool {
        self.stop_agreed
    }

    fn parallel(&self) -> Option<(usize, usize, usize)> {
        Some((self.world.node_rank, self.world.nodes, self.world.size()))
    }

    fn finish(mut self: Box<Self>) {
        self.finished = true;
    }
}

impl<B: AutodiffBackend> Drop for Peers<B> {
    fn drop(&mut self) {
        if !self.finished {
            // An error or a panic on the trainer's device: release the followers.
            self.health
                .fail(format!("{}: the run's own device stopped", self.names[0]));
        }
        for follower in &mut self.followers {
            follower.commands = None;
        }
        for follower in &self.followers {
            follower.job.wait();
        }
        let peer = self.exchange.peer;
        let _ = quietly_catch(|| finish_collective::<B::InnerBackend>(peer));
        self.health.finish();
        if let Some(watchdog) = self.watchdog.take() {
            let _ = watchdog.join();
        }
    }
}

/// The trainer's optimiser (settings, moments, loss scale) for a replica on `device`.
fn copy_optimizer<B: burn::tensor::backend::Backend>(
    optimizer: &StudentOptimizer<B>,
    device: &B::Device,
) -> StudentOptimizer<B> {
    let mut adamw = AdamW::new(optimizer.adamw.settings);
    adamw.state = optimizer
        .adamw
        .state
        .iter()
        .map(|(name, m)| {
            let moments = Moments {
                exp_avg: m.exp_avg.clone().to_device(device),
                exp_avg_sq: m.exp_avg_sq.clone().to_device(device),
                step: m.step,
            };
            (name.clone(), moments)
        })
        .collect();
    let mut copy = StudentOptimizer::new(optimizer.adamw.settings, optimizer.clip_grad_norm, false);
    copy.adamw = adamw;
    copy.scaler = optimizer.scaler;
    copy
}
