//! The runs of a folder as someone looking at them sees them — the app's runs browser, a
//! headless run followed from another process or machine: what each run is (state, where it
//! stands, its models) from what its folder says, and its metrics read as they grow.
//!
//! Everything here reads files that another process may be writing, or that an older kdlab (or
//! something else entirely) left: a half-written line, a missing file, a broken config are facts
//! to show, never errors that hide the rest.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::run_dir::{MetricsLine, RunDir};
use super::run_status::{self, RunStatus};
use crate::distill::checkpoint::{TRAIN_STATE_KEY, TrainState};

/// How recently a folder must have changed for a run whose lock this machine cannot see (a
/// network mount, a synced copy) to count as being written.
pub const ACTIVE_WITHIN: Duration = Duration::from_secs(120);

/// What a run is doing, as far as its folder tells.
#[derive(Debug, Clone, PartialEq)]
pub enum RunState {
    /// A process holds the run's lock (this machine, or one whose locks reach this folder).
    Running {
        pid: Option<u32>,
        host: Option<String>,
    },
    /// Nobody here holds its lock, but the folder changed `ago` (seconds) ago: written elsewhere
    /// (a server's run folder mounted or synced).
    Active { ago: u64 },
    /// It ended, and says how.
    Ended(RunStatus),
    /// It says it is running, but nothing holds its lock or changes its folder: the process was
    /// killed or its machine stopped. Resume continues from its last checkpoint.
    Abandoned,
    /// A run of a kdlab that wrote no `status.json`: only its files tell what it did.
    Unknown,
}

/// One run folder, summarised.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    pub dir: PathBuf,
    pub name: String,
    pub state: RunState,
    /// From the last metrics line.
    pub step: Option<usize>,
    pub epoch: Option<usize>,
    pub loss: Option<f64>,
    pub val_loss: Option<f64>,
    /// When the run started (`status.json`'s `since` while it runs, else its folder's UTC
    /// stamp), as `YYYYMMDD-HHMMSS`.
    pub started: Option<String>,
    /// The models, as the config names them (a path's file name, or a hub name).
    pub teacher: Option<String>,
    pub student: Option<String>,
    /// Every field of its config, flattened (`optim.base_lr` → `0.0005`), for telling runs apart
    /// (`differences`); empty when the config cannot be read.
    pub settings: BTreeMap<String, String>,
    /// Whether the folder is a kdlab run at all (foreign folders are listed, with why not).
    pub is_run: bool,
    /// What is wrong with the folder (a broken config, unreadable metrics lines, not a run).
    pub problems: Vec<String>,
}

impl RunSummary {
    /// A folder before anything in it was read: named after it, nothing known.
    pub fn of_folder(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            name: dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            state: RunState::Unknown,
            step: None,
            epoch: None,
            loss: None,
            val_loss: None,
            started: None,
            teacher: None,
            student: None,
            settings: BTreeMap::new(),
            is_run: true,
            problems: Vec::new(),
        }
    }
}

