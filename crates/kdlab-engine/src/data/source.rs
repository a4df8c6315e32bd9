//! What the batch loader reads from: numbered, labelled images that decode on any thread.

use std::path::PathBuf;

use image::RgbImage;

use super::folder::ImageFolder;
use super::image_file::{DecodeError, decode_rgb};

/// A fixed list of labelled images (an image folder, a CIFAR file in memory, …).
pub trait ImageSource: Send + Sync {
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The class of image `index` (an index into the source's class names).
    fn label(&self, index: usize) -> usize;

    /// The decoded image; an error names the file so that it can be skipped and reported.
    fn load(&self, index: usize) -> Result<RgbImage, DecodeError>;

    /// Where image `index` comes from, for messages.
    fn origin(&self, index: usize) -> PathBuf;
}

impl ImageSource for ImageFolder {
    fn len(&self) -> usize {
        self.entries.len()
    }

    fn label(&self, index: usize) -> usize {
        self.entries[index].class
    }

    fn load(&self, index: usize) -> Result<RgbImage, DecodeError> {
        decode_rgb(&self.entries[index].path, self.limits)
    }

    fn origin(&self, index: usize) -> PathBuf {
        self.entries[index].path.clone()
    }
}
