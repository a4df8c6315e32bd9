//! What each model of a pair is fed: its input size and normalisation. One crop per image (the
//! same random crop and flip for both models), resized and normalised once per model; a batch
//! holds, per image, the teacher's view and then the student's (one view when they agree, the
//! thesis pair).

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use image::RgbImage;

use super::resize::resize_bicubic;
use super::transform::{Normalization, normalize_with, random_resized_crop_box};

/// What a model is fed: square images of `size` px, normalised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct View {
    pub size: usize,
    pub normalization: Normalization,
}

impl View {
    /// Values per image (`3 × size²`).
    pub fn pixels(&self) -> usize {
        3 * self.size * self.size
    }
}

/// What each model sees; one crop per image, resized (and normalised) once per model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Views {
    pub teacher: View,
    pub student: View,
}

impl Views {
    /// Whether both models take the very same tensor (the thesis pair).
    pub fn shared(&self) -> bool {
        self.teacher == self.student
    }

    /// Values per image in a batch: the teacher's view, then the student's unless shared.
    pub fn pixels(&self) -> usize {
        if self.shared() {
            self.teacher.pixels()
        } else {
            self.teacher.pixels() + self.student.pixels()
        }
    }

    /// A batch `[B · pixels()]` on `device` as the teacher's and the student's images.
    pub fn split<B: Backend>(
        &self,
        pixels: Vec<f32>,
        images: usize,
        device: &B::Device,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let (t, s) = (self.teacher.size, self.student.size);
        let all = Tensor::<B, 2>::from_data(
            burn::tensor::TensorData::new(pixels, [images, self.pixels()]),
            device,
        );
        if self.shared() {
            let x = all.reshape([images, 3, t, t]);
            return (x.clone(), x);
        }
        let teacher = all
            .clone()
            .narrow(1, 0, 3 * t * t)
            .reshape([images, 3, t, t]);
        let student = all
            .narrow(1, 3 * t * t, 3 * s * s)
            .reshape([images, 3, s, s]);
        (teacher, student)
    }
}

impl Views {
    /// Both views of one image as the validation transform makes them (resize, normalise).
    pub fn validation(&self, img: &RgbImage) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.pixels());
        for view in self.distinct() {
            let size = view.size as u32;
            out.extend(normalize_with(
                &resize_bicubic(img, size, size),
                view.normalization,
            ));
        }
        out
    }

    /// Both views of one training crop: RandomResizedCrop's box and the flip drawn once,
    /// then the crop resized (bicubic, antialiased) and normalised for each model.
    pub fn train(
        &self,
        img: &RgbImage,
        scale: (f64, f64),
        ratio: (f64, f64),
        hflip_probability: f64,
        rng: &mut impl rand::Rng,
    ) -> Vec<f32> {
        let (left, top, w, h) =
            random_resized_crop_box(img.width(), img.height(), scale, ratio, rng);
        let crop = image::imageops::crop_imm(img, left, top, w, h).to_image();
        let flip = rng.random_bool(hflip_probability);
        let mut out = Vec::with_capacity(self.pixels());
        for view in self.distinct() {
            let size = view.size as u32;
            let mut resized = resize_bicubic(&crop, size, size);
            if flip {
                image::imageops::flip_horizontal_in_place(&mut resized);
            }
            out.extend(normalize_with(&resized, view.normalization));
        }
        out
    }

    fn distinct(&self) -> Vec<View> {
        if self.shared() {
            vec![self.teacher]
        } else {
            vec![self.teacher, self.student]
        }
    }
}
