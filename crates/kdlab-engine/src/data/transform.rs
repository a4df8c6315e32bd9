//! The reference transforms (REFERENCE.md "Data").

use image::RgbImage;

use super::resize::resize_bicubic;

pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// A model's input normalisation (`pretrained_cfg`'s mean and std, ImageNet's by default).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalization {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalization {
    pub const IMAGENET: Self = Self {
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
    };

    pub fn new(mean: [f64; 3], std: [f64; 3]) -> Self {
        Self {
            mean: mean.map(|m| m as f32),
            std: std.map(|s| s as f32),
        }
    }
}

/// `[3, H, W]` channel-first, `(x/255 − mean)/std` in f32 with ImageNet's mean and std, exactly
/// as torchvision computes it.
pub fn normalize(img: &RgbImage) -> Vec<f32> {
    normalize_with(img, Normalization::IMAGENET)
}

/// `normalize` with a model's own mean and std.
pub fn normalize_with(img: &RgbImage, norm: Normalization) -> Vec<f32> {
    let (w, h) = img.dimensions();
    let plane = (w * h) as usize;
    let mut out = vec![0f32; 3 * plane];
    let inv = 1.0f32 / 255.0;
    for (i, p) in img.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (f32::from(p[c]) * inv - norm.mean[c]) / norm.std[c];
        }
    }
    out
}

/// Validation transform of the KD run: `Resize((s, s))` bicubic with antialias, no crop, then
/// normalise. Returns `[3, s, s]`.
pub fn validation_transform(img: &RgbImage, size: u32) -> Vec<f32> {
    normalize(&resize_bicubic(img, size, size))
}

/// `validation_transform` with a model's own normalisation.
pub fn validation_transform_with(img: &RgbImage, size: u32, norm: Normalization) -> Vec<f32> {
    normalize_with(&resize_bicubic(img, size, size), norm)
}

/// torchvision's `RandomResizedCrop.get_params`: up to 10 tries at a random area and log-uniform
/// aspect ratio, else a centre crop clamped to the ratio range. Returns (left, top, width, height).
pub fn random_resized_crop_box(
    width: u32,
    height: u32,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut impl rand::Rng,
) -> (u32, u32, u32, u32) {
    let (w, h) = (f64::from(width), f64::from(height));
    let area = w * h;
    let (log_lo, log_hi) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target_area = area * rng.random_range(scale.0..=scale.1);
        let aspect = rng.random_range(log_lo..=log_hi).exp();
        let cw = (target_area * aspect).sqrt().round();
        let ch = (target_area / aspect).sqrt().round();
        if cw > 0.0 && ch > 0.0 && cw <= w && ch <= h {
            let (cw, ch) = (cw as u32, ch as u32);
            let top = rng.random_range(0..=height - ch);
            let left = rng.random_range(0..=width - cw);
            return (left, top, cw, ch);
        }
    }
    let in_ratio = w / h;
    let (cw, ch) = if in_ratio < ratio.0 {
        (w, (w / ratio.0).round())
    } else if in_ratio > ratio.1 {
        ((h * ratio.1).round(), h)
    } else {
        (w, h)
    };
    let (cw, ch) = ((cw as u32).clamp(1, width), (ch as u32).clamp(1, height));
    ((width - cw) / 2, (height - ch) / 2, cw, ch)
}

/// Training transform: RandomResizedCrop (bicubic, antialiased) → horizontal flip → normalise.
pub fn train_transform(
    img: &RgbImage,
    size: u32,
    scale: (f64, f64),
    ratio: (f64, f64),
    hflip_probability: f64,
    rng: &mut impl rand::Rng,
) -> Vec<f32> {
    let (left, top, w, h) = random_resized_crop_box(img.width(), img.height(), scale, ratio, rng);
    let crop = image::imageops::crop_imm(img, left, top, w, h).to_image();
    let mut out = resize_bicubic(&crop, size, size);
    if rng.random_bool(hflip_probability) {
        image::imageops::flip_horizontal_in_place(&mut out);
    }
    normalize(&out)
}
