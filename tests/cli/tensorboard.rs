//! A run's TensorBoard event file (`runs/<run>/tb/`), read back with kdlab's reader — which
//! checks both masked CRC-32Cs of every record — against the files it mirrors: every number in
//! metrics.jsonl is a scalar tagged with its key at its line's step (to f32 precision), and every
//! PNG in heatmaps/epoch-NNN an image `probe/<stem>` at the step its record names.

use crate::common::*;
use kdlab_engine::session::RunDir;
use kdlab_testkit::tensorboard::{FILE_VERSION, TbData, TbEvent, event_files, read_events};

/// (tag, step, value), sorted by tag and step (stable: repeats keep their order).
type Scalars = Vec<(String, i64, f32)>;
/// (tag, step, width, height), sorted.
type Images = Vec<(String, i64, u32, u32)>;

/// What metrics.jsonl says, read as plain JSON: each number but `step` and `epoch` is a scalar.
fn scalars_in_metrics(run: &RunDir) -> Scalars {
    let text = std::fs::read_to_string(run.metrics_file()).unwrap();
    let mut scalars: Scalars = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let fields: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(line).unwrap();
        let step = fields["step"].as_i64().unwrap();
        for (key, value) in &fields {
            if let (false, Some(value)) = (key == "step" || key == "epoch", value.as_f64()) {
                scalars.push((key.clone(), step, value as f32));
            }
        }
    }
    sort_scalars(scalars)
}

fn sort_scalars(mut scalars: Scalars) -> Scalars {
    scalars.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    scalars
}

/// What heatmaps/ holds: each epoch's PNGs, at the step of the epoch's probe records.
fn images_in_heatmaps(run: &RunDir) -> Images {
    let mut images = Vec::new();
    for (epoch, dir) in run.heatmap_epochs() {
        let before = images.len();
        let stem = &RunDir::probe_stems(&dir)[0];
        let record: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("{stem}.json"))).unwrap(),
        )
        .unwrap();
        let step = record["step"].as_i64().unwrap();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|x| x == "png") {
                let (width, height) = image::image_dimensions(&path).unwrap();
                let name = path.file_stem().unwrap().to_string_lossy();
                images.push((format!("probe/{name}"), step, width, height));
            }
        }
        assert!(images.len() > before, "epoch {epoch} has maps");
    }
    images.sort();
    images
}

/// The event file's scalars and images, each image's PNG checked against the file on disk.
fn summaries(events: &[TbEvent]) -> (Scalars, Images) {
    let (mut scalars, mut images) = (Vec::new(), Vec::new());
    for event in events {
        for value in &event.values {
            match &value.data {
                TbData::Scalar(x) => scalars.push((value.tag.clone(), event.step, *x)),
                TbData::Image {
                    width,
                    height,
                    encoded,
                    ..
                } => {
                    assert_eq!(image::load_from_memory(encoded).unwrap().width(), *width);
                    images.push((value.tag.clone(), event.step, *width, *height));
                }
                TbData::Other => panic!("{}: a kind kdlab does not write", value.tag),
            }
        }
    }
    images.sort();
    (sort_scalars(scalars), images)
}

#[test]
fn a_run_writes_its_metrics_and_probe_maps_for_tensorboard() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), &assets(), "");
    let runs = dir.path().join("runs");
    train(&config, &runs, &[]);
    let run = RunDir::at(&run_dirs(&runs)[0]);

    let files = event_files(&run.tb_dir());
    assert_eq!(files.len(), 1, "one process trained: {files:?}");
    let events = read_events(&files[0]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(events[0].file_version.as_deref(), Some(FILE_VERSION));
    assert!(events[1..].iter().all(|e| e.values.len() == 1));

    let (scalars, images) = summaries(&events[1..]);
    let expected = scalars_in_metrics(&run);
    assert_eq!(scalars, expected);
    for tag in ["loss", "val_loss", "lr", "img_per_s"] {
        assert!(scalars.iter().any(|s| s.0 == tag), "{tag}: {scalars:?}");
    }
    assert_eq!(
        run.heatmap_epochs().len(),
        5,
        "epoch-000 (before training) to epoch-004"
    );
    assert_eq!(images, images_in_heatmaps(&run));
}

/// A resumed run adds a second file beside the first; together they hold every metrics line.
#[test]
fn a_resume_adds_a_second_event_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), &assets(), "");
    let runs = dir.path().join("runs");
    train(&config, &runs, &["--max-steps", "2"]);
    let run = RunDir::at(&run_dirs(&runs)[0]);
    let out = kdlab_cpu(&[
        "train",
        "--resume",
        run.root().to_str().unwrap(),
        "--max-steps",
        "4",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let files = event_files(&run.tb_dir());
    assert_eq!(files.len(), 2, "{files:?}");
    let events: Vec<TbEvent> = files
        .iter()
        .flat_map(|f| read_events(f).unwrap_or_else(|e| panic!("{e}")))
        .filter(|e| e.file_version.is_none())
        .collect();
    let (scalars, _) = summaries(&events);
    assert_eq!(scalars, scalars_in_metrics(&run));
}
