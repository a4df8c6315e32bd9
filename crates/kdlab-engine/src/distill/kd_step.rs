//! The KD forward/backward of one batch, shared by the one-device loop, every data-parallel
//! peer and the bench: the teacher's target, the student's prediction, the loss and the
//! student's gradients, everything left on the device.

use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;

use super::collapse::token_moments;
use kdlab_model::pair::{Student, Teacher};
use kdlab_model::target::kd_loss;

/// One batch's training step without the optimiser, everything left on the device.
pub struct KdStep<B: AutodiffBackend> {
    /// The KD loss (f32).
    pub loss: Tensor<B::InnerBackend, 1>,
    /// `collapse::token_moments` of target and prediction (the collapse watch).
    pub moments: Tensor<B::InnerBackend, 1>,
    /// The student's gradients of `loss × grad_scale`.
    pub grads: GradientsParams,
}

/// The KD loss of one batch and the student's gradients of `loss × grad_scale`. Each model
/// computes in its own type (`computing_in`) on its own view of the images (one tensor twice
/// for the thesis pair).
pub fn kd_backward<B: AutodiffBackend>(
    teacher: &Teacher<B::InnerBackend>,
    student: &Student<B>,
    (teacher_images, student_images): (Tensor<B::InnerBackend, 4>, Tensor<B::InnerBackend, 4>),
    grad_scale: f64,
) -> KdStep<B> {
    let target = teacher.target(teacher_images);
    student_backward(student, student_images, target, grad_scale)
}

/// The student's half of `kd_backward`, against a given target.
pub fn student_backward<B: AutodiffBackend>(
    student: &Student<B>,
    images: Tensor<B::InnerBackend, 4>,
    target: Tensor<B::InnerBackend, 3>,
    grad_scale: f64,
) -> KdStep<B> {
    let prediction = student.prediction(Tensor::from_inner(images));
    let moments = token_moments(target.clone(), prediction.clone().inner());
    let loss = kd_loss(prediction, Tensor::from_inner(target));
    let value = loss.clone().inner();
    let grads = GradientsParams::from_grads(loss.mul_scalar(grad_scale).backward(), student);
    KdStep {
        loss: value,
        moments,
        grads,
    }
}
