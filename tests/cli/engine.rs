//! The engine behind the CLI and the app, called as both call it: config mistakes never reach
//! the backend (a seeded property test over every numeric field), seeded models do not depend
//! on what other threads do, a resumed run with a broken config.ron fails as the file's error.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::common::*;
use burn::backend::Flex;
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use kdlab_engine::backend::Selected;
use kdlab_engine::config::{Precision, RunConfig};
use kdlab_engine::distill::{RunStart, TrainControl, TrainRequest, train};
use kdlab_engine::session::{EngineError, ModelPlan, Session};
use kdlab_model::model::{BeitV2Config, BlockSelection, Data2Vec2Config};
use kdlab_model::weights::Checkpoint;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn cpu() -> Session {
    Session::on(Selected::Cpu)
}

fn fresh(config: RunConfig, runs: &Path, max_steps: Option<usize>) -> TrainRequest {
    TrainRequest {
        start: RunStart::Fresh {
            runs_dir: runs.to_path_buf(),
        },
        config: Some(config),
        max_steps,
        control: TrainControl::default(),
        parallel: Default::default(),
    }
}

fn pick<T: Copy>(rng: &mut ChaCha8Rng, values: &[T]) -> T {
    *values.choose(rng).unwrap()
}

type Mutation = fn(&mut RunConfig, &mut ChaCha8Rng);

