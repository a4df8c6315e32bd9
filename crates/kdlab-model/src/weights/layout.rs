//! Which checkpoint layout a file is, the architecture it implies, and how its keys map onto
//! kdlab's modules — one commented table per layout.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::{BeitV2Config, Data2Vec2Config, VitConfig};

use super::read::{FileFormat, RawWeights};
use super::timm_vit::{self, TimmConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layout {
    /// microsoft/unilm BEiT v2 `.pth`: `{'model': state_dict}`, one shared rel-pos table.
    #[serde(rename = "beitv2-unilm")]
    BeitV2Unilm,
    /// timm `Beit` (`beitv2_*`): one rel-pos table per block, `fc_norm` + `head`.
    #[serde(rename = "beitv2-timm")]
    BeitV2Timm,
    /// fairseq data2vec 2.0 `.pt`: `{'cfg': {'model': …}, 'model': state_dict}`.
    #[serde(rename = "data2vec2-fairseq")]
    Data2Vec2Fairseq,
    /// timm `VisionTransformer` (ViT, DeiT, DeiT III, DINOv2) or `Eva` (DINOv3) safetensors,
    /// with timm's `config.json` beside it.
    #[serde(rename = "vit-timm")]
    VitTimm,
    /// A safetensors file written by kdlab, with its architecture in the metadata.
    #[serde(rename = "kdlab")]
    Kdlab,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Self::BeitV2Unilm => "beitv2-unilm",
            Self::BeitV2Timm => "beitv2-timm",
            Self::Data2Vec2Fairseq => "data2vec2-fairseq",
            Self::VitTimm => "vit-timm",
            Self::Kdlab => "kdlab",
        }
    }
}

/// The encoder a checkpoint holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum Architecture {
    BeitV2(BeitV2Config),
    Data2Vec2(Data2Vec2Config),
    Vit(VitConfig),
}

impl Architecture {
    /// Every rule of the model this architecture breaks.
    pub fn problems(&self) -> Vec<crate::model::rules::Problem> {
        match self {
            Self::BeitV2(c) => c.problems(),
            Self::Data2Vec2(c) => c.problems(),
            Self::Vit(c) => c.problems(),
        }
    }

