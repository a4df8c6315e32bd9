//! `kdlab features`: one model's layer results, final hidden state and KD target.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use burn::tensor::TensorData;

use kdlab_engine::backend::BackendChoice;
use kdlab_engine::data::image_file::DecodeLimits;
use kdlab_engine::data::{Normalization, decode_rgb, validation_transform_with};
use kdlab_engine::features::{Features, features};
use kdlab_model::model::BlockSelection;
use kdlab_model::weights::Checkpoint;

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["input", "image"])))]
pub struct FeaturesArgs {
    /// Weights: unilm BEiT v2 .pth, timm BEiT v2 .safetensors, fairseq data2vec2 .pt, a timm
    /// ViT/DeiT/DeiT III/DINOv2/DINOv3 .safetensors (with its config.json) or a kdlab file.
    #[arg(long)]
    weights: PathBuf,
    /// Keep the first N blocks (data2vec 2.0: the prenet and the first N main blocks); the same
    /// as `--blocks first:N`.
    #[arg(long, conflicts_with = "blocks")]
    depth: Option<usize>,
    /// A student made of these blocks of the model: `first:N`, `every-second` or a list `I,J,…`
    /// (data2vec 2.0: of the main blocks, the prenet kept).
    #[arg(long, value_parser = parse_blocks)]
    blocks: Option<Blocks>,
    /// safetensors file holding `image` [B, 3, S, S], already normalised; the model runs at S
    /// (a timm ViT's positions are resampled for it).
    #[arg(long)]
    input: Option<PathBuf>,
    /// An image file, put through the validation transform (bicubic resize, normalise).
    #[arg(long)]
    image: Option<PathBuf>,
    /// Where to write `layer.{i}`, `final` and `target` (f32 safetensors).
    #[arg(long)]
    out: PathBuf,
}

/// Which blocks `--blocks` keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocks {
    Selection(BlockSelection),
    Indices(Vec<usize>),
}

fn parse_blocks(text: &str) -> Result<Blocks, String> {
    let rule = "expected first:N, every-second or a list of block indices I,J,…";
    if text == "every-second" {
        return Ok(Blocks::Selection(BlockSelection::EverySecond));
    }
    if let Some(n) = text.strip_prefix("first:") {
        return n
            .parse()
            .map(|n| Blocks::Selection(BlockSelection::FirstMain(n)))
            .map_err(|_| format!("'{text}': {rule}"));
    }
    text.split(',')
        .map(|i| i.trim().parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .map(Blocks::Indices)
        .map_err(|_| format!("'{text}': {rule}"))
}

pub fn run(args: FeaturesArgs, backend: BackendChoice) -> anyhow::Result<ExitCode> {
    let weights = super::weights_file(&args.weights)?;
    // The weights, the config.json timm keeps beside them, the input: never the output.
    let stem = weights.file_stem().unwrap_or_default().to_string_lossy();
    let mut inputs = vec![
        weights.clone(),
        weights.with_file_name(format!("{stem}.config.json")),
        weights.with_file_name("config.json"),
    ];
    inputs.extend(args.input.iter().chain(&args.image).cloned());
    super::refuse_overwriting_inputs(std::slice::from_ref(&args.out), &inputs)?;
    let checkpoint = Checkpoint::open(&weights)?;
    let architecture = &checkpoint.architecture;
    let image_size = architecture.image_size();
    let images = match (&args.input, &args.image) {
        (Some(input), _) => crate::cli::tensor_file::read_f32(input, "image")?,
        (None, Some(image)) => {
            let rgb = decode_rgb(image, DecodeLimits::default())?;
            let norm = checkpoint
                .preprocessing
                .as_ref()
                .map_or(Normalization::IMAGENET, |p| {
                    Normalization::new(p.mean, p.std)
                });
            let pixels = validation_transform_with(&rgb, image_size as u32, norm);
            TensorData::new(pixels, [1, 3, image_size, image_size])
        }
        (None, None) => {
            return Err(super::Usage("give --input IN.safetensors or --image IMG".into()).into());
        }
    };
    let patch = architecture.patch_size();
    match images.shape.as_slice() {
        &[0, ..] => bail!("the input holds no images (a batch of 0)"),
        &[_, 3, h, w] if h == w && h > 0 && architecture.runs_at_any_size() && h % patch == 0 => {}
        &[_, 3, h, w] if h == image_size && w == image_size => {}
        other if architecture.runs_at_any_size() => bail!(
            "the images are {other:?}, but {} takes [B, 3, S, S] with S a multiple of its patch \
             size {patch}",
            args.weights.display()
        ),
        other => bail!(
            "the images are {other:?}, but {} ({}) takes [B, 3, {image_size}, {image_size}]",
            args.weights.display(),
            architecture.family()
        ),
    }
    let blocks = match (args.blocks, args.depth) {
        (Some(blocks), _) => Some(blocks),
        (None, Some(n)) => Some(Blocks::Selection(BlockSelection::FirstMain(n))),
        (None, None) => None,
    };
    let keep = match blocks {
        None => None,
        Some(Blocks::Selection(selection)) => Some(checkpoint.selected_blocks(selection)?),
        Some(Blocks::Indices(indices)) => Some(indices),
    };
    let session = super::open_session(backend)?;
    let Features {
        tensors: outputs,
        images: batch,
        load_secs,
        forward_secs,
    } = features(&session, &checkpoint, keep, images)?;
    eprintln!(
        "kdlab: weights loaded in {load_secs:.2} s; forward + target of {batch} images in {:.0} ms ({:.1} ms/image)",
        forward_secs * 1e3,
        forward_secs * 1e3 / batch as f64
    );
    kdlab_model::weights::write::write_f32_tensors(&args.out, &outputs, None)
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "kdlab: wrote {} tensors to {}",
        outputs.len(),
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
