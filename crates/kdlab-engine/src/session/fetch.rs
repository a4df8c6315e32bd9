//! Weights by name: a config's `teacher.weights` / `student.weights` may name a model
//! (`hf:ORG/REPO[@REVISION][/FILE]`, a short name) instead of a file. Before a run opens its
//! models, `fetch_weights` turns each name into a file of the cache (downloading what is
//! missing, unless offline) and records it in the config's `fetched`, which the run's
//! config.ron keeps: the file, its sha256, and the hub commit or URL it came from.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use kdlab_hub::{FetchError, Fetcher, Freshness, Progress, Stage, WeightsName};

use crate::config::{ConfigError, FetchedWeights, Problems, RunConfig};
use crate::session::EngineError;

/// A download in progress, as the CLI's bar and the app's progress row show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Download {
    /// What is fetched (`timm/vit_small_patch14_dinov2.lvd142m/model.safetensors`).
    pub file: String,
    pub done: u64,
    pub total: Option<u64>,
    /// What a resumed download had already.
    pub resumed_from: u64,
    /// Reading the finished file for its digest (else downloading).
    pub verifying: bool,
}

impl From<&Progress<'_>> for Download {
    fn from(progress: &Progress<'_>) -> Self {
        Self {
            file: progress.file.to_string(),
            done: progress.done,
            total: progress.total,
            resumed_from: progress.resumed_from,
            verifying: progress.stage == Stage::Verifying,
        }
    }
}

/// Sees every download report; `Break` cancels (the partial file is kept for the next fetch).
pub type DownloadWatch<'a> = dyn FnMut(Download) -> ControlFlow<()> + 'a;

/// Resolves the weights names of the config to files (see the module's docs). A name already
/// recorded (a resumed run's config.ron) keeps its file while the file is there; fetched again,
/// it must have the sha256 the run recorded. A name that names nothing (an unknown short name,
/// a missing repo, revision or file) is a config error of its field; a failure to fetch (the
/// network, the disk, offline without the file) is a failure; a cancel is `Interrupted`.
pub fn fetch_weights(
    config: &mut RunConfig,
    fetcher: &Fetcher,
    watch: &mut DownloadWatch,
) -> Result<(), EngineError> {
    let mut problems = Problems::default();
    let sides = [
        (
            "teacher.weights",
            config.teacher.weights.as_deref(),
            &mut config.teacher.fetched,
        ),
        (
            "student.weights",
            config.student.weights.as_deref(),
            &mut config.student.fetched,
        ),
    ];
    for (field, weights, record) in sides {
        let Some(weights) = weights else {
            *record = None;
            continue;
        };
        match fetch_one(weights, record.take(), fetcher, watch) {
            Ok(fetched) => *record = fetched,
            Err(Failure::Config(message)) => problems.push(field, message),
            Err(Failure::Cancelled) => return Err(EngineError::Interrupted),
            Err(Failure::Fetch(error)) => {
                return Err(EngineError::Failed(
                    anyhow::Error::new(error).context(field),
                ));
            }
        }
    }
    match problems.0.is_empty() {
        true => Ok(()),
        false => Err(ConfigError::Invalid {
            path: None,
            problems: problems.0,
        }
        .into()),
    }
}

enum Failure {
    Config(String),
    Cancelled,
    Fetch(FetchError),
}

/// One weights text: None for a path, its record for a name.
fn fetch_one(
    weights: &Path,
    recorded: Option<FetchedWeights>,
    fetcher: &Fetcher,
    watch: &mut DownloadWatch,
) -> Result<Option<FetchedWeights>, Failure> {
    let name = WeightsName::of_path(weights).map_err(|e| Failure::Config(e.to_string()))?;
    if !name.is_name() {
        return Ok(None);
    }
    let text = weights.display().to_string();
    // A record of another name is stale (the field was edited, `--set`).
    let recorded = recorded.filter(|r| r.name == text);
    if let Some(record) = &recorded
        && record.file.is_file()
    {
        return Ok(recorded);
    }
    let fetched = fetcher
        .fetch(&name, &text, Freshness::UseCached, &mut |p: &Progress| {
            watch(Download::from(p))
        })
        .map_err(|e| match e {
            e if e.is_cancelled() => Failure::Cancelled,
            e if e.is_config_mistake() => Failure::Config(e.to_string()),
            e => Failure::Fetch(e),
        })?
        .expect("a name fetches to a file");
    if let Some(record) = &recorded
        && record.sha256 != fetched.sha256
    {
        return Err(Failure::Config(format!(
            "the run used `{text}` as {} (sha256 {}); it now resolves to {} (sha256 {}): name \
             the revision the run used (`{}`), or start a new run",
            record.file.display(),
            record.sha256,
            fetched.file.display(),
            fetched.sha256,
            record.source,
        )));
    }
    Ok(Some(FetchedWeights {
        name: text,
        file: fetched.file,
        sha256: fetched.sha256,
        source: fetched.source,
    }))
}

/// A weights argument of the command line (`--weights`, `inspect W`): the file it names,
/// fetched if it is a name. Errors as `fetch_weights`.
pub fn fetch_weights_arg(
    weights: &Path,
    fetcher: &Fetcher,
    watch: &mut DownloadWatch,
) -> Result<PathBuf, EngineError> {
    match fetch_one(weights, None, fetcher, watch) {
        Ok(Some(fetched)) => Ok(fetched.file),
        Ok(None) => Ok(weights.to_path_buf()),
        Err(Failure::Config(message)) => Err(ConfigError::Invalid {
            path: None,
            problems: vec![crate::config::ConfigProblem::new("weights", message)],
        }
        .into()),
        Err(Failure::Cancelled) => Err(EngineError::Interrupted),
        Err(Failure::Fetch(error)) => Err(EngineError::Failed(anyhow::Error::new(error))),
    }
}
