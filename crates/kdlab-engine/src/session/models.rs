//! The teacher and the student a run config describes: where each comes from (a weights file,
//! a run checkpoint, a random init from the seed), every architecture known and checked against
//! the config before any tensor exists, then built — seeded, materialised, teacher first — the
//! same way by every command and panel.

use std::path::Path;

use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};

use crate::config::{ConfigError, Precision, Problems, RunConfig, shared_token_problems};
use kdlab_model::model::generator::{materialize, seeded};
use kdlab_model::model::{BeitV2, BeitV2Config, BlockSelection, Data2Vec2, Data2Vec2Config};
use kdlab_model::target::prepare_target;
use kdlab_model::weights::{Architecture, Checkpoint};

/// Student and teacher for training: the frozen teacher outside autodiff.
pub struct Models<B: AutodiffBackend> {
    pub teacher: BeitV2<B::InnerBackend>,
    pub student: Data2Vec2<B>,
}

/// Where the teacher comes from.
pub struct TeacherSource {
    checkpoint: Option<Checkpoint>,
    pub architecture: BeitV2Config,
}

/// Where the student comes from.
pub struct StudentSource {
    checkpoint: Option<Checkpoint>,
    /// Which main blocks of the source it keeps (`All` for a run checkpoint: it holds only those).
    selection: BlockSelection,
    /// The source's architecture (all its main blocks).
    base: Data2Vec2Config,
    /// The main blocks of `base` it keeps.
    keep: Vec<usize>,
    /// The student's own: `base` with only the kept blocks.
    pub architecture: Data2Vec2Config,
}

/// Both models of a run, resolved and checked, not yet built.
pub struct ModelPlan {
    pub teacher: TeacherSource,
    pub student: StudentSource,
    pub precision: Precision,
    pub seed: u64,
}

impl ModelPlan {
    /// Opens the weights files the config names (headers and shapes only) and checks them
    /// against it. `student_checkpoint` is a run checkpoint the student continues from (resume,
    /// inspecting a checkpoint); without it the student is the config's. Every problem is
    /// reported at once, with its field.
    pub fn resolve(
        config: &RunConfig,
        student_checkpoint: Option<&Path>,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut found = Problems::default();
        let teacher = TeacherSource::resolve(config, &mut found);
        let student = StudentSource::resolve(config, student_checkpoint, &mut found);
        if let (Some(t), Some(s)) = (&teacher, &student) {
            shared_token_problems(&t.architecture, &s.architecture, &mut found);
        }
        match (teacher, student) {
            (Some(teacher), Some(student)) if found.0.is_empty() => Ok(Self {
                teacher,
                student,
                precision: config.precision,
                seed: config.seed,
            }),
            _ => Err(ConfigError::Invalid {
                path: None,
                problems: found.0,
            }),
        }
    }

    /// The student's architecture as its checkpoints record it.
    pub fn student_architecture(&self) -> Architecture {
        Architecture::Data2Vec2(self.student.architecture.clone())
    }

    /// (input side, patch-grid side) of both models.
    pub fn geometry(&self) -> (usize, usize) {
        let s = &self.student.architecture;
        (s.image_size, s.image_size / s.patch_size)
    }

    /// Teacher and student on two backends that share a device (the inner and the autodiff
    /// backend, or one backend twice), both computing in the precision's type (autocast; the
    /// student's parameters stay f32, the master weights).
    ///
    /// Seeded once, the teacher whole before the student: a random (demo) teacher depends only
    /// on the seed and its architecture, so every command rebuilds the very teacher a run
    /// distilled from.
    pub fn build_pair<TB: Backend, SB: Backend<Device = TB::Device>>(
        &self,
        device: &TB::Device,
    ) -> anyhow::Result<(BeitV2<TB>, Data2Vec2<SB>)> {
        seeded::<TB, _>(device, self.seed, || {
            let teacher = materialize(self.teacher.build::<TB>(device)?);
            let student = materialize(self.student.build::<SB>(device)?);
            let dtype = self.precision.compute_dtype();
            Ok((teacher.computing_in(dtype), student.computing_in(dtype)))
        })
    }

    /// The models for training on `B`.
    pub fn build<B: AutodiffBackend>(&self, device: &B::Device) -> anyhow::Result<Models<B>> {
        let (teacher, student) = self.build_pair::<B::InnerBackend, B>(device)?;
        Ok(Models { teacher, student })
    }
}

impl TeacherSource {
    fn resolve(config: &RunConfig, found: &mut Problems) -> Option<Self> {
        let stated = &config.teacher.architecture;
        let Some(path) = &config.teacher.weights else {
            let Some(architecture) = stated.clone() else {
                found.push(
                    "teacher",
                    "give `weights` or an `architecture` for a random teacher",
                );
                return None;
            };
            return Some(Self {
                checkpoint: None,
                architecture,
            });
        };
        let checkpoint = open(path, "teacher.weights", found)?;
        let Architecture::BeitV2(architecture) = checkpoint.architecture.clone() else {
            found.push(
                "teacher.weights",
                format!(
                    "{} is a data2vec 2.0 model, not a BEiT v2 teacher",
                    path.display()
                ),
            );
            return None;
        };
        if let Some(stated) = stated
            && *stated != architecture
        {
            found.push(
                "teacher.architecture",
                format!(
                    "the config states {stated:?}, but {} holds {architecture:?}",
                    path.display()
                ),
            );
        }
        Some(Self {
            checkpoint: Some(checkpoint),
            architecture,
        })
    }

