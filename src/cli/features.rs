//! `kdlab features`: one model's layer results, final hidden state and KD target.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor, TensorData};

use crate::backend::BackendChoice;
use crate::data::image_file::DecodeLimits;
use crate::data::{decode_rgb, validation_transform};
use crate::model::BlockSelection;
use crate::session::on_backend;
use crate::target::prepare_target;
use crate::weights::{Architecture, Checkpoint};

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
    let outputs = on_backend!(&session, None, |B, device| {
        features::<<B as AutodiffBackend>::InnerBackend>(&checkpoint, selection, images, &device)
    })?;
    crate::weights::write::write_f32_tensors(&args.out, &outputs, None)
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "kdlab: wrote {} tensors to {}",
        outputs.len(),
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Every layer result, the final hidden state and the target of `images`, as f32.
fn features<B: Backend>(
    checkpoint: &Checkpoint,
    selection: Option<BlockSelection>,
    images: TensorData,
    device: &B::Device,
) -> anyhow::Result<Vec<(String, TensorData)>> {
    let started = Instant::now();
    let encoder = checkpoint.load_encoder::<B>(selection, device)?;
    let images = Tensor::from_data(images, device);
    let batch = images.dims()[0];
    B::sync(device)?;
    let loaded = Instant::now();
    let output = encoder.forward(images);
    let target = prepare_target(&output.layer_results);
    let f32_data = |t: Tensor<B, 3>| t.cast(DType::F32).into_data();
    let mut tensors: Vec<(String, TensorData)> = output
        .layer_results
        .into_iter()
        .enumerate()
        .map(|(i, layer)| (format!("layer.{i}"), f32_data(layer)))
        .collect();
    tensors.push(("final".into(), f32_data(output.last_hidden)));
    tensors.push(("target".into(), f32_data(target)));
    let forward_secs = loaded.elapsed().as_secs_f64();
    eprintln!(
        "kdlab: weights loaded in {:.2} s; forward + target of {batch} images in {:.0} ms ({:.1} ms/image)",
        (loaded - started).as_secs_f64(),
        forward_secs * 1e3,
        forward_secs * 1e3 / batch as f64
    );
    Ok(tensors)
}