    /// The family name `inspect` reports: `beitv2`, `data2vec2`, `vit`, `deit3`, `dinov2`,
    /// `dinov3`.
    pub fn family(&self) -> &'static str {
        match self {
            Self::BeitV2(_) => "beitv2",
            Self::Data2Vec2(_) => "data2vec2",
            Self::Vit(c) => c.family.name(),
        }
    }

    pub fn image_size(&self) -> usize {
        match self {
            Self::BeitV2(c) => c.image_size,
            Self::Data2Vec2(c) => c.image_size,
            Self::Vit(c) => c.image_size,
        }
    }

    pub fn patch_size(&self) -> usize {
        match self {
            Self::BeitV2(c) => c.patch_size,
            Self::Data2Vec2(c) => c.patch_size,
            Self::Vit(c) => c.patch_size,
        }
    }

    pub fn embed_dim(&self) -> usize {
        match self {
            Self::BeitV2(c) => c.embed_dim,
            Self::Data2Vec2(c) => c.embed_dim,
            Self::Vit(c) => c.embed_dim,
        }
    }

    pub fn num_heads(&self) -> usize {
        match self {
            Self::BeitV2(c) => c.num_heads,
            Self::Data2Vec2(c) => c.num_heads,
            Self::Vit(c) => c.num_heads,
        }
    }

    pub fn mlp_hidden_dim(&self) -> usize {
        match self {
            Self::BeitV2(c) => c.mlp_hidden_dim,
            Self::Data2Vec2(c) => c.mlp_hidden_dim,
            Self::Vit(c) => c.mlp_hidden_dim,
        }
    }

    /// The blocks a block selection chooses from (data2vec 2.0: the main blocks).
    pub fn depth(&self) -> usize {
        match self {
            Self::BeitV2(c) => c.depth,
            Self::Data2Vec2(c) => c.depth,
            Self::Vit(c) => c.depth,
        }
    }

    /// Blocks always kept before the selectable ones (data2vec 2.0's prenet).
    pub fn prenet_depth(&self) -> usize {
        match self {
            Self::Data2Vec2(c) => c.prenet_depth,
            Self::BeitV2(_) | Self::Vit(_) => 0,
        }
    }

    /// The tokens in front of the patches.
    pub fn tokens(&self) -> crate::model::TokenLayout {
        match self {
            Self::Vit(c) => c.tokens(),
            Self::BeitV2(_) | Self::Data2Vec2(_) => crate::model::TokenLayout::CLS,
        }
    }

    /// The architecture of a model keeping `blocks` of this one's selectable blocks (the prenet
    /// too), running at `image_size` (a timm ViT's learned table then belongs to that grid).
    pub fn cut(&self, blocks: usize, image_size: usize) -> Self {
        let mut cut = self.clone();
        match &mut cut {
            Self::BeitV2(c) => c.depth = blocks,
            Self::Data2Vec2(c) => c.depth = blocks,
            Self::Vit(c) => {
                c.depth = blocks;
                c.image_size = image_size;
                if let crate::model::VitPositions::Learned { grid, .. } = &mut c.positions {
                    *grid = image_size / c.patch_size;
                }
            }
        }
        cut
    }

    /// A randomly initialised encoder of this architecture.
    pub fn init_encoder<B: burn::tensor::backend::Backend>(
        &self,
        device: &B::Device,
    ) -> crate::model::Encoder<B> {
        use crate::model::Encoder;
        match self {
            Self::BeitV2(c) => Encoder::BeitV2(c.init(device)),
            Self::Data2Vec2(c) => Encoder::Data2Vec2(c.init(device)),
            Self::Vit(c) => Encoder::Vit(c.init(device)),
        }
    }

    /// Whether the model runs at image sizes other than its own (learned positions are
    /// resampled, rotary ones computed); BEiT v2's relative-position tables and data2vec 2.0's
    /// stored sin-cos table belong to one grid.
    pub fn runs_at_any_size(&self) -> bool {
        matches!(self, Self::Vit(_))
    }
}

/// The metadata keys of a kdlab safetensors file.
pub const KDLAB_FORMAT_KEY: &str = "format";
pub const KDLAB_FORMAT: &str = "kdlab";
pub const KDLAB_ARCHITECTURE_KEY: &str = "kdlab.architecture";

const D2V2_PATCH: &str = "modality_encoders.IMAGE.local_encoder.proj.weight";
const D2V2_POSITIONS: &str = "modality_encoders.IMAGE.fixed_positional_encoder.positions";
const UNILM_TABLE: &str = "rel_pos_bias.relative_position_bias_table";
const TIMM_TABLE_0: &str = "blocks.0.attn.relative_position_bias_table";

pub fn detect_layout(raw: &RawWeights) -> Option<Layout> {
    let has = |k: &str| raw.tensors.contains_key(k);
    // Any of kdlab's metadata makes it a kdlab file (whose metadata must then be whole): a
    // checkpoint that lost its `format` must not pass for the fairseq file its keys resemble.
    let kdlab_metadata = raw.metadata.get(KDLAB_FORMAT_KEY).map(String::as_str)
        == Some(KDLAB_FORMAT)
        || raw.metadata.keys().any(|k| k.starts_with("kdlab."));
    if kdlab_metadata {
        Some(Layout::Kdlab)
    } else if has(D2V2_PATCH) {
        Some(Layout::Data2Vec2Fairseq)
    } else if has("patch_embed.proj.weight") && has(UNILM_TABLE) {
        Some(Layout::BeitV2Unilm)
    } else if has("patch_embed.proj.weight") && has(TIMM_TABLE_0) {
        Some(Layout::BeitV2Timm)
    } else if timm_vit::looks_like_timm_vit(raw) {
        Some(Layout::VitTimm)
    } else {
        None
    }
}

/// Where a key of the file goes in kdlab's modules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyTarget {
    /// A parameter path of kdlab's module, PyTorch naming (`weight`/`bias`, `[out, in]`).
    Param(String),
    /// Present in the file, deliberately unused.
    Ignored,
}

