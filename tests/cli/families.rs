//! `features` and `inspect` for every ViT family, through the command a user types, against
//! timm's goldens (fixtures/vits/): positions resampled for the input's size, rotary positions
//! at a new grid, a BEiT v2 student of the teacher's own blocks.

use crate::common::*;

fn vits_golden() -> std::collections::BTreeMap<String, burn::tensor::TensorData> {
    read_all(&fixture("vits/golden_vits.safetensors"))
}

/// Writes `image.{size}` of the goldens as the `image` tensor `--input` reads.
fn input_of_size(dir: &std::path::Path, size: usize) -> std::path::PathBuf {
    let path = dir.join(format!("image{size}.safetensors"));
    write_image_input(&path, &vits_golden()[&format!("image.{size}")]);
    path
}

fn features(
    weights: &str,
    size: usize,
    blocks: Option<&str>,
    dir: &std::path::Path,
) -> std::collections::BTreeMap<String, burn::tensor::TensorData> {
    let input = input_of_size(dir, size);
    let out_path = dir.join(format!(
        "{weights}.{size}.{}.safetensors",
        blocks.unwrap_or("all")
    ));
    let weights_path = fixture(&format!("vits/{weights}.safetensors"));
    let mut args = vec![
        "features",
        "--weights",
        weights_path.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--out",
        out_path.to_str().unwrap(),
    ];
    if let Some(blocks) = blocks {
        args.extend(["--blocks", blocks]);
    }
    let out = kdlab_cpu(&args);
    assert!(
        out.status.success(),
        "{weights} at {size}: {}",
        stderr(&out)
    );
    read_all(&out_path)
}

#[test]
fn features_of_every_family_match_timm_at_two_resolutions() {
    let dir = tempfile::tempdir().unwrap();
    let golden = vits_golden();
    for (name, weights, size) in [
        ("vit", "vit_tiny_timm", 32),
        ("deit3", "deit3_tiny_timm", 32),
        ("dinov2", "dinov2_tiny_timm", 56),
        ("dinov2", "dinov2_tiny_timm", 84),
        ("dinov2reg", "dinov2reg_tiny_timm", 84),
        ("dinov3", "dinov3_tiny_timm", 32),
        ("dinov3", "dinov3_tiny_timm", 48),
    ] {
        let result = features(weights, size, None, dir.path());
        for i in 0..3 {
            let key = format!("{name}.{size}.layer.{i}");
            assert_close(&key, &result[&format!("layer.{i}")], &golden[&key], 1e-4);
        }
        let key = format!("{name}.{size}.target");
        assert_close(&key, &result["target"], &golden[&key], 1e-4);
    }
}

#[test]
fn a_beit_student_of_the_teachers_own_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let golden = vits_golden();
    for blocks in ["0,2", "every-second"] {
        let result = features("beitv2_teacher_timm", 64, Some(blocks), dir.path());
        assert!(!result.contains_key("layer.2"), "{blocks}: two blocks kept");
        for i in 0..2 {
            let key = format!("beit_student.64.layer.{i}");
            assert_close(&key, &result[&format!("layer.{i}")], &golden[&key], 1e-4);
        }
        assert_close(
            "beit_student.64.target",
            &result["target"],
            &golden["beit_student.64.target"],
            1e-4,
        );
    }
    let first = features("beitv2_teacher_timm", 64, Some("first:1"), dir.path());
    assert_close(
        "first:1",
        &first["layer.0"],
        &golden["beit_teacher.64.layer.0"],
        1e-4,
    );
}

