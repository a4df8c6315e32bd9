//! The run folder's TensorBoard files as TensorBoard reads them.

use kdlab_engine::config::RunConfig;
use kdlab_engine::session::{MetricsLine, RunDir, RunRecorder};
use kdlab_testkit::tensorboard::{TbData, event_files, read_events};

/// Each value of a metrics line becomes a TensorBoard scalar tagged with its JSON key, and
/// each PNG of an epoch folder an image; a discarding recorder writes neither.
#[test]
fn metrics_and_probe_maps_reach_tensorboard() {
    let runs = tempfile::tempdir().unwrap();
    let run = RunDir::create(runs.path(), "t", &RunConfig::default()).unwrap();
    let mut recorder = run.recorder().unwrap();
    let line: MetricsLine =
        serde_json::from_str(r#"{"step": 5, "epoch": 1, "loss": 0.5, "lr": 0.001}"#).unwrap();
    recorder.metrics(&line).unwrap();
    let maps = run.epoch_heatmaps(1);
    std::fs::create_dir_all(&maps).unwrap();
    image::RgbImage::new(4, 2)
        .save(maps.join("00-a.cosine.png"))
        .unwrap();
    recorder.images(5, &maps);
    RunRecorder::discarding().images(6, &maps);

    let files = event_files(&run.tb_dir());
    assert_eq!(files.len(), 1);
    let events = read_events(&files[0]).unwrap();
    let found: Vec<(i64, &str, &TbData)> = events[1..]
        .iter()
        .flat_map(|e| e.values.iter().map(|v| (e.step, v.tag.as_str(), &v.data)))
        .collect();
    assert_eq!(found.len(), 3, "{found:?}");
    assert_eq!(found[0], (5, "loss", &TbData::Scalar(0.5)));
    assert_eq!(found[1], (5, "lr", &TbData::Scalar(0.001)));
    assert_eq!((found[2].0, found[2].1), (5, "probe/00-a.cosine"));
    assert!(matches!(
        found[2].2,
        TbData::Image {
            width: 4,
            height: 2,
            colorspace: 3,
            ..
        }
    ));
}
