//! The teacher and the student a run config describes: where each comes from (a weights file of
//! any family, a run checkpoint, a random init from the seed, the teacher's own blocks), what
//! each sees (its input size and normalisation), how their tokens meet (registers, a width
//! connector, grid matching), every architecture known and checked against the config before
//! any tensor exists, then built — seeded, materialised, teacher first — the same way by every
//! command and panel.

use std::path::Path;

use burn::tensor::backend::{AutodiffBackend, Backend};

use crate::config::{
    ConfigError, FetchedWeights, NormalizationConfig, Precision, Problems, RunConfig,
};
use crate::data::Normalization;
pub use crate::data::views::{View, Views};
use kdlab_hub::{Fetcher, WeightsName};
use kdlab_model::model::Encoder;
use kdlab_model::model::generator::{materialize, seeded};
use kdlab_model::pair::{KdPair, Side, Student, Teacher, width_connector};
use kdlab_model::weights::{Architecture, Checkpoint};

/// Student and teacher for training: the frozen teacher outside autodiff.
pub struct Models<B: AutodiffBackend> {
    pub teacher: Teacher<B::InnerBackend>,
    pub student: Student<B>,
}

/// Where the teacher comes from.
pub struct TeacherSource {
    checkpoint: Option<Checkpoint>,
    /// The file's (or config's) architecture, at its own size.
    base: Architecture,
    /// As it runs: at `view.size`.
    pub architecture: Architecture,
    pub view: View,
}

/// Where the student's weights come from.
enum StudentOrigin {
    File(Box<Checkpoint>),
    Random,
    /// The teacher's own blocks (its file, or the random teacher rebuilt from the seed).
    Teacher,
}

/// Where the student comes from.
pub struct StudentSource {
    origin: StudentOrigin,
    /// The source's architecture (all its blocks), at its own size.
    base: Architecture,
    /// The selectable blocks of `base` it keeps.
    keep: Vec<usize>,
    /// The student's own: `base` with only the kept blocks, at `view.size`.
    pub architecture: Architecture,
    pub view: View,
    pub connector: bool,
}

