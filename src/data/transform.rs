//! The reference transforms (REFERENCE.md "Data").

use image::RgbImage;

use super::resize::resize_bicubic;

pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// `[3, H, W]` channel-first, `(x/255 − mean)/std` in f32, exactly as torchvision computes it.
pub fn normalize(img: &RgbImage) -> Vec<f32> {
    let (w, h) = img.dimensions();
    let plane = (w * h) as usize;
    let mut out = vec![0f32; 3 * plane];
    let inv = 1.0f32 / 255.0;
    for (i, p) in img.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (f32::from(p[c]) * inv - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        }
    }
    out
}

/// Validation transform of the KD run: `Resize((s, s))` bicubic with antialias, no crop, then
/// normalise. Returns `[3, s, s]`.
pub fn validation_transform(img: &RgbImage, size: u32) -> Vec<f32> {
    normalize(&resize_bicubic(img, size, size))
}
