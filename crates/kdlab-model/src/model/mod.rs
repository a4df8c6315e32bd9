//! The two encoders of the distillation, written for any width, depth, heads and grid.

pub mod autocast;
pub mod beit_v2;
pub mod data2vec2;
pub mod generator;
pub mod rules;
pub mod sincos;
pub mod vit;

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

pub use autocast::Autocast;
pub use beit_v2::{BeitV2, BeitV2Config};
pub use data2vec2::{BlockSelection, Data2Vec2, Data2Vec2Config};

/// What a forward pass gives the distillation.
#[derive(Debug, Clone)]
pub struct ModelOutput<B: Backend> {
    /// The per-layer representations the KD target is built from, each `[B, T, D]`.
    pub layer_results: Vec<Tensor<B, 3>>,
    /// The last hidden state `[B, T, D]` (no final norm).
    pub last_hidden: Tensor<B, 3>,
}

/// Either encoder, as loaded from a checkpoint.
// Built once per command and never moved in a loop; boxing a variant would hide its parameters
// from burn's derive.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Encoder<B: Backend> {
    BeitV2(BeitV2<B>),
    Data2Vec2(Data2Vec2<B>),
}

impl<B: Backend> Encoder<B> {
    pub fn forward(&self, images: Tensor<B, 4>) -> ModelOutput<B> {
        match self {
            Self::BeitV2(m) => m.forward(images),
            Self::Data2Vec2(m) => m.forward(images),
        }
    }
}
