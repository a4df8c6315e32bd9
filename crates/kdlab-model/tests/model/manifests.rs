//! The REAL full-size checkpoint layouts (key/shape manifests in fixtures/keys/, README §7) are
//! recognised, give the published architectures, and build models with the published parameter
//! counts — without reading or allocating any weight (burn initialises parameters lazily).

use std::collections::BTreeMap;
use std::rc::Rc;

use burn::backend::Flex;
use burn::tensor::DType;
use burn_store::TensorSnapshotError;
use kdlab_model::model::{BlockSelection, Data2Vec2Config};
use kdlab_model::weights::expected::expected_params;
use kdlab_model::weights::read::{FileFormat, RawWeights, snapshot};
use kdlab_model::weights::{Architecture, Checkpoint};
use kdlab_testkit::fixture;

/// Tensors described by a manifest: names and shapes only; reading their data is an error.
fn manifest(file: &str, prefix: &str) -> BTreeMap<String, burn_store::TensorSnapshot> {
    let text = std::fs::read_to_string(fixture(&format!("keys/{file}"))).unwrap();
    text.lines()
        .map(|line| {
            let mut cols = line.split('\t');
            let name = cols.next().unwrap();
            let shape: Vec<usize> = serde_json::from_str(cols.next().unwrap()).unwrap();
            let dtype = match cols.next().unwrap() {
                "int64" => DType::I64,
                _ => DType::F32,
            };
            let key = format!("{prefix}{name}");
            let no_data = Rc::new(|| Err(TensorSnapshotError::DataError("manifest only".into())));
            (key.clone(), snapshot(no_data, dtype, shape, &key))
        })
        .collect()
}