/// The folders of `runs_dir` (hidden ones left out), by name.
fn run_folders(runs_dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(runs_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .filter(|p| {
            !p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'))
        })
        .collect();
    dirs.sort();
    Ok(dirs)
}

/// Every folder in `runs_dir`, summarised, by name. A folder that is no run is listed with why.
pub fn list_runs(runs_dir: &Path) -> std::io::Result<Vec<RunSummary>> {
    Ok(run_folders(runs_dir)?
        .iter()
        .map(|d| summarize(d))
        .collect())
}

/// A runs folder listed again and again (the app's Runs panel, once a second): a run whose
/// files did not change since the last listing and that has ended is not read again — only the
/// live ones are (their state depends on the clock and the lock), and the new or changed ones.
#[derive(Debug, Default)]
pub struct RunsFolder {
    known: std::collections::HashMap<PathBuf, (FilesStamp, RunSummary)>,
}

/// The size and time of each file a summary reads (`None`: not there).
type FilesStamp = Vec<Option<(u64, SystemTime)>>;

impl RunsFolder {
    pub fn list(&mut self, runs_dir: &Path) -> std::io::Result<Vec<RunSummary>> {
        let dirs = run_folders(runs_dir)?;
        self.known.retain(|dir, _| dirs.contains(dir));
        Ok(dirs
            .into_iter()
            .map(|dir| {
                let stamp = files_stamp(&dir);
                match self.known.get(&dir) {
                    Some((known, summary))
                        if *known == stamp && matches!(summary.state, RunState::Ended(_)) =>
                    {
                        summary.clone()
                    }
                    _ => {
                        let summary = summarize(&dir);
                        self.known.insert(dir, (stamp, summary.clone()));
                        summary
                    }
                }
            })
            .collect())
    }
}

fn files_stamp(dir: &Path) -> FilesStamp {
    let run = RunDir::at(dir);
    [
        run.config_file(),
        run.metrics_file(),
        run.log_file(),
        dir.join(run_status::STATUS),
    ]
    .iter()
    .map(|p| {
        let m = std::fs::metadata(p).ok()?;
        Some((m.len(), m.modified().ok()?))
    })
    .collect()
}

/// One run folder as it is now.
pub fn summarize(dir: &Path) -> RunSummary {
    let run = RunDir::at(dir);
    let mut summary = RunSummary::of_folder(dir);
    let has = |p: PathBuf| p.is_file();
    if !has(run.config_file()) && !has(run.metrics_file()) && !has(dir.join(run_status::STATUS)) {
        summary.is_run = false;
        summary
            .problems
            .push("not a kdlab run: no config.ron, metrics.jsonl or status.json".into());
        return summary;
    }
    // Parsed, not checked: a run's models are worth showing even where its data folder is gone.
    let config = std::fs::read_to_string(run.config_file())
        .map_err(|e| format!("config.ron: {e}"))
        .and_then(|text| {
            ron::from_str::<crate::config::RunConfig>(&text)
                .map_err(|e| format!("config.ron:{}: {}", e.span.start.line, e.code))
        });
    match config {
        Ok(config) => {
            // A hub name as written; a path by its file name; no weights: a random model.
            let model = |weights: &Option<PathBuf>| {
                let named = weights.as_ref().map(|w| {
                    let text = w.to_string_lossy();
                    match w.file_name() {
                        Some(file) if !text.starts_with("hf:") => {
                            file.to_string_lossy().into_owned()
                        }
                        _ => text.into_owned(),
                    }
                });
                Some(named.unwrap_or_else(|| "random".into()))
            };
            summary.teacher = model(&config.teacher.weights);
            summary.student = model(&config.student.weights);
            if let Ok(json) = serde_json::to_value(&config) {
                flatten(&json, String::new(), &mut summary.settings);
            }
        }
        Err(e) if run.config_file().exists() => summary.problems.push(e),
        Err(_) => summary.problems.push("no config.ron".into()),
    }
    let (lines, bad) = read_metrics_leniently(&run.metrics_file());
    if bad > 0 {
        summary.problems.push(format!(
            "{bad} line(s) of metrics.jsonl are not metrics lines"
        ));
    }
    summary.step = lines.last().map(|l| l.step);
    summary.epoch = lines.last().map(|l| l.epoch);
    summary.loss = lines.iter().rev().find_map(|l| l.loss);
    summary.val_loss = lines.iter().rev().find_map(|l| l.val_loss);
    let status = run_status::read_status(&run);
    summary.started = match &status {
        Some(RunStatus::Running { since, .. }) => Some(since.clone()),
        _ => stamp_of(&summary.name),
    };
    summary.state = state_of(&run, status);
    summary
}

/// Fields that tell nothing about the experiment: the run's own name, and what the download of
/// a named model recorded.
const NOT_SETTINGS: [&str; 3] = ["name", "teacher.fetched", "student.fetched"];

fn flatten(value: &serde_json::Value, path: String, out: &mut BTreeMap<String, String>) {
    if NOT_SETTINGS
        .iter()
        .any(|skip| path == *skip || path.starts_with(&format!("{skip}.")))
    {
        return;
    }
    match value {
        serde_json::Value::Object(fields) => {
            for (key, field) in fields {
                let path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                flatten(field, path, out);
            }
        }
        serde_json::Value::String(text) => {
            out.insert(path, text.clone());
        }
        other => {
            out.insert(path, other.to_string());
        }
    }
}

/// For each run, the settings in which the runs with a readable config do not all agree, as
/// `field = value` (the fields every run shares are left out): what sets a run apart.
pub fn differences(runs: &[RunSummary]) -> Vec<Vec<String>> {
    let configured: Vec<&RunSummary> = runs.iter().filter(|r| !r.settings.is_empty()).collect();
    let fields: std::collections::BTreeSet<&String> =
        configured.iter().flat_map(|r| r.settings.keys()).collect();
    let differing: Vec<&String> = fields
        .into_iter()
        .filter(|field| {
            let first = configured[0].settings.get(*field);
            configured.iter().any(|r| r.settings.get(*field) != first)
        })
        .collect();
    runs.iter()
        .map(|run| match run.settings.is_empty() {
            true => Vec::new(),
            false => differing
                .iter()
                .map(|field| {
                    let value = run.settings.get(*field).map_or("–", String::as_str);
                    format!("{field} = {value}")
                })
                .collect(),
        })
        .collect()
}

/// The state from the lock, the status and how recently the folder changed.
fn state_of(run: &RunDir, status: Option<RunStatus>) -> RunState {
    let locked = run_status::is_locked(run) == Some(true);
    let ago = last_change(run).map(|t| t.as_secs());
    let recent = ago.is_some_and(|a| a < ACTIVE_WITHIN.as_secs());
    match status {
        // The lock says a process writes it; status.json says which (when it got that far).
        _ if locked => match status {
            Some(RunStatus::Running { pid, host, .. }) => RunState::Running {
                pid: Some(pid),
                host: Some(host),
            },
            _ => RunState::Running {
                pid: None,
                host: None,
            },
        },
        Some(status) if status.ended() => RunState::Ended(status),
        // Says running, nobody here holds it: written elsewhere, or dead.
        Some(_) if recent => RunState::Active {
            ago: ago.unwrap_or(0),
        },
        Some(_) => RunState::Abandoned,
        None if recent => RunState::Active {
            ago: ago.unwrap_or(0),
        },
        None => RunState::Unknown,
    }
}

/// How long ago the run's metrics, log or status last changed.
fn last_change(run: &RunDir) -> Option<Duration> {
    let newest = [
        run.metrics_file(),
        run.log_file(),
        run.root().join(run_status::STATUS),
    ]
    .iter()
    .filter_map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
    .max()?;
    Some(
        SystemTime::now()
            .duration_since(newest)
            .unwrap_or(Duration::ZERO),
    )
}

/// `<name>-YYYYMMDD-HHMMSS[-N]`: the stamp, if the folder name has one.
fn stamp_of(name: &str) -> Option<String> {
    let parts: Vec<&str> = name.rsplitn(4, '-').collect();
    // From the end: [N?, HHMMSS, YYYYMMDD, …] or [HHMMSS, YYYYMMDD, …].
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    let (date, time) = match parts.as_slice() {
        [n, time, date, ..]
            if digits(time, 6) && digits(date, 8) && n.bytes().all(|b| b.is_ascii_digit()) =>
        {
            (*date, *time)
        }
        [time, date, ..] if digits(time, 6) && digits(date, 8) => (*date, *time),
        _ => return None,
    };
    Some(format!("{date}-{time}"))
}

/// Every whole metrics line that parses; the count of those that do not (a line being written
/// is not whole yet, and is not counted).
pub fn read_metrics_leniently(path: &Path) -> (Vec<MetricsLine>, usize) {
    let Ok(bytes) = std::fs::read(path) else {
        return (Vec::new(), 0);
    };
    let mut lines = Vec::new();
    let mut bad = 0;
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        if !line.ends_with(b"\n") || line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<MetricsLine>(line) {
            Ok(l) => lines.push(l),
            Err(_) => bad += 1,
        }
    }
    (lines, bad)
}

