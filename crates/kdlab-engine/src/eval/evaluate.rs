//! One evaluation from start to finish, for the command line and the app alike: open the
//! labelled data, then for each model load it, get its features (cache or forward passes), run
//! k-NN or the linear probe, score and write the result.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;

use super::dataset::LabelledData;
use super::features::{Extraction, FeatureCache, FeatureSet};
use super::knn::knn_rankings;
use super::linear::{EpochLine, train_probe};
use super::metrics::score;
use super::model::{LoadedModel, ModelSpec, Role};
use super::report::EvalResult;
use super::settings::{EvalConfig, Method};
use crate::config::RunConfig;
use crate::data::ImageSource;
use crate::data::Normalization;
use crate::session::{EngineError, RunDir, Session, on_backend, utc_timestamp};

pub struct EvalRequest {
    pub method: Method,
    /// Evaluated in this order (the student first, then the teacher beside it).
    pub models: Vec<ModelSpec>,
    pub config: EvalConfig,
    /// Results go to its `eval/`, cached features to `eval/features/`.
    pub out: RunDir,
}

/// Where results go: `out` when given, else the run the checkpoint belongs to, else a new
/// `eval-<UTC time>` folder under `runs_dir`.
pub fn results_dir(out: Option<&Path>, checkpoint: Option<&Path>, runs_dir: &Path) -> RunDir {
    match (out, checkpoint.and_then(RunDir::of_checkpoint)) {
        (Some(out), _) => RunDir::at(out),
        (None, Some(run)) => run,
        (None, None) => RunDir::at(runs_dir.join(format!("eval-{}", utc_timestamp()))),
    }
}

impl ModelSpec {
    /// The teacher of the run `checkpoint` belongs to, from its `config.ron` (a broken one is
    /// an error, not a silent default); `outside_a_run` when the checkpoint is in no run.
    pub fn teacher_of_run(
        checkpoint: &Path,
        outside_a_run: Option<&RunConfig>,
    ) -> Result<Self, EngineError> {
        let config = match (RunDir::of_checkpoint(checkpoint), outside_a_run) {
            (Some(run), _) => run.read_config()?,
            (None, Some(config)) => config.clone(),
            (None, None) => {
                return Err(EngineError::Failed(anyhow::anyhow!(
                    "{} is in no run directory, so it has no run teacher (config.ron) to \
                     evaluate; name the teacher's weights instead",
                    checkpoint.display()
                )));
            }
        };
        Ok(Self::RunTeacher(Box::new(config)))
    }
}

/// Evaluates every model of the request on the session's backend: the one entry the CLI and
/// the app share. `stop` ends it early (`EngineError::Interrupted`, nothing written).
pub fn evaluate(
    session: &Session,
    request: &EvalRequest,
    stop: &AtomicBool,
    on_event: &mut dyn FnMut(EvalEvent),
) -> Result<Vec<EvalResult>, EngineError> {
    request.config.validate()?;
    let backend = session.backend().to_string();
    on_backend!(session, Some(request.config.batch_size), |B, device| {
        evaluate_on::<B>(request, &backend, &device, stop, on_event)
    })
}

/// What an evaluation reports while it works.
#[derive(Debug, Clone)]
pub enum EvalEvent {
    /// A line worth showing (what is being done, a warning).
    Note(String),
    /// An image that could not be decoded; it is left out.
    Skipped { path: PathBuf, reason: String },
    /// Progress of the current stage.
    Progress {
        stage: String,
        done: usize,
        total: usize,
    },
    /// A linear-probe epoch finished.
    Epoch { model: Role, line: EpochLine },
    /// A model's result, already written to its file.
    Finished {
        result: Box<EvalResult>,
        file: PathBuf,
    },
}

fn evaluate_on<B: AutodiffBackend>(
    request: &EvalRequest,
    backend: &str,
    device: &B::Device,
    stop: &AtomicBool,
    on_event: &mut dyn FnMut(EvalEvent),
) -> anyhow::Result<Vec<EvalResult>> {
    let config = &request.config;
    let train_path = config.train.as_deref().ok_or_else(|| {
        anyhow::anyhow!("no training images: give --train (or train: in the eval config)")
    })?;
    let data = LabelledData::open(config.dataset, train_path, config.val.as_deref())?;
    for warning in &data.warnings {
        on_event(EvalEvent::Note(format!("warning: {warning}")));
    }
    on_event(EvalEvent::Note(format!(
        "{} training and {} validation images in {} classes",
        data.train.len(),
        data.val.len(),
        data.classes.len()
    )));
    let cache = FeatureCache {
        dir: request.out.eval_features_dir(),
    };
    let mut results = Vec::new();
    for spec in &request.models {
        let started = Instant::now();
        let model = spec.load::<B::InnerBackend>(device)?;
        let role = model.role;
        on_event(EvalEvent::Note(format!(
            "{}: {} ({})",
            role.name(),
            model.source,
            request.method.name()
        )));
        let (train, train_cached) = features_of(
            &model,
            data.train.clone(),
            "training",
            request,
            &cache,
            device,
            stop,
            on_event,
        )?;
        let (val, val_cached) = features_of(
            &model,
            data.val.clone(),
            "validation",
            request,
            &cache,
            device,
            stop,
            on_event,
        )?;
        drop(model);
        let classes = data.classes.len();
        let (rankings, history) = match request.method {
            Method::Knn => {
                let stage = format!("{}: nearest neighbours", role.name());
                let rankings = knn_rankings::<B::InnerBackend>(
                    &train,
                    &val,
                    classes,
                    &config.knn,
                    device,
                    stop,
                    &mut |done, total| {
                        on_event(EvalEvent::Progress {
                            stage: stage.clone(),
                            done,
                            total,
                        })
                    },
                )?;
                (rankings, Vec::new())
            }
            Method::Linear => {
                let probed = train_probe::<B>(
                    &train,
                    &val,
                    classes,
                    &config.linear,
                    device,
                    stop,
                    &mut |line| {
                        on_event(EvalEvent::Epoch {
                            model: role,
                            line: *line,
                        })
                    },
                )?;
                (probed.rankings, probed.history)
            }
        };
        let scores = score(&rankings, &val.labels, classes);
        let result = EvalResult {
            method: request.method,
            model: role,
            weights: spec_source(spec),
            dataset: data.kind,
            train: data.train_path.clone(),
            val: data.val_path.clone(),
            classes,
            train_images: train.len(),
            val_images: val.len(),
            skipped_images: train.skipped.len() + val.skipped.len(),
            pooling: config.pooling,
            feature_dim: train.dim,
            top1: scores.top1,
            top5: scores.top5,
            knn: (request.method == Method::Knn).then_some(config.knn),
            linear: (request.method == Method::Linear).then_some(config.linear),
            history,
            backend: backend.to_string(),
            seconds: started.elapsed().as_secs_f64(),
            features_cached: train_cached && val_cached,
            class_names: data.classes.clone(),
            confusion: scores.confusion,
        };
        let file = result.write(&request.out)?;
        on_event(EvalEvent::Finished {
            result: Box::new(result.clone()),
            file,
        });
        results.push(result);
    }
    Ok(results)
}

