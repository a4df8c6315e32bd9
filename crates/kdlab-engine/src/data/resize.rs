//! Antialiased bicubic resize of 8-bit RGB images, as Pillow's `Image.resize(BICUBIC)` computes
//! it — which torchvision's uint8 antialiased resize (the reference transform) follows to ±1 level.
//!
//! Upstream: python-pillow `src/libImaging/Resample.c` (`precompute_coeffs`,
//! `normalize_coeffs_8bpc`, `ImagingResampleHorizontal_8bpc`): separable passes, width first,
//! fixed-point weights with 22 fractional bits, the intermediate rounded to uint8.

use image::RgbImage;
// Keys' cubic convolution kernel with a = −0.5 (Pillow's and torch's bicubic).
use kdlab_model::model::resample::keys_cubic as bicubic;

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// For each output index: the first input index and the fixed-point weights from there on.
struct Coefficients {
    spans: Vec<(usize, Vec<i32>)>,
}

fn coefficients(in_size: usize, out_size: usize) -> Coefficients {
    let scale = in_size as f64 / out_size as f64;
    // Antialias: widen the kernel by the downscale factor.
    let filter_scale = scale.max(1.0);
    let support = 2.0 * filter_scale;
    let spans = (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as isize).max(0) as usize;
            let xmax = ((center + support + 0.5) as isize).min(in_size as isize) as usize;
            let weights: Vec<f64> = (xmin..xmax)
                .map(|x| bicubic((x as f64 - center + 0.5) / filter_scale))
                .collect();
            let total: f64 = weights.iter().sum();
            let fixed = weights
                .iter()
                .map(|w| {
                    let k = if total == 0.0 { *w } else { w / total };
                    let scaled = k * f64::from(1u32 << PRECISION_BITS);
                    (if k < 0.0 { scaled - 0.5 } else { scaled + 0.5 }) as i32
                })
                .collect();
            (xmin, fixed)
        })
        .collect();
    Coefficients { spans }
}

fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One pass along `axis` 0 (width) or 1 (height).
fn resample(src: &RgbImage, out_len: usize, along_width: bool) -> RgbImage {
    let (w, h) = src.dimensions();
    let (ow, oh) = if along_width {
        (out_len as u32, h)
    } else {
        (w, out_len as u32)
    };
    let coeffs = coefficients(if along_width { w } else { h } as usize, out_len);
    let mut out = RgbImage::new(ow, oh);
    let half = 1i64 << (PRECISION_BITS - 1);
    for y in 0..oh {
        for x in 0..ow {
            let (start, weights) = &coeffs.spans[if along_width { x } else { y } as usize];
            let mut acc = [half; 3];
            for (i, k) in weights.iter().enumerate() {
                let p = if along_width {
                    src.get_pixel((start + i) as u32, y)
                } else {
                    src.get_pixel(x, (start + i) as u32)
                };
                for c in 0..3 {
                    acc[c] += i64::from(p[c]) * i64::from(*k);
                }
            }
            out.put_pixel(x, y, image::Rgb(acc.map(clip8)));
        }
    }
    out
}

/// Resizes to `width × height` (a pass is skipped when that side already fits, as in Pillow).
pub fn resize_bicubic(src: &RgbImage, width: u32, height: u32) -> RgbImage {
    let mut img = src.clone();
    if img.width() != width {
        img = resample(&img, width as usize, true);
    }
    if img.height() != height {
        img = resample(&img, height as usize, false);
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_image_stays_constant() {
        let src = RgbImage::from_pixel(37, 23, image::Rgb([200, 10, 77]));
        for (w, h) in [(224, 224), (8, 5), (37, 23)] {
            let out = resize_bicubic(&src, w, h);
            assert!(out.pixels().all(|p| p.0 == [200, 10, 77]), "{w}x{h}");
        }
    }

    #[test]
    fn weights_sum_to_one() {
        for (i, o) in [(320, 224), (100, 224), (64, 224), (500, 7)] {
            for (_, k) in coefficients(i, o).spans {
                let sum: i64 = k.iter().map(|&v| i64::from(v)).sum();
                assert!(
                    (sum - (1 << PRECISION_BITS)).abs() <= k.len() as i64,
                    "{i}->{o}"
                );
            }
        }
    }
}