/// The step of the run's last checkpoint (0 without one), read from its header alone.
pub fn last_step(run: &RunDir) -> usize {
    checkpoint_state(&run.last_checkpoint()).map_or(0, |s| s.step)
}

/// A checkpoint's training state, from the safetensors header only (not the tensors).
pub fn checkpoint_state(path: &Path) -> Option<TrainState> {
    let mut file = File::open(path).ok()?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).ok()?;
    let len = u64::from_le_bytes(len);
    // safetensors caps its header at 100 MB.
    if len > 100_000_000 {
        return None;
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).ok()?;
    let json: serde_json::Value = serde_json::from_slice(&header).ok()?;
    let state = json.get("__metadata__")?.get(TRAIN_STATE_KEY)?.as_str()?;
    serde_json::from_str(state).ok()
}

/// `metrics.jsonl` read as it grows: each `poll` returns the whole lines written since the last
/// one (a line still being written waits for its newline). A file that got shorter (a resume cut
/// it back) or was replaced starts over: `Poll::Restarted` carries all its lines.
#[derive(Debug)]
pub struct MetricsTail {
    path: PathBuf,
    /// Bytes consumed (whole lines only).
    offset: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Poll {
    /// Lines after the ones already returned.
    More(Vec<MetricsLine>),
    /// The file was cut back or replaced: every line it holds now.
    Restarted(Vec<MetricsLine>),
    /// The file is gone (not written yet, or the run folder was deleted).
    Missing,
}

impl MetricsTail {
    pub fn new(run: &RunDir) -> Self {
        Self {
            path: run.metrics_file(),
            offset: 0,
        }
    }

