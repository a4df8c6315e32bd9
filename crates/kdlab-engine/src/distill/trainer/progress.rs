//! Where a run stands and where it may go: the training state its checkpoints keep, the step
//! limits, the learning-rate schedule, the micro-batches since the last step and the speed
//! since the last metrics line.

use std::time::Instant;

use crate::distill::RunPlan;
use crate::distill::checkpoint::TrainState;
use kdlab_model::optim::CosineWithWarmup;

/// Where the run may go: the schedule's length and where this invocation stops.
pub(super) struct StepLimits {
    pub(super) total_steps: usize,
    /// `--max-steps` (or `optim.max_steps`), at most `total_steps`; the schedule is unchanged.
    pub(super) max_steps: usize,
}

impl StepLimits {
    pub(super) fn of(plan: &RunPlan) -> Self {
        let total_steps = plan.data.steps_per_epoch * plan.config.optim.epochs;
        Self {
            total_steps,
            max_steps: plan
                .max_steps
                .or(plan.config.optim.max_steps)
                .map_or(total_steps, |m| m.min(total_steps)),
        }
    }
}

/// Where the run stands (what a checkpoint keeps, and the moment's counters) and may go.
pub(super) struct Progress {
    pub(super) state: TrainState,
    pub(super) limits: StepLimits,
    schedule: CosineWithWarmup,
    /// The learning rate of the last step (its metrics line shows it).
    pub(super) last_lr: f64,
    /// Micro-batches since the last optimiser step.
    pub(super) accumulated: usize,
    pub(super) speed: Speed,
}

impl Progress {
    /// A run at `state` (the start, or a resumed run's checkpoint), the speed counted from now.
    pub(super) fn new(plan: &RunPlan, state: TrainState) -> Self {
        let config = &plan.config;
        let limits = StepLimits::of(plan);
        Self {
            schedule: CosineWithWarmup {
                peak_lr: config.optim.peak_lr(),
                warmup_steps: (config.optim.warmup_fraction * limits.total_steps as f64) as usize,
                total_steps: limits.total_steps,
            },
            limits,
            state,
            last_lr: 0.0,
            accumulated: 0,
            speed: Speed::start(),
        }
    }

    /// Whether this invocation has steps left: neither its step limit nor the last epoch is
    /// reached.
    pub(super) fn has_steps_left(&self, epochs: usize) -> bool {
        self.state.step < self.limits.max_steps && self.state.epoch < epochs
    }

    /// One micro-batch computed, of `images` over the whole run.
    pub(super) fn count_micro_batch(&mut self, images: usize) {
        self.accumulated += 1;
        self.speed.images += images;
    }

    /// The learning rate of the step about to be taken; the accumulation starts over.
    pub(super) fn begin_step(&mut self) -> f64 {
        self.accumulated = 0;
        self.last_lr = self.schedule.lr(self.state.step);
        self.last_lr
    }

    /// Whether a metrics line is due: every `log_every` steps and at the schedule's end.
    pub(super) fn line_due(&self, log_every: usize) -> bool {
        let step = self.state.step;
        step.is_multiple_of(log_every) || step == self.limits.total_steps
    }

    /// Whether the step limit stops this invocation before the schedule ends.
    pub(super) fn reached_max_steps(&self) -> bool {
        let limits = &self.limits;
        self.state.step >= limits.max_steps && limits.max_steps < limits.total_steps
    }

    /// Records a validation loss; whether it is the best so far.
    pub(super) fn record_val_loss(&mut self, val_loss: f64) -> bool {
        let improved = self.state.best_val_loss.is_none_or(|best| val_loss < best);
        if improved {
            self.state.best_val_loss = Some(val_loss);
        }
        improved
    }

    /// The next epoch, from its first batch.
    pub(super) fn next_epoch(&mut self) {
        self.state.epoch += 1;
        self.state.batch_in_epoch = 0;
    }
}

/// Images per second since the last metrics line (or the start, or a pause).
pub(super) struct Speed {
    images: usize,
    since: Instant,
}

impl Speed {
    pub(super) fn start() -> Self {
        Self {
            images: 0,
            since: Instant::now(),
        }
    }

    pub(super) fn take_rate(&mut self) -> f64 {
        let rate = self.images as f64 / self.since.elapsed().as_secs_f64().max(1e-9);
        *self = Self::start();
        rate
    }
}
