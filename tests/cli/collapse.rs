//! The collapse watch (fairseq data2vec's `target_var` / `pred_var`) and the gradient norm in
//! metrics.jsonl, the warning when `pred_var` falls below `collapse.min_pred_var`, and the stop
//! `collapse.stop` asks for. Tiny models on the CPU.

use crate::common::*;

/// Every training line carries the spreads and the gradient norm; validation lines do not.
#[test]
fn metrics_lines_carry_the_spreads_and_the_gradient_norm() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), &assets(), "");
    let runs = dir.path().join("runs");
    train(&config, &runs, &["--max-steps", "3"]);
    let lines = metrics(&run_dirs(&runs)[0]);
    let training: Vec<_> = lines.iter().filter(|l| l.loss.is_some()).collect();
    assert_eq!(training.len(), 3, "log_every 1");
    for line in training {
        let (t, p, g) = (
            line.target_var.unwrap(),
            line.pred_var.unwrap(),
            line.grad_norm.unwrap(),
        );
        // Both are layer-normed over D per token, so each dimension's spread over the tokens is
        // at most a few units; a healthy random student is far from the floor √1e-6.
        assert!(t > 0.01 && t < 10.0, "target_var {t}");
        assert!(p > 0.01 && p < 10.0, "pred_var {p}");
        assert!(g.is_finite() && g > 0.0, "grad_norm {g}");
    }
    for line in lines.iter().filter(|l| l.val_loss.is_some()) {
        assert!(line.pred_var.is_none() && line.grad_norm.is_none());
    }
}

/// A floor above any spread: one warning (not one per line) in the terminal and the log, the
/// run goes on; with `stop: true` it ends with an error naming the field, exit non-zero.
#[test]
fn a_spread_below_its_floor_warns_once_or_stops_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let warn = tiny_config(dir.path(), &assets(), "collapse: (min_pred_var: 999.0),");
    let runs = dir.path().join("warn");
    let out = train(&warn, &runs, &["--max-steps", "3"]);
    let text = stderr(&out);
    let warnings = text.matches("is below collapse.min_pred_var 999").count();
    assert_eq!(warnings, 1, "one warning per fall: {text}");
    let run = &run_dirs(&runs)[0];
    let log = std::fs::read_to_string(run.join("log.txt")).unwrap();
    assert!(log.contains("warning: step 1: pred_var"), "{log}");
    assert_eq!(metrics(run).iter().filter(|l| l.loss.is_some()).count(), 3);

    let stop = dir.path().join("stop.ron");
    std::fs::write(
        &stop,
        tiny_config_text(&assets(), "collapse: (min_pred_var: 999.0, stop: true),"),
    )
    .unwrap();
    let runs = dir.path().join("stop");
    let out = train_command(&stop, &runs)
        .args(["--max-steps", "3"])
        .output()
        .unwrap();
    let text = stderr(&out);
    assert!(!out.status.success(), "collapse.stop ends the run: {text}");
    assert!(
        text.contains("pred_var")
            && text.contains("collapse.min_pred_var 999")
            && text.contains("collapse.stop"),
        "{text}"
    );
    assert!(!text.contains("panicked"), "{text}");
    let lines = metrics(&run_dirs(&runs)[0]);
    assert_eq!(
        lines.iter().filter(|l| l.loss.is_some()).count(),
        1,
        "stopped after the first line"
    );
}

/// A floor out of range is a config error naming the field, before anything runs.
#[test]
fn a_negative_floor_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), &assets(), "collapse: (min_target_var: -1.0),");
    let out = train_command(&config, &dir.path().join("runs"))
        .output()
        .unwrap();
    let text = stderr(&out);
    assert!(!out.status.success());
    assert!(text.contains("collapse.min_target_var"), "{text}");
    assert!(!dir.path().join("runs").exists(), "nothing written");
}
