//! `kdlab inspect`: layout, inferred architecture and key accounting of a weights file.

use std::path::PathBuf;
use std::process::ExitCode;

use serde::Serialize;

use kdlab_engine::backend::Selected;
use kdlab_engine::session::Session;
use kdlab_model::weights::{Architecture, Checkpoint, LoadPlan};

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
    model: &'static str,
    image_size: usize,
    patch_size: usize,
    embed_dim: usize,
    num_heads: usize,
    mlp_hidden_dim: usize,
    /// Main blocks.
    depth: usize,
    /// Context-encoder blocks (data2vec 2.0); 0 for BEiT v2.
    prenet_depth: usize,
    /// BEiT v2: one relative position table for all blocks (unilm) or one per block (timm).
    #[serde(skip_serializing_if = "Option::is_none")]
    shared_rel_pos_bias: Option<bool>,
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
    let checkpoint = Checkpoint::open(&args.weights)?;
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
    let common = |model, i, p, d, h, m, depth, prenet, shared| Report {
        file: checkpoint.path.display().to_string(),
        layout: checkpoint.layout.name(),
        model,
        image_size: i,
        patch_size: p,
        embed_dim: d,
        num_heads: h,
        mlp_hidden_dim: m,
        depth,
        prenet_depth: prenet,
        shared_rel_pos_bias: shared,
        parameters: plan.parameters,
        tensors_in_file,
        ignored_keys: plan.ignored_keys.clone(),
        missing_keys: plan.missing_keys.clone(),
        shape_mismatches: Vec::new(),
    };
    let mut report = match &checkpoint.architecture {
        Architecture::BeitV2(c) => common(
            "beitv2",
            c.image_size,
            c.patch_size,
            c.embed_dim,
            c.num_heads,
            c.mlp_hidden_dim,
            c.depth,
            0,
            Some(c.shared_rel_pos_bias),
        ),
        Architecture::Data2Vec2(c) => common(
            "data2vec2",
            c.image_size,
            c.patch_size,
            c.embed_dim,
            c.num_heads,
            c.mlp_hidden_dim,
            c.depth,
            c.prenet_depth,
            None,
        ),
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
