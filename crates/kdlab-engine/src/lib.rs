//! kdlab's engine: every job the command line and the app run, written once. Each entry
//! (`distill::train`, `eval::evaluate`, `inspect::inspect`, `bench::bench`) checks its request,
//! picks the backend and reports by events; the engine never draws and never imports egui.
//!
//! Modules, each importing only those below it (the crates below, `kdlab_model` and
//! `kdlab_kernels`, are held to it by the compiler):
//!
//! ```text
//! distill, eval, bench, features   the work: training, evaluation, measurement, outputs
//! inspect                          per-patch views (distill's probe uses them)
//! session                          backend, models from a config, run directory, typed errors
//! overrides                        `--set PATH=VALUE` over any config
//! config, data, backend            what comes in: RON, images, devices
//! ```

pub mod backend;
pub mod bench;
pub mod config;
pub mod data;
pub mod distill;
pub mod eval;
pub mod features;
pub mod inspect;
pub mod overrides;
pub mod session;
