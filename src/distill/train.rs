//! The distillation loop: frozen teacher (no autodiff), student trained on the KD loss with AdamW
//! and a warm-up cosine schedule; validation, checkpoints, resume, Ctrl-C and non-finite losses.
//! It reports through `Event`s and never draws anything itself.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use burn::module::{AutodiffModule, Module, ModuleMapper, Param};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor, TensorData};

use super::checkpoint::{self, TrainState};
use super::optim::{AdamW, AdamWSettings, clip_grad_norm};
use super::probe::{ProbeSet, epoch_dir, probe_paths};
use super::run_dir::{MetricsLine, RunDir};
use super::schedule::CosineWithWarmup;
use super::target::{kd_loss, prepare_target};
use crate::backend::materialize;
use crate::config::{Precision, RunConfig};
use crate::data::loader::{LoaderSettings, Transform, epoch_order, spawn_epoch};
use crate::data::{ImageFolder, train_transform, validation_transform};
use crate::inspect::Provenance;
use crate::model::{BeitV2, Data2Vec2, Data2Vec2Config};
use crate::weights::{Architecture, Checkpoint};

/// What the loop tells its caller (the CLI's progress bar, the app's plots).
#[derive(Debug, Clone)]
pub enum Event {
    Started {
        run_dir: PathBuf,
        total_steps: usize,
        steps_per_epoch: usize,
        start_step: usize,
        train_images: usize,
        val_images: usize,
    },
    Step(MetricsLine),
    Validation {
        step: usize,
        epoch: usize,
        val_loss: f64,
    },
    SkippedFile {
        path: PathBuf,
        reason: String,
    },
    CheckpointSaved(PathBuf),
    /// The probe set's maps for the student after `epoch` epochs are in `dir`.
    Heatmaps {
        epoch: usize,
        dir: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    ReachedMaxSteps,
    Interrupted,
}

pub struct TrainOptions {
    pub max_steps: Option<usize>,
    /// Set by Ctrl-C (or the app's Stop): save a checkpoint and return.
    pub stop: Arc<AtomicBool>,
    /// While set (the app's Pause), the loop waits between batches.
    pub pause: Arc<AtomicBool>,
    pub resume: bool,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "the loss became {loss} by step {step} (epoch {epoch}); the run stopped and the last good \
     checkpoint is kept. Lower optim.base_lr, set optim.clip_grad_norm, or use precision f32."
)]
pub struct NonFiniteLoss {
    pub step: usize,
    pub epoch: usize,
    pub loss: f64,
}

/// Student and teacher as the config describes them.
pub struct Models<B: AutodiffBackend> {
    pub teacher: BeitV2<B::InnerBackend>,
    pub student: Data2Vec2<B>,
    pub student_architecture: Architecture,
}

pub fn build_models<B: AutodiffBackend>(
    config: &RunConfig,
    resume_from: Option<&std::path::Path>,
    device: &B::Device,
) -> anyhow::Result<Models<B>> {
    // Seeded once, teacher first: a random (demo) teacher is the same in every command that
    // builds the models from this config on this backend.
    let (teacher, (student, student_architecture)) =
        crate::backend::seeded::<B, _>(device, config.seed, || {
            // Teacher first, everywhere: some tensors (CLS tokens) are drawn at construction.
            let teacher = build_teacher::<B::InnerBackend>(config, device)?;
            let (student, architecture) = build_student::<B>(config, resume_from, device)?;
            anyhow::Ok((materialize(teacher), (materialize(student), architecture)))
        })?;
    Ok(Models {
        teacher,
        student,
        student_architecture,
    })
}

