//! The desktop app driven through egui_kittest with the same `KdlabApp::ui` the window calls:
//! editing a field shows its validation, the demo run gets curve points and pauses, and Inspect
//! shows an asset's heat map and PCA views, Evaluate puts a run's student and teacher side by side.
//! Snapshots are in tests/snapshots/ (regenerate with
//! `UPDATE_SNAPSHOTS=1 cargo test --release -p kdlab-app --test app`); they render on lavapipe in CI.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kdlab_testkit as common;

use egui_kittest::kittest::Queryable;
use egui_kittest::{Harness, SnapshotOptions};
use kdlab_app::{KdlabApp, RunState, Tab};
use kdlab_engine::backend::{BackendChoice, Selected};
use kdlab_engine::config::RunConfig;
use kdlab_engine::distill::{RunStart, TrainControl, TrainRequest};
use kdlab_engine::session::Session;

pub(crate) const DEVICES: [&str; 3] = ["cuda: none", "wgpu: (test)", "cpu (flex)"];

/// The app's paths (the demo config, `runs`) are the repository root's, as a user starting
/// `kdlab` there has them; cargo runs this crate's tests in crates/kdlab-app. Every test sets
/// the same directory, so the order they run in does not matter.
pub(crate) fn at_repo_root() {
    std::env::set_current_dir(common::repo_root()).unwrap();
}

/// The app's snapshots, beside its crate (the tests run from the repository root).
pub(crate) fn snapshot(harness: &mut Harness<'_, KdlabApp>, name: &str) {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots");
    harness.snapshot_options(name, &SnapshotOptions::new().output_path(folder));
}

/// The demo config as the app opens it from the repository root.
pub(crate) fn demo_app(runs_dir: &Path) -> KdlabApp {
    at_repo_root();
    let mut app = KdlabApp::open(Some(Path::new("configs/demo.ron")))
        .with_detected_devices(DEVICES.iter().map(|d| d.to_string()).collect());
    app.set_backend(BackendChoice::Cpu);
    app.set_runs_dir(runs_dir);
    app
}

pub(crate) fn harness(app: KdlabApp) -> Harness<'static, KdlabApp> {
    Harness::builder()
        .with_size([1280.0, 800.0])
        .wgpu()
        .build_ui_state(|ui, app: &mut KdlabApp| app.ui(ui), app)
}

/// Steps the UI (workers wake it) until `done` or the timeout.
pub(crate) fn step_until(
    harness: &mut Harness<'_, KdlabApp>,
    timeout: Duration,
    done: impl Fn(&KdlabApp) -> bool,
) {
    let start = Instant::now();
    while !done(harness.state()) {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?}");
        harness.step();
        std::thread::sleep(Duration::from_millis(20));
    }
    harness.step();
}

#[test]
fn editing_a_field_shows_its_problem_beside_it_and_blocks_start() {
    // Shown in the picture, so a fixed path; nothing is written there.
    let app = demo_app(Path::new("runs"));
    let train = app.setup.config.data.train.display().to_string();
    let mut harness = harness(app);
    harness.run();
    assert!(harness.query_by_label_contains("does not exist").is_none());

    let field = harness.get_by(|node| {
        node.role() == egui::accesskit::Role::TextInput
            && node.value().as_deref() == Some(train.as_str())
    });
    field.focus();
    field.type_text("-missing");
    harness.run();
    let state = harness.state();
    assert_eq!(
        state.setup.config.data.train,
        PathBuf::from(format!("{train}-missing"))
    );
    harness.get_by_label_contains("does not exist");
    snapshot(&mut harness, "setup_validation");

    harness.get_by_label("Run").click();
    harness.run();
    harness.get_by_label_contains("Setup: data.train");
}

#[test]
fn every_problem_shows_beside_its_field_and_start_stays_disabled() {
    let mut app = demo_app(Path::new("runs"));
    app.setup
        .config
        .student
        .architecture
        .as_mut()
        .unwrap()
        .embed_dim = 62;
    app.setup
        .config
        .teacher
        .architecture
        .as_mut()
        .unwrap()
        .depth = 0;
    let mut harness = harness(app);
    harness.run();
    // Four problems, each beside the field it is about, named by the part of it.
    harness.get_by_label_contains("⚠ embed_dim: 62 does not split into num_heads 4");
    harness.get_by_label_contains("⚠ embed_dim: 62 is not a multiple of 4");
    harness
        .get_by_label_contains("⚠ embed_dim: the student's width 62 differs from the teacher's 64");
    harness.get_by_label_contains("⚠ depth: must be in 1..=1024");
    harness.get_by_label("Run").click();
    harness.run();
    harness.get_by_label_contains("Setup: teacher.architecture.depth");
    harness.get_by_label_contains("(and 3 more: see Setup)");
    harness.get_by_label("▶ Start").click();
    harness.run();
    assert_eq!(
        harness.state().run.progress.state,
        RunState::Idle,
        "Start is disabled while the config has problems"
    );
}

