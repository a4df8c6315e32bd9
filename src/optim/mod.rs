//! The optimiser and its schedule, shared by the distillation and the linear probe: AdamW with
//! PyTorch's semantics and per-name weight decay, global gradient-norm clipping, warm-up cosine.

pub mod adamw;
pub mod clip;
pub mod schedule;

pub use adamw::{AdamW, AdamWSettings, Moments, decays};
pub use clip::clip_grad_norm;
pub use schedule::CosineWithWarmup;
