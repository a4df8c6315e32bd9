//! The validation loss: the same KD loss over a folder with the validation transform, averaged
//! over images.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor, TensorData};

use crate::config::RunConfig;
use crate::data::ImageFolder;
use crate::data::loader::{LoaderSettings, Transform, epoch_order, spawn_epoch};
use crate::data::validation_transform;
use crate::model::{BeitV2, Data2Vec2};
use crate::session::teacher_target;
use crate::target::{kd_loss, prepare_target};

/// The mean KD loss over `folder`, and the files that could not be read.
pub fn validation_loss<B: Backend>(
    config: &RunConfig,
    teacher: &BeitV2<B>,
    student: &Data2Vec2<B>,
    folder: &Arc<ImageFolder>,
    size: usize,
) -> anyhow::Result<(f64, Vec<(PathBuf, String)>)> {
    let device = student
        .devices()
        .into_iter()
        .next()
        .context("the student has no device")?;
    let order = epoch_order(folder.entries.len(), 1, config.seed, 0, false);
    let settings = LoaderSettings {
        batch_size: config.optim.batch_size,
        workers: config.data.workers,
        prefetch_batches: config.data.prefetch_batches,
        drop_last: false,
        seed: config.seed,
    };
    let transform: Transform = Arc::new(move |img, _| validation_transform(img, size as u32));
    let (mut total, mut count, mut skipped) = (0.0f64, 0usize, Vec::new());
    for batch in spawn_epoch(folder.clone(), order, 0, 0, &settings, transform) {
        skipped.extend(batch.skipped);
        if batch.len == 0 {
            continue;
        }
        let images = Tensor::<B, 4>::from_data(
            TensorData::new(batch.pixels, [batch.len, 3, size, size]),
            &device,
        );
        let target = teacher_target(teacher, images.clone());
        let prediction = prepare_target(&student.forward(images).layer_results);
        total += kd_loss(prediction, target).into_scalar().elem::<f64>() * batch.len as f64;
        count += batch.len;
    }
    if count == 0 {
        bail!("no readable validation image in {}", folder.root.display());
    }
    Ok((total / count as f64, skipped))
}