    pub fn poll(&mut self) -> Poll {
        let Ok(mut file) = File::open(&self.path) else {
            self.offset = 0;
            return Poll::Missing;
        };
        let len = file.metadata().map_or(0, |m| m.len());
        let restarted = len < self.offset;
        if restarted {
            self.offset = 0;
        }
        let mut bytes = Vec::new();
        if file.seek(SeekFrom::Start(self.offset)).is_err() || file.read_to_end(&mut bytes).is_err()
        {
            return Poll::More(Vec::new());
        }
        // Whole lines only; a line being written is read next time.
        let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        self.offset += whole as u64;
        let lines = bytes[..whole]
            .split(|&b| b == b'\n')
            .filter_map(|l| serde_json::from_slice::<MetricsLine>(l).ok())
            .collect();
        if restarted {
            Poll::Restarted(lines)
        } else {
            Poll::More(lines)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn line(step: usize, loss: f64) -> String {
        format!("{{\"step\":{step},\"epoch\":0,\"loss\":{loss}}}\n")
    }

    #[test]
    fn a_tail_returns_whole_lines_as_they_come_and_starts_over_after_a_cut() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::at(dir.path());
        let mut tail = MetricsTail::new(&run);
        assert_eq!(tail.poll(), Poll::Missing);
        let mut file = File::create(run.metrics_file()).unwrap();
        write!(file, "{}{}", line(1, 0.5), &line(2, 0.4)[..10]).unwrap();
        let Poll::More(first) = tail.poll() else {
            panic!()
        };
        assert_eq!(first.iter().map(|l| l.step).collect::<Vec<_>>(), [1]);
        // The rest of the half-written line arrives.
        write!(file, "{}", &line(2, 0.4)[10..]).unwrap();
        let Poll::More(second) = tail.poll() else {
            panic!()
        };
        assert_eq!(second.iter().map(|l| l.step).collect::<Vec<_>>(), [2]);
        assert_eq!(tail.poll(), Poll::More(Vec::new()));
        // A resume cuts the file back: the tail starts over.
        std::fs::write(run.metrics_file(), line(1, 0.5)).unwrap();
        let Poll::Restarted(all) = tail.poll() else {
            panic!()
        };
        assert_eq!(all.len(), 1);
        // The folder deleted while followed.
        drop(file);
        std::fs::remove_file(run.metrics_file()).unwrap();
        assert_eq!(tail.poll(), Poll::Missing);
    }

    #[test]
    fn a_folder_is_summarised_from_what_it_holds_and_foreign_ones_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let runs = dir.path();
        let foreign = runs.join("photos");
        std::fs::create_dir_all(&foreign).unwrap();
        std::fs::write(foreign.join("a.jpg"), b"x").unwrap();
        let old = runs.join("tiny-20261201-101500");
        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(old.join("config.ron"), "(name: \"tiny\", oops").unwrap();
        let metrics = format!("{}not json\n{}{{\"step\":3", line(1, 0.9), line(2, 0.7));
        std::fs::write(old.join("metrics.jsonl"), metrics).unwrap();
        let listed = list_runs(runs).unwrap();
        assert_eq!(listed.len(), 2);
        let photos = &listed[0];
        assert!(!photos.is_run);
        assert_eq!(
            photos.problems,
            ["not a kdlab run: no config.ron, metrics.jsonl or status.json"]
        );
        let tiny = &listed[1];
        assert!(tiny.is_run);
        assert_eq!((tiny.step, tiny.loss), (Some(2), Some(0.7)));
        assert_eq!(tiny.started.as_deref(), Some("20261201-101500"));
        // Just written: it counts as being written elsewhere (no lock, no status).
        assert!(
            matches!(tiny.state, RunState::Active { .. }),
            "{:?}",
            tiny.state
        );
        assert_eq!(tiny.problems.len(), 2, "{:?}", tiny.problems);
        assert!(tiny.problems[1].starts_with("1 line(s) of metrics.jsonl"));
    }

