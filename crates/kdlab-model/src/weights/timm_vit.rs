//! timm `VisionTransformer` and `Eva` (DINOv3) files: the architecture from the weights' shapes
//! and the `config.json` timm writes beside them on the hub (`architecture`, `model_args`,
//! `pretrained_cfg`), every stated field checked against the weights; the key table.
//!
//! The number of heads cannot be read from a plain ViT's weights (qkv is `[3D, D]` whatever the
//! heads): it is `model_args.num_heads`, else timm's preset for the named architecture's width.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::layout::KeyTarget;
use super::read::RawWeights;
use crate::model::{VitConfig, VitFamily, VitPositions};

/// timm's `pretrained_cfg`: what the model expects of its input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocessing {
    /// Square input side in pixels (`input_size[1]`).
    pub image_size: usize,
    pub mean: [f64; 3],
    pub std: [f64; 3],
    pub interpolation: String,
}

/// A `config.json` as read.
#[derive(Debug, Clone)]
pub struct TimmConfig {
    pub path: PathBuf,
    pub json: Value,
}

impl TimmConfig {
    /// `<stem>.config.json` beside the weights, else `config.json` in the same folder (the
    /// hub's layout). A file that exists but is not JSON is an error naming it.
    pub fn find(weights: &Path) -> Result<Option<Self>, String> {
        let stem = weights
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let candidates = [
            weights.with_file_name(format!("{stem}.config.json")),
            weights.with_file_name("config.json"),
        ];
        for path in candidates {
            if !path.is_file() {
                continue;
            }
            let text = kdlab_weightfile::read_regular_to_string(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let json: Value = serde_json::from_str(&text)
                .map_err(|e| format!("{} is not valid JSON: {e}", path.display()))?;
            if !json.is_object() {
                return Err(format!("{} is not a JSON object", path.display()));
            }
            return Ok(Some(Self { path, json }));
        }
        Ok(None)
    }

    fn architecture(&self) -> Option<&str> {
        self.json.get("architecture").and_then(Value::as_str)
    }

    fn arg(&self, name: &str) -> Option<&Value> {
        self.json.get("model_args").and_then(|a| a.get(name))
    }

    fn int(&self, name: &str) -> Option<usize> {
        self.arg(name).and_then(Value::as_u64).map(|v| v as usize)
    }

    fn bool(&self, name: &str) -> Option<bool> {
        self.arg(name).and_then(Value::as_bool)
    }

    fn float(&self, name: &str) -> Option<f64> {
        self.arg(name).and_then(Value::as_f64)
    }

    /// `pretrained_cfg`'s input size, mean and std, when it states them.
    pub fn preprocessing(&self) -> Result<Option<Preprocessing>, String> {
        let Some(cfg) = self.json.get("pretrained_cfg") else {
            return Ok(None);
        };
        let numbers = |field: &str| -> Result<Option<Vec<f64>>, String> {
            match cfg.get(field) {
                None => Ok(None),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|v| v.as_f64())
                    .collect::<Option<Vec<f64>>>()
                    .map(Some)
                    .ok_or_else(|| format!("pretrained_cfg.{field} holds a non-number")),
                Some(other) => Err(format!(
                    "pretrained_cfg.{field} should be a list, is {other}"
                )),
            }
        };
        let three = |field: &str| -> Result<Option<[f64; 3]>, String> {
            match numbers(field)? {
                None => Ok(None),
                Some(v) if v.len() == 3 && v.iter().all(|x| x.is_finite()) => {
                    Ok(Some([v[0], v[1], v[2]]))
                }
                Some(v) => Err(format!(
                    "pretrained_cfg.{field} should be three finite numbers, is {v:?}"
                )),
            }
        };
        let image_size = match numbers("input_size")? {
            None => None,
            Some(v) if v.len() == 3 && v[0] == 3.0 && v[1] == v[2] && v[1] >= 1.0 => {
                Some(v[1] as usize)
            }
            Some(v) => {
                return Err(format!(
                    "pretrained_cfg.input_size should be [3, S, S], is {v:?}"
                ));
            }
        };
        let std = three("std")?;
        if let Some(std) = std
            && std.iter().any(|s| *s <= 0.0)
        {
            return Err(format!("pretrained_cfg.std must be positive, is {std:?}"));
        }
        Ok(match (image_size, three("mean")?, std) {
            (Some(image_size), Some(mean), Some(std)) => Some(Preprocessing {
                image_size,
                mean,
                std,
                interpolation: cfg
                    .get("interpolation")
                    .and_then(Value::as_str)
                    .unwrap_or("bicubic")
                    .to_string(),
            }),
            _ => None,
        })
    }
}