/// The frozen teacher, in the precision's compute type. Call after seeding the backend.
pub fn build_teacher<B: Backend>(
    config: &RunConfig,
    device: &B::Device,
) -> anyhow::Result<BeitV2<B>> {
    let teacher = match &config.teacher.weights {
        Some(path) => {
            let checkpoint = Checkpoint::open(path)?;
            if let (Some(stated), Architecture::BeitV2(found)) =
                (&config.teacher.architecture, &checkpoint.architecture)
                && stated != found
            {
                bail!(
                    "teacher.architecture in the config ({stated:?}) does not match {} ({found:?})",
                    path.display()
                );
            }
            checkpoint.load_beit_v2::<B>(device)?
        }
        None => config
            .teacher
            .architecture
            .as_ref()
            .context("teacher: no weights and no architecture")?
            .init::<B>(device),
    };
    Ok(cast_float_params(teacher, config.precision))
}

/// The student from `checkpoint` (a run checkpoint: all its blocks), else as the config
/// describes it (pretrained weights cut to `student.blocks`, or a random init).
pub fn build_student<B: Backend>(
    config: &RunConfig,
    checkpoint: Option<&std::path::Path>,
    device: &B::Device,
) -> anyhow::Result<(Data2Vec2<B>, Architecture)> {
    let source = checkpoint
        .map(PathBuf::from)
        .or_else(|| config.student.weights.clone());
    let (student, base): (Data2Vec2<B>, Data2Vec2Config) = match &source {
        Some(path) => {
            let file = Checkpoint::open(path)?;
            let Architecture::Data2Vec2(found) = file.architecture.clone() else {
                bail!("{} is not a data2vec 2.0 checkpoint", path.display());
            };
            // A run checkpoint already holds only its selected blocks.
            let selection = if checkpoint.is_some() {
                crate::model::BlockSelection::All
            } else {
                config.student.blocks
            };
            (file.load_data2vec2(selection, device)?, found)
        }
        None => {
            let base = config
                .student
                .architecture
                .clone()
                .context("student: no weights and no architecture")?;
            let keep = config
                .student
                .blocks
                .main_blocks(base.prenet_depth, base.depth)
                .map_err(|e| anyhow::anyhow!("student.blocks: {e}"))?;
            (base.init::<B>(device).select_main_blocks(&keep), base)
        }
    };
    let architecture = checkpoint::student_architecture(&base, &student);
    Ok((student, architecture))
}

/// Casts a frozen module's weights (the teacher) to the precision's compute type.
fn cast_float_params<B: Backend, M: Module<B>>(module: M, precision: Precision) -> M {
    struct Cast(DType);
    impl<B: Backend> ModuleMapper<B> for Cast {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let dtype = self.0;
            param.map(|t| t.cast(dtype))
        }
    }
    match precision {
        Precision::F32 => module,
        Precision::Bf16 => module.map(&mut Cast(DType::BF16)),
        Precision::F16 => module.map(&mut Cast(DType::F16)),
    }
}

fn compute_dtype(precision: Precision) -> DType {
    match precision {
        Precision::F32 => DType::F32,
        Precision::Bf16 => DType::BF16,
        Precision::F16 => DType::F16,
    }
}

/// The teacher's target for a batch, in f32, outside the autodiff graph.
pub fn teacher_target<B: Backend>(
    teacher: &BeitV2<B>,
    images: Tensor<B, 4>,
    precision: Precision,
) -> Tensor<B, 3> {
    let images = images.cast(compute_dtype(precision));
    prepare_target(&teacher.forward(images).layer_results)
}

/// The KD loss of one batch (f32, left on the device) and the student's gradients of
/// `loss × grad_scale` — the training step without the optimiser.
pub fn kd_backward<B: AutodiffBackend>(
    teacher: &BeitV2<B::InnerBackend>,
    student: &Data2Vec2<B>,
    images: Tensor<B::InnerBackend, 4>,
    precision: Precision,
    grad_scale: f64,
) -> (Tensor<B::InnerBackend, 1>, GradientsParams) {
    let target = teacher_target(teacher, images.clone(), precision);
    student_backward(student, images, target, grad_scale)
}

