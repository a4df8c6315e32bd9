//! The Runs panel: a runs folder listed as it is (finished, failed, foreign and broken folders)
//! and a run that someone else writes — a training on another thread here, as a headless
//! process or a synced server folder would — followed live until it ends.

use std::path::Path;
use std::time::{Duration, SystemTime};

use egui_kittest::kittest::Queryable;
use kdlab_app::Tab;
use kdlab_engine::backend::BackendChoice;
use kdlab_engine::config::RunConfig;
use kdlab_engine::distill::{RunStart, TrainControl, TrainRequest, train};
use kdlab_engine::session::Session;
use kdlab_engine::session::run_status::RunStatus;
use kdlab_engine::session::runs::RunState;

use super::panels::{demo_app, harness, snapshot, step_until};

/// A run folder as kdlab writes it, trained at `base_lr`; `status` is its status.json.
fn write_run(dir: &Path, base_lr: f64, metrics: &[(usize, f64, Option<f64>)], status: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let config = RunConfig {
        name: "distil".into(),
        ..RunConfig::default()
    };
    let mut config = config;
    config.teacher.weights = Some("beitv2_base_patch16_224_pt1k".into());
    config.student.weights = Some("data2vec2_base_imagenet".into());
    config.optim.base_lr = base_lr;
    std::fs::write(dir.join("config.ron"), config.to_ron().unwrap()).unwrap();
    let lines: String = metrics
        .iter()
        .map(|(step, loss, val)| {
            let val = val.map_or(String::new(), |v| format!(",\"val_loss\":{v}"));
            format!(
                "{{\"step\":{step},\"epoch\":{},\"loss\":{loss},\"lr\":{}{val}}}\n",
                step / 20,
                1e-4 * *step as f64 / 50.0
            )
        })
        .collect();
    std::fs::write(dir.join("metrics.jsonl"), lines).unwrap();
    std::fs::write(dir.join("status.json"), status).unwrap();
}

#[test]
fn the_runs_folder_is_listed_as_it_is_and_a_run_opens_with_its_curves() {
    // Shown in the picture: a fixed folder, made afresh.
    let runs = std::env::temp_dir().join("kdlab-runs-panel");
    let _ = std::fs::remove_dir_all(&runs);
    write_run(
        &runs.join("distil-20261201-101500"),
        5e-4,
        &[
            (10, 0.91, None),
            (20, 0.62, Some(0.60)),
            (30, 0.48, None),
            (40, 0.41, Some(0.43)),
            (50, 0.37, Some(0.39)),
        ],
        r#"{"state": "finished", "step": 50, "at": "20261201-113000"}"#,
    );
    write_run(
        &runs.join("distil-20261202-090000"),
        1e-3,
        &[(10, 0.95, None), (20, 3.1, None)],
        r#"{"state": "failed", "at": "20261202-091000", "message": "the loss became NaN by step 24 (epoch 1); the run stopped and the last good checkpoint is kept."}"#,
    );
    std::fs::create_dir_all(runs.join("notes")).unwrap();
    std::fs::write(runs.join("notes/todo.txt"), "compare runs").unwrap();
    // A run of an older kdlab (no status.json), its config broken, a line of garbage.
    let old = runs.join("old-20261130-080000");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(old.join("config.ron"), "(name: \"old\", seed: ").unwrap();
    std::fs::write(
        old.join("metrics.jsonl"),
        "{\"step\":5,\"epoch\":0,\"loss\":1.2}\nnot json\n",
    )
    .unwrap();
    let long_ago = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_000_000);
    for file in ["config.ron", "metrics.jsonl"] {
        let f = std::fs::File::options()
            .append(true)
            .open(old.join(file))
            .unwrap();
        f.set_modified(long_ago).unwrap();
    }

    let mut app = demo_app(&runs);
    app.tab = Tab::Runs;
    let mut harness = harness(app);
    step_until(&mut harness, Duration::from_secs(10), |app| {
        app.runs.runs.len() == 4
    });
    let listed = &harness.state().runs.runs;
    let names: Vec<&str> = listed.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "distil-20261201-101500",
            "distil-20261202-090000",
            "notes",
            "old-20261130-080000"
        ]
    );
    assert!(!listed[2].is_run);
    // What sets the two runs apart; the others have no readable config.
    assert_eq!(
        harness.state().runs.differences,
        [
            vec!["optim.base_lr = 0.0005".to_string()],
            vec!["optim.base_lr = 0.001".to_string()],
            vec![],
            vec![]
        ]
    );
    assert_eq!(listed[3].state, RunState::Unknown);
    harness.get_by_label_contains("not a kdlab run");
    // The newest run is followed at once: its whole error above its curves, cut in the list.
    assert_eq!(
        harness.state().runs.selected.as_deref(),
        Some(runs.join("distil-20261202-090000").as_path())
    );
    harness.get_by_label_contains("good checkpoint is kept.");
    assert_eq!(
        harness
            .get_all_by_label_contains("failed: the loss became NaN")
            .count(),
        2
    );
    harness.get_by_label_contains("1 line(s) of metrics.jsonl are not metrics lines");

    harness.get_by_label("distil-20261201-101500").click();
    step_until(&mut harness, Duration::from_secs(10), |app| {
        app.runs.followed.loss.len() == 5 && app.runs.followed.val_loss.len() == 3
    });
    snapshot(&mut harness, "runs_list");
}

/// A training that this panel did not start (another thread; a headless process or a server
/// behaves the same to it) is followed from its folder: listed as running, its curves grow, and
/// it turns finished.
#[test]
fn a_run_written_elsewhere_is_followed_live_until_it_ends() {
    let runs = tempfile::tempdir().unwrap();
    // A runs folder that does not exist yet is no error: the first run makes it.
    let mut app = demo_app(&runs.path().join("runs"));
    let mut config = app.setup.config.clone();
    config.log_every = 1;
    config.optim.max_steps = Some(12);
    app.tab = Tab::Runs;
    let mut harness = harness(app);
    harness.run();
    step_until(&mut harness, Duration::from_secs(10), |app| app.runs.listed);
    assert_eq!(harness.state().runs.listing_error, None);
    harness.get_by_label_contains("no runs yet");
    let runs_dir = runs.path().join("runs");
    let trainer = std::thread::spawn(move || {
        let session = Session::open(BackendChoice::Cpu).unwrap();
        let request = TrainRequest {
            start: RunStart::Fresh { runs_dir },
            config: Some(config),
            max_steps: None,
            control: TrainControl::default(),
            parallel: Default::default(),
        };
        train(&session, &request, &mut |_| {}).map(|f| f.outcome)
    });
    step_until(&mut harness, Duration::from_secs(60), |app| {
        app.runs
            .runs
            .first()
            .is_some_and(|r| matches!(r.state, RunState::Running { .. }))
    });
    // Trained by this process (another thread): said so.
    assert!(harness.get_all_by_label("running in this app").count() >= 1);
    let run = harness.state().runs.runs[0].dir.clone();
    harness.state_mut().runs.select(Some(run));
    step_until(&mut harness, Duration::from_secs(120), |app| {
        app.runs.followed.loss.len() >= 3
    });
    let outcome = trainer.join().unwrap();
    assert!(outcome.is_ok(), "{outcome:?}");
    step_until(&mut harness, Duration::from_secs(10), |app| {
        matches!(
            app.runs.runs[0].state,
            RunState::Ended(RunStatus::ReachedMaxSteps { step: 12, .. })
        ) && app.runs.followed.loss.len() >= 12
    });
    assert!(
        !harness.state().runs.followed.log.is_empty(),
        "the run's log"
    );
}