fn checkpoint(
    tensors: BTreeMap<String, burn_store::TensorSnapshot>,
    format: FileFormat,
) -> Checkpoint {
    let fairseq_cfg = (format == FileFormat::Pytorch
        && tensors.keys().any(|k| k.starts_with("modality_encoders.")))
    .then(|| {
        let text =
            std::fs::read_to_string(fixture("keys/d2v2_base_imagenet.cfg_model.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    });
    let raw = RawWeights {
        tensors,
        refused: Default::default(),
        fairseq_cfg,
        metadata: Default::default(),
        format,
    };
    Checkpoint::from_raw(std::path::Path::new("manifest"), raw).unwrap()
}

/// Teacher as the thesis uses it: 85,664,592 including the unused `mask_token` (768), which
/// kdlab does not build.
const TEACHER_PARAMETERS: usize = 85_664_592 - 768;

#[test]
fn released_beitv2_pt1k_file() {
    let ckpt = checkpoint(
        manifest("beitv2_base_patch16_224_pt1k.keys.tsv", ""),
        FileFormat::Pytorch,
    );
    assert_eq!(ckpt.layout.name(), "beitv2-unilm");
    let Architecture::BeitV2(config) = &ckpt.architecture else {
        panic!("not BEiT")
    };
    assert_eq!(
        config,
        &kdlab_model::model::BeitV2Config::vit_base_patch16_224()
    );
    let plan = ckpt.plan();
    assert_eq!(plan.parameters, TEACHER_PARAMETERS);
    assert!(plan.missing_keys.is_empty(), "{:?}", plan.missing_keys);
    assert!(plan.shape_mismatches.is_empty());
    // 30 cls_pt_layers + lm_head (2) + mask_token + norm (2) + (maybe) the index.
    assert!(
        plan.ignored_keys
            .iter()
            .all(|k| k.starts_with("cls_pt_layers.")
                || k.starts_with("lm_head.")
                || k.starts_with("norm.")
                || k == "mask_token"
                || k.ends_with("relative_position_index"))
    );
    assert_eq!(
        plan.ignored_keys
            .iter()
            .filter(|k| k.starts_with("cls_pt_layers."))
            .count(),
        30
    );
}

#[test]
fn thesis_teacher_state_dict() {
    let ckpt = checkpoint(
        manifest("beitv2_base_patch16_224_pt1k.teacher_model.keys.tsv", ""),
        FileFormat::Pytorch,
    );
    assert_eq!(ckpt.layout.name(), "beitv2-unilm");
    let plan = ckpt.plan();
    assert_eq!(plan.parameters, TEACHER_PARAMETERS);
    assert!(plan.missing_keys.is_empty());
    assert_eq!(
        plan.ignored_keys,
        [
            "lm_head.bias",
            "lm_head.weight",
            "mask_token",
            "norm.bias",
            "norm.weight",
            "rel_pos_bias.relative_position_index"
        ]
    );
}

#[test]
fn timm_beitv2_base() {
    let ckpt = checkpoint(
        manifest("timm_beitv2_base_patch16_224.keys.tsv", ""),
        FileFormat::Safetensors,
    );
    assert_eq!(ckpt.layout.name(), "beitv2-timm");
    let Architecture::BeitV2(config) = &ckpt.architecture else {
        panic!("not BEiT")
    };
    assert!(!config.shared_rel_pos_bias);
    let plan = ckpt.plan();
    // timm's 86,530,984 less the classifier (fc_norm 1,536 + head 769,000).
    assert_eq!(plan.parameters, 86_530_984 - 1_536 - 769_000);
    // = the unilm teacher with 11 more copies of the 8,784-entry table.
    assert_eq!(plan.parameters, TEACHER_PARAMETERS + 11 * 8_784);
    assert!(plan.missing_keys.is_empty());
    assert_eq!(
        plan.ignored_keys,
        ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    );
}

#[test]
fn fairseq_data2vec2_base_with_decoder_and_ema() {
    let mut tensors = manifest("d2v2_base_imagenet.keys.tsv", "");
    tensors.extend(manifest("d2v2_base_imagenet.ema.keys.tsv", "_ema."));
    let ckpt = checkpoint(tensors, FileFormat::Pytorch);
    assert_eq!(ckpt.layout.name(), "data2vec2-fairseq");
    let Architecture::Data2Vec2(config) = &ckpt.architecture else {
        panic!("not data2vec2")
    };
    assert_eq!(config, &Data2Vec2Config::vit_base_patch16_224());
    let plan = ckpt.plan();
    assert_eq!(plan.parameters, 85_797_888); // after remove_pretraining_modules
    assert!(plan.missing_keys.is_empty());
    assert_eq!(plan.ignored_keys.len(), 14 + 150); // decoder + the nested EMA copy
    assert!(
        plan.ignored_keys
            .iter()
            .all(|k| k.starts_with("_ema.") || k.contains(".decoder."))
    );
}

#[test]
fn thesis_student_sizes() {
    let device = Default::default();
    let base = Data2Vec2Config::vit_base_patch16_224();
    let count = |selection: BlockSelection| {
        let keep = selection
            .main_blocks(base.prenet_depth, base.depth)
            .unwrap();
        let model = base.init::<Flex>(&device).select_main_blocks(&keep);
        expected_params(&model)
            .iter()
            .map(|p| p.shape.iter().product::<usize>())
            .sum::<usize>()
    };
    let positions = 196 * 768;
    assert_eq!(count(BlockSelection::FirstMain(6)), 57_446_400);
    assert_eq!(count(BlockSelection::FirstMain(6)) - positions, 57_295_872);
    assert_eq!(count(BlockSelection::Total(6)) - positions, 43_120_128); // the thesis' "43.1M"
    assert_eq!(
        count(BlockSelection::Total(8)),
        count(BlockSelection::FirstMain(6))
    );
    assert_eq!(
        count(BlockSelection::EverySecond),
        count(BlockSelection::FirstMain(5))
    );
}

#[test]
fn student_manifest_matches_the_depth6_student() {
    let ckpt = checkpoint(
        manifest("d2v2_base_imagenet.student_depth6.keys.tsv", ""),
        FileFormat::Pytorch,
    );
    let Architecture::Data2Vec2(config) = &ckpt.architecture else {
        panic!("not data2vec2")
    };
    assert_eq!((config.prenet_depth, config.depth), (2, 6));
    let plan = ckpt.plan();
    assert_eq!(plan.parameters, 57_446_400);
    assert!(plan.missing_keys.is_empty() && plan.ignored_keys.is_empty());
}

/// The released data2vec 2.0 keys with a `cfg.model` edited by `edit`.
fn fairseq_with_cfg(edit: impl FnOnce(&mut serde_json::Value)) -> Result<Checkpoint, String> {
    let text = std::fs::read_to_string(fixture("keys/d2v2_base_imagenet.cfg_model.json")).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&text).unwrap();
    edit(&mut cfg);
    let raw = RawWeights {
        tensors: manifest("d2v2_base_imagenet.keys.tsv", ""),
        refused: Default::default(),
        fairseq_cfg: Some(cfg),
        metadata: Default::default(),
        format: FileFormat::Pytorch,
    };
    Checkpoint::from_raw(std::path::Path::new("d2v2.pt"), raw).map_err(|e| e.to_string())
}

/// The head count is the one thing the shapes cannot tell: read as a whole number or refused,
/// never guessed.
#[test]
fn fairseq_head_count_is_read_strictly() {
    assert!(fairseq_with_cfg(|_| ()).is_ok());
    type Edit = fn(&mut serde_json::Value);
    let cases: [(Edit, &str); 4] = [
        (
            |c| c["num_heads"] = serde_json::json!(12.0),
            "cfg.model.num_heads is 12.0; a whole number was expected",
        ),
        (
            |c| c["num_heads"] = serde_json::json!("12"),
            "cfg.model.num_heads is \"12\"; a whole number was expected",
        ),
        (
            |c| {
                c.as_object_mut().unwrap().remove("num_heads");
            },
            "cfg.model.num_heads is missing: the head count cannot be told from the weights",
        ),
        (
            |c| c["embed_dim"] = serde_json::json!("768"),
            "cfg.model.embed_dim is \"768\"; a whole number was expected",
        ),
    ];
    for (edit, expected) in cases {
        let error = fairseq_with_cfg(edit).err().unwrap();
        assert!(error.ends_with(expected), "{error}");
    }
}

/// A kdlab checkpoint that lost its `format` must not pass for the fairseq file its keys
/// resemble (whose head count would then come from elsewhere).
#[test]
fn kdlab_metadata_without_its_format_is_refused() {
    let raw = RawWeights {
        tensors: manifest("d2v2_base_imagenet.student_depth6.keys.tsv", ""),
        refused: Default::default(),
        fairseq_cfg: None,
        metadata: BTreeMap::from([("kdlab.train_state".to_string(), "{}".to_string())]),
        format: FileFormat::Safetensors,
    };
    let error = Checkpoint::from_raw(std::path::Path::new("last.safetensors"), raw)
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains(
            "the metadata has kdlab's keys [\"kdlab.train_state\"] but 'format' is missing, not \
             \"kdlab\""
        ),
        "{error}"
    );
}