/// The student's half of `kd_backward`, against a given target.
pub fn student_backward<B: AutodiffBackend>(
    student: &Data2Vec2<B>,
    images: Tensor<B::InnerBackend, 4>,
    target: Tensor<B::InnerBackend, 3>,
    grad_scale: f64,
) -> (Tensor<B::InnerBackend, 1>, GradientsParams) {
    let prediction = prepare_target(&student.forward(Tensor::from_inner(images)).layer_results);
    let loss = kd_loss(prediction, Tensor::from_inner(target));
    let value = loss.clone().inner();
    let grads = GradientsParams::from_grads(loss.mul_scalar(grad_scale).backward(), student);
    (value, grads)
}

/// Training data as the config describes it.
pub struct Data {
    pub train: Arc<ImageFolder>,
    pub val: Option<Arc<ImageFolder>>,
}

pub fn open_data(config: &RunConfig) -> anyhow::Result<Data> {
    let mut train = ImageFolder::scan(&config.data.train)?;
    let val = match &config.data.val {
        Some(path) => Some(ImageFolder::scan(path)?),
        None => train.split_off_validation(config.data.val_fraction),
    };
    Ok(Data {
        train: Arc::new(train),
        val: val.map(Arc::new),
    })
}

/// (image size, patch grid side) of the student.
fn image_geometry(student: &Architecture) -> (usize, usize) {
    let (image, patch) = match student {
        Architecture::Data2Vec2(c) => (c.image_size, c.patch_size),
        Architecture::BeitV2(c) => (c.image_size, c.patch_size),
    };
    (image, image / patch)
}

