//! The `kdlab` binary's test suite, one binary: every command as a user types it (train,
//! resume, models by name, data-parallel runs and their faults, eval, overrides, TensorBoard
//! output) and the engine entries those commands share with the app.

mod cli;
mod collapse;
mod common;
mod data_parallel;
mod engine;
mod eval;
mod families;
mod fetch;
mod overrides_cli;
mod precision;
mod tensorboard;
mod train_cli;
