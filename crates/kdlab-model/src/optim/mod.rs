//! The optimiser and its schedule, shared by the distillation and the linear probe: AdamW with
//! PyTorch's semantics and per-name weight decay, global gradient-norm clipping, warm-up cosine,
//! and f16's dynamic loss scaling around them for the student.

pub mod adamw;
pub mod clip;
pub mod grad_scaler;
mod grads;
pub mod schedule;
pub mod student;

pub use adamw::{AdamW, AdamWSettings, Moments, decays};
pub use clip::{clip_grad_norm, grad_norm};
pub use grad_scaler::GradScaler;
pub use schedule::CosineWithWarmup;
pub use student::{StepOutcome, StudentOptimizer};
