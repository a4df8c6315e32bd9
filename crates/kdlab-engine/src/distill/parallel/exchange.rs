//! The exchange at every optimiser step: each peer's gradients, and the few numbers the
//! trainers of all nodes must agree on (the loss of each micro-batch, how many images it had,
//! whether anyone asked to stop), summed over all peers in one burn-collective all-reduce.
//!
//! One flat buffer rather than one all-reduce per parameter (burn's
//! `GradientsParams::all_reduce`): every all-reduce is a rendezvous of all peers and, between
//! nodes, a round of messages, so ~200 of them per step would cost more than the bytes. The
//! order is the module's own visit order, the same on every peer and every node; burn's
//! parameter ids are random per process and cannot order a multi-node exchange.

use burn::collective::{CollectiveError, PeerId, ReduceOperation, all_reduce};
use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorPrimitive};

use super::health::Health;
use kdlab_model::guard::quietly_catch;

/// Why an exchange did not complete.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// A local peer failed (its own message is in `Health`), the watchdog gave up, or the
    /// collective's server stopped (it does when a node is lost).
    #[error(
        "the gradient exchange was cancelled (another device failed, or the exchange stopped \
         because a node was lost)"
    )]
    Cancelled,
    #[error("the gradient exchange failed: {0}")]
    Failed(String),
}

impl From<CollectiveError> for ExchangeError {
    fn from(e: CollectiveError) -> Self {
        match e {
            CollectiveError::LocalServerMissing => Self::Cancelled,
            CollectiveError::Global(global) => Self::Failed(format!(
                "between the nodes: {global:?} (a node stopped or lost its connection)"
            )),
            other => Self::Failed(format!("{other:?}")),
        }
    }
}

/// One peer's side of the exchange.
pub struct Exchange<B: Backend> {
    pub peer: PeerId,
    /// This peer's index on its node (the watchdog's slot).
    pub local: usize,
    pub device: B::Device,
    pub health: Health,
}

/// Where each parameter's gradient sits in the flat buffer.
struct Slot {
    id: ParamId,
    rank: usize,
    shape: Vec<usize>,
}

/// The summed buffer: gradients still flat, the numbers read back.
pub struct Summed<B: Backend> {
    flat: Tensor<B, 1>,
    slots: Vec<Slot>,
    /// How many peers had a gradient for each slot.
    present: Vec<f32>,
    pub numbers: Vec<f32>,
}

/// The trainable parameters of a module, in visit order, with their shapes.
fn trainable<B: Backend, M: burn::module::Module<B>>(module: &M) -> Vec<Slot> {
    struct Trainable(Vec<Slot>);
    impl<B: Backend> ModuleVisitor<B> for Trainable {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let value = param.val();
            if value.is_require_grad() {
                self.0.push(Slot {
                    id: param.id,
                    rank: D,
                    shape: value.dims().to_vec(),
                });
            }
        }
    }
    let mut found = Trainable(Vec::new());
    module.visit(&mut found);
    found.0
}

impl<B: Backend> Exchange<B> {
    /// Sums `numbers` over all peers.
    pub fn sum_numbers(&self, numbers: &[f32]) -> Result<Vec<f32>, ExchangeError> {
        let tensor = Tensor::<B, 1>::from_floats(numbers, &self.device);
        let summed = self.all_reduce_sum(tensor)?;
        Ok(summed
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap_or_default())
    }