/// One entry per numeric field of a config: a random value from a set that includes zero,
/// negatives, NaN, non-multiples and out-of-range values, as well as good ones. Sizes stay small
/// enough that whatever validates trains in well under a second; what keeps huge values out of
/// the models (`config::limits`, `model::rules`) is tested beside them.
fn mutations() -> Vec<(&'static str, Mutation)> {
    fn teacher(c: &mut RunConfig) -> &mut BeitV2Config {
        c.teacher.architecture.as_mut().unwrap()
    }
    fn student(c: &mut RunConfig) -> &mut Data2Vec2Config {
        c.student.architecture.as_mut().unwrap()
    }
    const NAN: f64 = f64::NAN;
    vec![
        ("seed", |c, r| c.seed = r.random()),
        ("precision", |c, r| {
            c.precision = pick(r, &[Precision::F32, Precision::Bf16, Precision::F16])
        }),
        ("image_size (both)", |c, r| {
            let v = pick(r, &[0, 8, 16, 24, 30]);
            teacher(c).image_size = v;
            student(c).image_size = v;
        }),
        ("patch_size (both)", |c, r| {
            let v = pick(r, &[0, 3, 4, 16, 32]);
            teacher(c).patch_size = v;
            student(c).patch_size = v;
        }),
        ("embed_dim (both)", |c, r| {
            let v = pick(r, &[0, 6, 8, 12, 16, 30]);
            teacher(c).embed_dim = v;
            student(c).embed_dim = v;
        }),
        ("teacher.image_size", |c, r| {
            teacher(c).image_size = pick(r, &[0, 16, 24, 33])
        }),
        ("teacher.patch_size", |c, r| {
            teacher(c).patch_size = pick(r, &[0, 4, 5, 16])
        }),
        ("teacher.embed_dim", |c, r| {
            teacher(c).embed_dim = pick(r, &[0, 16, 31, 64])
        }),
        ("teacher.depth", |c, r| {
            teacher(c).depth = pick(r, &[0, 1, 3, 5000])
        }),
        ("teacher.num_heads", |c, r| {
            teacher(c).num_heads = pick(r, &[0, 1, 3, 4, 64])
        }),
        ("teacher.mlp_hidden_dim", |c, r| {
            teacher(c).mlp_hidden_dim = pick(r, &[0, 1, 48, 1 << 20])
        }),
        ("teacher.norm_eps", |c, r| {
            teacher(c).norm_eps = pick(r, &[1e-5, 0.0, -1.0, NAN, f64::INFINITY])
        }),
        ("student.image_size", |c, r| {
            student(c).image_size = pick(r, &[0, 16, 24, 40])
        }),
        ("student.patch_size", |c, r| {
            student(c).patch_size = pick(r, &[0, 4, 7, 16])
        }),
        ("student.embed_dim", |c, r| {
            student(c).embed_dim = pick(r, &[0, 16, 30, 62, 64])
        }),
        ("student.depth", |c, r| {
            student(c).depth = pick(r, &[0, 1, 3, 5000])
        }),
        ("student.prenet_depth", |c, r| {
            student(c).prenet_depth = pick(r, &[0, 2, 5000])
        }),
        ("student.num_heads", |c, r| {
            student(c).num_heads = pick(r, &[0, 1, 3, 4, 64])
        }),
        ("student.mlp_hidden_dim", |c, r| {
            student(c).mlp_hidden_dim = pick(r, &[0, 1, 48, 1 << 20])
        }),
        ("student.norm_eps", |c, r| {
            student(c).norm_eps = pick(r, &[1e-5, 0.0, -1.0, NAN])
        }),
        ("student.blocks", |c, r| {
            c.student.blocks = match r.random_range(0..4) {
                0 => BlockSelection::All,
                1 => BlockSelection::EverySecond,
                2 => BlockSelection::FirstMain(r.random_range(0..4)),
                _ => BlockSelection::Total(r.random_range(0..5)),
            }
        }),
        ("data.val_fraction", |c, r| {
            c.data.val_fraction = pick(r, &[0.0, 0.5, 0.99, 1.0, -0.1, NAN])
        }),
        ("data.repeats", |c, r| {
            c.data.repeats = pick(r, &[0, 1, 3, 1 << 30])
        }),
        ("data.workers", |c, r| {
            c.data.workers = pick(r, &[0, 1, 3, 5000])
        }),
        ("data.prefetch_batches", |c, r| {
            c.data.prefetch_batches = pick(r, &[0, 1, 9, 1 << 20])
        }),
        ("data.crop_scale", |c, r| {
            c.data.crop_scale = pick(
                r,
                &[(0.5, 1.0), (0.0, 1.0), (0.5, 0.4), (0.2, 1.5), (NAN, 1.0)],
            )
        }),
        ("data.crop_ratio", |c, r| {
            c.data.crop_ratio = pick(
                r,
                &[(1.0, 1.0), (0.0, 1.0), (2.0, 1.0), (1.0, f64::INFINITY)],
            )
        }),
        ("data.hflip_probability", |c, r| {
            c.data.hflip_probability = pick(r, &[0.0, 1.0, 1.5, -0.5, NAN])
        }),
        // A limit below the sample photos' size would skip every image (reported; then nothing
        // is left to validate on): a data outcome, not a config one.
        ("data.max_image_pixels", |c, r| {
            c.data.max_image_pixels = pick(r, &[0, 1 << 30, 1 << 40, (1 << 40) + 1])
        }),
        ("optim.base_lr", |c, r| {
            c.optim.base_lr = pick(r, &[1e-3, 0.0, -1.0, NAN, 1e3])
        }),
        ("optim.batch_size", |c, r| {
            c.optim.batch_size = pick(r, &[0, 1, 2, 8, 16, 64, 100_000])
        }),
        ("optim.grad_accum_steps", |c, r| {
            c.optim.grad_accum_steps = pick(r, &[0, 1, 2, 8, 2000])
        }),
        ("optim.epochs", |c, r| {
            c.optim.epochs = pick(r, &[0, 1, 3, 1 << 30])
        }),
        ("optim.max_steps", |c, r| {
            c.optim.max_steps = pick(r, &[None, Some(0), Some(1), Some(5)])
        }),
        ("optim.warmup_fraction", |c, r| {
            c.optim.warmup_fraction = pick(r, &[0.0, 0.5, 1.0, 1.5, NAN])
        }),
        ("optim.betas", |c, r| {
            c.optim.betas = pick(r, &[(0.5, 0.5), (1.0, 0.5), (-0.1, 0.9), (0.9, NAN)])
        }),
        ("optim.eps", |c, r| {
            c.optim.eps = pick(r, &[1e-8, 0.0, -1e-8, NAN])
        }),
        ("optim.weight_decay", |c, r| {
            c.optim.weight_decay = pick(r, &[0.0, 0.5, -1.0, NAN])
        }),
        ("optim.clip_grad_norm", |c, r| {
            c.optim.clip_grad_norm = pick(r, &[None, Some(0.5), Some(0.0), Some(-1.0), Some(NAN)])
        }),
        ("log_every", |c, r| c.log_every = pick(r, &[0, 1, 7])),
        ("val_every", |c, r| {
            c.val_every = pick(r, &[None, Some(0), Some(1)])
        }),
        ("probe.count", |c, r| {
            c.probe.count = pick(r, &[0, 1, 3, 300])
        }),
    ]
}

