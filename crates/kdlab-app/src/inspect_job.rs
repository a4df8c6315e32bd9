//! Inspection on the app's inspection thread (`device_threads`): the same `inspect::inspect` the engine offers, for one
//! image and checkpoint at a time.

use std::ops::ControlFlow;

use crossbeam_channel::Receiver;

use kdlab_engine::backend::BackendChoice;
use kdlab_engine::inspect::{InspectRequest, Inspected, inspect};
use kdlab_engine::session::Session;
use kdlab_engine::session::device_threads::{Lane, run_on};
use kdlab_engine::session::fetch::fetch_weights;
use kdlab_hub::Fetcher;

pub fn spawn(
    request: InspectRequest,
    backend: BackendChoice,
    wake: impl Fn() + Send + 'static,
) -> Receiver<Result<Inspected, String>> {
    let (sender, receiver) = crossbeam_channel::bounded(1);
    run_on(Lane::Inspect, move || {
        let mut request = request;
        // Weights names the Setup panel gives are fetched here as a run fetches them (the panel
        // shows its spinner meanwhile; a run's Start shows a download's progress).
        let result = fetch_weights(&mut request.config, &Fetcher::from_env(), &mut |_| {
            ControlFlow::Continue(())
        })
        .and_then(|()| Session::open(backend))
        .and_then(|session| inspect(&session, &request))
        .map_err(|e| e.to_string());
        let _ = sender.send(result);
        wake();
    });
    receiver
}