    /// Sums `module`'s gradients and `numbers` (a tensor, so that no value is read back before
    /// the exchange) over all peers.
    pub fn sum_gradients<AB, M>(
        &self,
        module: &M,
        mut grads: GradientsParams,
        numbers: Tensor<B, 1>,
    ) -> Result<Summed<B>, ExchangeError>
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AB>,
    {
        // A peer without a gradient for a parameter (no readable image in its shard) sends
        // zeros, and the count of peers that had one says which the optimiser updates.
        let slots = trainable::<AB, M>(module);
        let mut parts = Vec::with_capacity(slots.len() + 2);
        let mut present = Vec::with_capacity(slots.len());
        for slot in &slots {
            let len = slot.shape.iter().product::<usize>();
            match take_flat::<B>(&mut grads, slot.id, slot.rank) {
                Some((flat, _)) => {
                    parts.push(flat);
                    present.push(1.0);
                }
                None => {
                    parts.push(Tensor::zeros([len], &self.device));
                    present.push(0.0);
                }
            }
        }
        let extra = present.len() + numbers.dims()[0];
        parts.push(Tensor::from_floats(present.as_slice(), &self.device));
        parts.push(numbers);
        let summed = self.all_reduce_sum(Tensor::cat(parts, 0))?;
        let total = summed.dims()[0];
        let mut tail = summed
            .clone()
            .slice(total - extra..total)
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .unwrap_or_default();
        let numbers = tail.split_off(slots.len().min(tail.len()));
        Ok(Summed {
            flat: summed.slice(0..total - extra),
            slots,
            present: tail,
            numbers,
        })
    }

    fn all_reduce_sum(&self, tensor: Tensor<B, 1>) -> Result<Tensor<B, 1>, ExchangeError> {
        let _waiting = self.health.waiting(self.local);
        let primitive = tensor.into_primitive().tensor();
        // burn-collective panics when its server is gone (it died on a lost node).
        let summed = quietly_catch(|| all_reduce::<B>(self.peer, primitive, ReduceOperation::Sum))
            .map_err(ExchangeError::Failed)??;
        Ok(Tensor::from_primitive(TensorPrimitive::Float(summed)))
    }
}

impl<B: Backend> Summed<B> {
    /// The summed gradients times `scale`, shaped and keyed as before the exchange.
    pub fn into_gradients(self, scale: f64) -> GradientsParams {
        let flat = self.flat.mul_scalar(scale);
        let mut grads = GradientsParams::new();
        let mut offset = 0;
        for (slot, present) in self.slots.into_iter().zip(self.present) {
            let len: usize = slot.shape.iter().product();
            let part = flat.clone().slice(offset..offset + len);
            offset += len;
            if present > 0.0 {
                register_shaped::<B>(&mut grads, slot.id, slot.rank, part, &slot.shape);
            }
        }
        grads
    }
}

/// Removes parameter `id`'s gradient, flattened, with its shape.
fn take_flat<B: Backend>(
    grads: &mut GradientsParams,
    id: ParamId,
    rank: usize,
) -> Option<(Tensor<B, 1>, Vec<usize>)> {
    fn take<B: Backend, const D: usize>(
        grads: &mut GradientsParams,
        id: ParamId,
    ) -> Option<(Tensor<B, 1>, Vec<usize>)> {
        let g = grads.remove::<B, D>(id)?;
        let shape = g.dims().to_vec();
        let len = shape.iter().product::<usize>();
        Some((g.reshape([len]), shape))
    }
    match rank {
        1 => take::<B, 1>(grads, id),
        2 => take::<B, 2>(grads, id),
        3 => take::<B, 3>(grads, id),
        4 => take::<B, 4>(grads, id),
        _ => None,
    }
}

fn register_shaped<B: Backend>(
    grads: &mut GradientsParams,
    id: ParamId,
    rank: usize,
    flat: Tensor<B, 1>,
    shape: &[usize],
) {
    fn put<B: Backend, const D: usize>(
        grads: &mut GradientsParams,
        id: ParamId,
        flat: Tensor<B, 1>,
        shape: &[usize],
    ) {
        let mut dims = [0; D];
        dims.copy_from_slice(shape);
        grads.register(id, flat.reshape(dims));
    }
    match rank {
        1 => put::<B, 1>(grads, id, flat, shape),
        2 => put::<B, 2>(grads, id, flat, shape),
        3 => put::<B, 3>(grads, id, flat, shape),
        4 => put::<B, 4>(grads, id, flat, shape),
        _ => {}
    }
}
