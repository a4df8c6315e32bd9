//! The encoders of the distillation, written for any width, depth, heads and grid: BEiT v2,
//! data2vec 2.0 and timm's ViTs (ViT, DeiT, DeiT III, DINOv2, DINOv3).

pub mod autocast;
pub mod beit_v2;
pub mod data2vec2;
pub mod generator;
pub mod resample;
pub mod rope;
pub mod rules;
pub mod sincos;
pub mod timm_vit;
pub mod vit;

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

pub use autocast::Autocast;
pub use beit_v2::{BeitV2, BeitV2Config};
pub use data2vec2::{BlockSelection, Data2Vec2, Data2Vec2Config};
pub use timm_vit::{Vit, VitConfig, VitFamily, VitPositions};

/// `items` at the positions `keep`, in that order (a student of some of a model's blocks);
/// positions that do not exist, or repeat, are skipped.
pub fn keep_in_order<T>(items: Vec<T>, keep: &[usize]) -> Vec<T> {
    let mut items: Vec<Option<T>> = items.into_iter().map(Some).collect();
    keep.iter()
        .filter_map(|&i| items.get_mut(i)?.take())
        .collect()
}

/// The tokens in front of the patches, in this order: the CLS token, then the registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TokenLayout {
    pub class_token: bool,
    pub registers: usize,
}

impl TokenLayout {
    /// One CLS token, no registers: BEiT v2, data2vec 2.0, ViT, DeiT, DINOv2.
    pub const CLS: Self = Self {
        class_token: true,
        registers: 0,
    };

    /// How many tokens come before the patches.
    pub fn prefix(self) -> usize {
        usize::from(self.class_token) + self.registers
    }
}

/// What a forward pass gives the distillation.
#[derive(Debug, Clone)]
pub struct ModelOutput<B: Backend> {
    /// The per-layer representations the KD target is built from, each `[B, T, D]`.
    pub layer_results: Vec<Tensor<B, 3>>,
    /// The last hidden state `[B, T, D]` (no final norm).
    pub last_hidden: Tensor<B, 3>,
    /// What precedes the patches in every `[B, T, D]` above.
    pub tokens: TokenLayout,
}

/// Either encoder, as loaded from a checkpoint.
// Built once per command and never moved in a loop; boxing a variant would hide its parameters
// from burn's derive.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Encoder<B: Backend> {
    BeitV2(BeitV2<B>),
    Data2Vec2(Data2Vec2<B>),
    Vit(Vit<B>),
}

impl<B: Backend> Encoder<B> {
    pub fn forward(&self, images: Tensor<B, 4>) -> ModelOutput<B> {
        match self {
            Self::BeitV2(m) => m.forward(images),
            Self::Data2Vec2(m) => m.forward(images),
            Self::Vit(m) => m.forward(images),
        }
    }

    /// Every block's attention weights, first block first, each `[B, H, T, T]` (f32).
    pub fn attention_weights(&self, images: Tensor<B, 4>) -> Vec<Tensor<B, 4>> {
        match self {
            Self::BeitV2(m) => m.attention_weights(images),
            Self::Data2Vec2(m) => m.attention_weights(images),
            Self::Vit(m) => m.attention_weights(images),
        }
    }

    /// The frozen teacher computing in `dtype` (BEiT v2 stores its matrix weights in it once).
    pub fn teacher_computing_in(self, dtype: burn::tensor::DType) -> Self {
        match self {
            Self::BeitV2(m) => Self::BeitV2(m.computing_in(dtype)),
            Self::Data2Vec2(m) => Self::Data2Vec2(m.computing_in(dtype)),
            Self::Vit(m) => Self::Vit(m.computing_in(dtype)),
        }
    }

    /// The trained student computing in `dtype`, its parameters (the master weights) kept f32.
    pub fn student_computing_in(self, dtype: burn::tensor::DType) -> Self {
        match self {
            Self::BeitV2(m) => Self::BeitV2(m.training_in(dtype)),
            Self::Data2Vec2(m) => Self::Data2Vec2(m.computing_in(dtype)),
            Self::Vit(m) => Self::Vit(m.computing_in(dtype)),
        }
    }

    /// Keeps only the given selectable blocks, in order (data2vec 2.0: main blocks, the prenet
    /// kept).
    pub fn select_blocks(self, keep: &[usize]) -> Self {
        match self {
            Self::BeitV2(m) => Self::BeitV2(m.select_blocks(keep)),
            Self::Data2Vec2(m) => Self::Data2Vec2(m.select_main_blocks(keep)),
            Self::Vit(m) => Self::Vit(m.select_blocks(keep)),
        }
    }

    /// Ready for a `grid`×`grid` patch grid (a timm ViT's learned positions resampled once);
    /// the other families run at their own grid only and are returned as they are.
    pub fn with_grid(self, grid: usize) -> Self {
        match self {
            Self::Vit(m) => Self::Vit(m.with_position_grid(grid)),
            other => other,
        }
    }

    /// The tokens in front of the patches.
    pub fn tokens(&self) -> TokenLayout {
        match self {
            Self::BeitV2(_) | Self::Data2Vec2(_) => TokenLayout::CLS,
            Self::Vit(m) => m.tokens(),
        }
    }
}