/// Whether the keys are a timm ViT or Eva file (after the BEiT and fairseq layouts are ruled out).
pub fn looks_like_timm_vit(raw: &RawWeights) -> bool {
    let has = |k: &str| raw.tensors.contains_key(k);
    has("patch_embed.proj.weight") && has("blocks.0.attn.qkv.weight")
}

/// Whether the file uses `Eva`'s names (`gamma_1`) rather than `VisionTransformer`'s (`ls1.gamma`).
pub fn is_eva(raw: &RawWeights, config: Option<&TimmConfig>) -> bool {
    raw.tensors.contains_key("blocks.0.gamma_1")
        || config
            .and_then(TimmConfig::architecture)
            .is_some_and(|a| a.contains("dinov3") || a.starts_with("eva"))
}

/// A key of a timm ViT/Eva file → kdlab's path (`VisionTransformer`'s names).
pub fn key_target(key: &str, eva: bool) -> KeyTarget {
    let unused = key.starts_with("head.") // classifier
        || key.starts_with("fc_norm.") // pooled-feature norm of the classifier
        || key.starts_with("attn_pool.") // attention-pooling head
        || key == "mask_token"
        || key.starts_with("rope.");
    if unused {
        return KeyTarget::Ignored;
    }
    if eva && let Some((block, rest)) = split_block(key) {
        let renamed = match rest {
            "gamma_1" => Some("ls1.gamma"),
            "gamma_2" => Some("ls2.gamma"),
            _ => None,
        };
        if let Some(renamed) = renamed {
            return KeyTarget::Param(format!("blocks.{block}.{renamed}"));
        }
    }
    KeyTarget::Param(key.to_string())
}

/// kdlab's path → the file's key (the inverse of `key_target`).
pub fn file_key(path: &str, eva: bool) -> String {
    if eva && let Some((block, rest)) = split_block(path) {
        let renamed = match rest {
            "ls1.gamma" => Some("gamma_1"),
            "ls2.gamma" => Some("gamma_2"),
            _ => None,
        };
        if let Some(renamed) = renamed {
            return format!("blocks.{block}.{renamed}");
        }
    }
    path.to_string()
}

fn split_block(key: &str) -> Option<(usize, &str)> {
    let rest = key.strip_prefix("blocks.")?;
    let (index, rest) = rest.split_once('.')?;
    Some((index.parse().ok()?, rest))
}

/// The parts of a block kdlab builds; anything else in a block is a variant it does not.
const BLOCK_PARTS: [&str; 14] = [
    "norm1.weight",
    "norm1.bias",
    "attn.qkv.weight",
    "attn.qkv.bias",
    "attn.proj.weight",
    "attn.proj.bias",
    "ls1.gamma",
    "ls2.gamma",
    "gamma_1",
    "gamma_2",
    "norm2.weight",
    "norm2.bias",
    "mlp.fc1.weight",
    "mlp.fc1.bias",
];
const MORE_BLOCK_PARTS: [&str; 2] = ["mlp.fc2.weight", "mlp.fc2.bias"];
const TOP_LEVEL: [&str; 8] = [
    "cls_token",
    "reg_token",
    "pos_embed",
    "patch_embed.proj.weight",
    "patch_embed.proj.bias",
    "norm.weight",
    "norm.bias",
    "mask_token",
];

