//! The Setup panel's checks, without a window.

use std::path::PathBuf;

use kdlab_app::setup_panel::problems;
use kdlab_engine::config::RunConfig;

#[test]
fn problems_name_their_field() {
    let mut config = RunConfig::default();
    config.data.train = PathBuf::from("/nonexistent/kdlab");
    config.optim.batch_size = 0;
    config.log_every = 0;
    let found = problems(&config);
    let fields: Vec<&str> = found.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, ["optim.batch_size", "log_every", "data.train"]);
}

/// A weights name is fetched when the run starts, so it is no missing file; a name kdlab does
/// not know is a problem of its field, with the closest names.
#[test]
fn weights_names_are_not_missing_files_and_unknown_names_are_named() {
    let mut config = RunConfig::default();
    config.teacher.weights = Some(PathBuf::from("hf:timm/vit_base_patch14_dinov2.lvd142m"));
    config.teacher.architecture = None;
    config.student.weights = Some(PathBuf::from("data2vec2_base_imagenet"));
    config.student.architecture = None;
    assert!(
        problems(&config)
            .iter()
            .all(|p| !p.field.ends_with("weights"))
    );

    config.student.weights = Some(PathBuf::from("data2vec2_base_imagenett"));
    config.teacher.weights = Some(PathBuf::from("hf:timm"));
    let found = problems(&config);
    let weights: Vec<(&str, &str)> = found
        .iter()
        .filter(|p| p.field.ends_with("weights"))
        .map(|p| (p.field.as_str(), p.message.as_str()))
        .collect();
    assert_eq!(weights.len(), 2, "{weights:?}");
    assert!(weights[0].1.contains("ORG/REPO"), "{weights:?}");
    assert!(
        weights[1]
            .1
            .contains("did you mean `data2vec2_base_imagenet`"),
        "{weights:?}"
    );
}

/// The Run panel's download row: file, bytes and a line in the log per file; the run's start
/// clears it.
#[test]
fn download_reports_make_the_run_panels_progress_row() {
    use kdlab_app::run_panel::RunProgress;
    use kdlab_app::training_job::JobMessage;
    use kdlab_engine::distill::Event;
    use kdlab_engine::session::fetch::Download;

    let mut progress = RunProgress::default();
    let report = |done, verifying| {
        JobMessage::Event(Event::Download(Download {
            file: "timm/vit_base_patch14_dinov2.lvd142m/model.safetensors".into(),
            done,
            total: Some(1000),
            resumed_from: 200,
            verifying,
        }))
    };
    progress.apply(report(200, false));
    progress.apply(report(600, false));
    let row = progress.download.as_ref().expect("a download row");
    assert_eq!((row.now.done, row.now.total), (600, Some(1000)));
    progress.apply(report(1000, true));
    let lines: Vec<&String> = progress.log.iter().collect();
    assert_eq!(lines.len(), 2, "one line per stage: {lines:?}");
    assert!(lines[0].starts_with("downloading timm/vit_base_patch14_dinov2.lvd142m/model.safetensors (resuming at 0.0 MB)"), "{lines:?}");
    assert!(lines[1].starts_with("verifying"), "{lines:?}");
    progress.apply(JobMessage::Event(Event::Started {
        run_dir: PathBuf::from("runs/x"),
        total_steps: 10,
        steps_per_epoch: 5,
        start_step: 0,
        train_images: 8,
        val_images: 0,
        parallel: None,
    }));
    assert!(progress.download.is_none());
}
