//! Decoding an image file into 8-bit RGB the way torchvision's `ImageFolder` sees it
//! (Pillow `convert('RGB')`): gray replicated, alpha dropped, CMYK converted, EXIF orientation
//! applied, 16-bit scaled down.

use std::path::Path;

use image::{DynamicImage, ImageReader, RgbImage};

#[derive(Debug, thiserror::Error)]
#[error("cannot decode image {path}: {message}")]
pub struct DecodeError {
    pub path: std::path::PathBuf,
    pub message: String,
}

pub fn decode_rgb(path: &Path) -> Result<RgbImage, DecodeError> {
    let error = |message: String| DecodeError {
        path: path.to_path_buf(),
        message,
    };
    let reader = ImageReader::open(path)
        .map_err(|e| error(e.to_string()))?
        .with_guessed_format()
        .map_err(|e| error(e.to_string()))?;
    let mut decoder = reader.into_decoder().map_err(|e| error(e.to_string()))?;
    let orientation =
        image::ImageDecoder::orientation(&mut decoder).map_err(|e| error(e.to_string()))?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| error(e.to_string()))?;
    img.apply_orientation(orientation);
    if img.width() == 0 || img.height() == 0 {
        return Err(error("the image has no pixels".into()));
    }
    Ok(img.into_rgb8())
}