#[test]
fn inspect_reports_family_grid_and_prefix_tokens() {
    for (weights, family, prefix, registers, positions) in [
        ("dinov3_tiny_timm", "dinov3", 3, 2, "rotary"),
        ("dinov2reg_tiny_timm", "dinov2", 3, 2, "learned"),
        ("vit_tiny_timm", "vit", 1, 0, "learned"),
    ] {
        let path = fixture(&format!("vits/{weights}.safetensors"));
        let out = kdlab(&["inspect", path.to_str().unwrap(), "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["family"], family, "{weights}");
        assert_eq!(report["layout"], "vit-timm", "{weights}");
        assert_eq!(report["num_prefix_tokens"], prefix, "{weights}");
        assert_eq!(report["num_registers"], registers, "{weights}");
        assert_eq!(report["positions"], positions, "{weights}");
        assert_eq!(report["num_heads"], 3, "{weights}");
        assert!(
            report["missing_keys"].as_array().unwrap().is_empty(),
            "{report}"
        );
        let summary = kdlab(&["inspect", path.to_str().unwrap()]);
        let text = String::from_utf8_lossy(&summary.stdout);
        assert!(text.contains(family) && text.contains("patches"), "{text}");
    }
}

#[test]
fn bad_block_lists_and_sizes_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let input = input_of_size(dir.path(), 48);
    let weights = fixture("vits/vit_tiny_timm.safetensors");
    for (blocks, needle) in [
        ("0,7", "block 7 does not exist"),
        ("first:x", "expected first:N"),
    ] {
        let out = kdlab_cpu(&[
            "features",
            "--weights",
            weights.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--blocks",
            blocks,
            "--out",
            dir.path().join("o.safetensors").to_str().unwrap(),
        ]);
        assert!(!out.status.success());
        assert!(stderr(&out).contains(needle), "{blocks}: {}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    }
    // A BEiT v2 model's relative-position tables belong to its own grid.
    let out = kdlab_cpu(&[
        "features",
        "--weights",
        fixture("vits/beitv2_teacher_timm.safetensors")
            .to_str()
            .unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--out",
        dir.path().join("o.safetensors").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("[B, 3, 64, 64]"), "{}", stderr(&out));
}

fn demo_families() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/demo_families.ron")
}

/// The demo pair of two families (a DINOv2-with-registers-shaped teacher at 56 px, a narrower
/// plain ViT at 32 px with a width connector) trains, resumes exactly, and exports a student
/// that timm's layout (config.json beside it) and kdlab read back.
#[test]
fn a_pair_of_two_families_trains_resumes_and_exports() {
    let dir = tempfile::tempdir().unwrap();
    let config = demo_families();
    let (straight, split) = (dir.path().join("straight"), dir.path().join("split"));
    train(&config, &straight, &["--max-steps", "6"]);
    train(&config, &split, &["--max-steps", "3"]);
    let run = run_dirs(&split)[0].clone();
    let out = kdlab_cpu(&[
        "train",
        "--resume",
        run.to_str().unwrap(),
        "--max-steps",
        "6",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let reference = run_dirs(&straight)[0].clone();
    assert_eq!(metrics(&run), metrics(&reference), "resumed = straight");
    let losses: Vec<f64> = metrics(&reference).iter().filter_map(|m| m.loss).collect();
    assert!(
        !losses.is_empty() && losses.iter().all(|l| l.is_finite()),
        "{losses:?}"
    );
    let last = reference.join("checkpoints/last.safetensors");
    let weights = raw_tensors(&last);
    assert!(
        weights == raw_tensors(&run.join("checkpoints/last.safetensors")),
        "weights, connector and moments equal after the resume"
    );
    let names: Vec<&str> = weights.iter().map(|t| t.0.as_str()).collect();
    for key in [
        "connector.weight",
        "connector.bias",
        "pos_embed",
        "blocks.1.mlp.fc2.weight",
    ] {
        assert!(names.contains(&key), "{key} in the checkpoint: {names:?}");
    }
    assert!(
        names.contains(&"optim.exp_avg.connector.weight"),
        "{names:?}"
    );

    // The per-epoch maps of the probe images exist (registers dropped, 4 × 4 grid).
    assert!(reference.join("heatmaps").is_dir());

    // Export: the encoder in timm's names with its config.json, the connector beside it.
    let exported = dir.path().join("student.safetensors");
    let out = kdlab(&[
        "export",
        "--checkpoint",
        reference.to_str().unwrap(),
        "--out",
        exported.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let encoder: Vec<String> = raw_tensors(&exported).into_iter().map(|t| t.0).collect();
    assert!(
        !encoder.iter().any(|k| k.starts_with("connector")),
        "{encoder:?}"
    );
    assert!(
        encoder.contains(&"norm.weight".to_string()),
        "a whole timm model: {encoder:?}"
    );
    let connector: Vec<String> = raw_tensors(&dir.path().join("student.connector.safetensors"))
        .into_iter()
        .map(|t| t.0)
        .collect();
    assert_eq!(connector, ["connector.bias", "connector.weight"]);
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("student.config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(json["model_args"]["embed_dim"], 32);
    assert_eq!(json["model_args"]["num_heads"], 2);
    let report = kdlab(&["inspect", exported.to_str().unwrap(), "--json"]);
    assert!(report.status.success(), "{}", stderr(&report));
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(report["family"], "vit");
    assert_eq!(report["layout"], "vit-timm");
    assert!(
        report["missing_keys"].as_array().unwrap().is_empty(),
        "{report}"
    );
}

/// `heatmap` draws a pair of two families: the teacher's registers dropped, its attention
/// over its patches only.
#[test]
fn heatmaps_of_a_pair_of_two_families() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("maps");
    let image = assets().join("astronaut.jpg");
    let out = kdlab_cpu(&[
        "heatmap",
        "--config",
        demo_families().to_str().unwrap(),
        "--image",
        image.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let files: Vec<_> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(files.len() > 3, "{files:?}");
}

/// The seed's baseline in one config line: a student of the teacher's own blocks.
#[test]
fn a_student_of_the_teachers_blocks_trains() {
    let dir = tempfile::tempdir().unwrap();
    let text = replace_once(
        &tiny_config_text(&assets(), ""),
        "student: (architecture: Some((image_size: 32, patch_size: 8, embed_dim: 32, depth: 2, prenet_depth: 1,\n        num_heads: 2, mlp_hidden_dim: 64, norm_eps: 1e-6)), blocks: All),",
        "student: (architecture: None, from_teacher: true, blocks: EverySecond),",
    );
    let config = dir.path().join("half.ron");
    std::fs::write(&config, text).unwrap();
    let runs = dir.path().join("runs");
    train(&config, &runs, &["--max-steps", "2"]);
    let run = run_dirs(&runs)[0].clone();
    let last = run.join("checkpoints/last.safetensors");
    let report = kdlab(&["inspect", last.to_str().unwrap(), "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(report["family"], "beitv2");
    assert_eq!(report["depth"], 1, "every second of the teacher's 2 blocks");
}

/// Pairs that cannot meet are config errors naming the field and the rule, before any tensor.
#[test]
fn pairs_that_cannot_meet_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(demo_families()).unwrap();
    for (from, to, field, needle) in [
        (
            "        connector: true,\n",
            "",
            "student.connector",
            "a width connector (32 → 48) is needed",
        ),
        (
            "            image_size: 32,",
            "            image_size: 40,",
            "student.image_size",
            "4×4 and the student's 5×5",
        ),
        (
            "            image_size: 32,",
            "            image_size: 30,",
            "student.vit.image_size",
            "multiple of patch_size 8",
        ),
        (
            "            num_heads: 2,",
            "            num_heads: 5,",
            "student.vit.embed_dim",
            "does not split",
        ),
    ] {
        let config = dir.path().join("pair.ron");
        let edited = replace_once(&text, from, to).replace("../assets", assets().to_str().unwrap());
        std::fs::write(&config, edited).unwrap();
        let out = kdlab_cpu(&[
            "train",
            "--config",
            config.to_str().unwrap(),
            "--runs-dir",
            dir.path().join("runs").to_str().unwrap(),
        ]);
        assert!(!out.status.success(), "{field}");
        let err = stderr(&out);
        assert!(
            err.contains(field) && err.contains(needle),
            "{field}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    // Every user config of the families parses and validates (their files need not exist).
    for name in [
        "beitv2_half",
        "dinov2_vitb14_to_vits16",
        "dinov3_vitb16_to_vits16",
        "demo_families",
    ] {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("configs/{name}.ron"));
        kdlab_engine::config::RunConfig::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// A DINOv3 student (rotary positions, registers, no qkv bias) trains from the demo pair's
/// teacher and exports in `Eva`'s names (`gamma_1`, `gamma_2`), which kdlab reads back.
#[test]
fn a_dinov3_student_exports_in_evas_names() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(demo_families()).unwrap();
    let student_at = text.find("    student: (").unwrap();
    let (teacher, student) = text.split_at(student_at);
    let student = [
        ("family: vit,", "family: dinov3,"),
        ("qkv_bias: true,", "qkv_bias: false,"),
        ("layer_scale: false,", "layer_scale: true,"),
        ("reg_tokens: 0,", "reg_tokens: 2,"),
        (
            "positions: Learned(grid: 4, embed_class: true),",
            "positions: Rotary(temperature: 100.0),",
        ),
        ("norm_eps: 1e-6,", "norm_eps: 1e-5,"),
    ]
    .iter()
    .fold(student.to_string(), |s, (from, to)| {
        replace_once(&s, from, to)
    });
    let config = dir.path().join("dinov3.ron");
    let text = format!("{teacher}{student}").replace("../assets", assets().to_str().unwrap());
    std::fs::write(&config, text).unwrap();
    let runs = dir.path().join("runs");
    train(&config, &runs, &["--max-steps", "2"]);
    let exported = dir.path().join("student.safetensors");
    let run = run_dirs(&runs)[0].clone();
    let out = kdlab(&[
        "export",
        "--checkpoint",
        run.to_str().unwrap(),
        "--out",
        exported.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let names: Vec<String> = raw_tensors(&exported).into_iter().map(|t| t.0).collect();
    assert!(names.contains(&"blocks.0.gamma_1".to_string()), "{names:?}");
    assert!(!names.iter().any(|n| n.contains("ls1")), "{names:?}");
    let report = kdlab(&["inspect", exported.to_str().unwrap(), "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(report["family"], "dinov3");
    assert_eq!(report["num_registers"], 2);
    assert_eq!(report["positions"], "rotary");
    assert!(
        report["missing_keys"].as_array().unwrap().is_empty(),
        "{report}"
    );
}
