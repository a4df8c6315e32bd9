//! `kdlab train` and `kdlab export` run as a user runs them, on tiny random models and the sample
//! images: reproducibility, exact resume, bad files, Ctrl-C, export, the demo config.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::*;
use burn::backend::Flex;
use kdlab_engine::distill::checkpoint::load_training_state;
use kdlab_model::optim::GradScaler;

/// The tiny config with 1000 epochs: a run that goes on until it is stopped.
fn endless_config(dir: &Path) -> PathBuf {
    let config = tiny_config(dir, &assets(), "");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("epochs: 4", "epochs: 1000");
    std::fs::write(&config, text).unwrap();
    config
}

fn student_weights(run: &Path) -> Vec<(String, Vec<usize>, Vec<u8>, safetensors::Dtype)> {
    raw_tensors(&run.join("checkpoints/last.safetensors"))
}

#[test]
fn same_seed_gives_identical_runs_and_the_loss_falls() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), &assets(), "");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    train(&config, &a, &[]);
    train(&config, &b, &[]);
    let (ra, rb) = (&run_dirs(&a)[0], &run_dirs(&b)[0]);
    assert_eq!(metrics(ra), metrics(rb));
    assert!(student_weights(ra) == student_weights(rb), "same weights");
    for file in ["config.ron", "log.txt", "checkpoints/best.safetensors"] {
        assert!(ra.join(file).exists(), "{file}");
    }
    let losses: Vec<f64> = metrics(ra).iter().filter_map(|m| m.loss).collect();
    assert_eq!(losses.len(), 12, "4 epochs × 3 steps, one line each");
    assert!(losses[11] < losses[0], "loss falls: {losses:?}");
    let vals = metrics(ra).iter().filter(|m| m.val_loss.is_some()).count();
    assert_eq!(vals, 4, "validation after every epoch");
}

