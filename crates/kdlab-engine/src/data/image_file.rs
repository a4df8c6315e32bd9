//! Decoding an image file into 8-bit RGB the way torchvision's `ImageFolder` sees it
//! (Pillow `convert('RGB')`): gray replicated, alpha dropped, CMYK converted, EXIF orientation
//! applied, 16-bit scaled down — after checking the picture's size against a limit, so that a
//! small file holding a huge picture (a decompression bomb) is refused before it is decoded.

use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

/// Pillow's `MAX_IMAGE_PIXELS` (1024³ / 4 / 3 ≈ 89.5 M) doubled: above it Pillow raises
/// `DecompressionBombError`, so no torchvision pipeline reads such a file either.
pub const PILLOW_MAX_IMAGE_PIXELS: u64 = 2 * (1024 * 1024 * 1024 / 4 / 3);

/// How large a picture may be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Width × height; larger pictures are refused (`data.max_image_pixels`).
    pub max_pixels: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_pixels: PILLOW_MAX_IMAGE_PIXELS,
        }
    }
}

impl DecodeLimits {
    /// What a decoder may allocate: the largest allowed picture as RGBA at 16 bits a channel.
    fn max_alloc_bytes(self) -> u64 {
        self.max_pixels.saturating_mul(8)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot decode image {path}: {message}")]
pub struct DecodeError {
    pub path: std::path::PathBuf,
    pub message: String,
}

pub fn decode_rgb(path: &Path, limits: DecodeLimits) -> Result<RgbImage, DecodeError> {
    let error = |message: String| DecodeError {
        path: path.to_path_buf(),
        message,
    };
    // A FIFO or device would block or never end: refused like any file that is no image.
    let file = kdlab_weightfile::open_regular(path).map_err(|e| error(e.to_string()))?;
    let mut reader = ImageReader::new(std::io::BufReader::new(file))
        .with_guessed_format()
        .map_err(|e| error(e.to_string()))?;
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_alloc = Some(limits.max_alloc_bytes());
    reader.limits(decoder_limits);
    // Only the header has been read here: the size is known before any pixel is.
    let mut decoder = reader.into_decoder().map_err(|e| error(e.to_string()))?;
    let (width, height) = decoder.dimensions();
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(error(format!(
            "the picture is {width}×{height} = {pixels} pixels, more than data.max_image_pixels \
             ({}); raise data.max_image_pixels in the config to read it",
            limits.max_pixels
        )));
    }
    let orientation = decoder.orientation().map_err(|e| error(e.to_string()))?;
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
        let out = decode_rgb(&path, DecodeLimits::default()).unwrap();
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
        assert_eq!(
            decode_rgb(&path, DecodeLimits::default())
                .unwrap()
                .get_pixel(0, 0)
                .0,
            [255, 128, 0]
        );

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
        let out = decode_rgb(&path, DecodeLimits::default()).unwrap();
        assert_eq!(
            (out.get_pixel(0, 0).0, out.get_pixel(1, 0).0),
            ([10, 20, 30], [200, 100, 50])
        );
    }

    #[test]
    fn a_picture_over_the_limit_is_refused_before_decoding() {
        // The 30000×30000 bomb itself is in the engine suite (tests/engine/image_limits.rs).
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small.png");
        image::GrayImage::new(20, 20).save(&small).unwrap();
        let e = decode_rgb(&small, DecodeLimits { max_pixels: 399 })
            .unwrap_err()
            .to_string();
        for needle in [
            "small.png",
            "20×20 = 400 pixels",
            "data.max_image_pixels (399)",
        ] {
            assert!(e.contains(needle), "{needle:?} not in {e}");
        }
        let image = decode_rgb(&small, DecodeLimits { max_pixels: 400 }).unwrap();
        assert_eq!(image.dimensions(), (20, 20));
    }

    #[test]
    fn garbage_is_an_error_naming_the_file() {
        let (_dir, path) = temp_file("noise.jpg", &[1, 2, 3, 4, 5]);
        let e = decode_rgb(&path, DecodeLimits::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("noise.jpg"), "{e}");
    }
}
