//! `kdlab heatmap`: the Inspect panel's pictures and values for images, written to a folder.

use std::path::PathBuf;
use std::process::ExitCode;

use kdlab_engine::backend::BackendChoice;
use kdlab_engine::inspect::{HeatmapRequest, Metric, render::format_value, write_heatmaps};
use kdlab_engine::session::RunDir;

#[derive(Debug, clap::Args)]
pub struct HeatmapArgs {
    /// Run configuration: the teacher (its weights, or the random init from its seed) and,
    /// without --checkpoint, the student.
    #[arg(long)]
    config: PathBuf,
    /// A run checkpoint, or a run directory (its checkpoints/last.safetensors). Without it, the
    /// student as the config builds it, before any training.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Images to analyse (any format kdlab reads).
    #[arg(long, required = true, num_args = 1..)]
    image: Vec<PathBuf>,
    /// Folder for `<NN>-<name>.{cosine,squared_error,pca}.png`, `.json` (grid layout) and `.csv`;
    /// `<NN>-<name>.attention.{teacher,student}.png` and `.attention.csv` (the CLS token's
    /// attention per head in the last block, and rollout); `cka.png` and `cka.csv` (linear CKA
    /// of every teacher layer with every student layer over all the images' tokens).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    set: super::SetArgs,
}

pub fn run(args: HeatmapArgs, backend: BackendChoice) -> anyhow::Result<ExitCode> {
    let mut config = args.set.load_run_config(&args.config)?;
    super::fetch_config_weights(&mut config)?;
    let request = HeatmapRequest {
        config,
        checkpoint: args.checkpoint.as_deref().map(RunDir::checkpoint_in),
        images: args.image,
        out: args.out,
    };
    let session = super::open_session(backend)?;
    let outputs = write_heatmaps(&session, &request)?;
    for written in &outputs.images {
        let maps = &written.maps;
        println!(
            "{}: mean cosine {} (CLS {}), mean squared error {} → {}/{}.*",
            written.image.display(),
            format_value(maps.mean(Metric::Cosine)),
            format_value(maps.cls(Metric::Cosine)),
            format_value(maps.mean(Metric::SquaredError)),
            request.out.display(),
            written.stem
        );
    }
    let cka = &outputs.cka;
    println!(
        "layer CKA ({} teacher × {} student layers, {} images) → {}/cka.{{png,csv}}",
        cka.teacher_layers,
        cka.student_layers,
        cka.images,
        request.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
