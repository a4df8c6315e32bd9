//! Global gradient-norm clipping, as PyTorch's `clip_grad_norm_` (burn's own clipping is per
//! tensor).

use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};

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
        for (id, rank) in ids {
            scale_grad::<AB::InnerBackend>(grads, id, rank, scale);
        }
    }
    norm
}

trait ToF64 {
    fn to_f64_lossy(self) -> f64;
}
impl<E: burn::tensor::ElementConversion> ToF64 for E {
    fn to_f64_lossy(self) -> f64 {
        self.elem::<f64>()
    }
}

fn with_grad<B: Backend, T>(
    grads: &GradientsParams,
    id: ParamId,
    rank: usize,
    f: impl FnOnce(Tensor<B, 1>) -> T,
) -> Option<T> {
    match rank {
        1 => grads.get::<B, 1>(id).map(f),
        2 => grads.get::<B, 2>(id).map(|g| f(g.flatten(0, 1))),
        3 => grads.get::<B, 3>(id).map(|g| f(g.flatten(0, 2))),
        4 => grads.get::<B, 4>(id).map(|g| f(g.flatten(0, 3))),
        _ => None,
    }
}

fn scale_grad<B: Backend>(grads: &mut GradientsParams, id: ParamId, rank: usize, scale: f64) {
    match rank {
        1 => scale_rank::<B, 1>(grads, id, scale),
        2 => scale_rank::<B, 2>(grads, id, scale),
        3 => scale_rank::<B, 3>(grads, id, scale),
        4 => scale_rank::<B, 4>(grads, id, scale),
        _ => {}
    }
}

fn scale_rank<B: Backend, const D: usize>(grads: &mut GradientsParams, id: ParamId, scale: f64) {
    if let Some(g) = grads.remove::<B, D>(id) {
        grads.register(id, g.mul_scalar(scale));
    }
}

/// Every float parameter's id and rank.
fn param_ids<B: Backend, M: burn::module::Module<B>>(module: &M) -> Vec<(ParamId, usize)> {
    struct Ids(Vec<(ParamId, usize)>);
    impl<B: Backend> ModuleVisitor<B> for Ids {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0.push((param.id, D));
        }
    }
    let mut ids = Ids(Vec::new());
    module.visit(&mut ids);
    ids.0
}
