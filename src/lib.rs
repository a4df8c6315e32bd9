//! kdlab: feature-based knowledge distillation of Vision Transformers on burn — a frozen BEiT v2
//! teacher into a shallow data2vec 2.0 student — with a view of where, per patch, the student
//! matches the teacher.
//!
//! Layers, each importing only from those below it (tests/layering.rs holds them to it):
//!
//! ```text
//! app, cli                         what people touch: widgets, flags, event sinks
//! distill, eval, bench             the work: training, evaluation, measurement
//! inspect                          per-patch views (distill's probe uses them)
//! session                          backend, models from a config, run directory, typed errors
//! overrides                        `--set PATH=VALUE` over any config
//! config, weights, data, backend   what comes in: RON, checkpoints, images, devices
//! optim, target, model             the method: AdamW and schedule, KD target, the encoders
//! kernels, guard                   fused CPU kernels and GPU attention (CubeCL); the panic guard
//! ```

pub mod app;
pub mod backend;
pub mod bench;
pub mod cli;
pub mod config;
pub mod data;
pub mod distill;
pub mod eval;
pub mod guard;
pub mod inspect;
pub mod kernels;
pub mod model;
pub mod optim;
pub mod overrides;
pub mod session;
pub mod target;
pub mod weights;
