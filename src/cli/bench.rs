//! `kdlab bench`: images per second of the KD step and its parts, and the device memory, as
//! `bench/reference.py` measures PyTorch (same JSON keys; `bench/compare.sh` runs both).

use std::path::PathBuf;
use std::process::ExitCode;

use kdlab_engine::backend::{BackendChoice, Selected};
use kdlab_engine::bench::{BenchReport, BenchSettings, bench, full_size_config};
use kdlab_engine::config::Precision;
use kdlab_kernels::AttentionKernels;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Models (and data folder) from this run config; default: the thesis' full-size teacher and
    /// student (2 prenet + 6 main blocks), randomly initialised.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Images per step.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Timed steps per measurement (after the warm-up steps).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// f32, bf16 or f16: both models' compute type, f32 master weights (README, "What
    /// `precision` does"); default: the config's, else bf16 on CUDA and f32 elsewhere.
    #[arg(long, value_parser = parse_precision)]
    precision: Option<Precision>,
    /// Every attention layer through kdlab's fused kernels (CPU, CUDA, WGPU) or through burn's
    /// attention operation (matmul → softmax → matmul under autodiff and with a bias), to
    /// compare the two.
    #[arg(long, value_parser = parse_attention, default_value = "fused")]
    attention: AttentionKernels,
    /// Folder for the data-pipeline measurement (default: the config's training images, else
    /// assets/); `none` skips it.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Data-pipeline threads (default: the config's data.workers, else every core).
    #[arg(long)]
    workers: Option<usize>,
    /// Print the JSON line only (stdout).
    #[arg(long)]
    json: bool,
    // Over the file's config or the full-size one; a field set here counts as the config's
    // (`precision`, `data.train`, `data.workers` above), and --precision, --data, --workers win.
    #[command(flatten)]
    set: super::SetArgs,
}

fn parse_precision(text: &str) -> Result<Precision, String> {
    match text {
        "f32" => Ok(Precision::F32),
        "bf16" => Ok(Precision::Bf16),
        "f16" => Ok(Precision::F16),
        other => Err(format!("'{other}' is not f32, bf16 or f16")),
    }
}

fn parse_attention(text: &str) -> Result<AttentionKernels, String> {
    match text {
        "fused" => Ok(AttentionKernels::Fused),
        "unfused" => Ok(AttentionKernels::Unfused),
        other => Err(format!("'{other}' is not fused or unfused")),
    }
}

pub fn run(args: BenchArgs, backend: BackendChoice) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.batch > 0 && args.steps > 0,
        "--batch and --steps must be at least 1"
    );
    // Read before the backend is chosen: a broken config is reported as what it is.
    let config = match &args.config {
        Some(path) => args.set.load_run_config(path)?,
        None if args.set.is_empty() => full_size_config(),
        None => {
            let config = args.set.apply(full_size_config())?;
            config.validate().map_err(|e| args.set.mark(e))?;
            config
        }
    };
    let mut config = config;
    super::fetch_config_weights(&mut config)?;
    // A field counts where a config gave it: the file, or --set over the full-size one.
    let from_config = |field: &str| args.config.is_some() || args.set.touches(field);
    let session = super::open_session(backend)?;
    let default_precision = if from_config("precision") {
        config.precision
    } else if matches!(session.backend(), Selected::Cuda { .. }) {
        // bf16 where the hardware has it; the CPU computes it in software, slower than f32.
        Precision::Bf16
    } else {
        Precision::F32
    };
    let data = match &args.data {
        Some(path) if path.as_os_str() == "none" => None,
        Some(path) => Some(path.clone()),
        None if from_config("data.train") => Some(config.data.train.clone()),
        None => Some(PathBuf::from("assets")),
    };
    let precision = args.precision.unwrap_or(default_precision);
    if let Some(warning) = session.precision_warning(precision) {
        eprintln!("kdlab: warning: {warning}");
    }
    let settings = BenchSettings {
        batch: args.batch,
        steps: args.steps,
        warmup: args.warmup,
        precision,
        attention: args.attention,
        data,
        workers: args.workers.unwrap_or(if from_config("data.workers") {
            config.data.workers
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }),
        data_images: 512,
    };
    let quiet = args.json;
    let report = bench(&session, &config, &settings, &mut |what| {
        if !quiet {
            eprintln!("kdlab bench: {what}…");
        }
    })?;
    if !args.json {
        print_table(&report);
    }
    println!("{}", serde_json::to_string(&report)?);
    Ok(ExitCode::SUCCESS)
}

fn print_table(r: &BenchReport) {
    eprintln!(
        "kdlab bench: {} · batch {} · {} steps · precision {} · {} attention",
        r.device,
        r.batch,
        r.steps,
        r.precision.name(),
        match r.attention {
            AttentionKernels::Fused => "fused",
            AttentionKernels::Unfused => "unfused",
        }
    );
    eprintln!(
        "  KD step          {:>9.2} img/s  ({:.1} GFLOP/s at {:.1} GFLOP/image)",
        r.kd_step_img_s,
        r.kd_step_tflop_s * 1e3,
        r.kd_step_gflop_per_image
    );
    eprintln!("  teacher forward  {:>9.2} img/s", r.teacher_forward_img_s);
    eprintln!("  student step     {:>9.2} img/s", r.student_step_img_s);
    let kd_step_ms = 1e3 * r.batch as f64 / r.kd_step_img_s;
    eprintln!(
        "  attention        {:>9.2} ms teacher layer, {:.2} ms student layer (forward + \
         backward); ≈ {:.0} % of the KD step",
        r.teacher_attention_ms,
        r.student_attention_ms,
        100.0 * r.attention_ms_per_kd_step / kd_step_ms
    );
    match r.data_img_s {
        Some(d) => eprintln!(
            "  data pipeline    {d:>9.1} img/s  ({} workers)",
            r.data_workers
        ),
        None => eprintln!("  data pipeline    skipped"),
    }
    match r.peak_memory_mb {
        Some(mb) => eprintln!("  device memory    {mb:>9.0} MiB reserved"),
        None => eprintln!("  device memory    not reported by this backend"),
    }
}
