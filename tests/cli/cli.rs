//! The headless commands, run as a user runs them: the real binary on temp dirs.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::*;

#[track_caller]
fn assert_clean_failure(out: &Output, needles: &[&str]) {
    let err = stderr(out);
    assert!(!out.status.success(), "should fail: {err}");
    assert!(!err.contains("panicked"), "panicked: {err}");
    for needle in needles {
        assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
    }
}

fn inspect_json(file: &Path) -> serde_json::Value {
    let out = kdlab(&["--no-gui", "inspect", file.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("one JSON object on stdout")
}

#[test]
fn no_command_headless_prints_help() {
    let out = kdlab(&["--no-gui"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for command in ["train", "features", "inspect", "heatmap", "export"] {
        assert!(text.contains(command), "{command} missing from {text}");
    }
}

#[test]
fn the_app_without_a_display_says_so_and_points_to_no_gui() {
    let out = Command::new(env!("CARGO_BIN_EXE_kdlab"))
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = stderr(&out);
    assert!(
        text.contains("--no-gui") && !text.contains("panicked"),
        "{text}"
    );
}

#[test]
fn inspect_reports_the_three_layouts() {
    let unilm = inspect_json(&fixture("beitv2_tiny_unilm.pth"));
    assert_eq!(unilm["layout"], "beitv2-unilm");
    for (field, value) in [
        ("image_size", 64),
        ("patch_size", 16),
        ("embed_dim", 64),
        ("num_heads", 4),
        ("depth", 4),
        ("prenet_depth", 0),
    ] {
        assert_eq!(unilm[field], value, "{field}");
    }
    let ignored: Vec<&str> = unilm["ignored_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for key in [
        "mask_token",
        "lm_head.weight",
        "cls_pt_layers.0.gamma_1",
        "rel_pos_bias.relative_position_index",
    ] {
        assert!(ignored.contains(&key), "{key} not ignored: {ignored:?}");
    }
    assert_eq!(unilm["missing_keys"].as_array().unwrap().len(), 0);
    // cls 64 + patch 3·256·64+64 + table 52·4 + 4 blocks of (2·64 norms ×2, q/v bias, qkv, proj, mlp, gammas).
    let block = 4 * 64 + 2 * 64 + 192 * 64 + 64 * 64 + 64 + 256 * 64 + 256 + 64 * 256 + 64 + 2 * 64;
    assert_eq!(
        unilm["parameters"],
        64 + 3 * 256 * 64 + 64 + 52 * 4 + 4 * block
    );

    let timm = inspect_json(&fixture("beitv2_tiny_timm.safetensors"));
    assert_eq!(timm["layout"], "beitv2-timm");
    assert_eq!(
        timm["parameters"],
        unilm["parameters"].as_u64().unwrap() + 3 * 52 * 4
    );

    let d2v2 = inspect_json(&fixture("d2v2_tiny_fairseq.pt"));
    assert_eq!(d2v2["layout"], "data2vec2-fairseq");
    for (field, value) in [
        ("image_size", 64),
        ("embed_dim", 64),
        ("num_heads", 4),
        ("depth", 3),
        ("prenet_depth", 1),
    ] {
        assert_eq!(d2v2[field], value, "{field}");
    }
    assert_eq!(d2v2["ignored_keys"].as_array().unwrap().len(), 14); // the decoder
}

#[test]
fn inspect_summary_is_readable() {
    let out = kdlab(&["inspect", fixture("d2v2_tiny_fairseq.pt").to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("data2vec2-fairseq") && text.contains("1 prenet + 3 main blocks"),
        "{text}"
    );
}

/// `features --input` reproduces the PyTorch goldens through the file interface.
#[test]
fn features_matches_goldens() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    let golden = golden();
    write_image_input(&input, &golden["image"]);
    let cases = [
        (
            "beitv2_tiny_unilm.pth",
            None,
            "beit_unilm",
            4,
            "beit_unilm.layer.3",
        ),
        (
            "beitv2_tiny_timm.safetensors",
            None,
            "beit_timm",
            4,
            "beit_timm.layer.3",
        ),
        ("d2v2_tiny_fairseq.pt", None, "d2v2", 3, "d2v2.x"),
        ("d2v2_tiny_fairseq.pt", Some("2"), "student", 2, "student.x"),
    ];
    for (weights, depth, prefix, layers, final_key) in cases {
        let out_path = dir.path().join(format!("{prefix}.safetensors"));
        let mut args = vec!["--no-gui", "features", "--backend", "cpu", "--weights"];
        let weights_path = fixture(weights);
        args.push(weights_path.to_str().unwrap());
        if let Some(d) = depth {
            args.extend(["--depth", d]);
        }
        args.extend([
            "--input",
            input.to_str().unwrap(),
            "--out",
            out_path.to_str().unwrap(),
        ]);
        let out = kdlab(&args);
        assert!(out.status.success(), "{weights}: {}", stderr(&out));
        assert!(stderr(&out).contains("backend cpu"), "prints the backend");
        let result = read_all(&out_path);
        assert_eq!(
            result.len(),
            layers + 2,
            "{prefix}: layer.{{i}}, final, target"
        );
        for i in 0..layers {
            assert_close(
                &format!("{prefix} layer.{i}"),
                &result[&format!("layer.{i}")],
                &golden[&format!("{prefix}.layer.{i}")],
                1e-4,
            );
        }
        assert_close(
            &format!("{prefix} final"),
            &result["final"],
            &golden[final_key],
            1e-4,
        );
        let target_key = if prefix == "student" {
            "student.pred".to_string()
        } else {
            format!("{prefix}.target")
        };
        if golden.contains_key(&target_key) {
            assert_close(
                &format!("{prefix} target"),
                &result["target"],
                &golden[&target_key],
                1e-4,
            );
        }
    }
}

#[test]
fn features_from_an_image_file() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("f.safetensors");
    let out = kdlab(&[
        "features",
        "--backend",
        "cpu",
        "--weights",
        fixture("d2v2_tiny_fairseq.pt").to_str().unwrap(),
        "--depth",
        "1",
        "--image",
        fixture("images/cmyk_64x64.jpg").to_str().unwrap(),
        "--out",
        out_path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let result = read_all(&out_path);
    assert_eq!(result["layer.0"].shape.to_vec(), [1, 17, 64]);
    assert_eq!(result["target"].shape.to_vec(), [1, 17, 64]);
}

#[test]
fn bad_weight_files_fail_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);

    let pth = std::fs::read(fixture("beitv2_tiny_unilm.pth")).unwrap();
    std::fs::write(path("truncated.pth"), &pth[..pth.len() / 2]).unwrap();
    let st = std::fs::read(fixture("beitv2_tiny_timm.safetensors")).unwrap();
    std::fs::write(path("truncated.safetensors"), &st[..st.len() / 2]).unwrap();
    std::fs::write(path("notes.txt"), "these are not weights\n").unwrap();
    std::fs::write(path("empty.pt"), "").unwrap();
    // A valid safetensors file with the right keys, one of them wrongly shaped.
    let tensors: Vec<_> = raw_tensors(&fixture("beitv2_tiny_timm.safetensors"))
        .into_iter()
        .map(|(n, s, b, d)| {
            if n == "blocks.2.mlp.fc1.weight" {
                (n, vec![128, 64], b[..128 * 64 * 4].to_vec(), d)
            } else {
                (n, s, b, d)
            }
        })
        .collect();
    write_safetensors(&path("wrong_shape.safetensors"), &tensors, None);
    // Valid safetensors, unrelated keys.
    write_safetensors(
        &path("other.safetensors"),
        &[(
            "encoder.weight".into(),
            vec![2],
            vec![0; 8],
            safetensors::Dtype::F32,
        )],
        None,
    );

    for (file, needles) in [
        ("truncated.pth", vec!["truncated.pth"]),
        ("truncated.safetensors", vec!["truncated.safetensors"]),
        ("notes.txt", vec!["notes.txt"]),
        ("empty.pt", vec!["empty.pt", "empty"]),
        (
            "other.safetensors",
            vec!["other.safetensors", "encoder.weight"],
        ),
        (
            "wrong_shape.safetensors",
            vec![
                "wrong_shape.safetensors",
                "blocks.2.mlp.fc1.weight",
                "[256, 64]",
                "[128, 64]",
            ],
        ),
        ("missing.pth", vec!["missing.pth"]),
    ] {
        let p = path(file);
        let out = kdlab(&["inspect", p.to_str().unwrap()]);
        if file == "wrong_shape.safetensors" {
            // inspect reports the mismatch; loading it for features is the error.
            assert!(String::from_utf8_lossy(&out.stdout).contains("SHAPE MISMATCH"));
            let out = kdlab(&[
                "features",
                "--backend",
                "cpu",
                "--weights",
                p.to_str().unwrap(),
                "--image",
                fixture("images/cmyk_64x64.jpg").to_str().unwrap(),
                "--out",
                path("x.safetensors").to_str().unwrap(),
            ]);
            assert_clean_failure(&out, &needles);
        } else {
            assert_clean_failure(&out, &needles);
        }
    }
}

/// `features` of the tiny unilm teacher on an `--input` file holding `image`.
fn features_on_input(dir: &Path, shape: Vec<usize>, bytes: Vec<u8>) -> Output {
    let input = dir.join("in.safetensors");
    write_safetensors(
        &input,
        &[("image".into(), shape, bytes, safetensors::Dtype::F32)],
        None,
    );
    kdlab(&[
        "features",
        "--backend",
        "cpu",
        "--weights",
        fixture("beitv2_tiny_unilm.pth").to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--out",
        dir.join("o.safetensors").to_str().unwrap(),
    ])
}

#[test]
fn input_of_the_wrong_size_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = features_on_input(dir.path(), vec![1, 3, 32, 32], vec![0; 3 * 32 * 32 * 4]);
    assert_clean_failure(&out, &["[1, 3, 32, 32]", "[B, 3, 64, 64]"]);
}

/// Inputs no model can be run on: refused by name with exit 1, before any backend work.
#[test]
fn empty_and_non_finite_inputs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = |shape: Vec<usize>, values: Vec<f32>| {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        features_on_input(dir.path(), shape, bytes)
    };
    let out = run(vec![0, 3, 64, 64], vec![]);
    assert_clean_failure(&out, &["the input holds no images (a batch of 0)"]);
    assert_eq!(out.status.code(), Some(1));
    let mut pixels = vec![0.0; 3 * 64 * 64];
    pixels[5] = f32::NAN;
    let out = run(vec![1, 3, 64, 64], pixels);
    assert_clean_failure(
        &out,
        &["tensor 'image' holds 1 non-finite value(s) (the first, NaN, at element 5)"],
    );
}

/// A FIFO given as weights or as an image is refused at once (opening it would wait for a
/// writer forever); a usage mistake exits 2.
#[cfg(unix)]
#[test]
fn fifos_are_refused_and_usage_mistakes_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let out_path = dir.path().join("o.safetensors");
    let out = kdlab(&[
        "features",
        "--weights",
        fifo.to_str().unwrap(),
        "--image",
        fixture("images/cmyk_64x64.jpg").to_str().unwrap(),
        "--out",
        out_path.to_str().unwrap(),
    ]);
    assert_clean_failure(&out, &["is not a regular file but a FIFO (named pipe)"]);
    let out = kdlab(&[
        "features",
        "--backend",
        "cpu",
        "--weights",
        fixture("beitv2_tiny_unilm.pth").to_str().unwrap(),
        "--image",
        fifo.to_str().unwrap(),
        "--out",
        out_path.to_str().unwrap(),
    ]);
    assert_clean_failure(&out, &["is not a regular file but a FIFO (named pipe)"]);
    let out = kdlab(&["features", "--weights", fifo.to_str().unwrap()]);
    assert_clean_failure(&out, &["--out"]);
    assert_eq!(out.status.code(), Some(2));
    let weights = fixture("d2v2_tiny_fairseq.pt");
    let out = kdlab(&["eval", "knn", "--weights", weights.to_str().unwrap()]);
    assert_clean_failure(&out, &["no training images: give --train"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_depth_beyond_the_models_blocks_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("o.safetensors");
    let image = fixture("images/cmyk_64x64.jpg");
    for (weights, depth, needle) in [
        ("beitv2_tiny_unilm.pth", "5", "1..=4 main blocks"),
        ("d2v2_tiny_fairseq.pt", "7", "1..=3 main blocks"),
    ] {
        let out = kdlab(&[
            "features",
            "--backend",
            "cpu",
            "--weights",
            fixture(weights).to_str().unwrap(),
            "--depth",
            depth,
            "--image",
            image.to_str().unwrap(),
            "--out",
            out_path.to_str().unwrap(),
        ]);
        assert_clean_failure(&out, &[needle]);
    }
}

#[test]
fn an_unavailable_backend_is_an_error_not_a_panic() {
    if kdlab_engine::backend::BackendChoice::Cuda.select().is_ok() {
        skip(
            "an_unavailable_backend_is_an_error_not_a_panic",
            "this machine has CUDA, so `--backend cuda` has nothing to refuse",
        );
        return;
    }
    let out = kdlab(&[
        "inspect",
        "--backend",
        "cuda",
        fixture("d2v2_tiny_fairseq.pt").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "inspect needs no device");
    let out = kdlab(&[
        "features",
        "--backend",
        "cuda",
        "--weights",
        fixture("d2v2_tiny_fairseq.pt").to_str().unwrap(),
        "--image",
        fixture("images/cmyk_64x64.jpg").to_str().unwrap(),
        "--out",
        "/nonexistent/o.safetensors",
    ]);
    assert_clean_failure(&out, &["--backend cuda", "NVIDIA"]);
}

/// A tensor of rank 0 where the architecture is read from a matrix: an error naming the key.
#[test]
fn a_scalar_where_a_matrix_belongs_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let source = fixture("beitv2_tiny_timm.safetensors");
    let mut tensors = raw_tensors(&source);
    let fc1 = tensors
        .iter_mut()
        .find(|t| t.0 == "blocks.0.mlp.fc1.weight")
        .expect("the fixture has the first MLP");
    fc1.1 = vec![];
    fc1.2 = 1.0f32.to_le_bytes().to_vec();
    let broken = dir.path().join("scalar.safetensors");
    write_safetensors(&broken, &tensors, None);
    let out = kdlab(&["--no-gui", "inspect", broken.to_str().unwrap()]);
    assert_clean_failure(
        &out,
        &["scalar.safetensors", "blocks.0.mlp.fc1.weight", "scalar"],
    );
}

/// An output that is an input of the same command (by any path or link) is refused before
/// anything is written: the input stays as it was.
#[test]
fn outputs_never_overwrite_the_commands_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("d2v2.pt");
    std::fs::copy(fixture("d2v2_tiny_fairseq.pt"), &weights).unwrap();
    let before = std::fs::read(&weights).unwrap();
    let image = assets().join("horse.jpg");
    #[cfg(unix)]
    let through_a_link = {
        let link = dir.path().join("link.safetensors");
        std::os::unix::fs::symlink(&weights, &link).unwrap();
        link
    };
    #[cfg(not(unix))]
    let through_a_link = weights.clone();
    for out in [&weights, &through_a_link] {
        let out = kdlab_cpu(&[
            "features",
            "--weights",
            weights.to_str().unwrap(),
            "--image",
            image.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_clean_failure(&out, &["an input of this command", "d2v2.pt"]);
    }
    let out = kdlab(&[
        "export",
        "--checkpoint",
        weights.to_str().unwrap(),
        "--out",
        weights.to_str().unwrap(),
    ]);
    assert_clean_failure(&out, &["an input of this command"]);
    assert_eq!(
        std::fs::read(&weights).unwrap(),
        before,
        "the input is untouched"
    );
}
