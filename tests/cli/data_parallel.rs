//! Data-parallel training as a user runs it, on the CPU: `--devices 2` (two workers on the one
//! CPU device) and two processes on 127.0.0.1 as two nodes, each against the one-device run of
//! the same config. Float reduction order is the only difference allowed; the tolerances say
//! how much that is, and each test prints what it reached.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// Every F32 tensor of a run's last checkpoint (student weights and AdamW moments).
fn checkpoint_tensors(run: &Path) -> BTreeMap<String, Vec<f32>> {
    raw_tensors(&run.join("checkpoints/last.safetensors"))
        .into_iter()
        .filter(|(_, _, _, dtype)| *dtype == safetensors::Dtype::F32)
        .map(|(name, _, bytes, _)| {
            let values = bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, values)
        })
        .collect()
}

/// The student's weights (the checkpoint's other tensors are the optimiser's, `optim.…`).
const WEIGHTS: &str = "";

/// The largest |a − b| over the tensors whose names start with `prefix` (`WEIGHTS`: the
/// student's), which both must hold.
fn worst_difference(
    a: &BTreeMap<String, Vec<f32>>,
    b: &BTreeMap<String, Vec<f32>>,
    prefix: &str,
) -> (f32, String) {
    let selected = |k: &str| match prefix {
        WEIGHTS => !k.starts_with("optim."),
        _ => k.starts_with(prefix),
    };
    let keys: Vec<_> = a.keys().filter(|k| selected(k)).collect();
    assert!(!keys.is_empty(), "no tensor named {prefix}…");
    assert_eq!(keys.len(), b.keys().filter(|k| selected(k)).count());
    let mut worst = (0.0f32, String::new());
    for key in keys {
        let (x, y) = (&a[key], &b[key]);
        assert_eq!(x.len(), y.len(), "{key}");
        for (p, q) in x.iter().zip(y) {
            let d = (p - q).abs();
            assert!(d.is_finite(), "{key}: {p} vs {q}");
            if d > worst.0 {
                worst = (d, key.clone());
            }
        }
    }
    worst
}

/// The largest relative difference between the training losses (and, separately, the
/// validation losses) of two runs, which must have logged the same steps.
fn loss_differences(a: &Path, b: &Path) -> (f64, f64) {
    let (ma, mb) = (metrics(a), metrics(b));
    assert_eq!(ma.len(), mb.len(), "the same metrics lines");
    let rel = |x: f64, y: f64| (x - y).abs() / x.abs().max(1e-12);
    let (mut train, mut val, mut watch) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y) in ma.iter().zip(&mb) {
        assert_eq!((x.step, x.epoch), (y.step, y.epoch));
        // The collapse watch and the gradient norm: from the summed moments and gradients, the
        // same as one device's over the whole batch.
        for (p, q) in [
            (x.target_var, y.target_var),
            (x.pred_var, y.pred_var),
            (x.grad_norm, y.grad_norm),
        ] {
            if let (Some(p), Some(q)) = (p, q) {
                watch = watch.max(rel(p, q));
            } else {
                assert_eq!(p.is_some(), q.is_some(), "step {}: {x:?} vs {y:?}", x.step);
            }
        }
        match (x.loss, y.loss, x.val_loss, y.val_loss) {
            (Some(p), Some(q), None, None) => train = train.max(rel(p, q)),
            (None, None, Some(p), Some(q)) => val = val.max(rel(p, q)),
            other => panic!("step {}: different lines {other:?}", x.step),
        }
    }
    say(format!(
        "target_var, pred_var, grad_norm: largest relative difference {watch:.1e}"
    ));
    assert!(watch < 1e-4, "collapse watch / grad norm differ by {watch}");
    (train, val)
}

fn say(line: String) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// 2 workers × 2 images = 1 worker × 4 images over 6 steps (two epochs, two validations): same
/// losses and the same student, up to the order of the float sums.
#[test]
fn two_workers_of_two_images_train_as_one_worker_of_four() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), &assets(), "");
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    train(&config, &one, &["--max-steps", "6"]);
    train(&config, &two, &["--max-steps", "6", "--devices", "2"]);
    let (one, two) = (&run_dirs(&one)[0], &run_dirs(&two)[0]);
    let (train_loss, val_loss) = loss_differences(one, two);
    let (a, b) = (checkpoint_tensors(one), checkpoint_tensors(two));
    let (weights, key) = worst_difference(&a, &b, WEIGHTS);
    say(format!(
        "2 workers vs 1 over 6 steps: loss rel {train_loss:.2e}, val_loss rel {val_loss:.2e}, \
         worst weight |Δ| {weights:.2e} ({key})"
    ));
    assert!(
        train_loss < 1e-5,
        "training losses differ by {train_loss:e}"
    );
    assert!(val_loss < 1e-5, "validation losses differ by {val_loss:e}");
    // As for gradient accumulation (train_cli): Adam moves a weight by ≈ lr whatever the size
    // of its gradient, so a rounding-level gradient can move a weight visibly.
    assert!(weights < 1e-4, "weights differ by {weights:e} at {key}");
    let log = std::fs::read_to_string(two.join("log.txt")).unwrap();
    assert!(log.contains("data-parallel over 2 device(s)"), "{log}");
}

