//! `kdlab bench`: images per second of the distillation's parts, measured the way
//! `bench/reference.py` measures PyTorch, printed as the same JSON so that `bench/compare.sh`
//! can divide one by the other.
//!
//! Each measurement runs `warmup` steps, synchronises the device, runs `steps` steps and
//! synchronises again; the time between the two synchronisations is what counts.

pub mod attention;
pub mod flops;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, ElementConversion, Tensor};
use serde::{Deserialize, Serialize};

use crate::config::{Precision, RunConfig};
use crate::data::ImageFolder;
use crate::data::loader::{LoaderSettings, Transform, epoch_order, spawn_epoch};
use crate::data::views::Views;
use crate::distill::{kd_backward, student_backward};
use crate::session::{EngineError, ModelPlan, Models, Session, on_backend};
use attention::AttentionBench;
use kdlab_kernels::{AttentionKernels, set_attention_kernels};
use kdlab_model::model::generator::seeded;
use kdlab_model::model::{BeitV2Config, BlockSelection, Data2Vec2Config};
use kdlab_model::optim::StudentOptimizer;

#[derive(Debug, Clone)]
pub struct BenchSettings {
    pub batch: usize,
    pub steps: usize,
    pub warmup: usize,
    pub precision: Precision,
    /// Every model's attention for the whole bench: kdlab's fused kernels or burn's operations.
    pub attention: AttentionKernels,
    /// Images for the data-pipeline measurement (None: skip it).
    pub data: Option<PathBuf>,
    pub workers: usize,
    /// How many images the data measurement reads (the folder is repeated to reach it).
    pub data_images: usize,
}

/// One line of JSON, the same keys as `bench/reference.py` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    pub tool: String,
    pub version: String,
    pub device: String,
    pub batch: usize,
    pub steps: usize,
    pub precision: Precision,
    /// Teacher forward + student forward/backward + AdamW step.
    pub kd_step_img_s: f64,
    pub teacher_forward_img_s: f64,
    /// Student forward/backward + AdamW step against a fixed target.
    pub student_step_img_s: f64,
    /// Decode + RandomResizedCrop + flip + normalise on `data_workers` threads.
    pub data_img_s: Option<f64>,
    pub data_workers: usize,
    /// Device memory held by burn's pools after the measurements (their peak: pools keep what
    /// they reserved); None on the CPU.
    pub peak_memory_mb: Option<f64>,
    pub kd_step_gflop_per_image: f64,
    pub kd_step_tflop_s: f64,
    /// What ran the attention: `fused` (kdlab's kernels where they cover the backend) or
    /// `unfused` (burn's attention operation).
    pub attention: AttentionKernels,
    /// One teacher attention layer's forward (with the relative position bias), whole batch.
    pub teacher_attention_ms: f64,
    /// One student attention layer's forward and backward, whole batch.
    pub student_attention_ms: f64,
    /// Every teacher layer's and every student layer's attention of one KD step, from the two
    /// above.
    pub attention_ms_per_kd_step: f64,
}

/// The thesis' models at full size, randomly initialised (speed does not depend on the weights).
pub fn full_size_config() -> RunConfig {
    let mut config = RunConfig {
        name: "bench".into(),
        ..RunConfig::default()
    };
    config.teacher.weights = None;
    config.teacher.architecture = Some(BeitV2Config::vit_base_patch16_224());
    config.student.weights = None;
    config.student.architecture = Some(Data2Vec2Config::vit_base_patch16_224());
    config.student.blocks = BlockSelection::FirstMain(6);
    config
}

/// Seconds for `steps` calls of `step` after `warmup` calls, between device synchronisations.
fn timed<B: Backend>(
    device: &B::Device,
    warmup: usize,
    steps: usize,
    mut step: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    for _ in 0..warmup {
        step()?;
    }
    B::sync(device)?;
    let start = Instant::now();
    for _ in 0..steps {
        step()?;
    }
    B::sync(device)?;
    Ok(start.elapsed().as_secs_f64())
}

/// The three model measurements and the data pipeline on the session's backend, with the
/// device named and its memory; `say` hears what is being measured.
pub fn bench(
    session: &Session,
    config: &RunConfig,
    settings: &BenchSettings,
    say: &mut dyn FnMut(&str),
) -> Result<BenchReport, EngineError> {
    let mut config = config.clone();
    config.precision = settings.precision;
    set_attention_kernels(settings.attention);
    let plan = ModelPlan::resolve(&config, None)?;
    let mut report = on_backend!(session, Some(settings.batch), |B, device| {
        bench_on::<B>(&plan, &config, settings, &device, say)
    })?;
    report.device = session.backend().to_string();
    report.peak_memory_mb = session
        .reserved_memory_bytes()
        .map(|b| b as f64 / (1 << 20) as f64);
    Ok(report)
}