/// The tiny config with the given fields set to random values.
fn random_config(rng: &mut ChaCha8Rng, fields: &[&(&'static str, Mutation)]) -> RunConfig {
    let mut config: RunConfig =
        ron::from_str(&tiny_config_text(&assets(), "")).expect("the tiny config parses");
    for (_, mutate) in fields {
        mutate(&mut config, rng);
    }
    config
}

/// The sections and fields a problem of the config can name.
const FIELDS: [&str; 7] = [
    "teacher",
    "student",
    "data.",
    "optim.",
    "log_every",
    "val_every",
    "probe.",
];

#[test]
fn random_values_in_every_numeric_field_are_refused_by_field_or_train_a_step() {
    let mut rng = ChaCha8Rng::seed_from_u64(2026);
    let mutations = mutations();
    // Every field alone, four random values each; then 64 random combinations of two or three.
    let mut cases: Vec<Vec<&(&'static str, Mutation)>> = mutations
        .iter()
        .flat_map(|m| std::iter::repeat_n(vec![m], 4))
        .collect();
    for _ in 0..64 {
        let n = rng.random_range(2..=3);
        cases.push(mutations.choose_multiple(&mut rng, n).collect());
    }
    let (mut trained, mut refused, mut refused_later) = (0, 0, 0);
    for (case, fields) in cases.iter().enumerate() {
        let changed: Vec<&str> = fields.iter().map(|(name, _)| *name).collect();
        let config = random_config(&mut rng, fields);
        let problems = config.problems();
        for problem in &problems {
            assert!(
                FIELDS.iter().any(|f| problem.field.starts_with(f)),
                "case {case} ({changed:?}): unknown field in {problem}"
            );
        }
        if !problems.is_empty() {
            refused += 1;
            continue;
        }
        let runs = tempfile::tempdir().unwrap();
        match train(
            &cpu(),
            &fresh(config.clone(), runs.path(), Some(1)),
            &mut |_| {},
        ) {
            Ok(finished) => {
                assert!(finished.run.last_checkpoint().is_file(), "case {case}");
                trained += 1;
            }
            // What only the data can tell (too few images for the batch) is still a problem
            // of a field, found before any tensor exists.
            Err(EngineError::Config(e)) => {
                assert!(!e.problems().is_empty(), "case {case}: {e}");
                refused_later += 1;
            }
            Err(other) => panic!("case {case} ({changed:?}): {config:#?}\nfailed as: {other}"),
        }
    }
    eprintln!(
        "{} random configs: {refused} refused by validate(), {refused_later} by the data, \
         {trained} trained a step",
        cases.len()
    );
    assert!(
        trained >= 10 && refused >= 10 && refused_later >= 1,
        "every kind of case occurs"
    );
}

#[test]
fn model_breaking_values_are_config_errors_never_backend_failures() {
    let demo = std::fs::read_to_string(demo_config()).unwrap();
    for (from, to, needles) in [
        (
            "embed_dim: 64,\n            depth: 2,",
            "embed_dim: 62,\n            depth: 2,",
            &[
                "student.architecture.embed_dim",
                "sin-cos",
                "differs from the teacher's 64",
            ][..],
        ),
        (
            "depth: 2,        // main blocks",
            "depth: 0,        // main blocks",
            &["student.architecture.depth", "main blocks"][..],
        ),
    ] {
        for blocks in ["All", "EverySecond"] {
            let dir = tempfile::tempdir().unwrap();
            let text = replace_once(&demo, from, to);
            let text = replace_once(&text, "blocks: All,", &format!("blocks: {blocks},"));
            let text = replace_once(
                &text,
                "train: \"../assets\"",
                &format!("train: {:?}", assets()),
            );
            let config = dir.path().join("bad.ron");
            std::fs::write(&config, text).unwrap();
            let out = kdlab_cpu(&[
                "train",
                "--config",
                config.to_str().unwrap(),
                "--runs-dir",
                dir.path().join("runs").to_str().unwrap(),
            ]);
            let err = stderr(&out);
            assert!(!out.status.success(), "{err}");
            for needle in needles.iter().chain(&["bad.ron"]) {
                assert!(err.contains(needle), "{blocks}: {needle:?} missing: {err}");
            }
            assert!(
                !err.contains("compute backend") && !err.contains("panicked"),
                "{err}"
            );
            assert!(!dir.path().join("runs").exists(), "nothing starts");
        }
    }
}

#[test]
fn problems_of_the_weights_files_and_of_the_data_come_in_one_report() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = RunConfig::load(&tiny_config(dir.path(), &assets(), "")).unwrap();
    config.teacher.weights = Some(dir.path().join("missing.pth"));
    config.optim.batch_size = 64; // 6 training images × 2 repeats
    let runs = dir.path().join("runs");
    let e = train(&cpu(), &fresh(config, &runs, Some(1)), &mut |_| {}).unwrap_err();
    let EngineError::Config(e) = e else {
        panic!("not a config error: {e}")
    };
    let fields: Vec<&str> = e.problems().iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, ["teacher.weights", "optim.batch_size"], "{e}");
    assert!(e.to_string().contains("missing.pth does not exist"), "{e}");
    assert!(!runs.exists(), "nothing starts");
}

#[test]
fn resuming_a_run_whose_config_is_broken_fails_with_the_files_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = RunConfig::load(&tiny_config(dir.path(), &assets(), "")).unwrap();
    let runs = dir.path().join("runs");
    let finished = train(&cpu(), &fresh(config, &runs, Some(2)), &mut |_| {}).unwrap();
    std::fs::write(finished.run.config_file(), "(optim: (batch_size: 0))").unwrap();
    // What the app's Resume and `train --resume` (without --config) both send.
    let resume = TrainRequest {
        start: RunStart::Resume {
            run_dir: finished.run.root().to_path_buf(),
        },
        config: None,
        max_steps: Some(4),
        control: TrainControl::default(),
        parallel: Default::default(),
    };
    let e = train(&cpu(), &resume, &mut |_| {}).unwrap_err();
    assert!(matches!(e, EngineError::Config(_)), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("config.ron") && text.contains("optim.batch_size"),
        "{text}"
    );
}

