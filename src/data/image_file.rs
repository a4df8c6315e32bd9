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

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageBuffer, Rgb};

    fn temp_file(name: &str, bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        (dir, path)
    }

    /// A JPEG with an APP1 EXIF segment saying "rotate 90° clockwise" (orientation 6).
    fn jpeg_with_orientation_6(img: &RgbImage) -> Vec<u8> {
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
            .encode_image(img)
            .unwrap();
        // TIFF header (little endian), one IFD entry: tag 0x0112 SHORT count 1 value 6.
        let tiff: Vec<u8> = [
            &b"II*\0"[..],
            &8u32.to_le_bytes(),
            &1u16.to_le_bytes(),
            &0x0112u16.to_le_bytes(),
            &3u16.to_le_bytes(),
            &1u32.to_le_bytes(),
            &6u16.to_le_bytes(),
            &[0, 0],
            &0u32.to_le_bytes(),
        ]
        .concat();
        let payload = [&b"Exif\0\0"[..], &tiff].concat();
        let mut segment = vec![0xFF, 0xE1];
        segment.extend(((payload.len() + 2) as u16).to_be_bytes());
        segment.extend(payload);
        [&jpeg[..2], &segment, &jpeg[2..]].concat()
    }

    #[test]
    fn exif_orientation_is_applied() {
        // 40 wide, 20 high, left half red: rotated 90° clockwise it is 20 × 40, top half red.
        let img = ImageBuffer::from_fn(40, 20, |x, _| {
            if x < 20 {
                Rgb([255, 0, 0])
            } else {
                Rgb([0, 0, 255])
            }
        });
        let (_dir, path) = temp_file("rotated.jpg", &jpeg_with_orientation_6(&img));
        let out = decode_rgb(&path).unwrap();
        assert_eq!(out.dimensions(), (20, 40));
        assert!(out.get_pixel(10, 5)[0] > 200 && out.get_pixel(10, 35)[2] > 200);
    }

    #[test]
    fn sixteen_bit_and_palette_images_become_rgb8() {
        let img16: ImageBuffer<Rgb<u16>, Vec<u16>> =
            ImageBuffer::from_pixel(3, 2, Rgb([65535, 32896, 0]));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deep.png");
        img16.save(&path).unwrap();
        assert_eq!(decode_rgb(&path).unwrap().get_pixel(0, 0).0, [255, 128, 0]);

        // An indexed (palette) PNG: two colours.
        let path = dir.path().join("palette.png");
        let file = std::fs::File::create(&path).unwrap();
        let mut encoder = png::Encoder::new(file, 2, 1);
        encoder.set_color(png::ColorType::Indexed);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_palette(vec![10, 20, 30, 200, 100, 50]);
        encoder
            .write_header()
            .unwrap()
            .write_image_data(&[0, 1])
            .unwrap();
        let out = decode_rgb(&path).unwrap();
        assert_eq!(
            (out.get_pixel(0, 0).0, out.get_pixel(1, 0).0),
            ([10, 20, 30], [200, 100, 50])
        );
    }

    #[test]
    fn garbage_is_an_error_naming_the_file() {
        let (_dir, path) = temp_file("noise.jpg", &[1, 2, 3, 4, 5]);
        let e = decode_rgb(&path).unwrap_err().to_string();
        assert!(e.contains("noise.jpg"), "{e}");
    }
}
