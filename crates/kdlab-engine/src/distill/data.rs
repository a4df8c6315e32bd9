//! The images a run trains and validates on, opened and checked against the config's batch
//! before any tensor exists.

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{ConfigError, Problems, RunConfig};
use crate::data::ImageFolder;

/// Training data as the config describes it.
pub struct TrainingData {
    pub train: Arc<ImageFolder>,
    pub val: Option<Arc<ImageFolder>>,
    /// Optimiser steps in one epoch (whole global batches; the rest of the epoch is dropped).
    pub steps_per_epoch: usize,
}

impl TrainingData {
    /// Lists the folders; a missing or empty folder, or too few images for one global batch,
    /// is a problem of the field that causes it.
    pub fn open(config: &RunConfig) -> Result<Self, ConfigError> {
        let mut found = Problems::default();
        let limits = config.data.decode_limits();
        let scan = |path: &PathBuf, field: &str, found: &mut Problems| match ImageFolder::scan(path)
        {
            Ok(folder) => Some(folder.with_limits(limits)),
            Err(e) => {
                found.push(field, e.to_string());
                None
            }
        };
        let mut train = scan(&config.data.train, "data.train", &mut found);
        let val = match &config.data.val {
            Some(path) => scan(path, "data.val", &mut found),
            None => train
                .as_mut()
                .and_then(|t| t.split_off_validation(config.data.val_fraction)),
        };
        let optim = &config.optim;
        // Whole global batches; a batch of 0 (refused by the config's own checks) makes none.
        let steps_per_epoch = train.as_ref().map_or(0, |t| {
            (t.entries.len() * config.data.repeats)
                .checked_div(optim.global_batch())
                .unwrap_or(0)
        });
        if let Some(train) = &train
            && steps_per_epoch == 0
        {
            found.push(
                "optim.batch_size",
                format!(
                    "{} training images × {} repeats make no full global batch of {} \
                     (batch_size {} × grad_accum_steps {}); lower the batch or raise data.repeats",
                    train.entries.len(),
                    config.data.repeats,
                    optim.global_batch(),
                    optim.batch_size,
                    optim.grad_accum_steps
                ),
            );
        }
        match train {
            // A folder that could not be listed left its problem behind.
            Some(train) if found.0.is_empty() => Ok(Self {
                train: Arc::new(train),
                val: val.map(Arc::new),
                steps_per_epoch,
            }),
            _ => Err(ConfigError::Invalid {
                path: None,
                problems: found.0,
            }),
        }
    }

    /// The probe images the config names, else the first `probe.count` validation (or
    /// training) images.
    pub fn probe_paths(&self, config: &RunConfig) -> Vec<PathBuf> {
        if !config.probe.images.is_empty() {
            return config.probe.images.clone();
        }
        let folder = self.val.as_ref().unwrap_or(&self.train);
        folder
            .entries
            .iter()
            .take(config.probe.count)
            .map(|e| e.path.clone())
            .collect()
    }
}