/// Every float parameter's values, in visiting order.
fn parameters<B: Backend, M: Module<B>>(module: &M) -> Vec<Vec<f32>> {
    struct Values(Vec<Vec<f32>>);
    impl<B: Backend> ModuleVisitor<B> for Values {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0
                .push(param.val().into_data().to_vec::<f32>().unwrap());
        }
    }
    let mut values = Values(Vec::new());
    module.visit(&mut values);
    values.0
}

/// The race behind a once-flaky snapshot: building a model from a file draws from burn's
/// process-wide generator (CLS tokens at construction), so a checkpoint loaded on one thread
/// could shift the random demo models being built on another. Every construction now holds
/// one generator lock.
#[test]
fn seeded_models_are_bit_identical_while_other_threads_load_and_train() {
    let demo = RunConfig::load(&demo_config()).unwrap();
    let build = || {
        let plan = ModelPlan::resolve(&demo, None).unwrap();
        let (teacher, student) = plan.build_pair::<Flex, Flex>(&Default::default()).unwrap();
        (parameters(&teacher.encoder), parameters(&student))
    };
    let reference = build();
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicUsize::new(0));
    let busy = {
        let (stop, rounds) = (stop.clone(), rounds.clone());
        std::thread::spawn(move || {
            let dir = tempfile::tempdir().unwrap();
            let tiny = RunConfig::load(&tiny_config(dir.path(), &assets(), "")).unwrap();
            while !stop.load(Ordering::SeqCst) {
                let device = Default::default();
                let student = Checkpoint::open(fixture("d2v2_tiny_fairseq.pt")).unwrap();
                student
                    .load_data2vec2::<Flex>(BlockSelection::All, &device)
                    .unwrap();
                let teacher = Checkpoint::open(fixture("beitv2_tiny_unilm.pth")).unwrap();
                teacher.load_beit_v2::<Flex>(&device).unwrap();
                let runs = dir.path().join("runs");
                train(&cpu(), &fresh(tiny.clone(), &runs, Some(1)), &mut |_| {}).unwrap();
                rounds.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    // At least 30 builds, and for as long as the other thread needs for three rounds.
    let mut builds = 0;
    while builds < 30 || (rounds.load(Ordering::SeqCst) < 3 && builds < 5_000) {
        assert!(
            build() == reference,
            "build {builds} differs from the first"
        );
        builds += 1;
    }
    stop.store(true, Ordering::SeqCst);
    busy.join().unwrap();
    let rounds = rounds.load(Ordering::SeqCst);
    eprintln!("{builds} builds beside {rounds} rounds of loading and training");
    assert!(rounds >= 3, "the other thread really worked meanwhile");
}
