//! The run directory, and the only code that knows its layout — readers as well as writers:
//!
//! ```text
//! runs/<name>-<UTC time>/
//!   config.ron                    the resolved config the run trains with
//!   metrics.jsonl                 one MetricsLine per logged step or validation
//!   log.txt                       what the terminal showed, timestamped (a fatal error last)
//!   status.json, run.lock         running (pid, host) or how it ended; locked while written
//!                                 (session/run_status.rs)
//!   checkpoints/last.safetensors  written atomically after every epoch and on stop
//!   checkpoints/best.safetensors  the lowest validation loss
//!   heatmaps/epoch-NNN/           the probe images' maps after epoch NNN (000: before training)
//!   tb/events.out.tfevents.*      the metrics and probe maps for `tensorboard --logdir runs`,
//!                                 one file per process that trained (a resume adds one)
//!   eval/<method>-<data>-<model>.json, eval/results.jsonl, eval/features/
//! ```
//!
//! Evaluations of files outside any run write the same `eval/` layout into a folder of their own.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::tensorboard::EventWriter;
use crate::config::{ConfigError, RunConfig};

const CONFIG: &str = "config.ron";
const METRICS: &str = "metrics.jsonl";
const LOG: &str = "log.txt";
const CHECKPOINTS: &str = "checkpoints";
const LAST: &str = "last.safetensors";
const BEST: &str = "best.safetensors";
const HEATMAPS: &str = "heatmaps";
const TB: &str = "tb";
const EVAL: &str = "eval";

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    /// The collapse watch (fairseq data2vec's names): the mean over dimensions of the standard
    /// deviation over the batch's tokens, of the teacher's target and the student's prediction,
    /// averaged over the micro-batches since the previous line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_var: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pred_var: Option<f64>,
    /// The global L2 norm of the gradients (unscaled, before clipping), averaged over the
    /// applied steps since the previous line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
}