    #[test]
    fn what_sets_runs_apart_is_the_settings_they_do_not_share() {
        let run = |pairs: &[(&str, &str)]| RunSummary {
            settings: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..RunSummary::of_folder(Path::new("r"))
        };
        let runs = [
            run(&[("optim.base_lr", "0.0005"), ("seed", "42")]),
            run(&[("optim.base_lr", "0.001"), ("seed", "42")]),
            run(&[]),
        ];
        assert_eq!(
            differences(&runs),
            [
                vec!["optim.base_lr = 0.0005".to_string()],
                vec!["optim.base_lr = 0.001".to_string()],
                vec![],
            ]
        );
        let mut flat = BTreeMap::new();
        let json = serde_json::json!({"name": "a", "optim": {"base_lr": 0.001}, "teacher": {"fetched": {"x": 1}, "weights": "w"}});
        flatten(&json, String::new(), &mut flat);
        assert_eq!(
            flat.into_iter().collect::<Vec<_>>(),
            [
                ("optim.base_lr".to_string(), "0.001".to_string()),
                ("teacher.weights".to_string(), "w".to_string())
            ]
        );
    }

    #[test]
    fn a_folder_listed_again_reads_only_the_runs_that_changed_or_still_run() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("a-20261201-101500");
        std::fs::create_dir_all(&run).unwrap();
        let status = r#"{"state": "finished", "step": 1, "at": "20261201-110000"}"#;
        std::fs::write(run.join("status.json"), status).unwrap();
        let metrics = run.join("metrics.jsonl");
        std::fs::write(&metrics, line(1, 0.5)).unwrap();
        let mut folder = RunsFolder::default();
        assert_eq!(folder.list(dir.path()).unwrap()[0].loss, Some(0.5));
        // Same size, same time: an ended run is taken as it was (its file is not read again).
        let time = std::fs::metadata(&metrics).unwrap().modified().unwrap();
        std::fs::write(&metrics, line(1, 0.6)).unwrap();
        File::options()
            .append(true)
            .open(&metrics)
            .unwrap()
            .set_modified(time)
            .unwrap();
        assert_eq!(folder.list(dir.path()).unwrap()[0].loss, Some(0.5));
        // A line more: read again.
        std::fs::write(&metrics, line(1, 0.6) + &line(2, 0.4)).unwrap();
        let listed = folder.list(dir.path()).unwrap();
        assert_eq!((listed[0].step, listed[0].loss), (Some(2), Some(0.4)));
        // A folder removed is forgotten.
        std::fs::remove_dir_all(&run).unwrap();
        assert!(folder.list(dir.path()).unwrap().is_empty());
        assert!(folder.known.is_empty());
    }

    #[test]
    fn stamps_are_read_from_folder_names() {
        assert_eq!(
            stamp_of("tiny-20261208-033958").as_deref(),
            Some("20261208-033958")
        );
        assert_eq!(
            stamp_of("a-b-20261208-033958-2").as_deref(),
            Some("20261208-033958")
        );
        assert_eq!(stamp_of("photos"), None);
    }
}
