//! The run directory: `config.ron`, `metrics.jsonl`, `log.txt`, `checkpoints/{last,best}.safetensors`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

pub struct RunDir {
    pub root: PathBuf,
    metrics: File,
    log: File,
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct MetricsLine {
    pub step: usize,
    pub epoch: usize,
    /// Mean training loss since the previous line (absent on validation-only lines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub img_per_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
}

impl RunDir {
    /// `runs_dir/<name>-<UTC timestamp>/`, new.
    pub fn create(runs_dir: &Path, name: &str, config_ron: &str) -> anyhow::Result<Self> {
        let stamp = utc_timestamp();
        let mut root = runs_dir.join(format!("{name}-{stamp}"));
        let mut n = 1;
        while root.exists() {
            n += 1;
            root = runs_dir.join(format!("{name}-{stamp}-{n}"));
        }
        std::fs::create_dir_all(root.join("checkpoints"))
            .with_context(|| format!("cannot create run directory {}", root.display()))?;
        std::fs::write(root.join("config.ron"), config_ron)?;
        Self::open(&root)
    }

    /// An existing run directory, appending to its logs.
    pub fn open(root: &Path) -> anyhow::Result<Self> {
        let append = |name: &str| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(root.join(name))
                .with_context(|| format!("cannot open {}", root.join(name).display()))
        };
        Ok(Self {
            root: root.to_path_buf(),
            metrics: append("metrics.jsonl")?,
            log: append("log.txt")?,
        })
    }

    pub fn last_checkpoint(&self) -> PathBuf {
        self.root.join("checkpoints/last.safetensors")
    }

    pub fn best_checkpoint(&self) -> PathBuf {
        self.root.join("checkpoints/best.safetensors")
    }

    pub fn metrics(&mut self, line: &MetricsLine) -> anyhow::Result<()> {
        writeln!(self.metrics, "{}", serde_json::to_string(line)?)?;
        Ok(())
    }

    pub fn log(&mut self, message: &str) {
        // The log is a convenience copy of what the terminal shows; never fail a run over it.
        let _ = writeln!(self.log, "[{}] {message}", utc_timestamp());
    }
}

/// A checkpoint file as given, or a run directory's `checkpoints/last.safetensors`.
pub fn checkpoint_in(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join("checkpoints/last.safetensors")
    } else {
        path.to_path_buf()
    }
}

/// The run directory a checkpoint belongs to (`<run>/checkpoints/x.safetensors`).
pub fn run_of_checkpoint(checkpoint: &Path) -> Option<PathBuf> {
    let checkpoints = checkpoint.parent()?;
    (checkpoints.file_name()? == "checkpoints")
        .then(|| checkpoints.parent().map(Path::to_path_buf))?
}

/// `YYYYMMDD-HHMMSS` in UTC, from the system clock (civil-from-days, H. Hinnant).
pub fn utc_timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_in_checkpoints_belongs_to_the_run_above() {
        assert_eq!(
            run_of_checkpoint(Path::new("runs/x/checkpoints/last.safetensors")),
            Some(PathBuf::from("runs/x"))
        );
        assert_eq!(
            run_of_checkpoint(Path::new("elsewhere/last.safetensors")),
            None
        );
    }
}
