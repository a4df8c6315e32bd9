//! The data2vec KD target across two model families (REFERENCE.md, "KD across families"):
//! register tokens are dropped before the target, which is over CLS + patches (patches only
//! when the two models do not both have a CLS token); a student of another width gets a width
//! connector (a Linear on its average of instance-normed layers, before the final layer norm);
//! a teacher on another patch grid has its average resampled to the student's grid (bilinear,
//! CLS kept) before the final layer norm.
//!
//! Where none of that applies (the thesis pair) the target is `target::prepare_target`, fused
//! on the CPU, exactly as before.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use crate::model::resample::{Interpolation, resample_grid};
use crate::model::{Encoder, TokenLayout};
pub use crate::target::average_normalised;
use crate::target::{layer_norm_plain, prepare_target};
use crate::weights::Architecture;

/// One side of a pair, as the target sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Side {
    pub tokens: TokenLayout,
    /// Patches per side of the grid.
    pub grid: usize,
    pub embed_dim: usize,
}

impl Side {
    /// A model of `architecture` seeing `image_size` px images.
    pub fn of(architecture: &Architecture, image_size: usize) -> Self {
        Self {
            tokens: architecture.tokens(),
            grid: image_size / architecture.patch_size().max(1),
            embed_dim: architecture.embed_dim(),
        }
    }
}

/// How the two sides' layer results become a target and a prediction of one shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KdPair {
    pub teacher: Side,
    pub student: Side,
    /// Whether the teacher's average is resampled to the student's grid (the config asks).
    pub resample_grid: bool,
}

/// Why two models cannot be distilled one into the other as configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PairError {
    #[error(
        "the teacher's patch grid is {teacher}×{teacher} and the student's {student}×{student}: \
         set the image sizes so that they match (e.g. teacher {teacher_size_for_student} px for \
         the student's grid, or student {student_size_for_teacher} px for the teacher's), or \
         ask for the teacher's average to be resampled to the student's grid"
    )]
    Grids {
        teacher: usize,
        student: usize,
        teacher_size_for_student: usize,
        student_size_for_teacher: usize,
    },
    #[error(
        "the student is {student} wide and the teacher {teacher}: a width connector \
         ({student} → {teacher}) is needed"
    )]
    ConnectorMissing { student: usize, teacher: usize },
    #[error(
        "a width connector was asked for, but the student and the teacher are both {width} wide"
    )]
    ConnectorNotNeeded { width: usize },
}

impl PairError {
    /// The run-config field that decides it.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Grids { .. } => "student.image_size",
            Self::ConnectorMissing { .. } | Self::ConnectorNotNeeded { .. } => "student.connector",
        }
    }
}

impl KdPair {
    /// Two models that meet token for token (the thesis pair).
    pub fn same(side: Side) -> Self {
        Self {
            teacher: side,
            student: side,
            resample_grid: false,
        }
    }

    /// Checks the pair: grids equal or resampled, a connector exactly when the widths differ.
    /// `teacher_patch`/`student_patch` name the image sizes that would make the grids equal.
    pub fn check(
        &self,
        teacher_patch: usize,
        student_patch: usize,
        connector: bool,
    ) -> Result<(), PairError> {
        let (t, s) = (self.teacher, self.student);
        if t.grid != s.grid && !self.resample_grid {
            return Err(PairError::Grids {
                teacher: t.grid,
                student: s.grid,
                teacher_size_for_student: s.grid * teacher_patch,
                student_size_for_teacher: t.grid * student_patch,
            });
        }
        match (t.embed_dim == s.embed_dim, connector) {
            (false, false) => Err(PairError::ConnectorMissing {
                student: s.embed_dim,
                teacher: t.embed_dim,
            }),
            (true, true) => Err(PairError::ConnectorNotNeeded { width: t.embed_dim }),
            _ => Ok(()),
        }
    }

    /// Whether the target keeps the CLS token: only when both models have one.
    pub fn keeps_class_token(&self) -> bool {
        self.teacher.tokens.class_token && self.student.tokens.class_token
    }

    /// Whether the two sides meet without a connector, resampling or dropped tokens (the fused
    /// target serves both then).
    fn is_plain(&self) -> bool {
        self.teacher.tokens == self.student.tokens
            && self.teacher.tokens.registers == 0
            && self.teacher.grid == self.student.grid
    }

    /// The teacher's target `[B, c + N_s, D_t]` (c = 1 with a common CLS), f32.
    pub fn teacher_target<B: Backend>(&self, layers: &[Tensor<B, 3>]) -> Tensor<B, 3> {
        let layers = self.target_tokens(layers, self.teacher.tokens);
        if self.teacher.grid == self.student.grid {
            return prepare_target(&layers);
        }
        layer_norm_plain(self.on_student_grid(average_normalised(layers)))
    }

