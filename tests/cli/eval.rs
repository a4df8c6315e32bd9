//! `kdlab eval`: k-NN and the linear probe on synthetic labelled images that a tiny model can
//! tell apart by colour and texture; with shuffled labels they must fall to chance. Also the
//! CIFAR binary layout, the teacher beside the student, the cache and bad inputs.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use crate::common::{fixture, kdlab_cpu as kdlab, stderr, synthetic_folders, synthetic_image};
use burn::backend::Flex;
use image::RgbImage;
use kdlab_engine::backend::Selected;
use kdlab_engine::eval::settings::{KnnSettings, LinearSettings};
use kdlab_engine::eval::{
    DatasetKind, EvalConfig, EvalRequest, EvalResult, Method, ModelSpec, evaluate,
};
use kdlab_engine::session::{RunDir, Session};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn settings(train: PathBuf, val: Option<PathBuf>) -> EvalConfig {
    EvalConfig {
        dataset: DatasetKind::Folder,
        train: Some(train),
        val,
        batch_size: 16,
        workers: 2,
        knn: KnnSettings::default(),
        linear: LinearSettings {
            epochs: 40,
            batch_size: 16,
            lr: 2e-2,
            weight_decay: 0.0,
            warmup_epochs: 4,
            seed: 0,
        },
        ..EvalConfig::default()
    }
}

/// The tiny data2vec 2.0 fixture, evaluated in-process on the CPU.
fn evaluate_tiny(method: Method, config: EvalConfig, out: &Path) -> EvalResult {
    let request = EvalRequest {
        method,
        models: vec![ModelSpec::Weights {
            path: fixture("d2v2_tiny_fairseq.pt"),
            depth: None,
        }],
        config,
        out: RunDir::at(out),
    };
    let session = Session::on(Selected::Cpu);
    let mut results = evaluate(&session, &request, &AtomicBool::new(false), &mut |_| {}).unwrap();
    assert_eq!(results.len(), 1);
    results.remove(0)
}

#[test]
fn knn_and_linear_probe_separate_separable_classes_and_not_shuffled_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (train, val) = synthetic_folders(&dir.path().join("clean"), 24, 10, false);
    for method in [Method::Knn, Method::Linear] {
        let r = evaluate_tiny(
            method,
            settings(train.clone(), Some(val.clone())),
            dir.path(),
        );
        assert_eq!((r.train_images, r.val_images, r.classes), (96, 40, 4));
        eprintln!("separable classes, {method:?}: top-1 {}", r.top1);
        assert!(
            r.top1 >= 0.95,
            "{method:?} top-1 {} on separable classes",
            r.top1
        );
        assert_eq!(r.top5, 1.0, "four classes are always in the top five");
        let diagonal: u32 = (0..4).map(|c| r.confusion.get(c, c)).sum();
        assert_eq!(f64::from(diagonal) / 40.0, r.top1);
    }

    let (train, val) = synthetic_folders(&dir.path().join("shuffled"), 16, 10, true);
    for method in [Method::Knn, Method::Linear] {
        let r = evaluate_tiny(
            method,
            settings(train.clone(), Some(val.clone())),
            dir.path(),
        );
        // Chance is 1/4; 40 validation images put 0.55 more than four standard deviations above.
        eprintln!("shuffled labels, {method:?}: top-1 {}", r.top1);
        assert!(
            r.top1 <= 0.55,
            "{method:?} top-1 {} with shuffled labels",
            r.top1
        );
    }
}

