//! Which encoder an evaluation judges: a weights file (a run checkpoint, the BEiT v2 teacher, a
//! data2vec 2.0 model cut to N blocks) or the teacher a run config describes.

use std::path::PathBuf;

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::features::file_fingerprint;
use crate::config::{FetchedWeights, RunConfig};
use crate::data::Normalization;
use crate::session::TeacherSource;
use kdlab_model::model::{BlockSelection, Encoder};
use kdlab_model::weights::{Architecture, Checkpoint};

/// What the evaluated encoder is in the distillation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Teacher,
    Student,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Self::Teacher => "teacher",
            Self::Student => "student",
        }
    }
}

#[derive(Debug, Clone)]
pub enum ModelSpec {
    /// Any weights file kdlab reads; a data2vec 2.0 one keeps the prenet and `depth` main blocks.
    Weights { path: PathBuf, depth: Option<usize> },
    /// A run's teacher: its weights file, or the random demo teacher rebuilt from the seed.
    RunTeacher(Box<RunConfig>),
}

pub struct LoadedModel<B: Backend> {
    pub encoder: Encoder<B>,
    pub role: Role,
    pub image_size: usize,
    /// Its input normalisation (its `config.json`'s, the run's, else ImageNet's).
    pub normalization: Normalization,
    /// For people: the file, or how the random teacher was made.
    pub source: String,
    /// For the feature cache: changes whenever the weights could have.
    pub fingerprint: String,
}

impl ModelSpec {
    pub fn load<B: Backend>(&self, device: &B::Device) -> anyhow::Result<LoadedModel<B>> {
        match self {
            Self::Weights { path, depth } => {
                let checkpoint = Checkpoint::open(path)?;
                let encoder =
                    checkpoint.load_encoder::<B>(depth.map(BlockSelection::FirstMain), device)?;
                let (role, image_size) = match &checkpoint.architecture {
                    Architecture::BeitV2(c) => (Role::Teacher, c.image_size),
                    Architecture::Data2Vec2(c) => (Role::Student, c.image_size),
                    // A timm ViT file is a teacher unless it is cut to a student's blocks.
                    Architecture::Vit(c) if depth.is_some() => (Role::Student, c.image_size),
                    Architecture::Vit(c) => (Role::Teacher, c.image_size),
                };
                let normalization = checkpoint
                    .preprocessing
                    .as_ref()
                    .map_or(Normalization::IMAGENET, |p| {
                        Normalization::new(p.mean, p.std)
                    });
                Ok(LoadedModel {
                    encoder,
                    role,
                    image_size,
                    normalization,
                    source: path.display().to_string(),
                    fingerprint: format!("{} depth {depth:?}", file_fingerprint(path)),
                })
            }
            Self::RunTeacher(config) => {
                if let Some(path) = &config.teacher.weights {
                    // The file the run fetched for a name (its config.ron records it).
                    let file = FetchedWeights::file_for(config.teacher.fetched.as_ref(), path);
                    return Self::Weights {
                        path: file.to_path_buf(),
                        depth: None,
                    }
                    .load(device);
                }
                let source = TeacherSource::of_config(config)?;
                // Seeded as training seeds it, so this is the very teacher the run distilled;
                // features are compared in f32 whatever precision the run trained in.
                let teacher = source.build_alone::<B>(config.seed, device)?;
                let architecture = source.architecture;
                Ok(LoadedModel {
                    encoder: teacher,
                    role: Role::Teacher,
                    image_size: architecture.image_size(),
                    normalization: source.view.normalization,
                    source: format!("random teacher from seed {}", config.seed),
                    fingerprint: format!(
                        "random teacher {architecture:?} seed {} on {}",
                        config.seed,
                        std::any::type_name::<B>()
                    ),
                })
            }
        }
    }
}
