//! ViT parts shared by BEiT v2 and data2vec 2.0: patch embedding, MLP, token-wise linear layers
//! (attention is `crate::kernels::multi_head_attention`).
//!
//! Upstream: timm `layers/patch_embed.py`, `layers/mlp.py`; unilm `beit2/modeling_finetune.py`;
//! fairseq `examples/data2vec/models/modalities/modules.py`.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use crate::kernels::gelu;

/// `Conv2d(3, D, kernel p, stride p)` flattened row-major over the patch grid.
#[derive(Module, Debug)]
pub struct PatchEmbed<B: Backend> {
    pub proj: Conv2d<B>,
}

impl<B: Backend> PatchEmbed<B> {
    pub fn new(patch_size: usize, embed_dim: usize, device: &B::Device) -> Self {
        let proj = Conv2dConfig::new([3, embed_dim], [patch_size, patch_size])
            .with_stride([patch_size, patch_size])
            .init(device);
        Self { proj }
    }

    /// # Shapes
    /// - images: `[B, 3, H, W]`
    /// - output: `[B, N, D]`, N = (H/p)·(W/p), row-major over the grid
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 3> {
        self.proj
            .forward(images) // [B, D, H/p, W/p]
            .flatten::<3>(2, 3) // [B, D, N]
            .swap_dims(1, 2)
    }
}

/// `fc1 → GELU (exact, erf) → fc2`.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub fc1: Linear<B>,
    pub fc2: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    pub fn new(embed_dim: usize, hidden_dim: usize, device: &B::Device) -> Self {
        Self {
            fc1: LinearConfig::new(embed_dim, hidden_dim).init(device),
            fc2: LinearConfig::new(hidden_dim, embed_dim).init(device),
        }
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        linear_tokens(&self.fc2, gelu(linear_tokens(&self.fc1, x)))
    }
}

/// `linear` over the tokens of all images as one `[B·T, D]` matrix, as PyTorch does.
///
/// burn's linear on a `[B, T, D]` input runs one matrix product per image and, backwards, builds
/// a `[B, D_in, D_out]` weight gradient before summing it over the images; flattened, both are
/// one GEMM (half the student step's time on the CPU went to the per-image form).
pub fn linear_tokens<B: Backend>(linear: &Linear<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    let [batch, tokens, width] = x.dims();
    let y = linear.forward(x.reshape([batch * tokens, width]));
    let [_, out] = y.dims();
    y.reshape([batch, tokens, out])
}