/// A run directory (or an evaluation's result folder): paths and readers, no open files.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// The folder at `root`, whatever it holds so far.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `runs_dir/<name>-<UTC timestamp>/`, new, with the config it will train with.
    pub fn create(runs_dir: &Path, name: &str, config: &RunConfig) -> anyhow::Result<Self> {
        if let Err(rule) = crate::config::check_run_name(name) {
            anyhow::bail!("the run name `{name}` {rule}");
        }
        let config_ron = config.to_ron()?;
        std::fs::create_dir_all(runs_dir)
            .with_context(|| format!("cannot create the runs folder {}", runs_dir.display()))?;
        // The directory is claimed by creating it: two runs started in the same second (two
        // processes, or two app windows) each get their own, never one between them.
        let stamp = utc_timestamp();
        let mut n = 1;
        let root = loop {
            let candidate = match n {
                1 => runs_dir.join(format!("{name}-{stamp}")),
                n => runs_dir.join(format!("{name}-{stamp}-{n}")),
            };
            match std::fs::create_dir(&candidate) {
                Ok(()) => break candidate,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 10_000 => n += 1,
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("cannot create run directory {}", candidate.display())
                    });
                }
            }
        };
        let run = Self::at(root);
        let checkpoints = run.root.join(CHECKPOINTS);
        std::fs::create_dir(&checkpoints)
            .with_context(|| format!("cannot create run directory {}", run.root.display()))?;
        std::fs::write(run.config_file(), config_ron)
            .with_context(|| format!("cannot write {}", run.config_file().display()))?;
        Ok(run)
    }

    /// An existing run that can be resumed: it has a config and a last checkpoint.
    pub fn resumable(root: &Path) -> anyhow::Result<Self> {
        let run = Self::at(root);
        anyhow::ensure!(
            run.last_checkpoint().is_file(),
            "{} has no {CHECKPOINTS}/{LAST} to resume from",
            root.display()
        );
        anyhow::ensure!(
            run.config_file().is_file(),
            "{} has no {CONFIG}: it is not a kdlab run directory",
            root.display()
        );
        Ok(run)
    }

    /// The run a checkpoint belongs to (`<run>/checkpoints/x.safetensors`), or the run itself
    /// when given a run directory.
    pub fn of_checkpoint(path: &Path) -> Option<Self> {
        if path.is_dir() {
            return Some(Self::at(path));
        }
        let checkpoints = path.parent()?;
        (checkpoints.file_name()? == CHECKPOINTS).then(|| checkpoints.parent().map(Self::at))?
    }

    /// A checkpoint file as given, or a run directory's last checkpoint.
    pub fn checkpoint_in(path: &Path) -> PathBuf {
        if path.is_dir() {
            Self::at(path).last_checkpoint()
        } else {
            path.to_path_buf()
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn config_file(&self) -> PathBuf {
        self.root.join(CONFIG)
    }

    /// The config the run trains with; a broken file is an error, never a silent default.
    pub fn read_config(&self) -> Result<RunConfig, ConfigError> {
        RunConfig::load(&self.config_file())
    }

    pub fn metrics_file(&self) -> PathBuf {
        self.root.join(METRICS)
    }

    pub fn read_metrics(&self) -> anyhow::Result<Vec<MetricsLine>> {
        let path = self.metrics_file();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        text.lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(i, line)| {
                serde_json::from_str(line)
                    .with_context(|| format!("{}:{}: not a metrics line", path.display(), i + 1))
            })
            .collect()
    }

    /// Cuts `metrics.jsonl` back to the lines of steps up to `step` (a resumed run's
    /// checkpoint): the lines a run wrote after its last checkpoint (it was killed, or the disk
    /// filled) and a line cut off halfway would otherwise stand beside the resumed run's own.
    /// Cut in place (the file keeps its identity). Says what it removed, if anything.
    pub fn cut_metrics_after(&self, step: usize) -> anyhow::Result<Option<String>> {
        let path = self.metrics_file();
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let (mut keep, mut later, mut half) = (0usize, 0usize, false);
        let mut offset = 0;
        for line in bytes.split_inclusive(|&b| b == b'\n') {
            let complete = line.ends_with(b"\n");
            let after = serde_json::from_slice::<MetricsLine>(line)
                .map(|m| m.step > step)
                .unwrap_or(false);
            offset += line.len();
            match (complete, after) {
                (false, _) => half = true,
                (true, true) => later += 1,
                // A line at or before the checkpoint after one that is cut goes too: the file
                // is cut back, never patched.
                (true, false) if later == 0 => keep = offset,
                (true, false) => later += 1,
            }
        }
        if keep == bytes.len() {
            return Ok(None);
        }
        OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|file| file.set_len(keep as u64))
            .with_context(|| format!("cannot cut {} back", path.display()))?;
        let half = if half {
            " and a line cut off halfway"
        } else {
            ""
        };
        Ok(Some(format!(
            "{}: removed {later} line(s) written after the checkpoint of step {step}{half}",
            path.display()
        )))
    }

    /// Cuts the TensorBoard event files back to `step`, as `cut_metrics_after` does
    /// `metrics.jsonl`; one line per file changed.
    pub fn cut_tensorboard_after(&self, step: usize) -> anyhow::Result<Vec<String>> {
        let dir = self.tb_dir();
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(Vec::new());
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(super::tensorboard::FILE_PREFIX))
                    && p.is_file()
            })
            .collect();
        files.sort();
        let mut cut = Vec::new();
        for path in files {
            let (removed, broken) = super::tensorboard::cut_after(&path, step as u64)?;
            if removed > 0 || broken {
                let broken = if broken {
                    " and a record cut off halfway"
                } else {
                    ""
                };
                cut.push(format!(
                    "{}: removed {removed} event(s) written after the checkpoint of step \
                     {step}{broken}",
                    path.display()
                ));
            }
        }
        Ok(cut)
    }

    /// Appends one line to `log.txt` (a run's fatal error, after its recorder is gone); a log
    /// that cannot be written costs nothing else.
    pub fn append_log(&self, message: &str) {
        use std::io::Write;
        if let Ok(mut log) = std::fs::OpenOptions::new()
            .append(true)
            .open(self.log_file())
        {
            let _ = writeln!(log, "[{}] {message}", utc_timestamp());
        }
    }

    pub fn log_file(&self) -> PathBuf {
        self.root.join(LOG)
    }

    pub fn last_checkpoint(&self) -> PathBuf {
        self.root.join(CHECKPOINTS).join(LAST)
    }

    pub fn best_checkpoint(&self) -> PathBuf {
        self.root.join(CHECKPOINTS).join(BEST)
    }

    /// The checkpoints saved so far, sorted (best before last).
    pub fn checkpoints(&self) -> Vec<PathBuf> {
        let mut found = files_in(&self.root.join(CHECKPOINTS), "safetensors");
        found.sort();
        found
    }

    pub fn heatmaps_dir(&self) -> PathBuf {
        self.root.join(HEATMAPS)
    }

    /// `heatmaps/epoch-NNN`: the probe maps after `epoch` epochs (0: before training).
    pub fn epoch_heatmaps(&self, epoch: usize) -> PathBuf {
        self.heatmaps_dir().join(format!("epoch-{epoch:03}"))
    }

    /// The epochs that have maps, in order, with their folders.
    pub fn heatmap_epochs(&self) -> Vec<(usize, PathBuf)> {
        let Ok(entries) = std::fs::read_dir(self.heatmaps_dir()) else {
            return Vec::new();
        };
        let mut found: Vec<(usize, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let epoch = name.strip_prefix("epoch-")?.parse().ok()?;
                Some((epoch, e.path()))
            })
            .collect();
        found.sort();
        found
    }

    /// The probe images' stems in an epoch folder (one `<stem>.json` record each), sorted.
    pub fn probe_stems(epoch_dir: &Path) -> Vec<String> {
        let mut stems: Vec<String> = files_in(epoch_dir, "json")
            .iter()
            .filter_map(|p| Some(p.file_stem()?.to_string_lossy().into_owned()))
            .collect();
        stems.sort();
        stems
    }

    /// `tb/`: the TensorBoard event files.
    pub fn tb_dir(&self) -> PathBuf {
        self.root.join(TB)
    }

    pub fn eval_dir(&self) -> PathBuf {
        self.root.join(EVAL)
    }

    /// Where cached features of evaluated models go.
    pub fn eval_features_dir(&self) -> PathBuf {
        self.eval_dir().join("features")
    }

    /// `eval/<name>.json`: one evaluation's full result.
    pub fn eval_result_file(&self, name: &str) -> PathBuf {
        self.eval_dir().join(format!("{name}.json"))
    }

    /// `eval/results.jsonl`: a summary line per evaluation, appended.
    pub fn eval_results_log(&self) -> PathBuf {
        self.eval_dir().join("results.jsonl")
    }

    /// The saved evaluation results, in file-name order.
    pub fn eval_result_files(&self) -> Vec<PathBuf> {
        let mut files = files_in(&self.eval_dir(), "json");
        files.sort();
        files
    }

    /// Appenders for the run's metrics and log, and a new TensorBoard event file.
    pub fn recorder(&self) -> anyhow::Result<RunRecorder> {
        let append = |path: PathBuf| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("cannot open {}", path.display()))
        };
        let mut recorder = RunRecorder {
            files: Some((append(self.metrics_file())?, append(self.log_file())?)),
            tb: None,
        };
        match EventWriter::create(&self.tb_dir()) {
            Ok(writer) => recorder.tb = Some(writer),
            Err(error) => recorder.tb_failed(&error),
        }
        Ok(recorder)
    }
}