    /// Teacher tokens `[B, c + N_t, D]` on the student's grid: the patches resampled
    /// bilinearly, the CLS token (if kept) as it is.
    fn on_student_grid<B: Backend>(&self, h: Tensor<B, 3>) -> Tensor<B, 3> {
        if self.teacher.grid == self.student.grid {
            return h;
        }
        let cls = usize::from(self.keeps_class_token());
        let [_, tokens, _] = h.dims();
        let patches = resample_grid(
            h.clone().narrow(1, cls, tokens - cls),
            self.teacher.grid,
            self.student.grid,
            Interpolation::Bilinear,
        );
        if cls == 1 {
            Tensor::cat(vec![h.narrow(1, 0, 1), patches], 1)
        } else {
            patches
        }
    }

    /// The student's prediction `[B, c + N_s, D_t]`, f32, through the connector if it has one.
    pub fn student_prediction<B: Backend>(
        &self,
        layers: &[Tensor<B, 3>],
        connector: Option<&Linear<B>>,
    ) -> Tensor<B, 3> {
        let layers = self.target_tokens(layers, self.student.tokens);
        match connector {
            None => prepare_target(&layers),
            Some(connector) => layer_norm_plain(connector.forward(average_normalised(layers))),
        }
    }

    /// A teacher layer result on the target's tokens and the student's grid (patches resampled
    /// bilinearly when the grids differ): what the layer CKA compares token by token.
    pub fn teacher_layer_tokens<B: Backend>(&self, h: Tensor<B, 3>) -> Tensor<B, 3> {
        self.on_student_grid(target_tokens(
            h,
            self.teacher.tokens,
            self.keeps_class_token(),
        ))
    }

    /// A student layer result on the target's tokens.
    pub fn student_layer_tokens<B: Backend>(&self, h: Tensor<B, 3>) -> Tensor<B, 3> {
        target_tokens(h, self.student.tokens, self.keeps_class_token())
    }

    /// Each layer result cut to the target's tokens: the CLS token if kept, then the patches.
    fn target_tokens<B: Backend>(
        &self,
        layers: &[Tensor<B, 3>],
        tokens: TokenLayout,
    ) -> Vec<Tensor<B, 3>> {
        if self.is_plain() {
            return layers.to_vec();
        }
        let keep_cls = self.keeps_class_token();
        layers
            .iter()
            .map(|h| target_tokens(h.clone(), tokens, keep_cls))
            .collect()
    }
}

/// `[CLS (if kept), patches]` of a layer result `[B, T, D]` in its model's own order.
pub fn target_tokens<B: Backend>(
    h: Tensor<B, 3>,
    tokens: TokenLayout,
    keep_cls: bool,
) -> Tensor<B, 3> {
    let [_, count, _] = h.dims();
    let prefix = tokens.prefix();
    let patches = h.clone().narrow(1, prefix, count - prefix);
    if keep_cls && tokens.class_token {
        Tensor::cat(vec![h.narrow(1, 0, 1), patches], 1)
    } else {
        patches
    }
}

/// The width connector: a Linear from the student's width to the teacher's, trained with the
/// student, saved in its checkpoint (`connector.weight`, `connector.bias`) and exported beside
/// (never inside) its encoder.
pub fn width_connector<B: Backend>(
    student_dim: usize,
    teacher_dim: usize,
    device: &B::Device,
) -> Linear<B> {
    LinearConfig::new(student_dim, teacher_dim).init(device)
}

/// The frozen teacher and how its target meets the student's prediction.
#[derive(Debug, Clone)]
pub struct Teacher<B: Backend> {
    pub encoder: Encoder<B>,
    pub pair: KdPair,
}

impl<B: Backend> Teacher<B> {
    /// The same teacher on another device of its backend (a data-parallel replica).
    pub fn to_device(self, device: &B::Device) -> Self {
        Self {
            encoder: self.encoder.to_device(device),
            pair: self.pair,
        }
    }

    /// The target of a batch, in f32 (the teacher computes in its own type).
    ///
    /// # Shapes
    /// - images: `[B, 3, S_t, S_t]` → `[B, c + N_s, D_t]`
    pub fn target(&self, images: Tensor<B, 4>) -> Tensor<B, 3> {
        self.pair
            .teacher_target(&self.encoder.forward(images).layer_results)
    }
}

/// The trained student: its encoder and, when it is narrower or wider than the teacher, the
/// width connector — one module, so that the optimiser, the gradient exchange and the
/// checkpoints see both.
#[derive(Module, Debug)]
pub struct Student<B: Backend> {
    pub encoder: Encoder<B>,
    pub connector: Option<Linear<B>>,
    #[module(skip)]
    pub pair: KdPair,
}

impl<B: Backend> Student<B> {
    /// The prediction of a batch, in f32.
    ///
    /// # Shapes
    /// - images: `[B, 3, S_s, S_s]` → `[B, c + N_s, D_t]`
    pub fn prediction(&self, images: Tensor<B, 4>) -> Tensor<B, 3> {
        let output = self.encoder.forward(images);
        self.pair
            .student_prediction(&output.layer_results, self.connector.as_ref())
    }

    /// The encoder's width.
    pub fn embed_dim(&self) -> usize {
        self.pair.student.embed_dim
    }
}