/// The L2 norm of all first moments of a checkpoint.
fn first_moment_norm(m: &BTreeMap<String, Vec<f32>>) -> f64 {
    m.iter()
        .filter(|(k, _)| k.starts_with("optim.exp_avg."))
        .flat_map(|(_, v)| v.iter().map(|&x| (x as f64).powi(2)))
        .sum::<f64>()
        .sqrt()
}

/// Adam hides a gradient's scale (m/√v), so weights and losses cannot catch a gradient off by
/// the number of devices; the first moment can: after one step it is (1 − β₁)·g. Summed
/// instead of averaged it would be twice the one-device value, divided twice half of it; the
/// same with gradient accumulation (averaged over the micro-batches once, not twice).
#[test]
fn gradients_are_averaged_over_the_workers_not_summed() {
    let dir = tempfile::tempdir().unwrap();
    let plain = tiny_config(dir.path(), &assets(), "");
    let accumulating = dir.path().join("accumulating.ron");
    let text = replace_once(
        &std::fs::read_to_string(&plain).unwrap(),
        "batch_size: 4,",
        "batch_size: 2, grad_accum_steps: 2,",
    );
    std::fs::write(&accumulating, text).unwrap();
    for (name, config) in [
        ("batch 4", &plain),
        ("batch 2 × 2 accumulated", &accumulating),
    ] {
        let (one, two) = (
            dir.path().join(format!("{name}-1")),
            dir.path().join(format!("{name}-2")),
        );
        train(config, &one, &["--max-steps", "1"]);
        train(config, &two, &["--max-steps", "1", "--devices", "2"]);
        let (a, b) = (
            checkpoint_tensors(&run_dirs(&one)[0]),
            checkpoint_tensors(&run_dirs(&two)[0]),
        );
        let ratio = first_moment_norm(&b) / first_moment_norm(&a);
        let (worst, key) = worst_difference(&a, &b, "optim.exp_avg.");
        say(format!(
            "{name}: first moment after one step, 2 workers / 1 worker: norm ratio {ratio:.7}, \
             worst |Δ| {worst:.2e} ({key})"
        ));
        assert!((ratio - 1.0).abs() < 1e-4, "{name}: norm ratio {ratio}");
        assert!(
            worst < 1e-6,
            "{name}: first moments differ by {worst:e} at {key}"
        );
    }
}

/// A 2-worker run stopped at step 4 and resumed to 8 on 2 workers is the uninterrupted one,
/// bit for bit; resumed on 1 worker it is the same run up to reduction order.
#[test]
fn a_two_worker_run_resumes_exactly_on_two_and_closely_on_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), &assets(), "");
    let (straight, split) = (dir.path().join("straight"), dir.path().join("split"));
    train(&config, &straight, &["--max-steps", "8", "--devices", "2"]);
    train(&config, &split, &["--max-steps", "4", "--devices", "2"]);
    let run = run_dirs(&split)[0].clone();
    let copy = dir.path().join("on-one");
    copy_dir(&run, &copy);
    let resume = |run: &Path, devices: &str| {
        let out = kdlab_cpu(&[
            "train",
            "--resume",
            run.to_str().unwrap(),
            "--max-steps",
            "8",
            "--devices",
            devices,
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
    };
    resume(&run, "2");
    resume(&copy, "1");
    let straight = &run_dirs(&straight)[0];
    assert_eq!(
        metrics(straight),
        metrics(&run),
        "resumed on 2: the same metrics"
    );
    let (a, b) = (checkpoint_tensors(straight), checkpoint_tensors(&run));
    assert!(
        a == b,
        "resumed on 2: the same weights and moments, bit for bit"
    );
    let (train_loss, val_loss) = loss_differences(straight, &copy);
    let (weights, key) = worst_difference(&a, &checkpoint_tensors(&copy), WEIGHTS);
    say(format!(
        "2-worker run resumed on 1 worker at step 4 → 8: loss rel {train_loss:.2e}, val_loss rel \
         {val_loss:.2e}, worst weight |Δ| {weights:.2e} ({key})"
    ));
    assert!(
        train_loss < 1e-5 && val_loss < 1e-5,
        "{train_loss:e} {val_loss:e}"
    );
    assert!(weights < 1e-4, "weights differ by {weights:e} at {key}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

/// A coordinator port whose next two ports (the nodes' tensor services) are free too.
fn free_ports() -> u16 {
    for _ in 0..100 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if port < 65_000
            && (1..=2).all(|i| std::net::TcpListener::bind(("0.0.0.0", port + i)).is_ok())
        {
            return port;
        }
    }
    panic!("no three free ports in a row");
}

/// A child process killed when the test lets go of it, also when the test fails: a node left
/// behind would wait for its peer until its own watchdog gives up.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Process {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Process {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

/// `kdlab train` as node `rank` of two, its runs under `runs`.
fn node(config: &Path, runs: &Path, rank: usize, port: u16, extra: &[&str]) -> Process {
    let child = train_command(config, runs)
        .args(["--devices", "1", "--nodes", "2", "--node-rank"])
        .arg(rank.to_string())
        .arg("--coordinator")
        .arg(format!("127.0.0.1:{port}"))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kdlab starts");
    Process(child)
}

/// Waits for `child` at most `limit`; None if it is still running (then it is killed).
fn wait_at_most(child: &mut Child, limit: Duration) -> Option<(std::process::ExitStatus, String)> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut pipe, &mut err);
            }
            return Some((status, err));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the run under `runs` has logged `lines` metrics lines.
