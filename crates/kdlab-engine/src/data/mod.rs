//! Images in: folders, decoding, the reference transforms, batching on worker threads.

pub mod cifar;
pub mod folder;
pub mod image_file;
pub mod loader;
pub mod resize;
pub mod source;
pub mod transform;
pub mod views;

pub use folder::ImageFolder;
pub use image_file::decode_rgb;
pub use source::ImageSource;
pub use transform::{
    Normalization, normalize, normalize_with, train_transform, validation_transform,
    validation_transform_with,
};
