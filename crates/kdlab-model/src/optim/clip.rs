//! Global gradient-norm clipping, as PyTorch's `clip_grad_norm_` (burn's own clipping is per
//! tensor).

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;

use super::grads::{param_ids, scale_all, with_grad};

/// Scales all gradients so that their global L2 norm is at most `max_norm`, as PyTorch's
/// `clip_grad_norm_` does (burn's own clipping is per tensor). Returns the norm before clipping.
pub fn clip_grad_norm<AB: AutodiffBackend, M: AutodiffModule<AB>>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
) -> f64 {
    let ids = param_ids(module);
    let mut total_sq = 0.0f64;
    for (id, rank) in &ids {
        total_sq += with_grad(grads, *id, *rank, |g: Tensor<AB::InnerBackend, 1>| {
            g.square().sum().into_scalar().to_f64_lossy()
        })
        .unwrap_or(0.0);
    }
    let norm = total_sq.sqrt();
    let scale = max_norm / (norm + 1e-6);
    if scale < 1.0 {
        scale_all::<AB::InnerBackend>(grads, &ids, scale);
    }
    norm
}

/// The global L2 norm of all gradients, `[1]`, left on the device (no read back); None
/// without any gradient.
pub fn grad_norm<AB: AutodiffBackend, M: AutodiffModule<AB>>(
    module: &M,
    grads: &GradientsParams,
) -> Option<Tensor<AB::InnerBackend, 1>> {
    param_ids(module)
        .iter()
        .filter_map(|&(id, rank)| {
            with_grad(grads, id, rank, |g: Tensor<AB::InnerBackend, 1>| {
                g.square().sum()
            })
        })
        .reduce(|total, part| total + part)
        .map(Tensor::sqrt)
}

trait ToF64 {
    fn to_f64_lossy(self) -> f64;
}
impl<E: burn::tensor::ElementConversion> ToF64 for E {
    fn to_f64_lossy(self) -> f64 {
        self.elem::<f64>()
    }
}
