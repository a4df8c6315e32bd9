//! `--set PATH=VALUE` as a user types it: a run's config.ron records the overridden fields, and
//! an unknown path, a value of the wrong type or out of range stops the command before anything
//! starts, naming the override.

use std::path::Path;

use crate::common::*;
use kdlab_engine::config::{Devices, RunConfig};

/// `kdlab --no-gui --backend cpu train --config configs/demo.ron --runs-dir RUNS --set …`.
fn train_demo(runs: &Path, extra: &[&str]) -> std::process::Output {
    let demo = demo_config();
    let mut args = vec!["train", "--config", demo.to_str().unwrap()];
    args.extend(["--runs-dir", runs.to_str().unwrap()]);
    args.extend(extra);
    kdlab_cpu(&args)
}

#[test]
fn the_run_config_records_the_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    // One step of 4 images on the demo's tiny models, no validation split beyond the demo's, no
    // probe maps: a few seconds on the CPU.
    let out = train_demo(
        &runs,
        &[
            "--set",
            "name=overridden",
            "--set",
            "optim.max_steps=1",
            "--set",
            "optim.batch_size=4",
            "--set",
            "optim.base_lr=1e-3",
            "--set",
            "data.repeats=1",
            "--set",
            "data.workers=1",
            "--set",
            "probe.count=0",
            "--set",
            "student.blocks=FirstMain(1)",
            // The command's own flag wins over --set.
            "--set",
            "parallel.devices=2",
            "--devices",
            "1",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let run = &run_dirs(&runs)[0];
    let name = run.file_name().unwrap().to_string_lossy();
    assert!(name.starts_with("overridden-"), "{name}");
    let recorded = RunConfig::load(&run.join("config.ron")).unwrap();
    assert_eq!(recorded.optim.max_steps, Some(1));
    assert_eq!(recorded.optim.batch_size, 4);
    assert_eq!(recorded.optim.base_lr, 1e-3);
    assert_eq!((recorded.data.repeats, recorded.data.workers), (1, 1));
    assert_eq!(recorded.probe.count, 0);
    assert_eq!(
        recorded.student.blocks,
        kdlab_model::model::BlockSelection::FirstMain(1)
    );
    assert_eq!(
        recorded.parallel.devices,
        Devices::Count(1),
        "--devices wins"
    );
    // What was not overridden is the demo's.
    let demo = RunConfig::load(&demo_config()).unwrap();
    assert_eq!(
        (recorded.optim.epochs, &recorded.teacher),
        (demo.optim.epochs, &demo.teacher)
    );
}

#[test]
fn a_bad_override_stops_train_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    for (setting, message) in [
        (
            "optim.base_rate=1e-3",
            "error: --set optim.base_rate=1e-3: `optim` has no field `base_rate`; its fields: \
             base_lr, batch_size,",
        ),
        (
            "optim.base_lr=abc",
            "error: --set optim.base_lr=abc: expected a number (f64), found \"abc\"",
        ),
        (
            "optim.batch_size=0",
            "demo.ron: optim.batch_size: must be in 1..=65536, is 0 (--set optim.batch_size=0)",
        ),
    ] {
        let out = train_demo(&runs, &["--set", setting]);
        let err = stderr(&out);
        assert_eq!(
            out.status.code(),
            Some(2),
            "a config error: {setting}: {err}"
        );
        assert!(err.contains(message), "{setting}: {err}");
        assert!(!runs.exists(), "{setting}: no run directory");
    }
    // Without `=` it is no override at all: a usage error of clap's (exit 2).
    let out = train_demo(&runs, &["--set", "optim.base_lr"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("`optim.base_lr` is not PATH=VALUE"), "{err}");
}

#[test]
fn a_resumed_run_refuses_overrides_of_what_it_trains() {
    let dir = tempfile::tempdir().unwrap();
    // Refused before the run directory is read: none is needed here.
    let missing = dir.path().join("no-run");
    let out = kdlab_cpu(&[
        "train",
        "--resume",
        missing.to_str().unwrap(),
        "--set",
        "optim.base_lr=1e-3",
    ]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(
            "--set optim.base_lr=1e-3: a resumed run keeps the model, data and schedule of its \
             config.ron; with --resume only parallel, data.workers, data.prefetch_batches, \
             optim.max_steps can be set"
        ),
        "{err}"
    );
    // An allowed one goes on to the run directory (and finds none).
    let out = kdlab_cpu(&[
        "train",
        "--resume",
        missing.to_str().unwrap(),
        "--set",
        "data.workers=1",
    ]);
    let err = stderr(&out);
    assert!(
        !out.status.success() && err.contains("checkpoints/last.safetensors"),
        "{err}"
    );
}

/// eval, bench and heatmap read their configs with the same overrides; each bad one is refused
/// before a model or an image is opened.
#[test]
fn eval_bench_and_heatmap_take_overrides_too() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pth");
    let missing = missing.to_str().unwrap();
    let out = kdlab_cpu(&["eval", "knn", "--weights", missing, "--set", "knn.k=0"]);
    let err = stderr(&out);
    assert!(
        !out.status.success()
            && err.contains("knn.k: must be in 1..=1000000, is 0 (--set knn.k=0)"),
        "{err}"
    );
    let out = kdlab_cpu(&["eval", "knn", "--weights", missing, "--set", "knn.kk=3"]);
    let err = stderr(&out);
    assert!(
        !out.status.success() && err.contains("--set knn.kk=3: `knn` has no field `kk`"),
        "{err}"
    );
    let out = kdlab_cpu(&["bench", "--set", "precision=Bf16"]);
    let err = stderr(&out);
    assert!(
        !out.status.success()
            && err.contains("--set precision=Bf16: expected one of f32, bf16, f16"),
        "{err}"
    );
    let demo = demo_config();
    let out = kdlab_cpu(&[
        "heatmap",
        "--config",
        demo.to_str().unwrap(),
        "--image",
        assets().join("coffee.jpg").to_str().unwrap(),
        "--out",
        dir.path().join("maps").to_str().unwrap(),
        "--set",
        "teacher.architecture.depht=2",
    ]);
    let err = stderr(&out);
    assert!(
        !out.status.success()
            && err.contains("`teacher.architecture` has no field `depht`; its fields:"),
        "{err}"
    );
    assert!(!dir.path().join("maps").exists());
    for command in ["train", "eval", "bench", "heatmap"] {
        let out = kdlab(&[command, "--help"]);
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("--set <PATH=VALUE>"), "{command}: {help}");
    }
}