/// Both models of a run, resolved and checked, not yet built.
pub struct ModelPlan {
    pub teacher: TeacherSource,
    pub student: StudentSource,
    pub pair: KdPair,
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
        let student = teacher
            .as_ref()
            .and_then(|t| StudentSource::resolve(config, t, student_checkpoint, &mut found));
        let pair = match (&teacher, &student) {
            (Some(t), Some(s)) => pair_of(config, t, s, &mut found),
            _ => None,
        };
        match (teacher, student, pair) {
            (Some(teacher), Some(student), Some(pair)) if found.0.is_empty() => Ok(Self {
                teacher,
                student,
                pair,
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
        self.student.architecture.clone()
    }

    /// What each model sees.
    pub fn views(&self) -> Views {
        Views {
            teacher: self.teacher.view,
            student: self.student.view,
        }
    }

    /// (input side, patch-grid side) of the student, the grid every per-patch map is drawn on.
    pub fn geometry(&self) -> (usize, usize) {
        (self.student.view.size, self.pair.student.grid)
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
    ) -> anyhow::Result<(Teacher<TB>, Student<SB>)> {
        seeded::<TB, _>(device, self.seed, || {
            let teacher = materialize(self.teacher.build::<TB>(device)?);
            let encoder = match &self.student.origin {
                StudentOrigin::Teacher => {
                    // The random teacher again, drawn from the same seed on the student's backend.
                    SB::seed(device, self.seed);
                    self.teacher
                        .build::<SB>(device)?
                        .select_blocks(&self.student.keep)
                        .with_grid(self.pair.student.grid)
                }
                _ => self.student.build::<SB>(device)?,
            };
            let encoder = materialize(encoder);
            let connector = match &self.student.origin {
                StudentOrigin::File(checkpoint) => checkpoint.load_connector::<SB>(device)?,
                _ => None,
            };
            let connector = match connector {
                Some(loaded) => Some(loaded),
                None if self.student.connector => Some(materialize(width_connector::<SB>(
                    self.pair.student.embed_dim,
                    self.pair.teacher.embed_dim,
                    device,
                ))),
                None => None,
            };
            let dtype = self.precision.compute_dtype();
            Ok((
                Teacher {
                    encoder: teacher.teacher_computing_in(dtype),
                    pair: self.pair,
                },
                Student {
                    encoder: encoder.student_computing_in(dtype),
                    connector,
                    pair: self.pair,
                },
            ))
        })
    }

    /// The models for training on `B`.
    pub fn build<B: AutodiffBackend>(&self, device: &B::Device) -> anyhow::Result<Models<B>> {
        let (teacher, student) = self.build_pair::<B::InnerBackend, B>(device)?;
        Ok(Models { teacher, student })
    }
}

/// How the two models' tokens meet, or the problems that keep them apart.
fn pair_of(
    config: &RunConfig,
    teacher: &TeacherSource,
    student: &StudentSource,
    found: &mut Problems,
) -> Option<KdPair> {
    let pair = KdPair {
        teacher: Side::of(&teacher.architecture, teacher.view.size),
        student: Side::of(&student.architecture, student.view.size),
        resample_grid: config.teacher.resample_to_student_grid,
    };
    let check = pair.check(
        teacher.architecture.patch_size(),
        student.architecture.patch_size(),
        student.connector,
    );
    match check {
        Ok(()) => Some(pair),
        Err(error) => {
            found.push(error.field(), error.to_string());
            None
        }
    }
}

/// A model's view: the configured size (checked against its patch size and family) or its own,
/// the configured normalisation or its file's `pretrained_cfg`, else ImageNet's.
fn view_of(
    architecture: &Architecture,
    checkpoint: Option<&Checkpoint>,
    size: Option<usize>,
    normalization: Option<&NormalizationConfig>,
    field: &str,
    found: &mut Problems,
) -> Option<View> {
    let own = architecture.image_size();
    let patch = architecture.patch_size();
    let size = size.unwrap_or(own);
    if !size.is_multiple_of(patch) {
        found.push(
            format!("{field}.image_size"),
            format!("{size} px is not a multiple of the patch size {patch}"),
        );
        return None;
    }
    if size != own && !architecture.runs_at_any_size() {
        found.push(
            format!("{field}.image_size"),
            format!(
                "a {} model runs at its own size {own} px only (its positions belong to that \
                 grid)",
                architecture.family()
            ),
        );
        return None;
    }
    let normalization = match (
        normalization,
        checkpoint.and_then(|c| c.preprocessing.as_ref()),
    ) {
        (Some(n), _) => {
            Normalization::new([n.mean.0, n.mean.1, n.mean.2], [n.std.0, n.std.1, n.std.2])
        }
        (None, Some(p)) => Normalization::new(p.mean, p.std),
        (None, None) => Normalization::IMAGENET,
    };
    Some(View {
        size,
        normalization,
    })
}

impl TeacherSource {
    fn resolve(config: &RunConfig, found: &mut Problems) -> Option<Self> {
        let t = &config.teacher;
        let (checkpoint, base) = match (&t.weights, &t.architecture, &t.vit) {
            (None, Some(architecture), _) => (None, Architecture::BeitV2(architecture.clone())),
            (None, None, Some(vit)) => (None, Architecture::Vit(vit.clone())),
            (None, None, None) => {
                found.push(
                    "teacher",
                    "give `weights`, an `architecture` or a `vit` for a random teacher",
                );
                return None;
            }
            (Some(path), stated, stated_vit) => {
                let checkpoint = open_weights(path, t.fetched.as_ref(), "teacher.weights", found)?;
                let base = checkpoint.architecture.clone();
                let stated = stated
                    .clone()
                    .map(Architecture::BeitV2)
                    .or_else(|| stated_vit.clone().map(Architecture::Vit));
                if let Some(stated) = stated
                    && stated != base
                {
                    found.push(
                        "teacher.architecture",
                        format!(
                            "the config states {stated:?}, but {} holds {base:?}",
                            path.display()
                        ),
                    );
                }
                (Some(checkpoint), base)
            }
        };
        let view = view_of(
            &base,
            checkpoint.as_ref(),
            t.image_size,
            t.normalization.as_ref(),
            "teacher",
            found,
        )?;
        Some(Self {
            architecture: base.cut(base.depth(), view.size),
            checkpoint,
            base,
            view,
        })
    }

    /// The teacher, every block, at its view's size (not yet seeded or materialised).
    fn build<B: Backend>(&self, device: &B::Device) -> anyhow::Result<Encoder<B>> {
        let grid = self.view.size / self.base.patch_size();
        Ok(match &self.checkpoint {
            Some(checkpoint) => {
                checkpoint.load_encoder_blocks::<B>(None, Some(self.view.size), device)?
            }
            None => self.base.init_encoder::<B>(device).with_grid(grid),
        })
    }

    /// The teacher alone, exactly as `ModelPlan::build_pair` builds it (evaluating a run's
    /// teacher), in f32.
    pub fn build_alone<B: Backend>(
        &self,
        seed: u64,
        device: &B::Device,
    ) -> anyhow::Result<Encoder<B>> {
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
        teacher: &TeacherSource,
        run_checkpoint: Option<&Path>,
        found: &mut Problems,
    ) -> Option<Self> {
        let s = &config.student;
        let blocks = s.blocks;
        let (origin, base, field, selection) = match (run_checkpoint, &s.weights) {
            (Some(path), _) => {
                let checkpoint = open(path, "checkpoint", found)?;
                let base = checkpoint.architecture.clone();
                (
                    StudentOrigin::File(Box::new(checkpoint)),
                    base,
                    "checkpoint",
                    None,
                )
            }
            (None, _) if s.from_teacher => (
                StudentOrigin::Teacher,
                teacher.base.clone(),
                "student.blocks",
                Some(blocks),
            ),
            (None, Some(path)) => {
                let checkpoint = open_weights(path, s.fetched.as_ref(), "student.weights", found)?;
                let base = checkpoint.architecture.clone();
                let stated = s
                    .architecture
                    .clone()
                    .map(Architecture::Data2Vec2)
                    .or_else(|| s.vit.clone().map(Architecture::Vit));
                if let Some(stated) = stated
                    && stated != base
                {
                    found.push(
                        "student.architecture",
                        format!(
                            "the config states {stated:?}, but {} holds {base:?}",
                            path.display()
                        ),
                    );
                }
                (
                    StudentOrigin::File(Box::new(checkpoint)),
                    base,
                    "student.blocks",
                    Some(blocks),
                )
            }
            (None, None) => {
                let base = match (&s.architecture, &s.vit) {
                    (Some(architecture), _) => Architecture::Data2Vec2(architecture.clone()),
                    (None, Some(vit)) => Architecture::Vit(vit.clone()),
                    (None, None) => {
                        found.push(
                            "student",
                            "give `weights`, an `architecture` or a `vit` for a random student",
                        );
                        return None;
                    }
                };
                (StudentOrigin::Random, base, "student.blocks", Some(blocks))
            }
        };
        // A run checkpoint holds only the blocks it trained: all of them.
        let keep = match selection {
            None => (0..base.depth()).collect(),
            Some(selection) => match selection.main_blocks(base.prenet_depth(), base.depth()) {
                Ok(keep) => keep,
                Err(message) => {
                    found.push(field, message);
                    return None;
                }
            },
        };
        let file = match &origin {
            StudentOrigin::File(checkpoint) => Some(checkpoint.as_ref()),
            StudentOrigin::Teacher => teacher.checkpoint.as_ref(),
            StudentOrigin::Random => None,
        };
        // The teacher's own blocks see what the teacher sees unless told otherwise.
        let from_teacher = matches!(origin, StudentOrigin::Teacher);
        let size = s.image_size.or(from_teacher.then_some(teacher.view.size));
        let normalization = s.normalization.as_ref();
        let mut view = view_of(&base, file, size, normalization, "student", found)?;
        if from_teacher && normalization.is_none() {
            view.normalization = teacher.view.normalization;
        }
        let connector = match &origin {
            StudentOrigin::File(checkpoint) if run_checkpoint.is_some() => {
                checkpoint.has_connector()
            }
            _ => s.connector,
        };
        Some(Self {
            architecture: base.cut(keep.len(), view.size),
            origin,
            base,
            keep,
            view,
            connector,
        })
    }

    /// The student's encoder (not yet seeded or materialised) — not `Teacher` origin, which
    /// `build_pair` draws again from the teacher.
    fn build<B: Backend>(&self, device: &B::Device) -> anyhow::Result<Encoder<B>> {
        let grid = self.view.size / self.base.patch_size();
        Ok(match &self.origin {
            StudentOrigin::File(checkpoint) => checkpoint.load_encoder_blocks::<B>(
                Some(&self.keep),
                Some(self.view.size),
                device,
            )?,
            StudentOrigin::Random | StudentOrigin::Teacher => self
                .base
                .init_encoder::<B>(device)
                .select_blocks(&self.keep)
                .with_grid(grid),
        })
    }
}

/// Opens a weights file, or records why it cannot be used under `field`.
/// A weights field's file: the file its name was fetched to (`session::fetch`), a name found in
/// the cache without a request, or the path it is.
fn open_weights(
    weights: &Path,
    fetched: Option<&FetchedWeights>,
    field: &str,
    found: &mut Problems,
) -> Option<Checkpoint> {
    let file = FetchedWeights::file_for(fetched, weights);
    if file != weights {
        return open(file, field, found);
    }
    match WeightsName::of_path(weights) {
        Ok(WeightsName::Path(path)) => open(&path, field, found),
        Ok(name) => match Fetcher::from_env().cached(&name) {
            Ok(Some(file)) => open(&file, field, found),
            Ok(None) => {
                found.push(
                    field,
                    format!(
                        "`{}` is not in the cache yet: `kdlab fetch {}` downloads it (a run \
                         fetches it itself)",
                        weights.display(),
                        weights.display()
                    ),
                );
                None
            }
            Err(e) => {
                found.push(field, e.to_string());
                None
            }
        },
        Err(e) => {
            found.push(field, e.to_string());
            None
        }
    }
}

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
