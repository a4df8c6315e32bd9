//! The distillation: targets and loss, optimiser, schedule, the loop, checkpoints, run directory.

pub mod checkpoint;
pub mod optim;
pub mod probe;
pub mod run_dir;
pub mod schedule;
pub mod target;
pub mod train;

pub use target::{kd_loss, prepare_target};