/// The same run twice under `dir`: once straight to `end` steps, once stopped at `stop` and
/// resumed to `end`; returns (straight, resumed) run directories.
fn straight_and_resumed(dir: &Path, config: &Path, stop: &str, end: &str) -> (PathBuf, PathBuf) {
    let (straight, split) = (dir.join("straight"), dir.join("split"));
    train(config, &straight, &["--max-steps", end]);
    train(config, &split, &["--max-steps", stop]);
    let run = run_dirs(&split)[0].clone();
    let out = kdlab_cpu(&[
        "train",
        "--resume",
        run.to_str().unwrap(),
        "--max-steps",
        end,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    (run_dirs(&straight)[0].clone(), run)
}

/// N steps + resume + M steps = N + M steps: same weights, optimiser state and metrics, in
/// every precision (f16's loss scale travels in the checkpoint).
#[test]
fn resume_continues_exactly() {
    for precision in ["f32", "bf16", "f16"] {
        let dir = tempfile::tempdir().unwrap();
        let config = tiny_config(dir.path(), &assets(), &format!("precision: {precision},"));
        // Stops mid-epoch (3 steps per epoch).
        let (reference, run) = straight_and_resumed(dir.path(), &config, "4", "8");
        assert_eq!(metrics(&run), metrics(&reference), "{precision}");
        assert!(
            student_weights(&run) == student_weights(&reference),
            "{precision}: weights and moments equal"
        );
        let [resumed, straight] = [&run, &reference].map(|r| {
            let last = kdlab_engine::session::RunDir::at(r).last_checkpoint();
            load_training_state::<Flex>(&last, &Default::default())
                .unwrap()
                .0
        });
        assert_eq!(resumed, straight, "{precision}: the training state");
        // f16: the scale halved once per overflow the log reports, and the finite steps since
        // the last one counted — across the resume too.
        let log = std::fs::read_to_string(reference.join("log.txt")).unwrap();
        let overflow_steps: Vec<usize> = log
            .lines()
            .filter(|l| l.contains("gradients overflowed"))
            .filter_map(|l| l.split("step ").nth(1)?.split(':').next()?.parse().ok())
            .collect();
        let expected = (precision == "f16").then(|| GradScaler {
            scale: 65536.0 * 0.5f64.powi(overflow_steps.len() as i32),
            growth_tracker: (8 - overflow_steps.last().copied().unwrap_or(0)) as u32,
        });
        assert_eq!(
            straight.grad_scaler, expected,
            "{precision}: the loss scaler"
        );
    }
}

#[test]
fn bad_files_are_skipped_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let data = sample_photos_in(&dir.path().join("data"));
    for f in std::fs::read_dir(fixture("images")).unwrap() {
        let p = f.unwrap().path(); // gray PNG, RGBA PNG, CMYK JPEG, RGB JPEG
        std::fs::copy(&p, data.join(p.file_name().unwrap())).unwrap();
    }
    let jpeg = std::fs::read(assets().join("horse.jpg")).unwrap();
    std::fs::write(data.join("truncated.jpg"), &jpeg[..jpeg.len() / 3]).unwrap();
    std::fs::write(data.join("empty.jpg"), b"").unwrap();
    std::fs::write(data.join("notes.txt"), "not an image").unwrap();
    std::fs::write(data.join("random.png"), [7u8; 300]).unwrap();
    #[cfg(unix)]
    {
        // Entries the folder's listing leaves out: said too, with why.
        std::os::unix::fs::symlink(data.join("gone.jpg"), data.join("dangling.jpg")).unwrap();
        let fifo = std::process::Command::new("mkfifo")
            .arg(data.join("pipe.jpg"))
            .status();
        assert!(fifo.unwrap().success());
    }
    let config = tiny_config(dir.path(), &data, "");
    // The whole run (4 epochs of 6 steps) meets every file, in training or validation.
    let out = train(&config, &dir.path().join("runs"), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    for bad in ["empty.jpg", "notes.txt", "random.png"] {
        assert!(err.contains(bad), "{bad} not reported: {err}");
    }
    #[cfg(unix)]
    for (bad, why) in [
        ("dangling.jpg", "a link that leads nowhere"),
        ("pipe.jpg", "not a regular file"),
    ] {
        assert!(
            err.contains(bad) && err.contains(why),
            "{bad} not reported: {err}"
        );
    }
    let run = run_dirs(&dir.path().join("runs"))[0].clone();
    let log = std::fs::read_to_string(run.join("log.txt")).unwrap();
    assert!(log.contains("skipped"), "{log}");
    // The folder says how the run ended, and where.
    let summary = kdlab_engine::session::runs::summarize(&run);
    assert!(
        matches!(
            summary.state,
            kdlab_engine::session::runs::RunState::Ended(
                kdlab_engine::session::run_status::RunStatus::Finished { step, .. }
            ) if step > 0 && Some(step) == summary.step
        ),
        "{summary:?}"
    );
}

/// A folder whose every file is unreadable trains nothing: a failure (exit 1) that says so, in
/// the run's log too, never a "finished" run.
#[test]
fn a_run_that_trains_no_step_fails() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..48 {
        std::fs::write(data.join(format!("{i:02}.jpg")), b"not a picture").unwrap();
    }
    let config = tiny_config(dir.path(), &data, "");
    let runs = dir.path().join("runs");
    // Without validation images (which would fail first: none is readable).
    let out = train_command(&config, &runs)
        .args(["--set", "data.val_fraction=0.0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the run took no training step from step 0"),
        "{err}"
    );
    assert!(!err.contains("finished"), "{err}");
    let log = std::fs::read_to_string(run_dirs(&runs)[0].join("log.txt")).unwrap();
    assert!(
        log.contains("error: the run took no training step"),
        "{log}"
    );
}

/// A checkpoint whose training state cannot be (altered, or damaged) is refused on resume with
/// the field and the rule, exit 1, and the run is left as it was.
#[test]
fn a_tampered_training_state_is_refused_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), &assets(), "");
    let runs = dir.path().join("runs");
    let out = train(&config, &runs, &["--max-steps", "2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = run_dirs(&runs)[0].clone();
    let last = run.join("checkpoints/last.safetensors");
    let bytes = std::fs::read(&last).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut metadata = header.metadata().clone().unwrap();
    let state = metadata.get_mut("kdlab.train_state").unwrap();
    let mut json: serde_json::Value = serde_json::from_str(state).unwrap();
    json["step"] = serde_json::json!(u64::MAX);
    *state = json.to_string();
    write_safetensors(&last, &raw_tensors(&last), Some(metadata));
    let tampered = std::fs::read(&last).unwrap();
    let out = kdlab_cpu(&["train", "--resume", run.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot be resumed: kdlab.train_state.step is 18446744073709551615: the run's schedule has"),
        "{err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("compute backend"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&last).unwrap(),
        tampered,
        "the checkpoint is untouched"
    );
}

/// A headless `kdlab train` in another process, followed as the runs browser follows it: its
/// folder says it is running (and who runs it), its metrics grow line by line, a second writer
/// (a `--resume` of the same run) is refused, and after Ctrl-C it says it was interrupted.
#[test]
fn a_headless_run_is_followed_live_and_no_second_process_writes_it() {
    use kdlab_engine::session::run_status::RunStatus;
    use kdlab_engine::session::runs::{MetricsTail, Poll, RunState, summarize};
    let dir = tempfile::tempdir().unwrap();
    let config = endless_config(dir.path());
    let runs = dir.path().join("runs");
    let mut child = train_command(&config, &runs)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    let wait = |what: &str, done: &mut dyn FnMut() -> bool| {
        while !done() {
            assert!(
                std::time::Instant::now() < deadline,
                "waited too long for {what}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    wait("the run folder", &mut || {
        runs.exists()
            && run_dirs(&runs)
                .first()
                .is_some_and(|r| r.join("status.json").exists())
    });
    let run = run_dirs(&runs)[0].clone();
    let summary = summarize(&run);
    assert!(
        matches!(
            summary.state,
            RunState::Running { pid: Some(pid), host: Some(_) } if pid == child.id()
        ),
        "{summary:?}"
    );
    let mut tail = MetricsTail::new(&kdlab_engine::session::RunDir::at(&run));
    let mut steps = Vec::new();
    wait("three metrics lines, one poll at a time", &mut || {
        if let Poll::More(lines) = tail.poll() {
            steps.extend(lines.iter().map(|l| l.step));
        }
        steps.len() >= 3
    });
    // A validation line shares its step with the training line before it.
    assert!(steps.windows(2).all(|w| w[0] <= w[1]), "{steps:?}");
    wait("the first checkpoint", &mut || {
        run.join("checkpoints/last.safetensors").exists()
    });
    let second = kdlab_cpu(&["train", "--resume", run.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "is being written by another process (process {}",
            child.id()
        )),
        "{err}"
    );
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(130));
    match summarize(&run).state {
        RunState::Ended(RunStatus::Interrupted { step, .. }) => assert!(step >= 3, "{step}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn invalid_config_names_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.ron");
    std::fs::write(&path, "(\n  optim: (\n    batch_size: 0,\n  ),\n)").unwrap();
    let out = kdlab(&[
        "train",
        "--backend",
        "cpu",
        "--config",
        path.to_str().unwrap(),
        "--runs-dir",
        dir.path().join("r").to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("bad.ron") && err.contains("optim.batch_size"),
        "{err}"
    );
    assert!(!dir.path().join("r").exists(), "nothing starts");
    std::fs::write(&path, "(\n  optim: (\n    batch_sise: 4,\n  ),\n)").unwrap();
    let out = kdlab(&[
        "train",
        "--backend",
        "cpu",
        "--config",
        path.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("bad.ron:3:") && err.contains("batch_sise"),
        "{err}"
    );
}

/// SIGINT (Ctrl-C) and SIGTERM (a scheduler's stop) alike: the checkpoint is written, the exit
/// code is 130.
#[test]
fn ctrl_c_saves_a_loadable_checkpoint() {
    interrupt_saves_a_loadable_checkpoint("-INT");
}

#[test]
fn sigterm_saves_a_loadable_checkpoint() {
    interrupt_saves_a_loadable_checkpoint("-TERM");
}

fn interrupt_saves_a_loadable_checkpoint(signal: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = endless_config(dir.path());
    let runs = dir.path().join("runs");
    let child = train_command(&config, &runs)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until training has made progress.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let progressed = runs.exists()
            && run_dirs(&runs)
                .first()
                // A line being written is not a line yet: a read that fails is no progress.
                .is_some_and(|r| {
                    kdlab_engine::session::RunDir::at(r)
                        .read_metrics()
                        .is_ok_and(|m| m.len() >= 3)
                });
        if progressed {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no progress");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(130),
        "{signal}: checkpoint written: {err}"
    );
    assert!(err.contains("interrupted"), "{err}");
    let last = run_dirs(&runs)[0].join("checkpoints/last.safetensors");
    let checkpoint = kdlab_model::weights::Checkpoint::open(&last).unwrap();
    assert_eq!(checkpoint.layout.name(), "kdlab");
    checkpoint
        .load_data2vec2::<burn::backend::Flex>(
            kdlab_model::model::BlockSelection::All,
            &Default::default(),
        )
        .unwrap();
}

/// The exported student has fairseq names and reproduces the checkpoint's own features.
#[test]
fn export_reproduces_the_checkpoint_features() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), &assets(), "");
    train(&config, &dir.path().join("runs"), &["--max-steps", "2"]);
    let run = run_dirs(&dir.path().join("runs"))[0].clone();
    let exported = dir.path().join("student.safetensors");
    let out = kdlab(&[
        "export",
        "--checkpoint",
        run.to_str().unwrap(),
        "--out",
        exported.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names: Vec<String> = raw_tensors(&exported).into_iter().map(|t| t.0).collect();
    assert!(names.contains(&"modality_encoders.IMAGE.local_encoder.proj.weight".to_string()));
    assert!(
        names.contains(
            &"modality_encoders.IMAGE.context_encoder.blocks.0.attn.qkv.weight".to_string()
        )
    );
    assert!(
        names.iter().all(|n| !n.starts_with("optim.")),
        "no optimiser state"
    );
    let features = |weights: &Path, out: &Path| {
        let o = kdlab(&[
            "features",
            "--backend",
            "cpu",
            "--weights",
            weights.to_str().unwrap(),
            "--image",
            assets().join("coffee.jpg").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        read_all(out)
    };
    let a = features(
        &run.join("checkpoints/last.safetensors"),
        &dir.path().join("a.safetensors"),
    );
    let b = features(&exported, &dir.path().join("b.safetensors"));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, v) in &a {
        assert_close(k, &b[k], v, 0.0);
    }
}

#[test]
fn demo_config_runs() {
    let dir = tempfile::tempdir().unwrap();
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/demo.ron");
    train(&config, dir.path(), &["--max-steps", "3"]);
    let run = run_dirs(dir.path())[0].clone();
    assert!(
        run.file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("demo-")
    );
    assert!(run.join("checkpoints/last.safetensors").exists());
    // The thesis config parses and validates too (its files need not exist to check that).
    let thesis = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/beitv2_to_d2v2_imagenet.ron");
    let config = kdlab_engine::config::RunConfig::load(&thesis).unwrap();
    assert_eq!(config.optim.peak_lr(), 5e-4);
    assert_eq!(
        config.student.blocks,
        kdlab_model::model::BlockSelection::FirstMain(6)
    );
}

/// batch 2 × 2 accumulation steps = batch 4: same samples, same averaged gradient, same weights
/// (up to float summation order).
#[test]
fn gradient_accumulation_equals_the_larger_batch() {
    let dir = tempfile::tempdir().unwrap();
    let whole = tiny_config(dir.path(), &assets(), "");
    let split_text = std::fs::read_to_string(&whole)
        .unwrap()
        .replace("batch_size: 4,", "batch_size: 2, grad_accum_steps: 2,");
    let split = dir.path().join("split.ron");
    std::fs::write(&split, split_text).unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    train(&whole, &a, &["--max-steps", "3"]);
    train(&split, &b, &["--max-steps", "3"]);
    let (wa, wb) = (
        student_weights(&run_dirs(&a)[0]),
        student_weights(&run_dirs(&b)[0]),
    );
    assert_eq!(wa.len(), wb.len());
    for ((name, shape, bytes_a, _), (_, _, bytes_b, _)) in wa.iter().zip(&wb) {
        let x = burn::tensor::TensorData::from_bytes_vec(
            bytes_a.clone(),
            shape.clone(),
            burn::tensor::DType::F32,
        );
        let y = burn::tensor::TensorData::from_bytes_vec(
            bytes_b.clone(),
            shape.clone(),
            burn::tensor::DType::F32,
        );
        assert_close(name, &y, &x, 1e-4);
    }
}

/// The per-epoch probe maps and `kdlab heatmap` agree with each other and with the KD loss: on
/// the run's final checkpoint, the mean over images of each image's token-mean squared error is
/// the validation loss the run logged (same teacher rebuilt from the seed, same student).
#[test]
fn heatmap_command_matches_the_probe_maps_and_the_validation_loss() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), &assets(), "");
    train(&config, &dir.path().join("runs"), &[]);
    let run = run_dirs(&dir.path().join("runs"))[0].clone();
    let epochs: Vec<String> = std::fs::read_dir(run.join("heatmaps"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        epochs.len(),
        5,
        "epoch-000 (before training) to epoch-004: {epochs:?}"
    );
    let last_epoch = run.join("heatmaps/epoch-004");
    let mut probes: Vec<PathBuf> = std::fs::read_dir(&last_epoch)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    probes.sort();
    assert_eq!(probes.len(), 2, "the 2 validation images are the probe set");
    let record = |path: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    };
    let images: Vec<String> = probes
        .iter()
        .map(|p| record(p)["image"].as_str().unwrap().to_string())
        .collect();

    let out = dir.path().join("maps");
    let mut command = Command::new(env!("CARGO_BIN_EXE_kdlab"));
    command.args(["--no-gui", "heatmap", "--backend", "cpu", "--config"]);
    command
        .arg(&config)
        .arg("--checkpoint")
        .arg(&run)
        .arg("--out")
        .arg(&out);
    command.arg("--image").args(&images);
    let result = command.output().unwrap();
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );

    let mut token_means = Vec::new();
    for (i, probe) in probes.iter().enumerate() {
        let stem = probe.file_stem().unwrap().to_str().unwrap();
        for suffix in ["cosine.png", "squared_error.png", "pca.png", "csv", "json"] {
            assert!(
                out.join(format!("{stem}.{suffix}")).exists(),
                "{stem}.{suffix}"
            );
        }
        let written = record(&out.join(format!("{stem}.json")));
        let saved = record(probe);
        assert_eq!(written["grid"], 4);
        let grid = |v: &serde_json::Value, key: &str| -> Vec<f64> {
            v[key]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|row| row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()))
                .collect()
        };
        for key in ["cosine", "squared_error"] {
            for (a, b) in grid(&written, key).iter().zip(grid(&saved, key)) {
                assert!(
                    (a - b).abs() < 1e-5,
                    "{key}: heatmap {a} vs probe {b} ({i})"
                );
            }
        }
        let errors = grid(&written, "squared_error");
        let cls = written["cls"]["squared_error"].as_f64().unwrap();
        token_means.push((cls + errors.iter().sum::<f64>()) / (1 + errors.len()) as f64);
        let csv = std::fs::read_to_string(out.join(format!("{stem}.csv"))).unwrap();
        assert_eq!(csv.lines().count(), 1 + 1 + 16, "header, CLS, 16 patches");
        for suffix in ["attention.teacher.png", "attention.student.png"] {
            assert!(
                out.join(format!("{stem}.{suffix}")).exists(),
                "{stem}.{suffix}"
            );
        }
        let attention = std::fs::read_to_string(out.join(format!("{stem}.attention.csv"))).unwrap();
        // Per model: 2 heads, their mean and the rollout, 16 patches each.
        assert_eq!(
            attention.lines().count(),
            1 + 2 * 4 * 16,
            "{stem}.attention.csv"
        );
    }
    // The layer CKA over the same images and checkpoint: as the run's last epoch saved it.
    let cka =
        |dir: &Path| kdlab_engine::inspect::CkaMatrix::read_csv(&dir.join("cka.csv")).unwrap();
    let (written, saved) = (cka(&out), cka(&last_epoch));
    assert_eq!(
        (
            written.teacher_layers,
            written.student_layers,
            written.images
        ),
        (2, 2, 2)
    );
    assert!(out.join("cka.png").exists() && last_epoch.join("cka.png").exists());
    for (a, b) in written.values.iter().zip(&saved.values) {
        assert!((a - b).abs() < 1e-5, "cka: heatmap {a} vs probe {b}");
        assert!((0.0..=1.0 + 1e-5).contains(a), "CKA is in [0, 1]: {a}");
    }
    let val_loss = metrics(&run).iter().rev().find_map(|m| m.val_loss).unwrap();
    let mean = token_means.iter().sum::<f64>() / token_means.len() as f64;
    assert!(
        (mean - val_loss).abs() < 1e-4 * val_loss.max(1.0),
        "maps {mean} vs val_loss {val_loss}"
    );

    // An unreadable image is an error naming it, before anything is written.
    let bad = dir.path().join("not-an-image.jpg");
    std::fs::write(&bad, "text").unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_kdlab"));
    command.args(["--no-gui", "heatmap", "--backend", "cpu", "--config"]);
    command
        .arg(&config)
        .arg("--out")
        .arg(dir.path().join("none"))
        .arg("--image")
        .arg(&bad);
    let result = command.output().unwrap();
    assert!(!result.status.success());
    assert!(String::from_utf8_lossy(&result.stderr).contains("not-an-image.jpg"));
    assert!(!dir.path().join("none").exists());
}

