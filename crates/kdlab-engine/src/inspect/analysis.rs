//! Running teacher and student on images for the per-patch views: the images as the models see
//! them (validation transform) and as people see them (same squash, display size), the tokens of
//! target and prediction, and the maps and PCA colours computed from them.

use std::path::{Path, PathBuf};

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use image::RgbImage;

use super::attention::{AttentionMaps, model_attention};
use super::cka::{CkaAccumulator, CkaMatrix};
use super::patch_maps::{PatchMapError, PatchMaps};
use super::pca::PcaBasis;
use super::render::display_side;
use crate::data::decode_rgb;
use crate::data::image_file::{DecodeError, DecodeLimits};
use crate::data::resize::resize_bicubic;
use crate::data::views::Views;
use crate::session::ModelPlan;
use kdlab_model::pair::{Student, Teacher};

/// Images per forward pass when analysing many.
const CHUNK: usize = 16;

/// One image, ready for the models and for display.
#[derive(Debug, Clone)]
pub struct ProbeImage {
    pub path: PathBuf,
    /// Each model's view of it, normalised (the validation transform; `Views::pixels`).
    pub pixels: Vec<f32>,
    /// The same squash to a square, at `display_side(grid)` pixels for the pictures.
    pub display: RgbImage,
}

impl ProbeImage {
    pub fn load(
        path: &Path,
        views: Views,
        grid: usize,
        limits: DecodeLimits,
    ) -> Result<Self, DecodeError> {
        let rgb = decode_rgb(path, limits)?;
        let side = display_side(grid);
        Ok(Self {
            path: path.to_path_buf(),
            pixels: views.validation(&rgb),
            display: resize_bicubic(&rgb, side, side),
        })
    }
}

/// Target and prediction tokens of one image (`[T, D]` row-major, CLS first) and their maps.
#[derive(Debug, Clone)]
pub struct Analysis {
    pub maps: PatchMaps,
    pub dim: usize,
    pub target: Vec<f32>,
    pub prediction: Vec<f32>,
}

impl Analysis {
    pub fn new(target: Vec<f32>, prediction: Vec<f32>, dim: usize) -> Result<Self, PatchMapError> {
        Ok(Self {
            maps: PatchMaps::compute(&target, &prediction, dim)?,
            dim,
            target,
            prediction,
        })
    }

    /// Teacher and student patch colours in the PCA basis of the teacher's patches.
    pub fn pca_colours(&self) -> (Vec<[u8; 3]>, Vec<[u8; 3]>) {
        let teacher = &self.target[self.dim..];
        let student = &self.prediction[self.dim..];
        let basis = PcaBasis::fit(teacher, self.dim);
        (
            basis.to_rgb(teacher, self.dim),
            basis.to_rgb(student, self.dim),
        )
    }
}

/// The teacher's prepared target for each image, `[T·D]` each.
pub fn teacher_tokens<B: Backend>(
    teacher: &Teacher<B>,
    images: &[ProbeImage],
    views: Views,
    device: &B::Device,
) -> anyhow::Result<(Vec<Vec<f32>>, usize)> {
    tokens_per_image(images, views, device, |(x, _)| teacher.target(x))
}

/// The student's prepared prediction for each image, `[T·D]` each.
pub fn student_tokens<B: Backend>(
    student: &Student<B>,
    images: &[ProbeImage],
    views: Views,
    device: &B::Device,
) -> anyhow::Result<(Vec<Vec<f32>>, usize)> {
    tokens_per_image(images, views, device, |(_, x)| student.prediction(x))
}

/// Runs `model` on chunks of images (the teacher's and the student's view); returns per-image
/// tokens and D.
fn tokens_per_image<B: Backend>(
    images: &[ProbeImage],
    views: Views,
    device: &B::Device,
    model: impl Fn((Tensor<B, 4>, Tensor<B, 4>)) -> Tensor<B, 3>,
) -> anyhow::Result<(Vec<Vec<f32>>, usize)> {
    let mut out = Vec::with_capacity(images.len());
    let mut dim = 0;
    for chunk in images.chunks(CHUNK) {
        let y = model(pixels_of(chunk, views, device)); // [n, T, D]
        let [n, tokens, d] = y.dims();
        dim = d;
        let values = y
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("reading the model's tokens back: {e:?}"))?;
        out.extend(values.chunks_exact(tokens * d).take(n).map(<[f32]>::to_vec));
    }
    Ok((out, dim))
}

