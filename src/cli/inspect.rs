//! `kdlab inspect`: layout, inferred architecture and key accounting of a weights file.

use std::path::PathBuf;
use std::process::ExitCode;

use serde::Serialize;

use kdlab_engine::backend::Selected;
use kdlab_engine::session::Session;
use kdlab_model::model::VitPositions;
use kdlab_model::weights::{Architecture, Checkpoint, LoadPlan, Preprocessing};

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The weights file.
    weights: PathBuf,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    file: String,
    layout: &'static str,
    /// The family, as `family` (kept for scripts written before there were several).
    model: &'static str,
    /// `beitv2`, `data2vec2`, `vit`, `deit3`, `dinov2`, `dinov3`.
    family: &'static str,
    /// The size the file's model runs at (timm: `pretrained_cfg.input_size`).
    image_size: usize,
    patch_size: usize,
    /// Patches per side at `image_size`.
    grid: usize,
    embed_dim: usize,
    num_heads: usize,
    mlp_hidden_dim: usize,
    /// Main blocks.
    depth: usize,
    /// Context-encoder blocks (data2vec 2.0); 0 for BEiT v2.
    prenet_depth: usize,
    class_token: bool,
    /// Tokens before the patches: the CLS token and the registers.
    num_prefix_tokens: usize,
    num_registers: usize,
    /// `learned`, `rotary`, `relative` (BEiT v2) or `sin-cos` (data2vec 2.0).
    positions: &'static str,
    /// BEiT v2: one relative position table for all blocks (unilm) or one per block (timm).
    #[serde(skip_serializing_if = "Option::is_none")]
    shared_rel_pos_bias: Option<bool>,
    /// Input size and normalisation from timm's `config.json` (`pretrained_cfg`).
    #[serde(skip_serializing_if = "Option::is_none")]
    preprocessing: Option<Preprocessing>,
    /// Parameters of the model kdlab builds from the file (frozen positions included).
    parameters: usize,
    tensors_in_file: usize,
    ignored_keys: Vec<String>,
    missing_keys: Vec<String>,
    shape_mismatches: Vec<ShapeMismatch>,
}

#[derive(Debug, Serialize)]
struct ShapeMismatch {
    key: String,
    expected: Vec<usize>,
    found: Vec<usize>,
}

pub fn run(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let checkpoint = Checkpoint::open(&super::weights_file(&args.weights)?)?;
    // Planning builds the module (shapes only) on the CPU: guarded like any work on tensors.
    let plan = Session::on(Selected::Cpu).guard(None, || Ok(checkpoint.plan()))?;
    let report = report(&checkpoint, plan);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_summary(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn report(checkpoint: &Checkpoint, plan: LoadPlan) -> Report {
    let tensors_in_file = plan.used.len() + plan.ignored_keys.len();
    let shape_mismatches = plan
        .shape_mismatches
        .into_iter()
        .map(|(key, expected, found)| ShapeMismatch {
            key,
            expected,
            found,
        })
        .collect();
    let architecture = &checkpoint.architecture;
    let (mlp_hidden_dim, shared_rel_pos_bias, positions) = match architecture {
        Architecture::BeitV2(c) => (c.mlp_hidden_dim, Some(c.shared_rel_pos_bias), "relative"),
        Architecture::Data2Vec2(c) => (c.mlp_hidden_dim, None, "sin-cos"),
        Architecture::Vit(c) => (
            c.mlp_hidden_dim,
            None,
            match c.positions {
                VitPositions::Learned { .. } => "learned",
                VitPositions::Rotary { .. } => "rotary",
            },
        ),
    };
    let tokens = architecture.tokens();
    let mut report = Report {
        file: checkpoint.path.display().to_string(),
        layout: checkpoint.layout.name(),
        model: architecture.family(),
        family: architecture.family(),
        image_size: architecture.image_size(),
        patch_size: architecture.patch_size(),
        grid: architecture.image_size() / architecture.patch_size(),
        embed_dim: architecture.embed_dim(),
        num_heads: architecture.num_heads(),
        mlp_hidden_dim,
        depth: architecture.depth(),
        prenet_depth: architecture.prenet_depth(),
        class_token: tokens.class_token,
        num_prefix_tokens: tokens.prefix(),
        num_registers: tokens.registers,
        positions,
        shared_rel_pos_bias,
        preprocessing: checkpoint.preprocessing.clone(),
        parameters: plan.parameters,
        tensors_in_file,
        ignored_keys: plan.ignored_keys.clone(),
        missing_keys: plan.missing_keys.clone(),
        shape_mismatches: Vec::new(),
    };
    report.shape_mismatches = shape_mismatches;
    report
}

fn print_summary(r: &Report) {
    println!("{}", r.file);
    println!("  layout        {}", r.layout);
    let blocks = if r.prenet_depth > 0 {
        format!("{} prenet + {} main blocks", r.prenet_depth, r.depth)
    } else {
        format!("{} blocks", r.depth)
    };
    println!(
        "  model         {} {}x{} px, patch {}, width {}, {} heads, mlp {}, {}",
        r.model,
        r.image_size,
        r.image_size,
        r.patch_size,
        r.embed_dim,
        r.num_heads,
        r.mlp_hidden_dim,
        blocks
    );
    let prefix = match (r.class_token, r.num_registers) {
        (true, 0) => "CLS".to_string(),
        (true, n) => format!("CLS + {n} registers"),
        (false, 0) => "none".to_string(),
        (false, n) => format!("{n} registers"),
    };
    println!(
        "  tokens        {prefix}, then {g}x{g} patches; {} positions",
        r.positions,
        g = r.grid
    );
    if let Some(p) = &r.preprocessing {
        println!(
            "  input         {} px, mean {:?}, std {:?} ({})",
            p.image_size, p.mean, p.std, p.interpolation
        );
    }
    if let Some(shared) = r.shared_rel_pos_bias {
        let how = if shared {
            "shared by all blocks"
        } else {
            "one per block"
        };
        println!("  rel-pos bias  {how}");
    }
    println!(
        "  parameters    {} (as kdlab builds the model)",
        group_digits(r.parameters)
    );
    println!(
        "  tensors       {} in the file, {} used, {} ignored",
        r.tensors_in_file,
        r.tensors_in_file - r.ignored_keys.len(),
        r.ignored_keys.len()
    );
    print_keys("ignored keys", &r.ignored_keys);
    print_keys("missing keys", &r.missing_keys);
    for m in &r.shape_mismatches {
        println!(
            "  SHAPE MISMATCH {}: expected {:?}, found {:?}",
            m.key, m.expected, m.found
        );
    }
}

/// Lists a few keys, summarising long lists by their common prefix.
fn print_keys(title: &str, keys: &[String]) {
    if keys.is_empty() {
        return;
    }
    const SHOWN: usize = 12;
    println!("  {title} ({}):", keys.len());
    for key in keys.iter().take(SHOWN) {
        println!("    {key}");
    }
    if keys.len() > SHOWN {
        println!("    … and {} more (use --json for all)", keys.len() - SHOWN);
    }
}

fn group_digits(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}