/// The first key of a variant kdlab does not build (SwiGLU MLPs, q/k norms, a pre-norm, a
/// distillation token, …), named.
fn unsupported_key(raw: &RawWeights, eva: bool) -> Option<String> {
    raw.tensors
        .keys()
        .find(|key| {
            if matches!(key_target(key, eva), KeyTarget::Ignored) {
                return false;
            }
            match split_block(key) {
                Some((_, rest)) => {
                    !BLOCK_PARTS.contains(&rest) && !MORE_BLOCK_PARTS.contains(&rest)
                }
                None => !TOP_LEVEL.contains(&key.as_str()),
            }
        })
        .cloned()
}

fn shape(raw: &RawWeights, key: &str) -> Option<Vec<usize>> {
    raw.tensors.get(key).map(|t| t.shape.to_vec())
}

/// timm's head count for a standard ViT width (the presets `vit_tiny` … `vit_giant`).
fn preset_heads(embed_dim: usize) -> Option<usize> {
    Some(match embed_dim {
        192 => 3,
        384 => 6,
        512 => 8,
        768 => 12,
        1024 | 1280 => 16,
        1536 => 24,
        _ => return None,
    })
}

fn family_of(architecture: Option<&str>, eva: bool) -> VitFamily {
    let name = architecture.unwrap_or("");
    if eva || name.contains("dinov3") {
        VitFamily::Dinov3
    } else if name.contains("dinov2") {
        VitFamily::Dinov2
    } else if name.contains("deit3") {
        VitFamily::Deit3
    } else {
        VitFamily::Vit
    }
}

