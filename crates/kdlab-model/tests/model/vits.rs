//! The other ViT families against `fixtures/vits/golden_vits.safetensors`, computed by timm
//! itself (`VisionTransformer`, `Eva`, `Beit`; fixtures/vits/README.md): every layer result and
//! final norm, targets at two resolutions (resampled positions, rotary positions at a new grid),
//! the half-teacher BEiT student, and the KD pairs across families (registers dropped, a width
//! connector, grid resampling). CPU ≤ 1e-4 (losses ≤ 1e-5); WGPU ≤ 1e-3 when an adapter exists.

use kdlab_testkit as common;

use burn::backend::wgpu::WgpuDevice;
use burn::backend::{Flex, Wgpu};
use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use kdlab_model::model::{Encoder, ModelOutput, TokenLayout};
use kdlab_model::pair::{KdPair, PairError, Side, average_normalised, target_tokens};
use kdlab_model::target::{kd_loss, prepare_target};
use kdlab_model::weights::Checkpoint;
use kdlab_testkit::*;

fn goldens() -> std::collections::BTreeMap<String, TensorData> {
    read_all(&fixture("vits/golden_vits.safetensors"))
}

fn model_file(name: &str) -> String {
    format!("vits/{name}.safetensors")
}

/// Loads `file` to run at `size` px, keeping `blocks` (all when `None`).
fn load<B: Backend>(
    file: &str,
    size: usize,
    blocks: Option<&[usize]>,
    device: &B::Device,
) -> Encoder<B> {
    Checkpoint::open(fixture(&model_file(file)))
        .unwrap_or_else(|e| panic!("{file}: {e}"))
        .load_encoder_blocks::<B>(blocks, Some(size), device)
        .unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn run<B: Backend>(encoder: &Encoder<B>, size: usize, device: &B::Device) -> ModelOutput<B> {
    let image = goldens()[&format!("image.{size}")].clone();
    encoder.forward(Tensor::from_data(image, device))
}

/// The model's own target: registers dropped, CLS and patches kept.
fn own_target<B: Backend>(out: &ModelOutput<B>) -> Tensor<B, 3> {
    let layers: Vec<_> = out
        .layer_results
        .iter()
        .map(|h| target_tokens(h.clone(), out.tokens, true))
        .collect();
    prepare_target(&layers)
}

fn check_model<B: Backend>(golden: &str, file: &str, size: usize, device: &B::Device, tol: f32) {
    let goldens = goldens();
    let encoder = load::<B>(file, size, None, device);
    let out = run(&encoder, size, device);
    let prefix = format!("{golden}.{size}");
    let layers = goldens
        .keys()
        .filter(|k| k.starts_with(&format!("{prefix}.layer.")))
        .count();
    assert_eq!(out.layer_results.len(), layers, "{prefix}: layer count");
    for (i, layer) in out.layer_results.iter().enumerate() {
        let name = format!("{prefix}.layer.{i}");
        assert_close(&name, &layer.to_data(), &goldens[&name], tol);
    }
    let Encoder::Vit(vit) = &encoder else {
        panic!("{file} is a timm ViT")
    };
    let name = format!("{prefix}.final");
    let last = vit.final_norm(out.last_hidden.clone());
    assert_close(&name, &last.to_data(), &goldens[&name], tol);
    let name = format!("{prefix}.target");
    assert_close(&name, &own_target(&out).to_data(), &goldens[&name], tol);
}

fn side<B: Backend>(encoder: &Encoder<B>, out: &ModelOutput<B>) -> Side {
    let [_, tokens, embed_dim] = out.layer_results[0].dims();
    let prefix = encoder.tokens().prefix();
    Side {
        tokens: encoder.tokens(),
        grid: (tokens - prefix).isqrt(),
        embed_dim,
    }
}

fn scalar(data: &TensorData) -> f32 {
    to_f32(data)[0]
}

/// Checks one KD pair's target, prediction and loss.
#[allow(clippy::too_many_arguments)]
fn check_pair<B: Backend>(
    pair_name: &str,
    (teacher, teacher_size): (&str, usize),
    (student, student_size): (&str, usize),
    resample: bool,
    connector: Option<&Linear<B>>,
    device: &B::Device,
    tol: f32,
    loss_tol: f32,
) {
    let goldens = goldens();
    let teacher = load::<B>(teacher, teacher_size, None, device);
    let student = load::<B>(student, student_size, None, device);
    let t = run(&teacher, teacher_size, device);
    let s = run(&student, student_size, device);
    let pair = KdPair {
        teacher: side(&teacher, &t),
        student: side(&student, &s),
        resample_grid: resample,
    };
    pair.check(14, 8, connector.is_some()).unwrap();
    let target = pair.teacher_target(&t.layer_results);
    let prediction = pair.student_prediction(&s.layer_results, connector);
    let key = |part: &str| format!("kd.{pair_name}.{part}");
    assert_close(
        &key("target"),
        &target.to_data(),
        &goldens[&key("target")],
        tol,
    );
    assert_close(
        &key("pred"),
        &prediction.to_data(),
        &goldens[&key("pred")],
        tol,
    );
    let loss = scalar(&kd_loss(prediction, target).to_data());
    let expected = scalar(&goldens[&key("loss")]);
    assert!(
        (loss - expected).abs() <= loss_tol,
        "{}: {loss} vs {expected}",
        key("loss")
    );
}

fn golden_connector<B: Backend>(device: &B::Device) -> Linear<B> {
    let goldens = goldens();
    let weight = Tensor::<B, 2>::from_data(goldens["connector.weight"].clone(), device);
    let bias = Tensor::<B, 1>::from_data(goldens["connector.bias"].clone(), device);
    Linear {
        weight: Param::from_tensor(weight.transpose()), // PyTorch [out, in] → burn [in, out]
        bias: Some(Param::from_tensor(bias)),
    }
}

fn all_checks<B: Backend>(device: &B::Device, tol: f32, loss_tol: f32) {
    let goldens = goldens();
    for (golden, file, size) in [
        ("vit", "vit_tiny_timm", 32),
        ("deit3", "deit3_tiny_timm", 32),
        ("narrow", "vit_narrow_tiny_timm", 32),
        ("dinov2", "dinov2_tiny_timm", 56),
        ("dinov2", "dinov2_tiny_timm", 84),
        ("dinov2reg", "dinov2reg_tiny_timm", 56),
        ("dinov2reg", "dinov2reg_tiny_timm", 84),
        ("dinov3", "dinov3_tiny_timm", 32),
        ("dinov3", "dinov3_tiny_timm", 48),
    ] {
        check_model::<B>(golden, file, size, device, tol);
    }

    // The seed's baseline: a BEiT v2 student of the teacher's blocks 0 and 2.
    let blocks: Vec<usize> = goldens["beit_student.blocks"]
        .to_vec::<i64>()
        .unwrap()
        .into_iter()
        .map(|b| b as usize)
        .collect();
    let teacher = load::<B>("beitv2_teacher_timm", 64, None, device);
    let student = load::<B>("beitv2_teacher_timm", 64, Some(&blocks), device);
    let t = run(&teacher, 64, device);
    let s = run(&student, 64, device);
    for (name, out) in [("beit_teacher", &t), ("beit_student", &s)] {
        for (i, layer) in out.layer_results.iter().enumerate() {
            let key = format!("{name}.64.layer.{i}");
            assert_close(&key, &layer.to_data(), &goldens[&key], tol);
        }
    }
    let target = prepare_target(&t.layer_results);
    let prediction = prepare_target(&s.layer_results);
    assert_close(
        "beit_teacher.64.target",
        &target.to_data(),
        &goldens["beit_teacher.64.target"],
        tol,
    );
    assert_close(
        "beit_student.64.target",
        &prediction.to_data(),
        &goldens["beit_student.64.target"],
        tol,
    );
    let loss = scalar(&kd_loss(prediction, target).to_data());
    let expected = scalar(&goldens["kd.beit_half.loss"]);
    assert!(
        (loss - expected).abs() <= loss_tol,
        "kd.beit_half.loss: {loss} vs {expected}"
    );

    check_pair::<B>(
        "dinov2_to_vit",
        ("dinov2_tiny_timm", 56),
        ("vit_tiny_timm", 32),
        false,
        None,
        device,
        tol,
        loss_tol,
    );
    check_pair::<B>(
        "dinov3_to_deit3",
        ("dinov3_tiny_timm", 32),
        ("deit3_tiny_timm", 32),
        false,
        None,
        device,
        tol,
        loss_tol,
    );
    let connector = golden_connector::<B>(device);
    check_pair::<B>(
        "dinov2reg_to_narrow",
        ("dinov2reg_tiny_timm", 56),
        ("vit_narrow_tiny_timm", 32),
        false,
        Some(&connector),
        device,
        tol,
        loss_tol,
    );
    check_pair::<B>(
        "dinov2_grid_to_vit",
        ("dinov2_tiny_timm", 84),
        ("vit_tiny_timm", 32),
        true,
        None,
        device,
        tol,
        loss_tol,
    );

    // The teacher's average on the student's grid, before the final layer norm.
    let teacher = load::<B>("dinov2_tiny_timm", 84, None, device);
    let out = run(&teacher, 84, device);
    let average = average_normalised(out.layer_results.clone());
    let cls = average.clone().narrow(1, 0, 1);
    let patches = kdlab_model::model::resample::resample_grid(
        average.narrow(1, 1, 36),
        6,
        4,
        kdlab_model::model::resample::Interpolation::Bilinear,
    );
    assert_close(
        "kd.dinov2_grid_to_vit.teacher_resampled",
        &Tensor::cat(vec![cls, patches], 1).to_data(),
        &goldens["kd.dinov2_grid_to_vit.teacher_resampled"],
        tol,
    );
}

#[test]
fn cpu_matches_timm_for_every_family_and_pair() {
    all_checks::<Flex>(&Default::default(), 1e-4, 1e-5);
}

#[test]
fn wgpu_matches_timm_for_every_family_and_pair_when_an_adapter_exists() {
    if !common::wgpu_available("wgpu_matches_timm_for_every_family_and_pair_when_an_adapter_exists")
    {
        return;
    }
    all_checks::<Wgpu>(&WgpuDevice::DefaultDevice, 1e-3, 1e-4);
}

#[test]
fn inspection_facts_come_from_the_file_and_its_config() {
    for (file, family, prefix, registers) in [
        ("vit_tiny_timm", "vit", 1, 0),
        ("deit3_tiny_timm", "deit3", 1, 0),
        ("dinov2_tiny_timm", "dinov2", 1, 0),
        ("dinov2reg_tiny_timm", "dinov2", 3, 2),
        ("dinov3_tiny_timm", "dinov3", 3, 2),
    ] {
        let checkpoint = Checkpoint::open(fixture(&model_file(file))).unwrap();
        assert_eq!(checkpoint.architecture.family(), family, "{file}");
        assert_eq!(checkpoint.architecture.tokens().prefix(), prefix, "{file}");
        assert_eq!(
            checkpoint.architecture.tokens().registers,
            registers,
            "{file}"
        );
        assert_eq!(checkpoint.architecture.num_heads(), 3, "{file}");
        let preprocessing = checkpoint.preprocessing.expect("pretrained_cfg");
        assert_eq!(preprocessing.mean, [0.485, 0.456, 0.406], "{file}");
    }
}

/// Copies a fixture model into `dir` with a `config.json` edited by `edit`.
fn with_config(
    dir: &std::path::Path,
    file: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) -> std::path::PathBuf {
    let weights = dir.join(format!("{file}.safetensors"));
    std::fs::copy(fixture(&model_file(file)), &weights).unwrap();
    let text = std::fs::read_to_string(fixture(&format!("vits/{file}.config.json"))).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    edit(&mut json);
    std::fs::write(dir.join(format!("{file}.config.json")), json.to_string()).unwrap();
    weights
}

#[test]
fn a_config_that_disagrees_with_the_weights_is_named() {
    let dir = tempfile::tempdir().unwrap();
    type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;
    let cases: [(&str, Edit, &str); 4] = [
        (
            "vit_tiny_timm",
            Box::new(|j| j["model_args"]["embed_dim"] = 64.into()),
            "model_args.embed_dim is 64 but the weights have 48",
        ),
        (
            "vit_tiny_timm",
            Box::new(|j| j["model_args"]["num_heads"] = 5.into()),
            "num_heads 5 does not split width 48",
        ),
        (
            "dinov3_tiny_timm",
            Box::new(|j| j["model_args"]["num_heads"] = 8.into()),
            "not a multiple of 4",
        ),
        (
            "dinov3_tiny_timm",
            Box::new(|j| j["model_args"]["rope_type"] = "cat".into()),
            "rope_type is 'cat'",
        ),
    ];
    for (i, (file, edit, expected)) in cases.into_iter().enumerate() {
        let case = dir.path().join(i.to_string());
        std::fs::create_dir(&case).unwrap();
        let weights = with_config(&case, file, edit);
        let message = Checkpoint::open(&weights)
            .err()
            .expect("a config error")
            .to_string();
        assert!(message.contains(expected), "{file}: {message}");
        assert!(
            message.contains("config.json") || message.contains("model_args"),
            "{message}"
        );
    }
}

#[test]
fn a_timm_vit_without_its_config_says_where_to_put_it() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("model.safetensors");
    std::fs::copy(fixture(&model_file("vit_tiny_timm")), &weights).unwrap();
    let message = Checkpoint::open(&weights)
        .err()
        .expect("no config")
        .to_string();
    assert!(message.contains("config.json"), "{message}");
    // The hub layout: `config.json` beside `model.safetensors`.
    std::fs::copy(
        fixture("vits/vit_tiny_timm.config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let checkpoint = Checkpoint::open(&weights).unwrap();
    assert_eq!(checkpoint.architecture.family(), "vit");
}

#[test]
fn pair_rules_name_both_grids_and_widths() {
    let side = |grid, embed_dim| Side {
        tokens: TokenLayout::CLS,
        grid,
        embed_dim,
    };
    let pair = |t, s, resample| KdPair {
        teacher: t,
        student: s,
        resample_grid: resample,
    };
    let grids = pair(side(16, 48), side(14, 48), false)
        .check(14, 16, false)
        .unwrap_err();
    assert_eq!(
        grids,
        PairError::Grids {
            teacher: 16,
            student: 14,
            teacher_size_for_student: 196,
            student_size_for_teacher: 256
        }
    );
    assert!(grids.to_string().contains("196 px"), "{grids}");
    assert!(
        pair(side(16, 48), side(14, 48), true)
            .check(14, 16, false)
            .is_ok()
    );
    assert!(matches!(
        pair(side(4, 48), side(4, 32), false).check(8, 8, false),
        Err(PairError::ConnectorMissing {
            student: 32,
            teacher: 48
        })
    ));
    assert!(matches!(
        pair(side(4, 48), side(4, 48), false).check(8, 8, true),
        Err(PairError::ConnectorNotNeeded { width: 48 })
    ));
}