/// Runs (or resumes) the distillation in `run`.
pub fn train<B: AutodiffBackend>(
    config: &RunConfig,
    run: &mut RunDir,
    options: &TrainOptions,
    device: &B::Device,
    on_event: &mut dyn FnMut(Event),
) -> anyhow::Result<Outcome> {
    let last = run.last_checkpoint();
    let resume_from = options.resume.then_some(last.as_path());
    let Models {
        teacher,
        mut student,
        student_architecture,
    } = build_models::<B>(config, resume_from, device)?;
    let (size, grid) = image_geometry(&student_architecture);
    let data = open_data(config)?;

    let optim = &config.optim;
    let micro_per_epoch = data.train.entries.len() * config.data.repeats / optim.batch_size;
    let steps_per_epoch = micro_per_epoch / optim.grad_accum_steps;
    if steps_per_epoch == 0 {
        bail!(
            "{} training images × {} repeats make no full global batch of {} (batch_size {} × grad_accum_steps {})",
            data.train.entries.len(),
            config.data.repeats,
            optim.global_batch(),
            optim.batch_size,
            optim.grad_accum_steps
        );
    }
    let total_steps = steps_per_epoch * optim.epochs;
    let schedule = CosineWithWarmup {
        peak_lr: optim.peak_lr(),
        warmup_steps: (optim.warmup_fraction * total_steps as f64) as usize,
        total_steps,
    };
    let mut optimizer = AdamW::<B::InnerBackend>::new(AdamWSettings {
        beta1: optim.betas.0,
        beta2: optim.betas.1,
        eps: optim.eps,
        weight_decay: optim.weight_decay,
    });
    let mut state = TrainState {
        step: 0,
        epoch: 0,
        batch_in_epoch: 0,
        best_val_loss: None,
        optim_steps: Default::default(),
    };
    if let Some(path) = resume_from {
        let (saved, moments) = checkpoint::load_training_state::<B::InnerBackend>(path, device)?;
        state = saved;
        optimizer.state = moments;
        run.log(&format!(
            "resumed from {} at step {}",
            path.display(),
            state.step
        ));
    }
    let run_root = run.root.clone();
    // --max-steps overrides the config's optim.max_steps; neither changes the schedule.
    let max_steps = options
        .max_steps
        .or(optim.max_steps)
        .map_or(total_steps, |m| m.min(total_steps));
    on_event(Event::Started {
        run_dir: run.root.clone(),
        total_steps: max_steps,
        steps_per_epoch,
        start_step: state.step,
        train_images: data.train.entries.len(),
        val_images: data.val.as_ref().map_or(0, |v| v.entries.len()),
    });

    // Unreadable files are reported once, however often the epochs meet them.
    let mut reported = HashSet::new();
    let (probe, skipped) = ProbeSet::prepare(
        &probe_paths(config, &data),
        config,
        &teacher,
        size,
        grid,
        device,
    )?;
    report_skipped(skipped, &mut reported, run, on_event);
    let write_heatmaps = |student: &Data2Vec2<B>,
                          state: &TrainState,
                          on_event: &mut dyn FnMut(Event)|
     -> anyhow::Result<()> {
        let Some(probe) = &probe else { return Ok(()) };
        let dir = epoch_dir(&run_root, state.epoch);
        let provenance = Provenance {
            checkpoint: None,
            epoch: Some(state.epoch),
            step: Some(state.step),
        };
        probe.write(&student.valid(), &dir, &provenance, device)?;
        on_event(Event::Heatmaps {
            epoch: state.epoch,
            dir,
        });
        Ok(())
    };
    if state.step == 0 {
        write_heatmaps(&student, &state, on_event)?;
    }

    let loader = LoaderSettings {
        batch_size: optim.batch_size,
        workers: config.data.workers,
        prefetch_batches: config.data.prefetch_batches,
        drop_last: true,
        seed: config.seed,
    };
    let d = &config.data;
    let (scale, ratio, flip) = (d.crop_scale, d.crop_ratio, d.hflip_probability);
    let augment: Transform =
        Arc::new(move |img, rng| train_transform(img, size as u32, scale, ratio, flip, rng));
    let config_ron = config.to_ron();
    let save = |path: &std::path::Path,
                student: &Data2Vec2<B>,
                optimizer: &AdamW<B::InnerBackend>,
                state: &TrainState| {
        checkpoint::save(
            path,
            &student.valid(),
            &student_architecture,
            optimizer,
            state,
            &config_ron,
        )
    };

    let validation = Validation {
        config,
        teacher: &teacher,
        folder: data.val.as_ref(),
        size,
    };
    let mut accumulator = GradientsAccumulator::new();
    let mut accumulated = 0usize;
    let mut loss_sum: Option<Tensor<B::InnerBackend, 1>> = None;
    let mut images_since_log = 0usize;
    let mut since_log = Instant::now();
    let mut loss_log_count = 0usize;
    while state.step < max_steps && state.epoch < optim.epochs {
        let order = epoch_order(
            data.train.entries.len(),
            d.repeats,
            config.seed,
            state.epoch,
            true,
        );
        let batches = spawn_epoch(
            data.train.clone(),
            order,
            state.batch_in_epoch,
            state.epoch,
            &loader,
            augment.clone(),
        );
        for batch in batches {
            while options.pause.load(Ordering::SeqCst) && !options.stop.load(Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            report_skipped(batch.skipped, &mut reported, run, on_event);
            state.batch_in_epoch = batch.index + 1;
            if batch.len == 0 {
                continue;
            }
            let images = Tensor::<B::InnerBackend, 4>::from_data(
                TensorData::new(batch.pixels, [batch.len, 3, size, size]),
                device,
            );
            let (loss, grads) = kd_backward(
                &teacher,
                &student,
                images,
                config.precision,
                1.0 / optim.grad_accum_steps as f64,
            );
            accumulator.accumulate(&student, grads);
            accumulated += 1;
            // Summed on the device and read at the log points only: reading every step would
            // make the host wait for the device before it could queue the next step.
            loss_sum = Some(match loss_sum {
                Some(sum) => sum + loss,
                None => loss,
            });
            loss_log_count += 1;
            images_since_log += batch.len;
            if accumulated < optim.grad_accum_steps {
                continue;
            }
            accumulated = 0;
            let mut grads = accumulator.grads();
            if let Some(max_norm) = optim.clip_grad_norm {
                clip_grad_norm(&student, &mut grads, max_norm);
            }
            let lr = schedule.lr(state.step);
            student = optimizer.step(lr, student, grads);
            state.step += 1;

            let stop = options.stop.load(Ordering::SeqCst);
            let reached_max = state.step >= max_steps && max_steps < total_steps;
            // Also before every checkpoint, so that a non-finite loss is never saved.
            if state.step.is_multiple_of(config.log_every)
                || state.step == max_steps
                || stop
                || reached_max
            {
                let sum = loss_sum
                    .take()
                    .map_or(f64::NAN, |s| s.into_scalar().elem::<f64>());
                let mean = sum / loss_log_count as f64;
                ensure_finite(mean, &state, run)?;
                let line = MetricsLine {
                    step: state.step,
                    epoch: state.epoch,
                    loss: Some(mean),
                    lr: Some(lr),
                    img_per_s: Some(
                        images_since_log as f64 / since_log.elapsed().as_secs_f64().max(1e-9),
                    ),
                    val_loss: None,
                };
                run.metrics(&line)?;
                on_event(Event::Step(line));
                (loss_log_count, images_since_log, since_log) = (0, 0, Instant::now());
            }
            if config
                .val_every
                .is_some_and(|every| state.step.is_multiple_of(every))
            {
                validation.run(&student, &mut state, run, &mut reported, on_event)?;
            }
            if stop || reached_max {
                save(&run.last_checkpoint(), &student, &optimizer, &state)?;
                on_event(Event::CheckpointSaved(run.last_checkpoint()));
                return Ok(if stop {
                    Outcome::Interrupted
                } else {
                    Outcome::ReachedMaxSteps
                });
            }
        }
        // End of epoch: validate, keep the best, save — never a student that met a non-finite loss.
        if let Some(sum) = &loss_sum {
            ensure_finite(sum.clone().into_scalar().elem::<f64>(), &state, run)?;
        }
        let improved = validation.run(&student, &mut state, run, &mut reported, on_event)?;
        state.epoch += 1;
        state.batch_in_epoch = 0;
        write_heatmaps(&student, &state, on_event)?;
        save(&run.last_checkpoint(), &student, &optimizer, &state)?;
        on_event(Event::CheckpointSaved(run.last_checkpoint()));
        if improved {
            std::fs::copy(run.last_checkpoint(), run.best_checkpoint())
                .with_context(|| format!("cannot write {}", run.best_checkpoint().display()))?;
        }
    }
    Ok(Outcome::Completed)
}

/// Stops the run (logged) when the losses since the last check were not all finite.
fn ensure_finite(loss: f64, state: &TrainState, run: &mut RunDir) -> Result<(), NonFiniteLoss> {
    if loss.is_finite() {
        return Ok(());
    }
    run.log(&format!(
        "non-finite loss {loss} in the steps up to {}",
        state.step
    ));
    Err(NonFiniteLoss {
        step: state.step,
        epoch: state.epoch,
        loss,
    })
}

/// Device failures surface as panics inside burn; out of memory gets an actionable message.
pub fn explain_device_panic(panic: &str, batch_size: usize) -> anyhow::Error {
    let lower = panic.to_lowercase();
    if lower.contains("out of memory") || lower.contains("outofmemory") || lower.contains("alloc") {
        anyhow::anyhow!(
            "the device ran out of memory with optim.batch_size {batch_size}; try batch_size {} \
             with optim.grad_accum_steps doubled (same global batch) ({panic})",
            (batch_size / 2).max(1)
        )
    } else {
        anyhow::anyhow!("the compute backend failed: {panic}")
    }
}

/// Logs and announces files that could not be read, once each.
fn report_skipped(
    skipped: Vec<(PathBuf, String)>,
    reported: &mut HashSet<PathBuf>,
    run: &mut RunDir,
    on_event: &mut dyn FnMut(Event),
) {
    for (path, reason) in skipped {
        if reported.insert(path.clone()) {
            run.log(&format!("skipped {}: {reason}", path.display()));
            on_event(Event::SkippedFile { path, reason });
        }
    }
}

/// What a validation pass needs besides the student.
struct Validation<'a, B: Backend> {
    config: &'a RunConfig,
    teacher: &'a BeitV2<B>,
    folder: Option<&'a Arc<ImageFolder>>,
    size: usize,
}

