//! The validation loss: the same KD loss over a folder with the validation transform, averaged
//! over images.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use burn::module::Module;
use burn::tensor::ElementConversion;
use burn::tensor::backend::Backend;

use crate::config::RunConfig;
use crate::data::ImageFolder;
use crate::data::loader::{LoaderSettings, Part, Transform, epoch_order, spawn_epoch};
use crate::data::views::Views;
use kdlab_model::pair::{Student, Teacher};
use kdlab_model::target::kd_loss;

/// The mean KD loss over `folder`, and the files that could not be read.
pub fn validation_loss<B: Backend>(
    config: &RunConfig,
    teacher: &Teacher<B>,
    student: &Student<B>,
    folder: &Arc<ImageFolder>,
    views: Views,
) -> anyhow::Result<(f64, Vec<(PathBuf, String)>)> {
    let (sum, skipped) = validation_sum(
        config,
        teacher,
        student,
        folder,
        views,
        Part::WHOLE,
        config.optim.batch_size,
    )?;
    Ok((sum.mean(folder)?, skipped))
}

/// The KD loss summed over the images of a part of the folder (`loss × images` per batch).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LossSum {
    pub total: f64,
    pub images: usize,
}

impl LossSum {
    /// The mean over the images, an error when none could be read.
    pub fn mean(self, folder: &ImageFolder) -> anyhow::Result<f64> {
        if self.images == 0 {
            bail!("no readable validation image in {}", folder.root.display());
        }
        Ok(self.total / self.images as f64)
    }
}

/// The validation loss of `part` of the folder's images (a device's shard in a data-parallel
/// run), in batches of `batch_size`.
pub fn validation_sum<B: Backend>(
    config: &RunConfig,
    teacher: &Teacher<B>,
    student: &Student<B>,
    folder: &Arc<ImageFolder>,
    views: Views,
    part: Part,
    batch_size: usize,
) -> anyhow::Result<(LossSum, Vec<(PathBuf, String)>)> {
    let device = student
        .devices()
        .into_iter()
        .next()
        .context("the student has no device")?;
    let order = epoch_order(folder.entries.len(), 1, config.seed, 0, false);
    let order = order[part.of(0..order.len())].to_vec();
    let settings = LoaderSettings {
        batch_size,
        workers: config.data.workers,
        prefetch_batches: config.data.prefetch_batches,
        drop_last: false,
        seed: config.seed,
        part: Part::WHOLE,
    };
    let transform: Transform = Arc::new(move |img, _| views.validation(img));
    let (mut sum, mut skipped) = (LossSum::default(), Vec::new());
    for batch in spawn_epoch(folder.clone(), order, 0, 0, &settings, transform) {
        skipped.extend(batch.skipped);
        if batch.len == 0 {
            continue;
        }
        let (teacher_images, student_images) = views.split::<B>(batch.pixels, batch.len, &device);
        let target = teacher.target(teacher_images);
        let prediction = student.prediction(student_images);
        sum.total += kd_loss(prediction, target).into_scalar().elem::<f64>() * batch.len as f64;
        sum.images += batch.len;
    }
    Ok((sum, skipped))
}
