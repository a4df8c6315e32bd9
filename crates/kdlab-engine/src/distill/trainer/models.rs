//! The models a run trains with and what they are fed: the frozen teacher, the student's
//! architecture (its checkpoints name it), the input side and the training augmentation, and
//! the probe set, on the trainer's device. The student itself flows through the loop.

use std::path::Path;
use std::sync::Arc;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;

use crate::config::RunConfig;
use crate::data::loader::Transform;
use crate::data::views::Views;
use crate::distill::RunPlan;
use crate::distill::probe::{ProbeSet, Unreadable};
use crate::inspect::Provenance;
use crate::session::Models;
use kdlab_model::pair::{Student, Teacher};
use kdlab_model::weights::Architecture;

/// Everything model-side the loop needs besides the student.
pub(super) struct RunModels<B: AutodiffBackend> {
    pub(super) device: B::Device,
    pub(super) teacher: Teacher<B::InnerBackend>,
    pub(super) student_architecture: Architecture,
    /// What each model sees (the batches' pixels: its views, one after the other).
    pub(super) views: Views,
    pub(super) augment: Transform,
    /// The images whose maps are written after every epoch (node 0 only; None without any).
    probe: Option<ProbeSet>,
}

impl<B: AutodiffBackend> RunModels<B> {
    /// Builds the teacher and the student on `device`; the student comes apart, for the loop.
    pub(super) fn build(plan: &RunPlan, device: &B::Device) -> anyhow::Result<(Self, Student<B>)> {
        let Models { teacher, student } = plan.models.build::<B>(device)?;
        let views = plan.models.views();
        let models = Self {
            device: device.clone(),
            teacher,
            student_architecture: plan.models.student_architecture(),
            views,
            augment: augmentation(&plan.config, views),
            probe: None,
        };
        Ok((models, student))
    }

    /// Prepares the probe set (the teacher's targets computed once); returns the files that
    /// could not be read.
    pub(super) fn prepare_probe(&mut self, plan: &RunPlan) -> anyhow::Result<Unreadable> {
        let config = &plan.config;
        let (_, grid) = plan.models.geometry();
        let paths = plan.data.probe_paths(config);
        let (probe, skipped) = ProbeSet::prepare(
            &paths,
            config,
            &self.teacher,
            self.views,
            grid,
            &self.device,
        )?;
        self.probe = probe;
        Ok(skipped)
    }

    /// The probe set's maps for `student` as it is now, into `dir`; false without a probe set.
    pub(super) fn write_probe(
        &self,
        student: &Student<B>,
        dir: &Path,
        provenance: &Provenance,
    ) -> anyhow::Result<bool> {
        let Some(probe) = &self.probe else {
            return Ok(false);
        };
        probe.write(
            &self.teacher,
            &student.valid(),
            dir,
            provenance,
            &self.device,
        )?;
        Ok(true)
    }
}

/// The training transform at each model's view, as the config sets it: one crop per image.
fn augmentation(config: &RunConfig, views: Views) -> Transform {
    let d = &config.data;
    let (scale, ratio, flip) = (d.crop_scale, d.crop_ratio, d.hflip_probability);
    Arc::new(move |img, rng| views.train(img, scale, ratio, flip, rng))
}