impl<B: Backend> Validation<'_, B> {
    /// Validation loss, recorded; says whether it is the best so far (false without a folder).
    fn run<AB: AutodiffBackend<InnerBackend = B>>(
        &self,
        student: &Data2Vec2<AB>,
        state: &mut TrainState,
        run: &mut RunDir,
        reported: &mut HashSet<PathBuf>,
        on_event: &mut dyn FnMut(Event),
    ) -> anyhow::Result<bool> {
        let Some(folder) = self.folder else {
            return Ok(false);
        };
        let (val_loss, skipped) = validation_loss(
            self.config,
            self.teacher,
            &student.valid(),
            folder,
            self.size,
        )?;
        report_skipped(skipped, reported, run, on_event);
        let line = MetricsLine {
            step: state.step,
            epoch: state.epoch,
            loss: None,
            lr: None,
            img_per_s: None,
            val_loss: Some(val_loss),
        };
        run.metrics(&line)?;
        run.log(&format!(
            "step {} epoch {}: val_loss {val_loss:.6}",
            state.step, state.epoch
        ));
        on_event(Event::Validation {
            step: state.step,
            epoch: state.epoch,
            val_loss,
        });
        let improved = state.best_val_loss.is_none_or(|best| val_loss < best);
        if improved {
            state.best_val_loss = Some(val_loss);
        }
        Ok(improved)
    }
}

