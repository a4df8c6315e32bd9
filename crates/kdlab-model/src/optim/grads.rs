//! Reading and rescaling a module's gradients by parameter, whatever their rank (burn keys
//! `GradientsParams` by id and rank).

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// Every float parameter's id and rank.
pub(super) fn param_ids<B: Backend, M: Module<B>>(module: &M) -> Vec<(ParamId, usize)> {
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

/// `f` of the flattened gradient of parameter `id`, if it has one.
pub(super) fn with_grad<B: Backend, T>(
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

/// Multiplies the gradient of parameter `id` by `scale`.
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

/// Multiplies every gradient of `ids` by `scale`.
pub(super) fn scale_all<B: Backend>(
    grads: &mut GradientsParams,
    ids: &[(ParamId, usize)],
    scale: f64,
) {
    for &(id, rank) in ids {
        scale_grad::<B>(grads, id, rank, scale);
    }
}
