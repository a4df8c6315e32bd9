//! `kdlab export`: a run's student as a safetensors file in its own family's key names —
//! data2vec 2.0 (fairseq) and BEiT v2 (unilm) with kdlab's metadata, a timm ViT with the
//! `config.json` timm writes beside it — and its width connector, if any, beside it
//! (`<stem>.connector.safetensors`), never inside the encoder.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use burn::backend::Flex;
use burn::tensor::TensorData;

use kdlab_engine::backend::Selected;
use kdlab_engine::distill::checkpoint::{encoder_tensors, kdlab_metadata};
use kdlab_engine::session::{RunDir, Session};
use kdlab_model::weights::write::{write_atomically, write_f32_tensors};
use kdlab_model::weights::{Architecture, Checkpoint, timm_vit};

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
    let stem = args
        .out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "student".into());
    // What export writes, against the checkpoint and its run's own files.
    let outputs = [
        args.out.clone(),
        args.out.with_file_name(format!("{stem}.config.json")),
        args.out
            .with_file_name(format!("{stem}.connector.safetensors")),
    ];
    let mut inputs = vec![path.clone()];
    if let Some(run) = RunDir::of_checkpoint(&path) {
        inputs.extend([
            run.config_file(),
            run.last_checkpoint(),
            run.best_checkpoint(),
        ]);
    }
    super::refuse_overwriting_inputs(&outputs, &inputs)?;
    let checkpoint = Checkpoint::open(&path)?;
    // Loading validates every key and shape before anything is written; on the CPU, guarded
    // like every other piece of work on tensors.
    let (tensors, connector) = Session::on(Selected::Cpu).guard(None, || {
        let device = Default::default();
        let encoder = checkpoint.load_encoder_blocks::<Flex>(None, None, &device)?;
        let connector = checkpoint.load_connector::<Flex>(&device)?.map(|linear| {
            let mut tensors = vec![(
                "connector.weight".to_string(),
                // burn [in, out] → PyTorch [out, in]
                linear.weight.val().transpose().into_data(),
            )];
            if let Some(bias) = &linear.bias {
                tensors.push(("connector.bias".to_string(), bias.val().into_data()));
            }
            tensors
        });
        Ok((encoder_tensors(&encoder), connector))
    })?;
    match &checkpoint.architecture {
        Architecture::Vit(config) => {
            write_f32_tensors(&args.out, &tensors, None)?;
            let config_path = args.out.with_file_name(format!("{stem}.config.json"));
            let json = serde_json::to_string_pretty(&timm_vit::config_json(config))?;
            write_atomically(&config_path, json.as_bytes())
                .with_context(|| format!("writing {}", config_path.display()))?;
            eprintln!(
                "kdlab: wrote timm's config.json for it to {}",
                config_path.display()
            );
        }
        architecture => {
            write_f32_tensors(&args.out, &tensors, Some(kdlab_metadata(architecture)?))?;
        }
    }
    eprintln!(
        "kdlab: wrote {} student tensors ({}) to {}",
        tensors.len(),
        checkpoint.architecture.family(),
        args.out.display()
    );
    if let Some(connector) = connector {
        let connector_path = args
            .out
            .with_file_name(format!("{stem}.connector.safetensors"));
        let connector: Vec<(String, TensorData)> = connector;
        write_f32_tensors(&connector_path, &connector, None)?;
        eprintln!(
            "kdlab: wrote the width connector beside it to {}",
            connector_path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