/// unilm BEiT v2: names equal kdlab's module paths.
fn unilm_key(key: &str) -> KeyTarget {
    let unused = key == "mask_token" // masking is never used by the KD teacher
        || key.starts_with("lm_head.") // MIM head
        || key.starts_with("cls_pt_layers.") // BEiT v2's extra shallow decoder
        || key.starts_with("norm.") // replaced by identity in the thesis teacher
        || key.ends_with("relative_position_index"); // rebuilt from the grid
    if unused {
        KeyTarget::Ignored
    } else {
        KeyTarget::Param(key.to_string())
    }
}

/// timm `Beit`: names equal kdlab's module paths (per-block tables live in `attn`).
fn timm_key(key: &str) -> KeyTarget {
    let unused = key.starts_with("head.") // classifier
        || key.starts_with("fc_norm.") // pooled-feature norm of the classifier
        || key.starts_with("norm.")
        || key == "mask_token"
        || key.ends_with("relative_position_index")
        || key.ends_with("k_bias"); // always zero
    if unused {
        KeyTarget::Ignored
    } else {
        KeyTarget::Param(key.to_string())
    }
}

/// fairseq data2vec 2.0: the image encoder nested under `modality_encoders.IMAGE` is flat in kdlab.
const FAIRSEQ_PREFIXES: [(&str, &str); 6] = [
    (
        "modality_encoders.IMAGE.local_encoder.proj.",
        "patch_embed.proj.",
    ),
    (D2V2_POSITIONS, "positions"),
    ("modality_encoders.IMAGE.extra_tokens", "extra_tokens"),
    (
        "modality_encoders.IMAGE.context_encoder.norm.",
        "context_norm.",
    ),
    (
        "modality_encoders.IMAGE.context_encoder.blocks.",
        "prenet_blocks.",
    ),
    ("blocks.", "blocks."),
];

fn fairseq_key(key: &str) -> KeyTarget {
    // Everything else (the pretraining decoder, the nested `_ema` teacher, …) is unused.
    kdlab_path_of_fairseq(key).map_or(KeyTarget::Ignored, KeyTarget::Param)
}

/// A fairseq key's kdlab path, if the key belongs to the image encoder.
pub fn kdlab_path_of_fairseq(key: &str) -> Option<String> {
    FAIRSEQ_PREFIXES
        .iter()
        .find_map(|(from, to)| key.strip_prefix(from).map(|rest| format!("{to}{rest}")))
}

/// The inverse of the fairseq table: kdlab's path → the fairseq key (used by export).
pub fn fairseq_name(path: &str) -> String {
    FAIRSEQ_PREFIXES
        .iter()
        .find_map(|(from, to)| path.strip_prefix(to).map(|rest| format!("{from}{rest}")))
        .unwrap_or_else(|| path.to_string())
}

pub fn key_target(layout: Layout, architecture: &Architecture, key: &str) -> KeyTarget {
    match (layout, architecture) {
        (Layout::BeitV2Unilm, _) | (Layout::Kdlab, Architecture::BeitV2(_)) => unilm_key(key),
        (Layout::BeitV2Timm, _) => timm_key(key),
        (Layout::Data2Vec2Fairseq, _) | (Layout::Kdlab, Architecture::Data2Vec2(_)) => {
            fairseq_key(key)
        }
        (Layout::VitTimm, Architecture::Vit(c)) => timm_vit::key_target(key, c.family.is_eva()),
        (Layout::VitTimm, _) | (Layout::Kdlab, Architecture::Vit(_)) => {
            timm_vit::key_target(key, false)
        }
    }
}