    fn build<B: Backend>(&self, device: &B::Device) -> anyhow::Result<BeitV2<B>> {
        Ok(match &self.checkpoint {
            Some(checkpoint) => checkpoint.load_beit_v2::<B>(device)?,
            None => self.architecture.init::<B>(device),
        })
    }

    /// The teacher alone, exactly as `ModelPlan::build_pair` builds it (evaluating a run's
    /// teacher), in f32.
    pub fn build_alone<B: Backend>(
        &self,
        seed: u64,
        device: &B::Device,
    ) -> anyhow::Result<BeitV2<B>> {
        seeded::<B, _>(device, seed, || Ok(materialize(self.build::<B>(device)?)))
    }

    /// The config's teacher, resolved on its own.
    pub fn of_config(config: &RunConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut found = Problems::default();
        match Self::resolve(config, &mut found) {
            Some(teacher) if found.0.is_empty() => Ok(teacher),
            _ => Err(ConfigError::Invalid {
                path: None,
                problems: found.0,
            }),
        }
    }
}

impl StudentSource {
    fn resolve(
        config: &RunConfig,
        run_checkpoint: Option<&Path>,
        found: &mut Problems,
    ) -> Option<Self> {
        let stated = &config.student.architecture;
        let (path, field, selection) = match (run_checkpoint, &config.student.weights) {
            (Some(path), _) => (path, "checkpoint", BlockSelection::All),
            (None, Some(path)) => (path.as_path(), "student.weights", config.student.blocks),
            (None, None) => {
                let Some(base) = stated.clone() else {
                    found.push(
                        "student",
                        "give `weights` or an `architecture` for a random student",
                    );
                    return None;
                };
                let blocks = config.student.blocks;
                return match blocks.main_blocks(base.prenet_depth, base.depth) {
                    Ok(keep) => Some(Self::new(None, blocks, base, keep)),
                    Err(message) => {
                        found.push("student.blocks", message);
                        None
                    }
                };
            }
        };
        let checkpoint = open(path, field, found)?;
        let Architecture::Data2Vec2(base) = checkpoint.architecture.clone() else {
            found.push(
                field,
                format!(
                    "{} is a BEiT v2 model, not a data2vec 2.0 student",
                    path.display()
                ),
            );
            return None;
        };
        let keep = match selection.main_blocks(base.prenet_depth, base.depth) {
            Ok(keep) => keep,
            Err(message) => {
                found.push("student.blocks", format!("{message} ({})", path.display()));
                return None;
            }
        };
        let source = Self::new(Some(checkpoint), selection, base, keep);
        if run_checkpoint.is_none()
            && let Some(stated) = stated
            && *stated != source.base
        {
            found.push(
                "student.architecture",
                format!(
                    "the config states {stated:?}, but {} holds {:?}",
                    path.display(),
                    source.base
                ),
            );
        }
        Some(source)
    }

    fn new(
        checkpoint: Option<Checkpoint>,
        selection: BlockSelection,
        base: Data2Vec2Config,
        keep: Vec<usize>,
    ) -> Self {
        let mut architecture = base.clone();
        architecture.depth = keep.len();
        Self {
            checkpoint,
            selection,
            base,
            keep,
            architecture,
        }
    }

    fn build<B: Backend>(&self, device: &B::Device) -> anyhow::Result<Data2Vec2<B>> {
        Ok(match &self.checkpoint {
            Some(checkpoint) => checkpoint.load_data2vec2::<B>(self.selection, device)?,
            None => self.base.init::<B>(device).select_main_blocks(&self.keep),
        })
    }
}

/// Opens a weights file, or records why it cannot be used under `field`.
fn open(path: &Path, field: &str, found: &mut Problems) -> Option<Checkpoint> {
    if !path.exists() {
        found.push(field, format!("{} does not exist", path.display()));
        return None;
    }
    match Checkpoint::open(path) {
        Ok(checkpoint) => Some(checkpoint),
        Err(e) => {
            found.push(field, e.to_string());
            None
        }
    }
}

/// The teacher's target for a batch, in f32 (the teacher computes in its own type), outside
/// the autodiff graph.
///
/// # Shapes
/// - images: `[B, 3, H, W]` (f32) → `[B, T, D]`
pub fn teacher_target<B: Backend>(teacher: &BeitV2<B>, images: Tensor<B, 4>) -> Tensor<B, 3> {
    prepare_target(&teacher.forward(images).layer_results)
}