/// The images as one batch per model: `[n, 3, S_t, S_t]` and `[n, 3, S_s, S_s]`.
fn pixels_of<B: Backend>(
    images: &[ProbeImage],
    views: Views,
    device: &B::Device,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let pixels: Vec<f32> = images
        .iter()
        .flat_map(|i| i.pixels.iter().copied())
        .collect();
    views.split(pixels, images.len(), device)
}

/// Linear CKA of every teacher layer result with every student layer result over the tokens
/// of `images` (`cka` says how): the target's tokens (registers dropped), the teacher's on the
/// student's grid.
pub fn layer_cka<B: Backend>(
    teacher: &Teacher<B>,
    student: &Student<B>,
    images: &[ProbeImage],
    views: Views,
    device: &B::Device,
) -> anyhow::Result<CkaMatrix> {
    let mut cka = CkaAccumulator::default();
    let pair = teacher.pair;
    for chunk in images.chunks(CHUNK) {
        let (xt, xs) = pixels_of(chunk, views, device);
        let t: Vec<_> = teacher
            .encoder
            .forward(xt)
            .layer_results
            .into_iter()
            .map(|h| pair.teacher_layer_tokens(h))
            .collect();
        let s: Vec<_> = student
            .encoder
            .forward(xs)
            .layer_results
            .into_iter()
            .map(|h| pair.student_layer_tokens(h))
            .collect();
        cka.add(&t, &s);
    }
    cka.finish(images.len())
}

/// Teacher and student loaded for inspection (inference only, on any backend).
pub struct InspectedPair<B: Backend> {
    pub teacher: Teacher<B>,
    pub student: Student<B>,
    /// What each model sees.
    pub views: Views,
    /// Patch-grid side of the student (every map is drawn on it).
    pub grid: usize,
    limits: DecodeLimits,
    device: B::Device,
}

impl<B: Backend> InspectedPair<B> {
    /// The plan's teacher (a random one rebuilt from the seed, as in training on the same
    /// backend) and student, for images decoded within `limits`.
    pub fn build(
        plan: &ModelPlan,
        limits: DecodeLimits,
        device: &B::Device,
    ) -> anyhow::Result<Self> {
        let (teacher, student) = plan.build_pair::<B, B>(device)?;
        let (_, grid) = plan.geometry();
        Ok(Self {
            teacher,
            student,
            views: plan.views(),
            grid,
            limits,
            device: device.clone(),
        })
    }

    pub fn load_image(&self, path: &Path) -> Result<ProbeImage, DecodeError> {
        ProbeImage::load(path, self.views, self.grid, self.limits)
    }

    /// Both models' CLS attention (last block, per head) and rollout for each image.
    pub fn attention(&self, images: &[ProbeImage]) -> anyhow::Result<Vec<AttentionMaps>> {
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(CHUNK) {
            let (xt, xs) = pixels_of(chunk, self.views, &self.device);
            let (t, s) = (&self.teacher.encoder, &self.student.encoder);
            let teacher = model_attention(&t.attention_weights(xt), t.tokens().prefix())?;
            let student = model_attention(&s.attention_weights(xs), s.tokens().prefix())?;
            let pair = self.teacher.pair;
            out.extend(
                teacher
                    .into_iter()
                    .zip(student)
                    .map(|(teacher, student)| AttentionMaps {
                        grid: self.grid,
                        // The teacher's maps on the student's grid, where every map is drawn.
                        teacher: teacher.on_grid(pair.teacher.grid, pair.student.grid),
                        student,
                    }),
            );
        }
        Ok(out)
    }

    /// Layer CKA over the tokens of all `images`.
    pub fn cka(&self, images: &[ProbeImage]) -> anyhow::Result<CkaMatrix> {
        layer_cka(
            &self.teacher,
            &self.student,
            images,
            self.views,
            &self.device,
        )
    }

    /// Maps and tokens of each image.
    pub fn analyse(&self, images: &[ProbeImage]) -> anyhow::Result<Vec<Analysis>> {
        let (targets, dim) = teacher_tokens(&self.teacher, images, self.views, &self.device)?;
        let (predictions, _) = student_tokens(&self.student, images, self.views, &self.device)?;
        targets
            .into_iter()
            .zip(predictions)
            .map(|(t, p)| Ok(Analysis::new(t, p, dim)?))
            .collect()
    }
}
