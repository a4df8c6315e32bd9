//! The distillation: targets and loss (more to come: optimiser, schedule, loop, checkpoints).

pub mod target;

pub use target::{kd_loss, prepare_target};
