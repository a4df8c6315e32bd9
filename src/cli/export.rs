//! `kdlab export`: a run's student as a safetensors file in data2vec 2.0 (fairseq) key names.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use burn::backend::Flex;

use kdlab_engine::backend::Selected;
use kdlab_engine::distill::checkpoint::{kdlab_metadata, student_tensors};
use kdlab_engine::session::{RunDir, Session};
use kdlab_model::model::BlockSelection;
use kdlab_model::weights::write::write_f32_tensors;
use kdlab_model::weights::{Architecture, Checkpoint};

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// A checkpoint file, or a run directory (its checkpoints/last.safetensors).
    #[arg(long)]
    checkpoint: PathBuf,
    /// The student's weights, loadable by PyTorch (`safetensors.torch.load_file`) into the
    /// fairseq data2vec 2.0 model cut to the same blocks.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let path = RunDir::checkpoint_in(&args.checkpoint);
    let checkpoint = Checkpoint::open(&path)?;
    let Architecture::Data2Vec2(_) = &checkpoint.architecture else {
        bail!("{} holds a BEiT v2 model, not a student", path.display());
    };
    // Loading validates every key and shape before anything is written; on the CPU, guarded
    // like every other piece of work on tensors.
    let tensors = Session::on(Selected::Cpu).guard(None, || {
        let student =
            checkpoint.load_data2vec2::<Flex>(BlockSelection::All, &Default::default())?;
        Ok(student_tensors(&student))
    })?;
    write_f32_tensors(
        &args.out,
        &tensors,
        Some(kdlab_metadata(&checkpoint.architecture)?),
    )?;
    eprintln!(
        "kdlab: wrote {} student tensors to {}",
        tensors.len(),
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
