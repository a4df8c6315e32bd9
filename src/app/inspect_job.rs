//! Inspection on a background thread: load teacher and student(s), run them on one image.

use std::path::PathBuf;

use burn::tensor::backend::Backend;
use crossbeam_channel::Receiver;

use crate::backend::{BackendChoice, OnBackend};
use crate::config::RunConfig;
use crate::inspect::analysis::InspectedPair;
use crate::inspect::{Analysis, ProbeImage};
use crate::weights::read::quietly_catch;

/// What to analyse: one image, a student checkpoint (None = as the config builds it) and
/// optionally a second checkpoint to compare with.
#[derive(Debug, Clone, PartialEq)]
pub struct InspectRequest {
    pub config: RunConfig,
    pub backend: BackendChoice,
    pub image: PathBuf,
    pub checkpoint: Option<PathBuf>,
    pub compare: Option<PathBuf>,
}

/// The analyses of one request.
#[derive(Debug, Clone)]
pub struct Inspected {
    pub image: ProbeImage,
    pub analysis: Analysis,
    /// The same image under `compare`.
    pub compared: Option<Analysis>,
    /// Teacher and student patch colours in the teacher's PCA basis.
    pub pca: (Vec<[u8; 3]>, Vec<[u8; 3]>),
}

pub fn spawn(
    request: InspectRequest,
    wake: impl Fn() + Send + 'static,
) -> Receiver<Result<Inspected, String>> {
    let (sender, receiver) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let result = quietly_catch(|| run(&request))
            .map_err(|panic| format!("the compute backend failed: {panic}"))
            .and_then(|r| r.map_err(|e| format!("{e:#}")));
        let _ = sender.send(result);
        wake();
    });
    receiver
}

fn run(request: &InspectRequest) -> anyhow::Result<Inspected> {
    request.backend.select()?.run(Analyse(request))
}

struct Analyse<'a>(&'a InspectRequest);

impl OnBackend for Analyse<'_> {
    type Output = anyhow::Result<Inspected>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let request = self.0;
        let pair =
            InspectedPair::<B>::load(&request.config, request.checkpoint.as_deref(), &device)?;
        let image = pair.load_image(&request.image)?;
        let analysis = first(pair.analyse(std::slice::from_ref(&image))?)?;
        let compared = match &request.compare {
            Some(other) => {
                let pair = InspectedPair::<B>::load(&request.config, Some(other), &device)?;
                Some(first(pair.analyse(std::slice::from_ref(&image))?)?)
            }
            None => None,
        };
        let pca = analysis.pca_colours();
        Ok(Inspected {
            image,
            analysis,
            compared,
            pca,
        })
    }
}

fn first(analyses: Vec<Analysis>) -> anyhow::Result<Analysis> {
    analyses
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("the models returned no result"))
}