/// Other families are judged the same way: a DINOv3 (rotary positions, registers) and a DINOv2
/// with registers, from timm's files, pool their patches only (registers and CLS left out) at
/// their own size and normalisation, and tell the colours apart.
#[test]
fn models_of_other_families_are_evaluated() {
    let dir = tempfile::tempdir().unwrap();
    let (train, val) = synthetic_folders(&dir.path().join("clean"), 24, 10, false);
    for file in [
        "vits/dinov3_tiny_timm.safetensors",
        "vits/dinov2reg_tiny_timm.safetensors",
    ] {
        let request = EvalRequest {
            method: Method::Knn,
            models: vec![ModelSpec::Weights {
                path: fixture(file),
                depth: None,
            }],
            config: settings(train.clone(), Some(val.clone())),
            out: RunDir::at(dir.path()),
        };
        let session = Session::on(Selected::Cpu);
        let r = evaluate(&session, &request, &AtomicBool::new(false), &mut |_| {})
            .unwrap()
            .remove(0);
        eprintln!("{file}: k-NN top-1 {}", r.top1);
        assert_eq!((r.train_images, r.val_images, r.classes), (96, 40, 4));
        assert!(
            r.top1 >= 0.8,
            "{file}: top-1 {} on separable classes",
            r.top1
        );
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// One CIFAR-10 record: the label byte, then the red, green and blue planes of a 32×32 image.
fn cifar10_record(label: u8, image: &RgbImage) -> Vec<u8> {
    let mut bytes = vec![label];
    for channel in 0..3 {
        bytes.extend(image.pixels().map(|p| p.0[channel]));
    }
    bytes
}

#[test]
fn cifar10_binary_release_evaluates_with_json_output_and_a_cache() {
    let dir = tempfile::tempdir().unwrap();
    let release = dir.path().join("cifar-10-batches-bin");
    std::fs::create_dir_all(&release).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    // CIFAR-10 labels 0..4 hold our four kinds; the other six classes have no images.
    let mut write = |name: &str, per_class: usize| {
        let mut bytes = Vec::new();
        for i in 0..per_class * 4 {
            let kind = i % 4;
            bytes.extend(cifar10_record(
                kind as u8,
                &synthetic_image(kind, 32, &mut rng),
            ));
        }
        std::fs::write(release.join(name), bytes).unwrap();
    };
    write("data_batch_1.bin", 6);
    write("data_batch_2.bin", 6);
    write("test_batch.bin", 5);
    std::fs::write(
        release.join("batches.meta.txt"),
        "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n",
    )
    .unwrap();
    let out_dir = dir.path().join("out");
    let weights = fixture("d2v2_tiny_fairseq.pt");
    let args = [
        "eval",
        "knn",
        "--weights",
        path(&weights),
        "--dataset",
        "cifar10",
        "--train",
        path(dir.path()),
        "--out",
        path(&out_dir),
        "--k",
        "5",
        "--json",
    ];
    let out = kdlab(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(json["dataset"], "cifar10");
    assert_eq!(json["model"], "student");
    assert_eq!(
        (json["train_images"].as_u64(), json["val_images"].as_u64()),
        (Some(48), Some(20))
    );
    let top1 = json["top1"].as_f64().unwrap();
    let file = out_dir.join("eval/knn-cifar10-student.json");
    let full: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert!(
        top1 >= 0.95,
        "top-1 {top1}, confusion {}",
        full["confusion"]
    );
    assert!((0.0..=1.0).contains(&json["top5"].as_f64().unwrap()));
    assert_eq!(json["features_cached"], false);
    assert_eq!(full["class_names"][3], "cat");
    assert_eq!(full["confusion"]["classes"], 10);

    // The second evaluation reuses the features: same numbers, no forward pass.
    let again = kdlab(&args);
    assert!(again.status.success(), "{}", stderr(&again));
    let json2: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(json2["features_cached"], true);
    assert_eq!(json2["top1"], json["top1"]);
    assert!(
        stderr(&again).contains("from the cache"),
        "{}",
        stderr(&again)
    );
    let lines = std::fs::read_to_string(out_dir.join("eval/results.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 2);

    // The same file names with other contents (a pixel of the test batch rewritten, the size
    // unchanged, the time another): the cache does not serve the old features.
    let test_batch = release.join("test_batch.bin");
    let mut bytes = std::fs::read(&test_batch).unwrap();
    bytes[1] ^= 0xff;
    std::fs::write(&test_batch, &bytes).unwrap();
    let file = std::fs::File::options()
        .append(true)
        .open(&test_batch)
        .unwrap();
    let day_one = std::time::UNIX_EPOCH + std::time::Duration::from_secs(86_400);
    file.set_modified(day_one).unwrap();
    let third = kdlab(&args);
    assert!(third.status.success(), "{}", stderr(&third));
    let json3: serde_json::Value = serde_json::from_slice(&third.stdout).unwrap();
    assert_eq!(json3["features_cached"], false, "{}", stderr(&third));
}

#[test]
fn a_run_checkpoint_is_evaluated_with_its_teacher_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let (train, val) = synthetic_folders(&dir.path().join("data"), 4, 2, false);
    let config = dir.path().join("tiny.ron");
    std::fs::write(
        &config,
        format!(
            r#"(name: "tiny", seed: 7,
    teacher: (architecture: Some((image_size: 32, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2,
        mlp_hidden_dim: 64, shared_rel_pos_bias: true, norm_eps: 1e-6))),
    student: (architecture: Some((image_size: 32, patch_size: 8, embed_dim: 32, depth: 2, prenet_depth: 1,
        num_heads: 2, mlp_hidden_dim: 64, norm_eps: 1e-6)), blocks: All),
    data: (train: "{}", workers: 2), optim: (batch_size: 4, epochs: 1), probe: (count: 0))"#,
            train.display()
        ),
    )
    .unwrap();
    let runs = dir.path().join("runs");
    let out = kdlab(&[
        "train",
        "--config",
        path(&config),
        "--runs-dir",
        path(&runs),
        "--max-steps",
        "2",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let run = std::fs::read_dir(&runs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();

    let out = kdlab(&[
        "eval",
        "linear",
        "--checkpoint",
        path(&run),
        "--teacher",
        "--train",
        path(&train),
        "--val",
        path(&val),
        "--epochs",
        "3",
        "--batch-size",
        "8",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["model"], "student");
    assert_eq!(json["teacher"]["model"], "teacher");
    assert!(
        json["teacher"]["weights"]
            .as_str()
            .unwrap()
            .contains("random teacher (seed 7)")
    );
    for (model, role) in [(&json, "student"), (&json["teacher"], "teacher")] {
        assert_eq!(model["linear"]["epochs"], 3);
        // --epochs 3 is shorter than the default 10 warm-up epochs: cut to a tenth, and said.
        assert_eq!(model["linear"]["warmup_epochs"], 0);
        // The printed top-1 is the saved result's, and is what its confusion matrix says:
        // correct predictions (the diagonal) over the 8 validation images.
        let file = run.join(format!("eval/linear-folder-{role}.json"));
        let saved: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(saved["top1"], model["top1"]);
        let counts: Vec<u64> = saved["confusion"]["counts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_u64().unwrap())
            .collect();
        assert_eq!(
            counts.iter().sum::<u64>(),
            8,
            "{role}: every validation image"
        );
        let correct: u64 = (0..4).map(|c| counts[c * 4 + c]).sum();
        assert_eq!(
            model["top1"].as_f64().unwrap(),
            correct as f64 / 8.0,
            "{role}"
        );
    }
    assert!(
        stderr(&out).contains("linear.warmup_epochs 10"),
        "{}",
        stderr(&out)
    );
    // The side-by-side table on stderr.
    let table = stderr(&out);
    assert!(
        table.contains("model") && table.contains("teacher") && table.contains("student"),
        "{table}"
    );
}

#[test]
fn bad_inputs_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (train, val) = synthetic_folders(&dir.path().join("data"), 3, 1, false);
    let weights = fixture("d2v2_tiny_fairseq.pt");
    let base = |train: &Path, val: &Path| {
        vec![
            "eval".to_string(),
            "knn".into(),
            "--weights".into(),
            path(&weights).into(),
            "--train".into(),
            path(train).into(),
            "--val".into(),
            path(val).into(),
            "--out".into(),
            path(&dir.path().join("out")).into(),
        ]
    };
    let run = |args: Vec<String>| kdlab(&args.iter().map(String::as_str).collect::<Vec<_>>());

    // A corrupt file is skipped with a warning; the evaluation goes on.
    std::fs::write(
        train.join("red").join("broken.png"),
        b"\x89PNG\r\n\x1a\n truncated",
    )
    .unwrap();
    let out = run(base(&train, &val));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("skipped") && stderr(&out).contains("broken.png"),
        "{}",
        stderr(&out)
    );

    // A class only in val.
    let extra = val.join("zebra");
    std::fs::create_dir_all(&extra).unwrap();
    synthetic_image(0, 24, &mut ChaCha8Rng::seed_from_u64(1))
        .save(extra.join("z.png"))
        .unwrap();
    let out = run(base(&train, &val));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("class 'zebra'"), "{}", stderr(&out));

    // Its training folder exists but is empty.
    std::fs::create_dir_all(train.join("zebra")).unwrap();
    let out = run(base(&train, &val));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("'zebra'") && stderr(&out).contains("is empty"),
        "{}",
        stderr(&out)
    );
    std::fs::remove_dir_all(&extra).unwrap();

    // A CIFAR folder that is not the binary release.
    let out = kdlab(&[
        "eval",
        "knn",
        "--weights",
        path(&weights),
        "--dataset",
        "cifar100",
        "--train",
        path(&train),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("train.bin"), "{}", stderr(&out));

    // --teacher without a file needs a run.
    let mut args = base(&train, &val);
    args.push("--teacher".into());
    let out = run(args);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--teacher WEIGHTS"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("panicked"));
}

/// The votes of DINO's `knn_classifier` on random features (tests/fixtures/knn_dino.py): the
/// same classes in the same order for every validation feature.
#[test]
fn knn_ranks_classes_as_dinos_classifier_votes() {
    let fixture = common::read_all(&fixture("knn_dino.safetensors"));
    let rows = |name: &str| common::to_f32(&fixture[name]);
    let set = |features: &str, labels: &str| kdlab_engine::eval::features::FeatureSet {
        dim: fixture[features].shape[1],
        values: rows(features),
        labels: rows(labels).into_iter().map(|l| l as usize).collect(),
        skipped: Vec::new(),
    };
    let (train, val) = (
        set("train_features", "train_labels"),
        set("val_features", "val_labels"),
    );
    let classes = 12;
    let expected: Vec<Vec<usize>> = rows("votes")
        .chunks(classes)
        .map(|votes| kdlab_engine::eval::metrics::rank_classes(votes, 5))
        .collect();
    let rankings = kdlab_engine::eval::knn::knn_rankings::<Flex>(
        &train,
        &val,
        classes,
        &KnnSettings {
            k: 20,
            temperature: 0.07,
        },
        &Default::default(),
        &AtomicBool::new(false),
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(rankings, expected);
}