fn bench_demo(attention: &str) -> serde_json::Value {
    let out = kdlab(&[
        "--no-gui",
        "--backend",
        "cpu",
        "bench",
        "--config",
        "configs/demo.ron",
        "--batch",
        "2",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--workers",
        "1",
        "--attention",
        attention,
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON line")
}

#[test]
fn bench_reports_every_measurement_as_one_json_line() {
    let report = bench_demo("fused");
    assert_eq!(report["tool"], "kdlab");
    assert_eq!(report["attention"], "fused");
    assert_eq!(
        (report["batch"].as_u64(), report["steps"].as_u64()),
        (Some(2), Some(2))
    );
    for key in [
        "kd_step_img_s",
        "teacher_forward_img_s",
        "student_step_img_s",
        "data_img_s",
        "kd_step_tflop_s",
        "teacher_attention_ms",
        "student_attention_ms",
        "attention_ms_per_kd_step",
    ] {
        let value = report[key].as_f64().unwrap_or(f64::NAN);
        assert!(value.is_finite() && value > 0.0, "{key}: {}", report[key]);
    }
    // The demo: 4 teacher layers, 1 + 2 student layers.
    let per_step = 4.0 * report["teacher_attention_ms"].as_f64().unwrap()
        + 3.0 * report["student_attention_ms"].as_f64().unwrap();
    let reported = report["attention_ms_per_kd_step"].as_f64().unwrap();
    assert!(
        (per_step - reported).abs() <= 1e-9 * per_step,
        "{per_step} vs {reported}"
    );
    // The demo models: 4 teacher blocks, 1 + 2 student blocks on 65 tokens of width 64.
    let gflop = report["kd_step_gflop_per_image"].as_f64().unwrap();
    assert!(gflop > 0.0 && gflop < 1.0, "{gflop}");
    assert!(
        report["peak_memory_mb"].is_null(),
        "the CPU backend reports no device memory"
    );
}

#[test]
fn bench_runs_burns_attention_when_asked() {
    let report = bench_demo("unfused");
    assert_eq!(report["attention"], "unfused");
    let ms = report["student_attention_ms"].as_f64().unwrap_or(f64::NAN);
    assert!(ms.is_finite() && ms > 0.0, "{ms}");
    let out = kdlab(&["--no-gui", "bench", "--attention", "flash"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("'flash' is not fused or unfused"),
        "{stderr}"
    );
}

/// SPEC §3: N steps + resume + M steps gives the same weights *and metrics* as N + M in one go.
/// The demo logs every 10 steps; stopping at 12 leaves a window of two losses unlogged, which
/// the checkpoint carries, so the line at step 20 averages steps 11–20 in both runs.
#[test]
fn a_resumed_run_logs_the_same_metrics_as_one_that_never_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let demo = demo_config_text();
    let config = dir.path().join("demo.ron");
    std::fs::write(&config, demo).unwrap();
    let (reference, run) = straight_and_resumed(dir.path(), &config, "12", "24");
    let (resumed, uninterrupted) = (metrics(&run), metrics(&reference));
    let steps: Vec<usize> = uninterrupted.iter().map(|m| m.step).collect();
    assert_eq!(
        steps,
        [10, 12, 20],
        "loss at 10 and 20, validation after epoch 1 (step 12)"
    );
    assert_eq!(resumed, uninterrupted);
    assert!(student_weights(&run) == student_weights(&reference));
}
