//! What the Inspect panel and the `heatmap` command ask of the models, run on a session: the
//! same resolution of the config, the same models, the same images.

use std::path::PathBuf;

use burn::tensor::backend::AutodiffBackend;

use super::analysis::{Analysis, InspectedPair, ProbeImage};
use super::attention::AttentionMaps;
use super::cka::CkaMatrix;
use super::files::{Provenance, stem, write_image_outputs};
use super::patch_maps::PatchMaps;
use crate::config::RunConfig;
use crate::session::{EngineError, ModelPlan, Session, on_backend};

/// One image, a student checkpoint (None: the student as the config builds it) and optionally
/// a second checkpoint to compare with.
#[derive(Debug, Clone, PartialEq)]
pub struct InspectRequest {
    pub config: RunConfig,
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
    /// Both models' CLS attention and rollout on the image.
    pub attention: AttentionMaps,
    /// Layer CKA over the image's tokens.
    pub cka: CkaMatrix,
}

/// Analyses one image (the Inspect panel).
pub fn inspect(session: &Session, request: &InspectRequest) -> Result<Inspected, EngineError> {
    let plan = ModelPlan::resolve(&request.config, request.checkpoint.as_deref())?;
    let compare = request
        .compare
        .as_deref()
        .map(|other| ModelPlan::resolve(&request.config, Some(other)))
        .transpose()?;
    let limits = request.config.data.decode_limits();
    on_backend!(session, None, |B, device| {
        type Inference = <B as AutodiffBackend>::InnerBackend;
        let pair = InspectedPair::<Inference>::build(&plan, limits, &device)?;
        let image = pair.load_image(&request.image)?;
        let one = std::slice::from_ref(&image);
        let analysis = only(pair.analyse(one)?)?;
        let attention = only(pair.attention(one)?)?;
        let cka = pair.cka(one)?;
        let compared = match &compare {
            Some(plan) => {
                let pair = InspectedPair::<Inference>::build(plan, limits, &device)?;
                Some(only(pair.analyse(std::slice::from_ref(&image))?)?)
            }
            None => None,
        };
        let pca = analysis.pca_colours();
        Ok(Inspected {
            image,
            analysis,
            compared,
            pca,
            attention,
            cka,
        })
    })
}

/// What `heatmap` asks for: images, the student (a checkpoint, else the config's) and where the
/// figures and values go.
pub struct HeatmapRequest {
    pub config: RunConfig,
    pub checkpoint: Option<PathBuf>,
    pub images: Vec<PathBuf>,
    pub out: PathBuf,
}

/// One image's maps, as written.
pub struct WrittenMaps {
    pub image: PathBuf,
    /// `<out>/<stem>.*` are its files.
    pub stem: String,
    pub maps: PatchMaps,
}

/// What `write_heatmaps` wrote: each image's maps and attention, and the layer CKA over all.
pub struct HeatmapOutputs {
    pub images: Vec<WrittenMaps>,
    /// Also in `<out>/cka.csv` and `cka.png`.
    pub cka: CkaMatrix,
}

/// Writes every image's figures and values (maps, PCA, attention) and the layer CKA over all
/// of them; every image is read before anything is computed or written, so an unreadable one
/// leaves `out` untouched.
pub fn write_heatmaps(
    session: &Session,
    request: &HeatmapRequest,
) -> Result<HeatmapOutputs, EngineError> {
    let plan = ModelPlan::resolve(&request.config, request.checkpoint.as_deref())?;
    let (_, grid) = plan.geometry();
    let views = plan.views();
    let limits = request.config.data.decode_limits();
    let images = request
        .images
        .iter()
        .map(|path| ProbeImage::load(path, views, grid, limits))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| EngineError::Failed(e.into()))?;
    let (analyses, attention, cka) = on_backend!(session, None, |B, device| {
        let pair =
            InspectedPair::<<B as AutodiffBackend>::InnerBackend>::build(&plan, limits, &device)?;
        anyhow::Ok((
            pair.analyse(&images)?,
            pair.attention(&images)?,
            pair.cka(&images)?,
        ))
    })?;
    let provenance = Provenance {
        checkpoint: request.checkpoint.clone(),
        ..Provenance::default()
    };
    let mut written = Vec::new();
    for (i, ((image, analysis), attention)) in
        images.iter().zip(analyses).zip(attention).enumerate()
    {
        let name = stem(i, &image.path);
        write_image_outputs(&request.out, &name, image, &analysis, &provenance)?;
        attention.write(&request.out, &name, &image.display)?;
        written.push(WrittenMaps {
            image: image.path.clone(),
            stem: name,
            maps: analysis.maps,
        });
    }
    cka.write(&request.out)?;
    Ok(HeatmapOutputs {
        images: written,
        cka,
    })
}

fn only<T>(analyses: Vec<T>) -> anyhow::Result<T> {
    analyses
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("the models returned no result"))
}
