//! Running teacher and student on images for the per-patch views: the images as the models see
//! them (validation transform) and as people see them (same squash, display size), the tokens of
//! target and prediction, and the maps and PCA colours computed from them.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use image::RgbImage;

use super::attention::{AttentionMaps, model_attention};
use super::cka::{CkaAccumulator, CkaMatrix};
use super::patch_maps::{PatchMapError, PatchMaps};
use super::pca::PcaBasis;
use super::render::display_side;
use crate::data::image_file::{DecodeError, DecodeLimits};
use crate::data::resize::resize_bicubic;
use crate::data::{decode_rgb, validation_transform};
use crate::session::{ModelPlan, teacher_target};
use kdlab_model::model::{BeitV2, Data2Vec2};
use kdlab_model::target::prepare_target;

/// Images per forward pass when analysing many.
const CHUNK: usize = 16;

/// One image, ready for the models and for display.
#[derive(Debug, Clone)]
pub struct ProbeImage {
    pub path: PathBuf,
    /// `[3, size, size]`, normalised (the validation transform).
    pub pixels: Vec<f32>,
    /// The same squash to a square, at `display_side(grid)` pixels for the pictures.
    pub display: RgbImage,
}

impl ProbeImage {
    pub fn load(
        path: &Path,
        size: usize,
        grid: usize,
        limits: DecodeLimits,
    ) -> Result<Self, DecodeError> {
        let rgb = decode_rgb(path, limits)?;
        let side = display_side(grid);
        Ok(Self {
            path: path.to_path_buf(),
            pixels: validation_transform(&rgb, size as u32),
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
    teacher: &BeitV2<B>,
    images: &[ProbeImage],
    size: usize,
    device: &B::Device,
) -> anyhow::Result<(Vec<Vec<f32>>, usize)> {
    tokens_per_image(images, size, device, |x| teacher_target(teacher, x))
}

/// The student's prepared prediction for each image, `[T·D]` each.
pub fn student_tokens<B: Backend>(
    student: &Data2Vec2<B>,
    images: &[ProbeImage],
    size: usize,
    device: &B::Device,
) -> anyhow::Result<(Vec<Vec<f32>>, usize)> {
    tokens_per_image(images, size, device, |x| {
        prepare_target(&student.forward(x).layer_results)
    })
}

/// Runs `model` on chunks of images; returns per-image tokens and D.
fn tokens_per_image<B: Backend>(
    images: &[ProbeImage],
    size: usize,
    device: &B::Device,
    model: impl Fn(Tensor<B, 4>) -> Tensor<B, 3>,
) -> anyhow::Result<(Vec<Vec<f32>>, usize)> {
    let mut out = Vec::with_capacity(images.len());
    let mut dim = 0;
    for chunk in images.chunks(CHUNK) {
        let y = model(pixels_of(chunk, size, device)); // [n, T, D]
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

/// The images' pixels as one batch `[n, 3, size, size]`.
fn pixels_of<B: Backend>(images: &[ProbeImage], size: usize, device: &B::Device) -> Tensor<B, 4> {
    let pixels: Vec<f32> = images
        .iter()
        .flat_map(|i| i.pixels.iter().copied())
        .collect();
    Tensor::from_data(
        TensorData::new(pixels, [images.len(), 3, size, size]),
        device,
    )
}

/// Linear CKA of every teacher layer result with every student layer result over the tokens
/// of `images` (`cka` says how).
pub fn layer_cka<B: Backend>(
    teacher: &BeitV2<B>,
    student: &Data2Vec2<B>,
    images: &[ProbeImage],
    size: usize,
    device: &B::Device,
) -> anyhow::Result<CkaMatrix> {
    let mut cka = CkaAccumulator::default();
    for chunk in images.chunks(CHUNK) {
        let x = pixels_of(chunk, size, device);
        let t = teacher.forward(x.clone()).layer_results;
        let s = student.forward(x).layer_results;
        cka.add(&t, &s);
    }
    cka.finish(images.len())
}

/// Teacher and student loaded for inspection (inference only, on any backend).
pub struct InspectedPair<B: Backend> {
    pub teacher: BeitV2<B>,
    pub student: Data2Vec2<B>,
    /// Input side and patch-grid side of the student.
    pub size: usize,
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
        let (size, grid) = plan.geometry();
        Ok(Self {
            teacher,
            student,
            size,
            grid,
            limits,
            device: device.clone(),
        })
    }

    pub fn load_image(&self, path: &Path) -> Result<ProbeImage, DecodeError> {
        ProbeImage::load(path, self.size, self.grid, self.limits)
    }

    /// Both models' CLS attention (last block, per head) and rollout for each image.
    pub fn attention(&self, images: &[ProbeImage]) -> anyhow::Result<Vec<AttentionMaps>> {
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(CHUNK) {
            let x = pixels_of(chunk, self.size, &self.device);
            let teacher = model_attention(&self.teacher.attention_weights(x.clone()))?;
            let student = model_attention(&self.student.attention_weights(x))?;
            out.extend(
                teacher
                    .into_iter()
                    .zip(student)
                    .map(|(teacher, student)| AttentionMaps {
                        grid: self.grid,
                        teacher,
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
            self.size,
            &self.device,
        )
    }

    /// Maps and tokens of each image.
    pub fn analyse(&self, images: &[ProbeImage]) -> anyhow::Result<Vec<Analysis>> {
        let (targets, dim) = teacher_tokens(&self.teacher, images, self.size, &self.device)?;
        let (predictions, _) = student_tokens(&self.student, images, self.size, &self.device)?;
        targets
            .into_iter()
            .zip(predictions)
            .map(|(t, p)| Ok(Analysis::new(t, p, dim)?))
            .collect()
    }
}