/// The KD loss over a folder with the validation transform, averaged over images; also the
/// files that could not be read.
pub fn validation_loss<B: Backend>(
    config: &RunConfig,
    teacher: &BeitV2<B>,
    student: &Data2Vec2<B>,
    folder: &Arc<ImageFolder>,
    size: usize,
) -> anyhow::Result<(f64, Vec<(PathBuf, String)>)> {
    let device = student
        .devices()
        .into_iter()
        .next()
        .context("the student has no device")?;
    let order = epoch_order(folder.entries.len(), 1, config.seed, 0, false);
    let settings = LoaderSettings {
        batch_size: config.optim.batch_size,
        workers: config.data.workers,
        prefetch_batches: config.data.prefetch_batches,
        drop_last: false,
        seed: config.seed,
    };
    let transform: Transform = Arc::new(move |img, _| validation_transform(img, size as u32));
    let (mut total, mut count, mut skipped) = (0.0f64, 0usize, Vec::new());
    for batch in spawn_epoch(folder.clone(), order, 0, 0, &settings, transform) {
        skipped.extend(batch.skipped);
        if batch.len == 0 {
            continue;
        }
        let images = Tensor::<B, 4>::from_data(
            TensorData::new(batch.pixels, [batch.len, 3, size, size]),
            &device,
        );
        let target = teacher_target(teacher, images.clone(), config.precision);
        let prediction = prepare_target(&student.forward(images).layer_results);
        total += kd_loss(prediction, target).into_scalar().elem::<f64>() * batch.len as f64;
        count += batch.len;
    }
    if count == 0 {
        bail!("no readable validation image in {}", folder.root.display());
    }
    Ok((total / count as f64, skipped))
}

use burn::tensor::ElementConversion;