#[test]
fn the_demo_run_gets_curve_points_pauses_and_stops_with_a_checkpoint_on_close() {
    let runs = tempfile::tempdir().unwrap();
    let mut app = demo_app(runs.path());
    app.setup.config.log_every = 1;
    app.setup.config.optim.max_steps = Some(40);
    app.tab = Tab::Run;
    let mut harness = harness(app);
    harness.run();
    harness.get_by_label("▶ Start").click();
    step_until(&mut harness, Duration::from_secs(120), |app| {
        app.run.progress.loss.len() >= 2
    });

    harness.get_by_label("⏸ Pause").click();
    // Paused is what the loop says once it holds between batches (the batch in flight done),
    // with the step it holds at: from then on no step can happen, however long we look.
    step_until(&mut harness, Duration::from_secs(30), |app| {
        app.run.progress.state == RunState::Paused
    });
    let paused_at = harness.state().run.progress.step;
    for _ in 0..25 {
        harness.step();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(
            harness.state().run.progress.step,
            paused_at,
            "no steps while paused"
        );
    }
    assert!(harness.get_all_by_label_contains("paused").count() >= 1);

    harness.get_by_label("▶ Continue").click();
    step_until(&mut harness, Duration::from_secs(60), |app| {
        app.run.progress.step > paused_at
    });
    let progress = &harness.state().run.progress;
    assert!(
        progress.loss.len() >= 3 && progress.lr.len() >= 3,
        "the curves get points"
    );
    assert!(
        progress.pred_var.len() >= 3 && progress.target_var.len() >= 3,
        "the collapse watch gets points"
    );
    assert_eq!(
        progress.pred_var_floor,
        Some(0.01),
        "the config's collapse.min_pred_var"
    );
    let run_dir = progress
        .run_dir
        .clone()
        .expect("the run announced its directory");

    // Closing the window: the run stops with a checkpoint before the app goes.
    let mut app = harness.into_state();
    app.shut_down();
    assert!(run_dir.join("checkpoints/last.safetensors").exists());
    assert!(
        run_dir.join("heatmaps/epoch-000").is_dir(),
        "the probe set's maps before training"
    );
}

/// The Run panel's device count starts a data-parallel run (two CPU workers here) that trains
/// to its end like any other.
#[test]
fn the_device_count_picker_starts_a_two_worker_run() {
    let runs = tempfile::tempdir().unwrap();
    let mut app = demo_app(runs.path());
    app.setup.config.log_every = 1;
    app.setup.config.optim.max_steps = Some(3);
    app.tab = Tab::Run;
    let mut harness = harness(app);
    harness.run();
    assert!(
        harness.query_by_label("devices").is_some(),
        "the Run panel has a device count"
    );
    harness.state_mut().run.devices = Some(2);
    harness.get_by_label("▶ Start").click();
    step_until(&mut harness, Duration::from_secs(180), |app| {
        !app.run.is_active() && app.run.progress.step >= 3
    });
    let progress = &harness.state().run.progress;
    assert!(
        progress
            .log
            .iter()
            .any(|l| l.contains("data-parallel over 2 devices")),
        "{:?}",
        progress.log
    );
    assert_eq!(progress.loss.len(), 3, "a loss point per step");
    let run_dir = progress.run_dir.clone().unwrap();
    assert!(run_dir.join("checkpoints/last.safetensors").exists());
}

