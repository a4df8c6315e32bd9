//! `kdlab features`: one model's layer results, final hidden state and KD target.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use burn::tensor::TensorData;

use kdlab_engine::backend::BackendChoice;
use kdlab_engine::data::image_file::DecodeLimits;
use kdlab_engine::data::{decode_rgb, validation_transform};
use kdlab_engine::features::{Features, features};
use kdlab_model::model::BlockSelection;
use kdlab_model::weights::{Architecture, Checkpoint};

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["input", "image"])))]
pub struct FeaturesArgs {
    /// Weights: unilm BEiT v2 .pth, timm BEiT v2 .safetensors, fairseq data2vec2 .pt or kdlab file.
    #[arg(long)]
    weights: PathBuf,
    /// Keep the prenet and the first N main blocks (a student from a data2vec 2.0 checkpoint).
    #[arg(long)]
    depth: Option<usize>,
    /// safetensors file holding `image` [B, 3, H, W], already normalised.
    #[arg(long)]
    input: Option<PathBuf>,
    /// An image file, put through the validation transform (bicubic resize, normalise).
    #[arg(long)]
    image: Option<PathBuf>,
    /// Where to write `layer.{i}`, `final` and `target` (f32 safetensors).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: FeaturesArgs, backend: BackendChoice) -> anyhow::Result<ExitCode> {
    let checkpoint = Checkpoint::open(&args.weights)?;
    let image_size = match &checkpoint.architecture {
        Architecture::BeitV2(c) => c.image_size,
        Architecture::Data2Vec2(c) => c.image_size,
    };
    let images = match (&args.input, &args.image) {
        (Some(input), _) => crate::cli::tensor_file::read_f32(input, "image")?,
        (None, Some(image)) => {
            let rgb = decode_rgb(image, DecodeLimits::default())?;
            let pixels = validation_transform(&rgb, image_size as u32);
            TensorData::new(pixels, [1, 3, image_size, image_size])
        }
        (None, None) => bail!("give --input IN.safetensors or --image IMG"),
    };
    match images.shape.as_slice() {
        &[_, 3, h, w] if h == image_size && w == image_size => {}
        other => bail!(
            "the images are {other:?}, but {} takes [B, 3, {image_size}, {image_size}]",
            args.weights.display()
        ),
    }
    let selection = args.depth.map(BlockSelection::FirstMain);
    let session = super::open_session(backend)?;
    let Features {
        tensors: outputs,
        images: batch,
        load_secs,
        forward_secs,
    } = features(&session, &checkpoint, selection, images)?;
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