/// How results name a model: its file, or the random teacher's seed.
fn spec_source(spec: &ModelSpec) -> String {
    match spec {
        ModelSpec::Weights { path, depth: None } => path.display().to_string(),
        ModelSpec::Weights {
            path,
            depth: Some(d),
        } => format!("{} (depth {d})", path.display()),
        ModelSpec::RunTeacher(config) => match &config.teacher.weights {
            Some(path) => path.display().to_string(),
            None => format!("random teacher (seed {})", config.seed),
        },
    }
}

/// Features of one split from the cache, else extracted (and then cached); `.1` says cached.
#[allow(clippy::too_many_arguments)]
fn features_of<B: burn::tensor::backend::Backend>(
    model: &LoadedModel<B>,
    source: std::sync::Arc<dyn ImageSource>,
    split: &str,
    request: &EvalRequest,
    cache: &FeatureCache,
    device: &B::Device,
    stop: &AtomicBool,
    on_event: &mut dyn FnMut(EvalEvent),
) -> anyhow::Result<(FeatureSet, bool)> {
    let config = &request.config;
    let n = source.len();
    let key = format!(
        "kdlab {}; model {}; pooling {}; image size {}{}; {} data, {split} split: {} images from {} to {}; contents {:016x}",
        env!("CARGO_PKG_VERSION"),
        model.fingerprint,
        config.pooling.name(),
        model.image_size,
        // Absent for ImageNet's normalisation, so earlier caches stay valid.
        if model.normalization == Normalization::IMAGENET {
            String::new()
        } else {
            format!(", normalised {:?}", model.normalization)
        },
        config.dataset.name(),
        n,
        source.origin(0).display(),
        source.origin(n - 1).display(),
        data_fingerprint(&*source),
    );
    let stage = format!("{}: features of the {split} images", model.role.name());
    let (set, cached) = match cache.load(&key) {
        Some(set) => {
            on_event(EvalEvent::Note(format!("{stage}: from the cache")));
            (set, true)
        }
        None => {
            let extraction = Extraction {
                encoder: &model.encoder,
                image_size: model.image_size,
                normalization: model.normalization,
                pooling: config.pooling,
                batch_size: config.batch_size,
                workers: config.workers,
                device,
                stop,
            };
            let set = extraction.run(source, &mut |done, total| {
                on_event(EvalEvent::Progress {
                    stage: stage.clone(),
                    done,
                    total,
                })
            })?;
            if let Err(e) = cache.store(&key, &set) {
                // A full disk costs the next run a forward pass, not this run its result.
                on_event(EvalEvent::Note(format!(
                    "warning: features not cached: {e:#}"
                )));
            }
            (set, false)
        }
    };
    for (path, reason) in &set.skipped {
        on_event(EvalEvent::Skipped {
            path: path.clone(),
            reason: reason.clone(),
        });
    }
    Ok((set, cached))
}

/// Every data file's path, size and modification time, hashed: a file replaced or edited under
/// the same name changes the cache key, so no stale features are served. (A CIFAR record is
/// `<batch file>#<index>`: its batch file is what is looked at, once.)
fn data_fingerprint(source: &dyn ImageSource) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let mut last_file = None;
    for i in 0..source.len() {
        let origin = source.origin(i);
        let text = origin.to_string_lossy();
        let file = match text.rsplit_once('#') {
            Some((file, index)) if index.chars().all(|c| c.is_ascii_digit()) => {
                std::path::PathBuf::from(file)
            }
            _ => origin.clone(),
        };
        if last_file.as_ref() != Some(&file) {
            super::features::file_fingerprint(&file).hash(&mut hasher);
            last_file = Some(file);
        }
        origin.hash(&mut hasher);
    }
    hasher.finish()
}