#[test]
fn inspect_shows_an_assets_heat_map_with_hover_and_pca() {
    let runs = tempfile::tempdir().unwrap();
    let app = demo_app(runs.path());
    let mut harness = harness(app);
    harness.run();
    harness.get_by_label("Inspect").click();
    step_until(&mut harness, Duration::from_secs(60), |app| {
        app.tab == Tab::Inspect && app.inspect.inspected().is_some()
    });
    harness.run();
    let image = harness.state().inspect.image.clone().unwrap();
    assert!(
        image.starts_with("assets"),
        "{} is a sample image",
        image.display()
    );
    harness.get_by_label("CLS token");
    snapshot(&mut harness, "inspect_map");

    // Hovering a patch names it and its value.
    let overlay = harness
        .get_all_by_role(egui::accesskit::Role::Image)
        .nth(1)
        .unwrap()
        .rect();
    harness.hover_at(overlay.min + (overlay.max - overlay.min) * 0.1);
    harness.run();
    harness.get_by_label_contains("patch row 0, column 0");

    harness.get_by_label("PCA").click();
    harness.run();
    harness.get_by_label("teacher");
    snapshot(&mut harness, "inspect_pca");

    // Attention: teacher and student maps of the mean over heads, then one head.
    harness.get_by_label("Attention").click();
    harness.run();
    harness.get_by_label_contains("CLS attention over the patches: mean of heads");
    harness.get_by_label("teacher");
    harness.get_by_label("student");
    snapshot(&mut harness, "inspect_attention");
    let inspected = harness.state().inspect.inspected().unwrap().clone();
    assert_eq!(
        inspected.attention.teacher.heads.len(),
        4,
        "the demo teacher's heads"
    );
    harness.state_mut().inspect.attention_view = kdlab_engine::inspect::AttentionView::Head(2);
    harness.run();
    harness.get_by_label_contains("CLS attention over the patches: head 2");

    // Layer CKA: the matrix with hover values and the picked cell.
    harness.get_by_label("Layer CKA").click();
    harness.run();
    harness.get_by_label_contains("linear CKA over this image's");
    let cka = &inspected.cka;
    assert!(
        cka.teacher_layers >= 2 && cka.student_layers >= 1,
        "{cka:?}"
    );
    assert!(
        cka.values.iter().all(|v| (-1e-5..=1.0 + 1e-5).contains(v)),
        "{cka:?}"
    );
    snapshot(&mut harness, "inspect_cka");
}

#[test]
fn evaluate_runs_knn_for_student_and_teacher_and_keeps_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let (train, val) = common::synthetic_folders(&dir.path().join("data"), 6, 3, false);
    let runs = dir.path().join("runs");
    // A run of the demo models on the labelled images, two steps long.
    let config = dir.path().join("demo.ron");
    let demo = std::fs::read_to_string(common::demo_config()).unwrap();
    let demo = common::replace_once(&demo, "train: \"../assets\"", &format!("train: {train:?}"));
    std::fs::write(&config, demo).unwrap();
    // The engine entry `kdlab train --max-steps 2` calls.
    let request = TrainRequest {
        start: RunStart::Fresh {
            runs_dir: runs.clone(),
        },
        config: Some(RunConfig::load(&config).unwrap()),
        max_steps: Some(2),
        control: TrainControl::default(),
        parallel: Default::default(),
    };
    kdlab_engine::distill::train(&Session::on(Selected::Cpu), &request, &mut |_| {}).unwrap();

    let mut app = demo_app(&runs);
    app.evaluate.settings.train = Some(train);
    app.evaluate.settings.val = Some(val);
    app.evaluate.settings.workers = 2;
    let mut harness = harness(app);
    harness.run();
    harness.get_by_label("Evaluate").click();
    harness.run();
    let checkpoint = harness.state().evaluate.checkpoint.clone();
    assert!(
        checkpoint.as_ref().is_some_and(|c| c.starts_with(&runs)),
        "the newest run's checkpoint is chosen: {checkpoint:?}"
    );
    harness.get_by_label("▶ Evaluate").click();
    step_until(&mut harness, Duration::from_secs(60), |app| {
        !app.evaluate.is_busy() && app.evaluate.results.len() == 2
    });
    let state = harness.state();
    assert_eq!(state.evaluate.error, None);
    let roles: Vec<&str> = state
        .evaluate
        .results
        .iter()
        .map(|r| r.model.name())
        .collect();
    assert_eq!(roles, ["student", "teacher"]);
    // The form's "teacher" row and the table's teacher row.
    assert_eq!(harness.get_all_by_label("teacher").count(), 2);
    harness.get_by_label("top-1");
    harness.get_by_label_contains("confusion");

    // A new app on the same runs shows the saved results of the run.
    let mut reopened = demo_app(&runs);
    reopened.evaluate.refresh(&runs);
    assert_eq!(reopened.evaluate.results.len(), 2);
}

/// A pair of two families in Setup: the timm-ViT editors hold each model, and a missing width
/// connector shows beside its field while you edit, before anything starts.
#[test]
fn a_pair_of_two_families_shows_its_pair_problems_beside_the_fields() {
    at_repo_root();
    let mut app = KdlabApp::open(Some(Path::new("configs/demo_families.ron")))
        .with_detected_devices(DEVICES.iter().map(|d| d.to_string()).collect());
    app.set_backend(BackendChoice::Cpu);
    app.set_runs_dir(Path::new("runs"));
    assert!(
        app.setup.config.problems().is_empty(),
        "the demo pair is valid"
    );
    app.setup.config.student.connector = false;
    let mut harness = harness(app);
    harness.run();
    harness.get_by_label_contains("a width connector (32 → 48) is needed");
    harness.get_by_label("connector").click();
    harness.run();
    assert!(harness.state().setup.config.student.connector);
    assert!(
        harness
            .query_by_label_contains("a width connector")
            .is_none()
    );
}