fn bench_on<B: AutodiffBackend>(
    plan: &ModelPlan,
    config: &RunConfig,
    settings: &BenchSettings,
    device: &B::Device,
    say: &mut dyn FnMut(&str),
) -> anyhow::Result<BenchReport> {
    say("building the models");
    let Models { teacher, student } = plan.build::<B>(device)?;
    let student_config = &plan.student.architecture;
    let teacher_config = &plan.teacher.architecture;
    let views = plan.views();
    // Drawn under the generator lock like every other draw of the process: one batch when both
    // models see the same images (the thesis pair), one per model otherwise.
    let images = seeded::<B::InnerBackend, _>(device, config.seed, || {
        let random = |size: usize| {
            Tensor::<B::InnerBackend, 4>::random(
                [settings.batch, 3, size, size],
                Distribution::Normal(0.0, 1.0),
                device,
            )
        };
        let teacher = random(views.teacher.size);
        let student = if views.shared() {
            teacher.clone()
        } else {
            random(views.student.size)
        };
        (teacher, student)
    });
    // As training steps: clipping, and f16's loss scaling, included.
    let mut optimizer = StudentOptimizer::<B::InnerBackend>::new(
        config.optim.adamw(),
        config.optim.clip_grad_norm,
        config.precision.scales_loss(),
    );
    let lr = config.optim.peak_lr();
    let per_second = |seconds: f64| (settings.batch * settings.steps) as f64 / seconds;
    let (warmup, steps) = (settings.warmup, settings.steps);

    say("teacher forward");
    // Every target feeds a running sum that is read at the end, so that no backend can skip
    // work whose result nobody uses; the reduction is negligible next to the forward.
    let mut checksum = Tensor::<B::InnerBackend, 1>::zeros([1], device);
    let teacher_forward = timed::<B>(device, warmup, steps, || {
        checksum = checksum.clone() + teacher.target(images.0.clone()).sum();
        Ok(())
    })?;
    let checksum = checksum.into_scalar().elem::<f64>();
    anyhow::ensure!(
        checksum.is_finite(),
        "the teacher's targets are not finite ({checksum})"
    );

    let mut student = Some(student);
    let target = teacher.target(images.0.clone());
    say("student forward, backward and AdamW step");
    let student_step = timed::<B>(device, warmup, steps, || {
        let current = student.take().expect("the student is put back every step");
        let scale = optimizer.loss_scale();
        let step = student_backward(&current, images.1.clone(), target.clone(), scale);
        student = Some(optimizer.step(lr, current, step.grads).0);
        Ok(())
    })?;

    say("full distillation step");
    let kd_step = timed::<B>(device, warmup, steps, || {
        let current = student.take().expect("the student is put back every step");
        let scale = optimizer.loss_scale();
        let step = kd_backward(&teacher, &current, images.clone(), scale);
        student = Some(optimizer.step(lr, current, step.grads).0);
        Ok(())
    })?;

    say("attention layers alone");
    let attention_bench = AttentionBench {
        teacher: teacher_config,
        student: student_config,
        batch: settings.batch,
        warmup,
        steps,
        dtype: config.precision.compute_dtype(),
        seed: config.seed,
    };
    let attention = attention_bench.run::<B>(device)?;

    let data_img_s = match &settings.data {
        Some(folder) => {
            say("data pipeline");
            Some(data_pipeline(folder, views, settings)?)
        }
        None => None,
    };
    let gflop = flops::kd_step_gflop_per_image(teacher_config, student_config);
    let kd_step_img_s = per_second(kd_step);
    Ok(BenchReport {
        tool: "kdlab".into(),
        version: format!("kdlab {}, burn 0.21", env!("CARGO_PKG_VERSION")),
        device: String::new(),
        batch: settings.batch,
        steps: settings.steps,
        precision: settings.precision,
        kd_step_img_s,
        teacher_forward_img_s: per_second(teacher_forward),
        student_step_img_s: per_second(student_step),
        data_img_s,
        data_workers: settings.workers,
        peak_memory_mb: None,
        kd_step_gflop_per_image: gflop,
        kd_step_tflop_s: kd_step_img_s * gflop / 1e3,
        attention: settings.attention,
        teacher_attention_ms: attention.teacher_forward_ms,
        student_attention_ms: attention.student_step_ms,
        attention_ms_per_kd_step: attention_bench.per_kd_step_ms(attention),
    })
}

/// Images per second through decode + the training transform on `workers` threads, after the
/// first batch (the threads' start).
fn data_pipeline(
    folder: &std::path::Path,
    views: Views,
    settings: &BenchSettings,
) -> anyhow::Result<f64> {
    let folder = Arc::new(ImageFolder::scan(folder)?);
    let n = folder.entries.len();
    let repeats = settings.data_images.div_ceil(n).max(1);
    let order = epoch_order(n, repeats, 0, 0, true);
    let loader = LoaderSettings::in_order(settings.batch, settings.workers);
    let transform: Transform =
        Arc::new(move |img, rng| views.train(img, (0.08, 1.0), (0.75, 4.0 / 3.0), 0.5, rng));
    let mut batches = spawn_epoch(folder, order, 0, 0, &loader, transform);
    batches.next();
    let start = Instant::now();
    let images: usize = batches.map(|b| b.len).sum();
    anyhow::ensure!(
        images > 0,
        "the data folder gave fewer than two batches of images"
    );
    Ok(images as f64 / start.elapsed().as_secs_f64())
}
