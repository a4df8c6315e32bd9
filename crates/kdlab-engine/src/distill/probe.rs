//! The probe set: a few fixed images whose per-patch maps, and the layer CKA of teacher and
//! student over all of them, are written after every epoch to the run's `heatmaps/epoch-NNN/`,
//! so the app's timeline shows the student improving. The teacher is frozen, so its targets
//! are computed once.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;

use crate::config::RunConfig;
use crate::data::views::Views;
use crate::inspect::Analysis;
use crate::inspect::analysis::{ProbeImage, layer_cka, student_tokens, teacher_tokens};
use crate::inspect::files::{Provenance, stem, write_image_outputs};
use kdlab_model::pair::{Student, Teacher};

/// Images that could not be read, with the reason.
pub type Unreadable = Vec<(PathBuf, String)>;

pub struct ProbeSet {
    images: Vec<ProbeImage>,
    targets: Vec<Vec<f32>>,
    dim: usize,
    views: Views,
}

impl ProbeSet {
    /// Loads the images and computes the teacher's targets; unreadable images are returned as
    /// (path, reason) and left out. None when there is nothing to probe.
    pub fn prepare<B: Backend>(
        paths: &[PathBuf],
        config: &RunConfig,
        teacher: &Teacher<B>,
        views: Views,
        grid: usize,
        device: &B::Device,
    ) -> anyhow::Result<(Option<Self>, Unreadable)> {
        let mut images = Vec::new();
        let mut skipped = Vec::new();
        for path in paths {
            match ProbeImage::load(path, views, grid, config.data.decode_limits()) {
                Ok(image) => images.push(image),
                Err(e) => skipped.push((path.clone(), e.message)),
            }
        }
        if images.is_empty() {
            return Ok((None, skipped));
        }
        let (targets, dim) = teacher_tokens(teacher, &images, views, device)?;
        Ok((
            Some(Self {
                images,
                targets,
                dim,
                views,
            }),
            skipped,
        ))
    }

    /// Writes every probe image's figures and values for the student as it is now, and the
    /// layer CKA of teacher and student over all probe images (`cka.csv`, `cka.png`).
    pub fn write<B: Backend>(
        &self,
        teacher: &Teacher<B>,
        student: &Student<B>,
        dir: &Path,
        provenance: &Provenance,
        device: &B::Device,
    ) -> anyhow::Result<()> {
        let (predictions, _) = student_tokens(student, &self.images, self.views, device)?;
        for (i, ((image, target), prediction)) in self
            .images
            .iter()
            .zip(&self.targets)
            .zip(predictions)
            .enumerate()
        {
            let analysis = Analysis::new(target.clone(), prediction, self.dim)?;
            write_image_outputs(dir, &stem(i, &image.path), image, &analysis, provenance)?;
        }
        layer_cka(teacher, student, &self.images, self.views, device)?.write(dir)
    }
}