/// Run directories under `runs_dir` that hold checkpoints, newest first, with their checkpoints.
pub fn runs_with_checkpoints(runs_dir: &Path) -> Vec<(RunDir, Vec<PathBuf>)> {
    let Ok(entries) = std::fs::read_dir(runs_dir) else {
        return Vec::new();
    };
    let mut runs: Vec<(std::time::SystemTime, RunDir, Vec<PathBuf>)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let run = RunDir::at(e.path());
            let checkpoints = run.checkpoints();
            let modified = e.metadata().and_then(|m| m.modified()).ok()?;
            (!checkpoints.is_empty()).then_some((modified, run, checkpoints))
        })
        .collect();
    runs.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.cmp(&a.1)));
    runs.into_iter().map(|(_, run, c)| (run, c)).collect()
}

fn files_in(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == extension))
        .collect()
}

/// What a training run appends to its directory.
pub struct RunRecorder {
    /// (metrics.jsonl, log.txt); None on the nodes of a multi-node run that do not write it.
    files: Option<(File, File)>,
    /// The TensorBoard copy of the metrics and probe maps; None when discarding, and from its
    /// first failure on.
    tb: Option<EventWriter>,
}

impl RunRecorder {
    /// Writes nothing: node R > 0 of a multi-node run, where node 0 writes the run.
    pub fn discarding() -> Self {
        Self {
            files: None,
            tb: None,
        }
    }

