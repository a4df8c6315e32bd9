//! What the data-parallel gradient exchange costs per step for the thesis' student (data2vec
//! 2.0 ViT-B/16, 2 prenet + 6 main blocks, 57 M parameters): two CPU workers (threads on the
//! one CPU device, as `train --devices 2` runs them) sum their gradients with burn-collective,
//! through the same `Exchange` the trainer uses (flatten, one all-reduce, unflatten).
//!
//!     cargo bench -p kdlab-engine --bench gradient_exchange
use std::time::Instant;

use burn::backend::{Autodiff, Flex};
use burn::collective::{CollectiveConfig, PeerId, ReduceOperation, all_reduce, register};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, TensorPrimitive};
use kdlab_engine::distill::parallel::{Exchange, Health};
use kdlab_model::model::{Data2Vec2, Data2Vec2Config};

type B = Autodiff<Flex>;

/// Gradients of the same shapes as training's: of Σ over parameters of their sums (all ones).
fn gradients(student: &Data2Vec2<B>) -> GradientsParams {
    struct Sums(Vec<Tensor<B, 1>>);
    impl ModuleVisitor<B> for Sums {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let value = param.val();
            if value.is_require_grad() {
                self.0.push(value.sum());
            }
        }
    }
    let mut sums = Sums(Vec::new());
    student.visit(&mut sums);
    let loss = Tensor::cat(sums.0, 0).sum();
    GradientsParams::from_grads(loss.backward(), student)
}

fn main() {
    let device = Default::default();
    let mut config = Data2Vec2Config::vit_base_patch16_224();
    config.depth = 6;
    let student: Data2Vec2<B> = config.init(&device);
    let parameters = student.num_params();
    let workers = 2;
    let health = Health::new::<Flex>(workers);
    let rounds = 5;
    let threads: Vec<_> = (0..workers)
        .map(|local| {
            let (student, health) = (student.clone(), health.clone());
            std::thread::spawn(move || {
                let device = burn::backend::flex::FlexDevice;
                let collective = CollectiveConfig::default().with_num_devices(workers);
                register::<Flex>(PeerId(local as u32), device, collective).unwrap();
                let exchange = Exchange::<Flex> {
                    peer: PeerId(local as u32),
                    local,
                    device,
                    health,
                };
                let mut times = Vec::new();
                for _ in 0..=rounds {
                    let grads = gradients(&student);
                    let numbers = Tensor::<Flex, 1>::zeros([3], &device);
                    let start = Instant::now();
                    let summed = exchange.sum_gradients(&student, grads, numbers).unwrap();
                    let grads = summed.into_gradients(0.5);
                    times.push(start.elapsed().as_secs_f64());
                    drop(grads);
                }
                // The all-reduce alone, of a buffer of the same size: the rest of the exchange
                // is flattening and unflattening.
                let mut raw = f64::MAX;
                for _ in 0..3 {
                    let buffer = Tensor::<Flex, 1>::ones([parameters], &device);
                    let start = Instant::now();
                    let primitive = buffer.into_primitive().tensor();
                    let summed =
                        all_reduce::<Flex>(PeerId(local as u32), primitive, ReduceOperation::Sum)
                            .unwrap();
                    let summed = Tensor::<Flex, 1>::from_primitive(TensorPrimitive::Float(summed));
                    let _ = summed.slice(0..1).into_scalar();
                    raw = raw.min(start.elapsed().as_secs_f64());
                }
                times.push(raw);
                times
            })
        })
        .collect();
    let times: Vec<Vec<f64>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    // The first round warms the allocator; the slowest worker sets the step's pace.
    let per_round: Vec<f64> = (1..=rounds)
        .map(|r| times.iter().map(|t| t[r]).fold(0.0, f64::max))
        .collect();
    let best = per_round.iter().copied().fold(f64::MAX, f64::min);
    let raw = times.iter().map(|t| t[rounds + 1]).fold(0.0, f64::max);
    let mean = per_round.iter().sum::<f64>() / rounds as f64;
    let megabytes = parameters as f64 * 4.0 / 1e6;
    println!(
        "{{\"parameters\": {parameters}, \"buffer_mb\": {megabytes:.1}, \"workers\": {workers}, \
         \"exchange_ms_best\": {:.1}, \"exchange_ms_mean\": {:.1}, \"all_reduce_alone_ms\": {:.1}, \
         \"gb_per_s\": {:.2}}}",
        best * 1e3,
        mean * 1e3,
        raw * 1e3,
        megabytes / 1e3 / best
    );
}
