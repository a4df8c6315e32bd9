//! `kdlab heatmap`: the Inspect panel's pictures and values for images, written to a folder.

use std::path::PathBuf;
use std::process::ExitCode;

use burn::tensor::backend::Backend;

use crate::backend::{OnBackend, Selected};
use crate::config::RunConfig;
use crate::distill::run_dir::checkpoint_in;
use crate::inspect::analysis::InspectedPair;
use crate::inspect::files::{Provenance, stem, write_image_outputs};
use crate::inspect::{Metric, render::format_value};

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
    /// Folder for `<NN>-<name>.{cosine,squared_error,pca}.png`, `.json` (grid layout) and `.csv`.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: HeatmapArgs, backend: Selected) -> anyhow::Result<ExitCode> {
    let config = RunConfig::load(&args.config)?;
    let checkpoint = args.checkpoint.as_deref().map(checkpoint_in);
    backend.run(Heatmap {
        config: &config,
        checkpoint,
        images: &args.image,
        out: &args.out,
    })?;
    Ok(ExitCode::SUCCESS)
}

struct Heatmap<'a> {
    config: &'a RunConfig,
    checkpoint: Option<PathBuf>,
    images: &'a [PathBuf],
    out: &'a std::path::Path,
}

impl OnBackend for Heatmap<'_> {
    type Output = anyhow::Result<()>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let pair = InspectedPair::<B>::load(self.config, self.checkpoint.as_deref(), &device)?;
        // Every image is read before anything is computed or written.
        let images = self
            .images
            .iter()
            .map(|path| pair.load_image(path))
            .collect::<Result<Vec<_>, _>>()?;
        let analyses = pair.analyse(&images)?;
        let provenance = Provenance {
            checkpoint: self.checkpoint.clone(),
            ..Provenance::default()
        };
        for (i, (image, analysis)) in images.iter().zip(&analyses).enumerate() {
            let name = stem(i, &image.path);
            write_image_outputs(self.out, &name, image, analysis, &provenance)?;
            let maps = &analysis.maps;
            println!(
                "{}: mean cosine {} (CLS {}), mean squared error {} → {}/{name}.*",
                image.path.display(),
                format_value(maps.mean(Metric::Cosine)),
                format_value(maps.cls(Metric::Cosine)),
                format_value(maps.mean(Metric::SquaredError)),
                self.out.display()
            );
        }
        Ok(())
    }
}