/// Infers the architecture from shapes (and the fairseq cfg, which alone knows the head count).
pub fn infer_architecture(
    layout: Layout,
    raw: &RawWeights,
    timm_config: Option<&TimmConfig>,
) -> Result<Architecture, String> {
    match layout {
        Layout::VitTimm => {
            let config = timm_vit::infer(raw, timm_config)?;
            let problems = config.problems();
            checked(config, problems).map(Architecture::Vit)
        }
        Layout::BeitV2Unilm | Layout::BeitV2Timm => {
            infer_beit(layout, raw).map(Architecture::BeitV2)
        }
        Layout::Data2Vec2Fairseq => infer_data2vec2(raw).map(Architecture::Data2Vec2),
        Layout::Kdlab => {
            let format = raw.metadata.get(KDLAB_FORMAT_KEY);
            if format.map(String::as_str) != Some(KDLAB_FORMAT) {
                let found: Vec<&str> = raw.metadata.keys().map(String::as_str).collect();
                return Err(format!(
                    "the metadata has kdlab's keys {found:?} but '{KDLAB_FORMAT_KEY}' is {}, not \
                     \"{KDLAB_FORMAT}\": a kdlab file needs both, and this one was altered",
                    format.map_or("missing".to_string(), |f| format!("\"{f}\""))
                ));
            }
            let json = raw.metadata.get(KDLAB_ARCHITECTURE_KEY).ok_or_else(|| {
                format!("a kdlab file needs '{KDLAB_ARCHITECTURE_KEY}' in its metadata")
            })?;
            let architecture: Architecture = serde_json::from_str(json)
                .map_err(|e| format!("metadata '{KDLAB_ARCHITECTURE_KEY}' is not valid: {e}"))?;
            let problems = architecture.problems();
            checked(architecture, problems)
        }
    }
}

fn shape_of(raw: &RawWeights, key: &str) -> Result<Vec<usize>, String> {
    raw.tensors
        .get(key)
        .map(|t| t.shape.to_vec())
        .ok_or_else(|| format!("key '{key}' is missing"))
}

/// The first dimension of a tensor of rank ≥ 1 (a matrix's output width).
fn first_dim(raw: &RawWeights, key: &str) -> Result<usize, String> {
    match shape_of(raw, key)?.as_slice() {
        [first, ..] => Ok(*first),
        [] => Err(format!("'{key}' is a scalar; a weight matrix was expected")),
    }
}

/// An inferred architecture that breaks a rule of the model is not a checkpoint kdlab can load.
fn checked<C>(config: C, problems: Vec<crate::model::rules::Problem>) -> Result<C, String> {
    match problems.first() {
        None => Ok(config),
        Some((field, message)) => Err(format!("the inferred {field}: {message}")),
    }
}

fn count_blocks(raw: &RawWeights, prefix: &str) -> usize {
    (0..)
        .take_while(|i| {
            raw.tensors
                .contains_key(&format!("{prefix}{i}.attn.qkv.weight"))
        })
        .count()
}

/// `[D, 3, p, p]` → (D, p), checking that the patches are square.
fn patch_conv(raw: &RawWeights, key: &str) -> Result<(usize, usize), String> {
    match shape_of(raw, key)?.as_slice() {
        &[d, 3, p, q] if p == q => Ok((d, p)),
        other => Err(format!("'{key}' should be [D, 3, p, p], found {other:?}")),
    }
}

fn infer_beit(layout: Layout, raw: &RawWeights) -> Result<BeitV2Config, String> {
    let (embed_dim, patch_size) = patch_conv(raw, "patch_embed.proj.weight")?;
    let table_key = if layout == Layout::BeitV2Unilm {
        UNILM_TABLE
    } else {
        TIMM_TABLE_0
    };
    let (rows, num_heads) = match shape_of(raw, table_key)?.as_slice() {
        &[rows, heads] => (rows, heads),
        other => {
            return Err(format!(
                "'{table_key}' should be [(2g−1)²+3, H], found {other:?}"
            ));
        }
    };
    let span = rows.checked_sub(3).map(|n| n.isqrt()).unwrap_or(0);
    if span == 0 || span * span + 3 != rows || span % 2 == 0 {
        return Err(format!(
            "'{table_key}' has {rows} rows, which is not (2g−1)²+3 for any grid g"
        ));
    }
    let depth = count_blocks(raw, "blocks.");
    let mlp_hidden_dim = first_dim(raw, "blocks.0.mlp.fc1.weight")?;
    check_heads(embed_dim, num_heads)?;
    let config = BeitV2Config {
        image_size: span.div_ceil(2) * patch_size,
        patch_size,
        embed_dim,
        depth,
        num_heads,
        mlp_hidden_dim,
        shared_rel_pos_bias: layout == Layout::BeitV2Unilm,
        norm_eps: 1e-6,
    };
    let problems = config.problems();
    checked(config, problems)
}

