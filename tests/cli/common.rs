//! The suite's helpers: the testkit's, and running the `kdlab` binary as a user types it (its
//! path, `CARGO_BIN_EXE_kdlab`, exists only in the tests of the package that builds it).

use std::path::Path;

pub use kdlab_testkit::*;

/// `kdlab ARGS…` as a user types it.
pub fn kdlab(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_kdlab"))
        .args(args)
        .output()
        .expect("the kdlab binary runs")
}

/// `kdlab --no-gui --backend cpu ARGS…`.
pub fn kdlab_cpu(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_kdlab"))
        .args(["--no-gui", "--backend", "cpu"])
        .args(args)
        .output()
        .expect("the kdlab binary runs")
}

/// `kdlab train` on the CPU with this config, writing runs under `runs`.
pub fn train_command(config: &Path, runs: &Path) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_kdlab"));
    command.args(["--no-gui", "train", "--backend", "cpu", "--config"]);
    command.arg(config).arg("--runs-dir").arg(runs);
    command
}

/// Trains and asserts success.
pub fn train(config: &Path, runs: &Path, extra: &[&str]) -> std::process::Output {
    let out = train_command(config, runs)
        .args(extra)
        .output()
        .expect("kdlab runs");
    assert!(out.status.success(), "train failed: {}", stderr(&out));
    out
}