    /// Appends the line to metrics.jsonl (a failure is the run's error) and its values to
    /// TensorBoard (see `with_tb`).
    pub fn metrics(&mut self, line: &MetricsLine) -> anyhow::Result<()> {
        if let Some((metrics, _)) = &mut self.files {
            writeln!(metrics, "{}", serde_json::to_string(line)?)?;
        }
        let step = line.step as u64;
        self.with_tb(|tb| {
            tb_scalars(line)
                .into_iter()
                .try_for_each(|(tag, value)| tb.scalar(tag, step, value as f32))
        });
        Ok(())
    }

    /// Every PNG in `dir` (an epoch's probe maps, `heatmaps/epoch-NNN`), in name order, as a
    /// TensorBoard image tagged `probe/<file stem>` at `step`.
    pub fn images(&mut self, step: usize, dir: &Path) {
        let mut pngs = files_in(dir, "png");
        pngs.sort();
        self.with_tb(|tb| {
            pngs.iter().try_for_each(|path| {
                let stem = path.file_stem().unwrap_or_default().to_string_lossy();
                tb.image(&format!("probe/{stem}"), step as u64, &std::fs::read(path)?)
            })
        });
    }

    /// Runs a TensorBoard write. TensorBoard is a viewer's copy of what metrics.jsonl and
    /// heatmaps/ hold, so its failure must not cost a run hours in: it is reported once, on the
    /// terminal and in log.txt, and the run goes on without it.
    fn with_tb(&mut self, write: impl FnOnce(&mut EventWriter) -> std::io::Result<()>) {
        let Some(tb) = &mut self.tb else {
            return;
        };
        if let Err(error) = write(tb) {
            let error =
                anyhow::Error::new(error).context(format!("cannot write {}", tb.path().display()));
            self.tb_failed(&error);
        }
    }

    fn tb_failed(&mut self, error: &anyhow::Error) {
        self.tb = None;
        let message = format!(
            "TensorBoard: {error:#}; the run goes on without it (metrics.jsonl and heatmaps/ \
             have everything)"
        );
        tracing::warn!("{message}");
        self.log(&message);
    }

    pub fn log(&mut self, message: &str) {
        // The log is a convenience copy of what the terminal shows; never fail a run over it.
        if let Some((_, log)) = &mut self.files {
            let _ = writeln!(log, "[{}] {message}", utc_timestamp());
        }
    }
}

