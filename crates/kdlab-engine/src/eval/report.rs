//! An evaluation's result: the JSON file in the run directory, the summary printed with `--json`,
//! and the table that puts teacher and student side by side.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::linear::EpochLine;
use super::metrics::Confusion;
use super::model::Role;
use super::settings::{DatasetKind, KnnSettings, LinearSettings, Method, Pooling};
use crate::session::RunDir;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    pub method: Method,
    pub model: Role,
    /// The weights file, or how the random teacher was made.
    pub weights: String,
    pub dataset: DatasetKind,
    pub train: PathBuf,
    pub val: PathBuf,
    pub classes: usize,
    pub train_images: usize,
    pub val_images: usize,
    /// Images that could not be decoded (both splits).
    pub skipped_images: usize,
    pub pooling: Pooling,
    pub feature_dim: usize,
    /// Fractions in [0, 1].
    pub top1: f64,
    pub top5: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knn: Option<KnnSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linear: Option<LinearSettings>,
    /// The linear probe's loss and validation top-1 per epoch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<EpochLine>,
    pub backend: String,
    pub seconds: f64,
    /// Whether the features came from the cache (no forward pass).
    pub features_cached: bool,
    pub class_names: Vec<String>,
    pub confusion: Confusion,
}

/// The keys left out of the printed summary (they can be thousands of numbers).
const BULKY: [&str; 3] = ["class_names", "confusion", "history"];

impl EvalResult {
    /// One line for people: model, method, accuracies and the file the result went to.
    pub fn summary_line(&self, file: &Path) -> String {
        format!(
            "{} {}: top-1 {:.2}%, top-5 {:.2}%, written to {}",
            self.model.name(),
            self.method.name(),
            100.0 * self.top1,
            100.0 * self.top5,
            file.display()
        )
    }

    /// The result without the per-class detail.
    pub fn summary(&self) -> serde_json::Value {
        // Plain numbers and strings: serde_json cannot fail on them (NaN becomes null).
        let mut value = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        if let Some(map) = value.as_object_mut() {
            for key in BULKY {
                map.remove(key);
            }
        }
        value
    }

    /// `eval/<method>-<dataset>-<model>.json` of `run`.
    pub fn file_in(&self, run: &RunDir) -> PathBuf {
        run.eval_result_file(&format!(
            "{}-{}-{}",
            self.method.name(),
            self.dataset.name(),
            self.model.name()
        ))
    }

    /// Writes the full result and appends its summary to the run's `eval/results.jsonl`.
    pub fn write(&self, run: &RunDir) -> anyhow::Result<PathBuf> {
        let path = self.file_in(run);
        let folder = run.eval_dir();
        std::fs::create_dir_all(&folder)
            .with_context(|| format!("cannot create {}", folder.display()))?;
        kdlab_model::weights::write::write_atomically(
            &path,
            serde_json::to_string_pretty(self)?.as_bytes(),
        )?;
        let log = run.eval_results_log();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        writeln!(file, "{}", serde_json::to_string(&self.summary())?)?;
        Ok(path)
    }

    /// The thesis' figure for this row, where it published one (REFERENCE.md), as a fraction.
    pub fn published_top1(&self) -> Option<f64> {
        let imagenet = self.dataset == DatasetKind::Folder && self.classes == 1000;
        match (self.method, self.model, self.dataset) {
            (Method::Linear, Role::Student, DatasetKind::Cifar10) => Some(0.932),
            (Method::Linear, Role::Student, DatasetKind::Cifar100) => Some(0.773),
            (Method::Linear, Role::Student, DatasetKind::Folder) if imagenet => Some(0.711),
            (Method::Linear, Role::Teacher, DatasetKind::Folder) if imagenet => Some(0.801),
            _ => None,
        }
    }
}

/// The results saved in a run, and the files among them that could not be read.
#[derive(Debug, Default)]
pub struct SavedResults {
    pub results: Vec<EvalResult>,
    /// One line per unreadable file: its path and why.
    pub unreadable: Vec<String>,
}

/// Every result saved in `run`'s `eval/`, in file-name order; a file that is not a result is
/// named in `unreadable`, never dropped without a word.
pub fn read_saved(run: &RunDir) -> SavedResults {
    let mut saved = SavedResults::default();
    for file in run.eval_result_files() {
        let read = std::fs::read_to_string(&file)
            .map_err(|e| e.to_string())
            .and_then(|text| serde_json::from_str::<EvalResult>(&text).map_err(|e| e.to_string()));
        match read {
            Ok(result) => saved.results.push(result),
            Err(e) => saved.unreadable.push(format!(
                "{} is not a readable evaluation result ({e})",
                file.display()
            )),
        }
    }
    saved
}

/// One JSON object: the first result's summary, and any further one (the teacher) under its role.
pub fn json_summary(results: &[EvalResult]) -> serde_json::Value {
    let mut results = results.iter();
    let mut value = results
        .next()
        .map_or_else(|| serde_json::json!({}), EvalResult::summary);
    for other in results {
        value[other.model.name()] = other.summary();
    }
    value
}

fn percent(fraction: f64) -> String {
    format!("{:.2}%", 100.0 * fraction)
}

/// A fixed-width table, one row per result.
pub fn table(results: &[EvalResult]) -> String {
    let header = [
        "model", "method", "dataset", "top-1", "top-5", "thesis", "train", "val", "weights",
    ];
    let rows: Vec<[String; 9]> = results
        .iter()
        .map(|r| {
            [
                r.model.name().to_string(),
                r.method.name().to_string(),
                r.dataset.name().to_string(),
                percent(r.top1),
                percent(r.top5),
                r.published_top1().map_or_else(|| "-".into(), percent),
                r.train_images.to_string(),
                r.val_images.to_string(),
                r.weights.clone(),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].chars().count())
                .chain([header[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(cell, &w)| format!("{cell:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = line(header.to_vec());
    for row in &rows {
        out.push('\n');
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_result_file_is_named_not_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::at(dir.path());
        std::fs::create_dir_all(run.eval_dir()).unwrap();
        std::fs::write(run.eval_result_file("knn-folder-student"), "{ not json").unwrap();
        let saved = read_saved(&run);
        assert!(saved.results.is_empty());
        assert_eq!(saved.unreadable.len(), 1);
        assert!(
            saved.unreadable[0].contains("knn-folder-student.json"),
            "{:?}",
            saved.unreadable
        );
    }
}
