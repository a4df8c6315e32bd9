//! The app's device work runs on long-lived threads (`session::device_threads`): CubeCL gives
//! every thread its own stream and memory pool and burn 0.21 never frees them
//! (tracel-ai/burn#4792), so a thread per job would grow device memory with every click.

use kdlab_engine::backend::BackendChoice;
use kdlab_engine::config::RunConfig;
use kdlab_engine::inspect::{InspectRequest, inspect};
use kdlab_engine::session::Session;
use kdlab_engine::session::device_threads::{Lane, run_on};
use kdlab_testkit::*;

/// 20 Inspect jobs, as the app runs them, on WGPU: the memory burn's pools hold after the last is
/// within 1 % of what they held after the first (which warmed them).
#[test]
fn twenty_app_jobs_on_wgpu_keep_device_memory_flat() {
    if !wgpu_available("twenty_app_jobs_on_wgpu_keep_device_memory_flat") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = RunConfig::load(&tiny_config(dir.path(), &assets(), "")).unwrap();
    let image = std::fs::read_dir(assets())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "jpg" || e == "png"))
        .expect("an asset image");
    let request = InspectRequest {
        config,
        image,
        checkpoint: None,
        compare: None,
    };
    let session = Session::open(BackendChoice::Wgpu).unwrap();
    let mut reserved = Vec::new();
    for job in 0..20 {
        let (sender, result) = crossbeam_channel::bounded(1);
        let (session, request) = (session.clone(), request.clone());
        run_on(Lane::Inspect, move || {
            let outcome = inspect(&session, &request)
                .map(|_| session.reserved_memory_bytes())
                .map_err(|e| e.to_string());
            let _ = sender.send(outcome);
        })
        .wait();
        let bytes = result
            .recv()
            .unwrap()
            .unwrap_or_else(|e| panic!("job {job}: {e}"));
        reserved.push(bytes.expect("WGPU reports its pools"));
    }
    eprintln!("reserved bytes after each of 20 jobs: {reserved:?}");
    // A pool may still take one more small slice for a later job's allocation pattern (measured:
    // 1.5 kB once, over 8.7 MB); a thread per job would add pools sized to the job's working set.
    let (first, last) = (reserved[0] as f64, *reserved.last().unwrap() as f64);
    assert!(
        last <= first * 1.01,
        "device memory grew by {:.2} % over 20 jobs: {reserved:?}",
        100.0 * (last / first - 1.0)
    );
}
