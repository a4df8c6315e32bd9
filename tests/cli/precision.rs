//! Mixed precision over a whole run, as `kdlab train` runs it.

use crate::common::*;

/// The demo's first 100 steps in bf16 against f32: the same run within a few percent (a run
/// that really computes in bf16 — not bit-identical), with f32 weights in its checkpoint.
#[test]
fn a_bf16_demo_run_follows_the_f32_run() {
    let dir = tempfile::tempdir().unwrap();
    let demo = demo_config_text();
    let mut losses = Vec::new();
    for precision in ["f32", "bf16"] {
        let text = replace_once(&demo, "precision: f32", &format!("precision: {precision}"));
        let config = dir.path().join(format!("demo-{precision}.ron"));
        std::fs::write(&config, text).unwrap();
        let runs = dir.path().join(precision);
        let out = train(&config, &runs, &["--max-steps", "100"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let run = run_dirs(&runs)[0].clone();
        let checkpoint = raw_tensors(&run.join("checkpoints/last.safetensors"));
        assert!(
            checkpoint
                .iter()
                .all(|(_, _, _, dtype)| *dtype == safetensors::Dtype::F32),
            "{precision}: the checkpoint holds f32 weights and moments"
        );
        let curve: Vec<f64> = metrics(&run).iter().filter_map(|m| m.loss).collect();
        assert_eq!(curve.len(), 10, "{precision}: a loss every 10 steps");
        losses.push(curve);
    }
    let (f32_curve, bf16_curve) = (&losses[0], &losses[1]);
    let worst = f32_curve
        .iter()
        .zip(bf16_curve)
        .map(|(a, b)| (a - b).abs() / a)
        .fold(0.0, f64::max);
    eprintln!("demo, 100 steps: f32 {f32_curve:?}\n bf16 {bf16_curve:?}\n worst rel {worst:.3e}");
    assert!(worst <= 0.03, "bf16 follows f32 within 3 %: {worst}");
    assert_ne!(f32_curve, bf16_curve, "bf16 is not f32 under another name");
}
