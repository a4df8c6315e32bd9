//! ViT parts shared by BEiT v2 and data2vec 2.0: patch embedding and MLP (token-wise linear
//! layers are `Autocast::linear`, attention is `kdlab_kernels::multi_head_attention`).
//!
//! Upstream: timm `layers/patch_embed.py`, `layers/mlp.py`; unilm `beit2/modeling_finetune.py`;
//! fairseq `examples/data2vec/models/modalities/modules.py`.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;

use super::autocast::Autocast;
use kdlab_kernels::gelu;

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
    /// - output: `[B, N, D]`, N = (H/p)·(W/p), row-major over the grid, in the compute type
    pub fn forward(&self, images: Tensor<B, 4>, amp: Autocast) -> Tensor<B, 3> {
        let patches = if amp.is_on() {
            // The convolution with its weights in the compute type; kernel = stride, no padding.
            let conv = &self.proj;
            let options = ConvOptions::new(conv.stride, [0, 0], conv.dilation, conv.groups);
            let bias = conv.bias.as_ref().map(|b| amp.half(b.val()));
            conv2d(amp.half(images), amp.half(conv.weight.val()), bias, options)
        } else {
            self.proj.forward(images)
        }; // [B, D, H/p, W/p]
        patches
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

    /// In the compute type.
    pub fn forward(&self, x: Tensor<B, 3>, amp: Autocast) -> Tensor<B, 3> {
        amp.linear(&self.fc2, gelu(amp.linear(&self.fc1, x)))
    }
}