fn wait_for_metrics(runs: &Path, lines: usize, children: &mut [&mut Child]) -> PathBuf {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Some(run) = runs
            .exists()
            .then(|| run_dirs(runs))
            .and_then(|d| d.first().cloned())
            && kdlab_engine::session::RunDir::at(&run)
                .read_metrics()
                .is_ok_and(|m| m.len() >= lines)
        {
            return run;
        }
        for child in children.iter_mut() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("a node ended early: {status}");
            }
        }
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Two processes on 127.0.0.1, one worker each, train as one process with one worker: the same
/// losses and student; node 1 writes nothing.
#[test]
fn two_processes_on_localhost_train_as_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), &assets(), "");
    let one = dir.path().join("one");
    train(&config, &one, &["--max-steps", "4"]);
    let (runs0, runs1) = (dir.path().join("node0"), dir.path().join("node1"));
    let port = free_ports();
    // Node 1 first: it waits for the coordinator, as a cluster's nodes start in any order.
    let mut second = node(&config, &runs1, 1, port, &["--max-steps", "4"]);
    let mut first = node(&config, &runs0, 0, port, &["--max-steps", "4"]);
    let limit = Duration::from_secs(300);
    let (status0, err0) = wait_at_most(&mut first, limit).expect("node 0 finishes");
    let (status1, err1) = wait_at_most(&mut second, limit).expect("node 1 finishes");
    assert!(status0.success(), "node 0: {err0}");
    assert!(status1.success(), "node 1: {err1}");
    assert!(err1.contains("node 1 of 2"), "{err1}");
    assert!(!runs1.exists(), "node 1 wrote nothing");
    let (one, two) = (&run_dirs(&one)[0], &run_dirs(&runs0)[0]);
    let (train_loss, val_loss) = loss_differences(one, two);
    let (weights, key) =
        worst_difference(&checkpoint_tensors(one), &checkpoint_tensors(two), WEIGHTS);
    say(format!(
        "2 nodes × 1 worker vs 1 process over 4 steps: loss rel {train_loss:.2e}, val_loss rel \
         {val_loss:.2e}, worst weight |Δ| {weights:.2e} ({key})"
    ));
    assert!(
        train_loss < 1e-5 && val_loss < 1e-5,
        "{train_loss:e} {val_loss:e}"
    );
    assert!(weights < 1e-4, "weights differ by {weights:e} at {key}");
}

