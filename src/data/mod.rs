//! Images in: decoding, the reference transforms, resizing.

pub mod image_file;
pub mod resize;
pub mod transform;

pub use image_file::decode_rgb;
pub use transform::{normalize, validation_transform};
