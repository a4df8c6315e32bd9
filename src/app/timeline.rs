//! A run's saved per-epoch heatmaps (`heatmaps/epoch-NNN/<stem>.json`), for the Inspect timeline.

use std::path::{Path, PathBuf};

use crate::distill::probe::heatmaps_dir;

/// The epochs that have maps, in order, with their folders.
pub fn epochs(run_dir: &Path) -> Vec<(usize, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(heatmaps_dir(run_dir)) else {
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

/// The probe images' stems in an epoch folder (one `.json` each), sorted.
pub fn probe_stems(epoch_dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(epoch_dir) else {
        return Vec::new();
    };
    let mut stems: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".json").map(str::to_string)
        })
        .collect();
    stems.sort();
    stems
}

/// Run directories under `runs_dir` that hold checkpoints, newest first, with their checkpoints.
pub fn runs_with_checkpoints(runs_dir: &Path) -> Vec<(PathBuf, Vec<PathBuf>)> {
    let Ok(entries) = std::fs::read_dir(runs_dir) else {
        return Vec::new();
    };
    let mut runs: Vec<(std::time::SystemTime, PathBuf, Vec<PathBuf>)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let dir = e.path();
            let mut checkpoints: Vec<PathBuf> = std::fs::read_dir(dir.join("checkpoints"))
                .ok()?
                .filter_map(Result::ok)
                .map(|c| c.path())
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .collect();
            checkpoints.sort();
            let modified = e.metadata().and_then(|m| m.modified()).ok()?;
            (!checkpoints.is_empty()).then_some((modified, dir, checkpoints))
        })
        .collect();
    runs.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.cmp(&a.1)));
    runs.into_iter().map(|(_, dir, c)| (dir, c)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_epochs_and_probe_stems_in_order() {
        let run = tempfile::tempdir().unwrap();
        for epoch in [10, 2, 0] {
            let dir = run.path().join(format!("heatmaps/epoch-{epoch:03}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("01-b.json"), "{}").unwrap();
            std::fs::write(dir.join("00-a.json"), "{}").unwrap();
            std::fs::write(dir.join("00-a.cosine.png"), "").unwrap();
        }
        let found: Vec<usize> = epochs(run.path()).into_iter().map(|(e, _)| e).collect();
        assert_eq!(found, vec![0, 2, 10]);
        assert_eq!(probe_stems(&epochs(run.path())[0].1), vec!["00-a", "01-b"]);
    }
}