/// The architecture of a timm ViT/Eva file at its own input size.
pub fn infer(raw: &RawWeights, config: Option<&TimmConfig>) -> Result<VitConfig, String> {
    let eva = is_eva(raw, config);
    let Some(config) = config else {
        return Err(
            "a timm ViT needs the config.json timm writes beside it (as '<stem>.config.json' \
             or 'config.json' in the same folder): its number of heads cannot be read from the \
             weights"
                .into(),
        );
    };
    let source = config.path.display().to_string();
    if let Some(key) = unsupported_key(raw, eva) {
        return Err(format!(
            "key '{key}' belongs to a ViT variant kdlab does not build (it builds timm's \
             VisionTransformer with a plain MLP and Eva in its DINOv3 form)"
        ));
    }
    let (embed_dim, patch_size) = match shape(raw, "patch_embed.proj.weight").as_deref() {
        Some(&[d, 3, p, q]) if p == q => (d, p),
        other => {
            return Err(format!(
                "'patch_embed.proj.weight' should be [D, 3, p, p], found {other:?}"
            ));
        }
    };
    let depth = (0..)
        .take_while(|i| {
            raw.tensors
                .contains_key(&format!("blocks.{i}.attn.qkv.weight"))
        })
        .count();
    let mlp_hidden_dim = match shape(raw, "blocks.0.mlp.fc1.weight").as_deref() {
        Some(&[hidden, d]) if d == embed_dim => hidden,
        other => {
            return Err(format!(
                "'blocks.0.mlp.fc1.weight' should be [hidden, {embed_dim}], found {other:?}"
            ));
        }
    };
    let qkv_bias = raw.tensors.contains_key("blocks.0.attn.qkv.bias");
    let layer_scale = raw.tensors.contains_key(if eva {
        "blocks.0.gamma_1"
    } else {
        "blocks.0.ls1.gamma"
    });
    let class_token = match shape(raw, "cls_token").as_deref() {
        None => false,
        Some(&[1, 1, d]) if d == embed_dim => true,
        other => {
            return Err(format!(
                "'cls_token' should be [1, 1, {embed_dim}], found {other:?}"
            ));
        }
    };
    let reg_tokens = match shape(raw, "reg_token").as_deref() {
        None => 0,
        Some(&[1, r, d]) if d == embed_dim && r > 0 => r,
        other => {
            return Err(format!(
                "'reg_token' should be [1, R, {embed_dim}], found {other:?}"
            ));
        }
    };
    let prefix = usize::from(class_token) + reg_tokens;
    let architecture = config.architecture();
    let rope_type = config.arg("rope_type").and_then(Value::as_str);
    let rotary = eva || config.bool("use_rot_pos_emb") == Some(true);
    let positions = match (shape(raw, "pos_embed").as_deref(), rotary) {
        (Some(_), true) => {
            return Err(
                "the file has both a learned 'pos_embed' and rotary positions; kdlab builds \
                 DINOv3's rotary positions without an absolute table"
                    .into(),
            );
        }
        (Some(&[1, n, d]), false) if d == embed_dim => {
            let square = |m: usize| (m.isqrt() * m.isqrt() == m && m > 0).then(|| m.isqrt());
            let stated = config.bool("no_embed_class");
            let embed_class = match (stated, square(n), n.checked_sub(prefix).and_then(square)) {
                (Some(no_embed_class), _, _) => !no_embed_class,
                (None, Some(_), _) => false,
                (None, None, Some(_)) => true,
                (None, None, None) => {
                    return Err(format!(
                        "'pos_embed' has {n} positions: neither a square grid nor {prefix} \
                         prefix slots and a square grid"
                    ));
                }
            };
            let patches = if embed_class {
                n.saturating_sub(prefix)
            } else {
                n
            };
            let grid = patches.isqrt();
            if grid == 0 || grid * grid != patches {
                return Err(format!(
                    "'pos_embed' has {n} positions, which with model_args.no_embed_class = \
                     {} is not a square grid",
                    !embed_class
                ));
            }
            VitPositions::Learned { grid, embed_class }
        }
        (Some(other), false) => {
            return Err(format!(
                "'pos_embed' should be [1, N, {embed_dim}], found {other:?}"
            ));
        }
        (None, true) => {
            if rope_type.is_some_and(|t| t != "dinov3") {
                return Err(format!(
                    "{source}: model_args.rope_type is '{}'; kdlab builds rope_type 'dinov3'",
                    rope_type.unwrap_or_default()
                ));
            }
            if config.bool("rope_rotate_half") == Some(false) {
                return Err(format!(
                    "{source}: model_args.rope_rotate_half is false; DINOv3 rotates halves"
                ));
            }
            VitPositions::Rotary {
                temperature: config.float("rope_temperature").unwrap_or(100.0),
            }
        }
        (None, false) => {
            return Err(
                "the file has no 'pos_embed' and config.json asks for no rotary positions: a \
                 ViT without positions is not one kdlab builds"
                    .into(),
            );
        }
    };
    // What config.json states must agree with the weights.
    let stated = [
        ("embed_dim", config.int("embed_dim"), embed_dim),
        ("depth", config.int("depth"), depth),
        ("patch_size", config.int("patch_size"), patch_size),
        (
            if eva { "num_reg_tokens" } else { "reg_tokens" },
            config.int(if eva { "num_reg_tokens" } else { "reg_tokens" }),
            reg_tokens,
        ),
    ];
    for (field, stated, found) in stated {
        if let Some(stated) = stated
            && stated != found
        {
            return Err(format!(
                "{source}: model_args.{field} is {stated} but the weights have {found}"
            ));
        }
    }
    if let Some(stated) = config.bool("qkv_bias")
        && stated != qkv_bias
    {
        return Err(format!(
            "{source}: model_args.qkv_bias is {stated} but the weights {} a qkv bias",
            if qkv_bias { "have" } else { "have no" }
        ));
    }
    if config.bool("class_token") == Some(!class_token) {
        return Err(format!(
            "{source}: model_args.class_token is {} but the weights {} 'cls_token'",
            !class_token,
            if class_token { "have" } else { "have no" }
        ));
    }
    let num_heads = match config.int("num_heads") {
        Some(heads) => heads,
        None => preset_heads(embed_dim).ok_or_else(|| {
            format!(
                "{source} states no model_args.num_heads and width {embed_dim} is not a timm \
                 preset: add model_args.num_heads"
            )
        })?,
    };
    if num_heads == 0 || !embed_dim.is_multiple_of(num_heads) {
        return Err(format!(
            "{source}: model_args.num_heads {num_heads} does not split width {embed_dim} into \
             equal heads"
        ));
    }
    if matches!(positions, VitPositions::Rotary { .. })
        && !(embed_dim / num_heads).is_multiple_of(4)
    {
        return Err(format!(
            "{source}: head width {} (embed_dim {embed_dim} / num_heads {num_heads}) is not a \
             multiple of 4, which 2-D rotary positions need (a quarter per axis and half)",
            embed_dim / num_heads
        ));
    }
    let norm_eps = config
        .float("norm_eps")
        .unwrap_or(if eva { 1e-5 } else { 1e-6 });
    let image_size = match (config.preprocessing()?, config.int("img_size"), positions) {
        (Some(p), _, _) => p.image_size,
        (None, Some(size), _) => size,
        (None, None, VitPositions::Learned { grid, .. }) => grid * patch_size,
        (None, None, VitPositions::Rotary { .. }) => {
            return Err(format!(
                "{source} states no input size (pretrained_cfg.input_size or model_args.img_size)"
            ));
        }
    };
    Ok(VitConfig {
        family: family_of(architecture, eva),
        image_size,
        patch_size,
        embed_dim,
        depth,
        num_heads,
        mlp_hidden_dim,
        qkv_bias,
        layer_scale,
        class_token,
        reg_tokens,
        positions,
        norm_eps,
    })
}