/// A config for runs that go on until something stops them.
fn endless_config(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("endless.ron");
    let text = replace_once(
        &tiny_config_text(&assets(), extra),
        "epochs: 4",
        "epochs: 1000",
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A node killed mid-run (no goodbye, as when a machine dies) makes the other stop within the
/// bound, non-zero, saying why; the checkpoint of the last finished epoch is still there.
#[test]
fn a_killed_node_stops_the_other_within_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let config = endless_config(dir.path(), "parallel: (timeout_s: 10),");
    let (runs0, runs1) = (dir.path().join("node0"), dir.path().join("node1"));
    let port = free_ports();
    let mut first = node(&config, &runs0, 0, port, &[]);
    let mut second = node(&config, &runs1, 1, port, &[]);
    // 4 lines: past the first epoch's end (3 steps), so a checkpoint exists.
    let run = wait_for_metrics(&runs0, 4, &mut [&mut *first, &mut *second]);
    second.kill().unwrap();
    let _ = second.wait();
    let killed = Instant::now();
    let (status, err) =
        wait_at_most(&mut first, Duration::from_secs(60)).expect("node 0 stops within 60 s");
    say(format!(
        "node 0 stopped {:.1} s after node 1 was killed ({status}): {}",
        killed.elapsed().as_secs_f64(),
        err.lines().last().unwrap_or_default()
    ));
    assert!(!status.success(), "non-zero exit: {err}");
    assert!(err.contains("exchange"), "says what failed: {err}");
    let last = run.join("checkpoints/last.safetensors");
    kdlab_model::weights::Checkpoint::open(&last).expect("the last good checkpoint is kept");
}

/// Ctrl-C on node 1 stops both nodes at the same step, with a checkpoint from node 0.
#[test]
fn ctrl_c_on_one_node_stops_both_with_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let config = endless_config(dir.path(), "");
    let (runs0, runs1) = (dir.path().join("node0"), dir.path().join("node1"));
    let port = free_ports();
    let mut first = node(&config, &runs0, 0, port, &[]);
    let mut second = node(&config, &runs1, 1, port, &[]);
    let run = wait_for_metrics(&runs0, 2, &mut [&mut *first, &mut *second]);
    Command::new("kill")
        .args(["-INT", &second.id().to_string()])
        .status()
        .unwrap();
    let limit = Duration::from_secs(60);
    let (status0, err0) = wait_at_most(&mut first, limit).expect("node 0 stops");
    let (status1, err1) = wait_at_most(&mut second, limit).expect("node 1 stops");
    // Both nodes stop at the same step, interrupted (130), node 0's checkpoint written.
    assert_eq!(
        (status0.code(), status1.code()),
        (Some(130), Some(130)),
        "{err0}\n{err1}"
    );
    assert!(err0.contains("interrupted"), "{err0}");
    let log = std::fs::read_to_string(run.join("log.txt")).unwrap();
    assert!(log.contains("interrupted"), "{log}");
    let last = run.join("checkpoints/last.safetensors");
    kdlab_model::weights::Checkpoint::open(&last).expect("a checkpoint at the stop");
}

/// A worker that fails (here a panic injected at its third micro-batch, standing in for an out
/// of memory or a driver error) stops the whole run at once, naming the device.
#[test]
fn a_failing_worker_stops_the_run_and_names_its_device() {
    let dir = tempfile::tempdir().unwrap();
    let config = endless_config(dir.path(), "");
    let runs = dir.path().join("runs");
    let mut child = Process(
        train_command(&config, &runs)
            .args(["--devices", "2"])
            .env("KDLAB_FAULT", "1:3")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (status, err) =
        wait_at_most(&mut child, Duration::from_secs(120)).expect("the run stops, no hang");
    assert!(!status.success(), "non-zero exit: {err}");
    assert!(
        err.contains("cpu worker 1 failed"),
        "names the device: {err}"
    );
    assert!(err.contains("injected fault"), "says why: {err}");
    assert!(
        !err.contains("panicked"),
        "reported, not a raw panic: {err}"
    );
}

/// A loss that turns non-finite on two workers stops the run as on one: with a clear message.
#[test]
fn a_non_finite_loss_stops_a_two_worker_run() {
    let dir = tempfile::tempdir().unwrap();
    let text = replace_once(
        &tiny_config_text(&assets(), ""),
        "base_lr: 1e-2",
        "base_lr: 1e30",
    );
    let config = dir.path().join("exploding.ron");
    std::fs::write(&config, text).unwrap();
    let out = train_command(&config, &dir.path().join("runs"))
        .args(["--devices", "2"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("the loss became NaN"), "{err}");
}

/// A batch that the devices cannot share evenly is the config's error, before anything runs.
#[test]
fn a_batch_that_does_not_split_over_the_devices_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), &assets(), "");
    let runs = dir.path().join("runs");
    let out = train_command(&config, &runs)
        .args(["--devices", "3"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("optim.batch_size"), "{err}");
    assert!(err.contains("multiple of 3"), "{err}");
    assert!(!runs.exists(), "no run directory for a refused config");
    let out = train_command(&config, &runs)
        .args(["--nodes", "2"])
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("parallel.coordinator"),
        "{}",
        stderr(&out)
    );
}
