//! A small file holding a huge picture (a decompression bomb) in a data folder: skipped and
//! reported with its size and the setting that raises the limit, and never decoded — this
//! process's peak resident memory stays far below what decoding it would take. Alone in its
//! test binary, so the peak is this test's.

use kdlab_engine::backend::Selected;
use kdlab_engine::config::RunConfig;
use kdlab_engine::distill::{Event, RunStart, TrainControl, TrainRequest, train};
use kdlab_engine::session::Session;
use kdlab_testkit::*;

/// Peak resident memory of this process (Linux `VmHWM`), in MiB.
fn peak_resident_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[test]
fn a_decompression_bomb_is_skipped_and_reported_not_decoded() {
    let dir = tempfile::tempdir().unwrap();
    let data = sample_photos_in(&dir.path().join("data"));
    let bomb = data.join("bomb.png");
    bomb_png(&bomb, 30_000);
    let size_on_disk = std::fs::metadata(&bomb).unwrap().len();
    assert!(size_on_disk < 2_000_000, "{size_on_disk} bytes");
    // One epoch of three steps that together meet every file, the bomb among the probe images.
    let extra = format!("probe: (images: [{bomb:?}], count: 0)");
    let mut config = RunConfig::load(&tiny_config(dir.path(), &data, &extra)).unwrap();
    config.data.val_fraction = 0.0;
    config.data.repeats = 1;
    config.optim.batch_size = 3;
    config.optim.epochs = 1;
    let request = TrainRequest {
        start: RunStart::Fresh {
            runs_dir: dir.path().join("runs"),
        },
        config: Some(config),
        max_steps: None,
        control: TrainControl::default(),
        parallel: Default::default(),
    };
    let mut skipped = Vec::new();
    let mut steps = 0;
    train(
        &Session::on(Selected::Cpu),
        &request,
        &mut |event| match event {
            Event::SkippedFile { path, reason } => skipped.push((path, reason)),
            Event::Step(_) => steps += 1,
            _ => {}
        },
    )
    .unwrap();
    assert_eq!(
        steps, 3,
        "9 files in batches of 3; the bomb's batch trains on its 2 others"
    );
    assert_eq!(skipped.len(), 1, "reported once: {skipped:?}");
    let (path, reason) = &skipped[0];
    assert_eq!(path, &bomb);
    for needle in [
        "30000×30000",
        "900000000 pixels",
        "data.max_image_pixels (178956970)",
    ] {
        assert!(reason.contains(needle), "{needle:?} not in {reason:?}");
    }
    match peak_resident_mib() {
        Some(peak) => {
            eprintln!("peak resident memory: {peak:.0} MiB");
            assert!(peak < 1024.0, "peak {peak:.0} MiB: the bomb was decoded");
        }
        None => skip(
            "a_decompression_bomb_is_skipped_and_reported_not_decoded (memory part)",
            "no /proc/self/status on this system",
        ),
    }
}