fn check_heads(embed_dim: usize, num_heads: usize) -> Result<(), String> {
    if num_heads == 0 || !embed_dim.is_multiple_of(num_heads) {
        Err(format!(
            "width {embed_dim} does not split into {num_heads} heads"
        ))
    } else {
        Ok(())
    }
}

fn infer_data2vec2(raw: &RawWeights) -> Result<Data2Vec2Config, String> {
    let (embed_dim, patch_size) = patch_conv(raw, D2V2_PATCH)?;
    let patches = match shape_of(raw, D2V2_POSITIONS)?.as_slice() {
        &[1, n, d] if d == embed_dim => n,
        other => {
            return Err(format!(
                "'{D2V2_POSITIONS}' should be [1, N, {embed_dim}], found {other:?}"
            ));
        }
    };
    let grid = patches.isqrt();
    if grid * grid != patches {
        return Err(format!(
            "'{D2V2_POSITIONS}' has {patches} positions, not a square grid"
        ));
    }
    let depth = count_blocks(raw, "blocks.");
    let prenet_depth = count_blocks(raw, "modality_encoders.IMAGE.context_encoder.blocks.");
    let mlp_hidden_dim = first_dim(raw, "blocks.0.mlp.fc1.weight")?;
    let inferred = Data2Vec2Config {
        image_size: grid * patch_size,
        patch_size,
        embed_dim,
        depth,
        prenet_depth,
        // Shapes cannot tell the head count; without a cfg assume ViT's 64 per head.
        num_heads: embed_dim / 64,
        mlp_hidden_dim,
        norm_eps: 1e-6,
    };
    let config = match &raw.fairseq_cfg {
        Some(cfg) => apply_fairseq_cfg(inferred, cfg)?,
        None if raw.format == FileFormat::Pytorch => {
            return Err("the fairseq checkpoint has no readable 'cfg.model' dict".into());
        }
        None => inferred,
    };
    let problems = config.problems();
    checked(config, problems)
}

/// Takes the head count and eps from `cfg.model`, checking the fields the shapes also tell.
fn apply_fairseq_cfg(mut config: Data2Vec2Config, cfg: &Value) -> Result<Data2Vec2Config, String> {
    let field = |path: &[&str]| -> Option<&Value> { path.iter().try_fold(cfg, |v, k| v.get(k)) };
    // A field that is there must be a whole number (`4.0`, `"4"` are not read as 4).
    let int = |path: &[&str]| -> Result<Option<usize>, String> {
        match field(path) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(|v| Some(v as usize)).ok_or_else(|| {
                format!(
                    "cfg.model.{} is {v}; a whole number was expected",
                    path.join(".")
                )
            }),
        }
    };
    let checks = [
        ("embed_dim", int(&["embed_dim"])?, config.embed_dim),
        (
            "modalities.image.prenet_depth",
            int(&["modalities", "image", "prenet_depth"])?,
            config.prenet_depth,
        ),
        (
            "modalities.image.patch_size",
            int(&["modalities", "image", "patch_size"])?,
            config.patch_size,
        ),
    ];
    for (name, stated, found) in checks {
        if let Some(stated) = stated
            && stated != found
        {
            return Err(format!(
                "cfg.model.{name} is {stated} but the weights have {found}"
            ));
        }
    }
    // `depth` is not checked: a student cut from the model (`blocks[:N]`) keeps the full cfg.
    // The weights' shapes cannot tell the head count: without it the file cannot be run.
    config.num_heads = int(&["num_heads"])?
        .ok_or("cfg.model.num_heads is missing: the head count cannot be told from the weights")?;
    if let Some(eps) = field(&["norm_eps"]).and_then(Value::as_f64) {
        config.norm_eps = eps;
    }
    for (flag, what) in [
        ("layer_norm_first", "pre-LN blocks"),
        ("end_of_block_targets", "block outputs as layer results"),
    ] {
        if field(&[flag]).and_then(Value::as_bool) == Some(true) {
            return Err(format!(
                "cfg.model.{flag} is true ({what}); kdlab implements the released post-LN image \
                 model, whose layer results are FFN outputs"
            ));
        }
    }
    check_heads(config.embed_dim, config.num_heads)?;
    Ok(config)
}