/// The `config.json` timm writes beside a model, for `config` (what `kdlab export` puts beside a
/// timm student so that timm, and kdlab, rebuild it): the family's timm architecture, every
/// size as `model_args`, and the input size.
pub fn config_json(config: &VitConfig) -> Value {
    let reg4 = if config.reg_tokens > 0 { "_reg4" } else { "" };
    let architecture = match config.family {
        VitFamily::Vit => "vit_base_patch16_224".to_string(),
        VitFamily::Deit3 => "deit3_base_patch16_224".to_string(),
        VitFamily::Dinov2 => format!("vit_base_patch14{reg4}_dinov2"),
        VitFamily::Dinov3 => "vit_base_patch16_dinov3".to_string(),
    };
    let mut args = serde_json::json!({
        "img_size": config.image_size,
        "patch_size": config.patch_size,
        "embed_dim": config.embed_dim,
        "depth": config.depth,
        "num_heads": config.num_heads,
        "mlp_ratio": config.mlp_hidden_dim as f64 / config.embed_dim as f64,
        "qkv_bias": config.qkv_bias,
        "class_token": config.class_token,
        "num_classes": 0,
        "global_pool": "token",
        "dynamic_img_size": true,
    });
    if config.layer_scale {
        args["init_values"] = 1e-5.into();
    }
    match config.positions {
        VitPositions::Learned { embed_class, .. } => {
            args["no_embed_class"] = (!embed_class).into();
            args["reg_tokens"] = config.reg_tokens.into();
        }
        VitPositions::Rotary { temperature } => {
            args["num_reg_tokens"] = config.reg_tokens.into();
            args["use_abs_pos_emb"] = false.into();
            args["use_rot_pos_emb"] = true.into();
            args["rope_type"] = "dinov3".into();
            args["rope_temperature"] = temperature.into();
            args["rope_rotate_half"] = true.into();
            args["use_fc_norm"] = false.into();
            // No `norm_eps`: `Eva` takes none; timm's DINOv3 architectures fix 1e-5, which is
            // also what kdlab reads for a DINOv3 file whose config.json states none.
        }
    }
    serde_json::json!({
        "architecture": architecture,
        "num_classes": 0,
        "num_features": config.embed_dim,
        "global_pool": "token",
        "model_args": args,
        "pretrained_cfg": {
            "input_size": [3, config.image_size, config.image_size],
        },
    })
}