/// A metrics line's values for TensorBoard, each tagged with its field's name in metrics.jsonl;
/// fields the line lacks are left out. The one place fields become tags.
fn tb_scalars(line: &MetricsLine) -> Vec<(&'static str, f64)> {
    [
        ("loss", line.loss),
        ("val_loss", line.val_loss),
        ("lr", line.lr),
        ("img_per_s", line.img_per_s),
        ("target_var", line.target_var),
        ("pred_var", line.pred_var),
        ("grad_norm", line.grad_norm),
    ]
    .into_iter()
    .filter_map(|(tag, value)| Some((tag, value?)))
    .collect()
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
            RunDir::of_checkpoint(Path::new("runs/x/checkpoints/last.safetensors")),
            Some(RunDir::at("runs/x"))
        );
        assert_eq!(
            RunDir::of_checkpoint(Path::new("elsewhere/last.safetensors")),
            None
        );
    }

    #[test]
    fn runs_started_at_once_get_a_directory_each() {
        let runs = tempfile::tempdir().unwrap();
        let config = RunConfig::default();
        let roots: Vec<PathBuf> = std::thread::scope(|scope| {
            let started: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| RunDir::create(runs.path(), "same", &config).unwrap()))
                .collect();
            started
                .into_iter()
                .map(|run| run.join().unwrap().root().to_path_buf())
                .collect()
        });
        let mut unique = roots.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 8, "{roots:?}");
        for root in &roots {
            assert!(root.starts_with(runs.path()));
            assert_eq!(RunDir::at(root).read_config().unwrap(), config);
        }
        let error = RunDir::create(runs.path(), "../outside", &config).unwrap_err();
        assert!(error.to_string().contains("one folder name"), "{error}");
        assert!(!runs.path().parent().unwrap().join("outside").exists());
    }

    #[test]
    fn metrics_after_the_checkpoint_and_a_half_line_are_cut_on_resume() {
        let runs = tempfile::tempdir().unwrap();
        let run = RunDir::create(runs.path(), "t", &RunConfig::default()).unwrap();
        let mut recorder = run.recorder().unwrap();
        for step in [1, 2, 3, 4] {
            let line = MetricsLine {
                step,
                loss: Some(1.0),
                ..MetricsLine::default()
            };
            recorder.metrics(&line).unwrap();
        }
        drop(recorder);
        let mut file = OpenOptions::new()
            .append(true)
            .open(run.metrics_file())
            .unwrap();
        file.write_all(br#"{"step": 5, "epo"#).unwrap();
        let said = run
            .cut_metrics_after(2)
            .unwrap()
            .expect("something was cut");
        assert!(said.contains("removed 2 line(s)"), "{said}");
        assert!(said.contains("step 2 and a line cut off halfway"), "{said}");
        let steps: Vec<usize> = run.read_metrics().unwrap().iter().map(|m| m.step).collect();
        assert_eq!(steps, [1, 2]);
        assert_eq!(
            run.cut_metrics_after(2).unwrap(),
            None,
            "nothing more to cut"
        );
        // The writer of the resumed run appends after the cut.
        let line = MetricsLine {
            step: 3,
            ..MetricsLine::default()
        };
        run.recorder().unwrap().metrics(&line).unwrap();
        let steps: Vec<usize> = run.read_metrics().unwrap().iter().map(|m| m.step).collect();
        assert_eq!(steps, [1, 2, 3]);
    }

    #[test]
    fn writers_and_readers_meet() {
        let runs = tempfile::tempdir().unwrap();
        let config = RunConfig::default();
        let run = RunDir::create(runs.path(), "t", &config).unwrap();
        assert_eq!(run.read_config().unwrap(), config);
        let line = MetricsLine {
            step: 3,
            epoch: 0,
            loss: Some(1.5),
            pred_var: Some(0.25),
            ..MetricsLine::default()
        };
        run.recorder().unwrap().metrics(&line).unwrap();
        assert_eq!(run.read_metrics().unwrap(), [line]);
        assert!(RunDir::resumable(run.root()).is_err(), "no checkpoint yet");
        for epoch in [10, 2, 0] {
            let dir = run.epoch_heatmaps(epoch);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("01-b.json"), "{}").unwrap();
            std::fs::write(dir.join("00-a.json"), "{}").unwrap();
            std::fs::write(dir.join("00-a.cosine.png"), "").unwrap();
        }
        let epochs: Vec<usize> = run.heatmap_epochs().into_iter().map(|(e, _)| e).collect();
        assert_eq!(epochs, vec![0, 2, 10]);
        assert_eq!(
            RunDir::probe_stems(&run.heatmap_epochs()[0].1),
            vec!["00-a", "01-b"]
        );
        std::fs::write(run.last_checkpoint(), "x").unwrap();
        assert!(RunDir::resumable(run.root()).is_ok());
        assert_eq!(runs_with_checkpoints(runs.path())[0].0, run);
    }

    /// TensorBoard that cannot be written (here: a file where tb/ goes) is said once in log.txt
    /// and costs the run nothing.
    #[test]
    fn a_tensorboard_failure_is_logged_and_the_run_goes_on() {
        let runs = tempfile::tempdir().unwrap();
        let run = RunDir::create(runs.path(), "t", &RunConfig::default()).unwrap();
        std::fs::write(run.tb_dir(), "not a folder").unwrap();
        let mut recorder = run.recorder().unwrap();
        for step in [1, 2] {
            let line = MetricsLine {
                step,
                loss: Some(1.0),
                ..MetricsLine::default()
            };
            recorder.metrics(&line).unwrap();
        }
        recorder.images(2, &run.epoch_heatmaps(0));
        let log = std::fs::read_to_string(run.log_file()).unwrap();
        assert_eq!(log.matches("TensorBoard").count(), 1, "{log}");
        assert_eq!(run.read_metrics().unwrap().len(), 2);
    }

    #[test]
    fn a_broken_config_of_a_run_is_an_error() {
        let runs = tempfile::tempdir().unwrap();
        let run = RunDir::create(runs.path(), "t", &RunConfig::default()).unwrap();
        std::fs::write(run.config_file(), "(optim: (batch_size: 0))").unwrap();
        let e = run.read_config().unwrap_err().to_string();
        assert!(
            e.contains("config.ron") && e.contains("optim.batch_size"),
            "{e}"
        );
    }
}
