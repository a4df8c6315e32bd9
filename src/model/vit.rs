//! ViT parts shared by BEiT v2 and data2vec 2.0: patch embedding, MLP, multi-head attention.
//!
//! Upstream: timm `layers/patch_embed.py`, `layers/mlp.py`; unilm `beit2/modeling_finetune.py`;
//! fairseq `examples/data2vec/models/modalities/modules.py`.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::Tensor;
use burn::tensor::activation::gelu;
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

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
        self.fc2.forward(gelu(self.fc1.forward(x)))
    }
}

/// Scaled dot-product attention over packed `[q | k | v]` projections.
///
/// Columns of `qkv` are `[q | k | v]`, each split into heads of `D/H` (head h = columns
/// h·hd … (h+1)·hd−1), as in timm, unilm and fairseq. The scale is `hd^-0.5`.
///
/// # Shapes
/// - qkv: `[B, T, 3D]`
/// - bias: `[B, H, T, T]`, added to the logits (relative position bias)
/// - output: `[B, T, D]`, heads concatenated
pub fn multi_head_attention<B: Backend>(
    qkv: Tensor<B, 3>,
    num_heads: usize,
    bias: Option<Tensor<B, 4>>,
) -> Tensor<B, 3> {
    let [batch, tokens, width3] = qkv.dims();
    let embed_dim = width3 / 3;
    let head_dim = embed_dim / num_heads;
    let qkv = qkv
        .reshape([batch, tokens, 3, num_heads, head_dim])
        .permute([2, 0, 3, 1, 4]); // [3, B, H, T, hd]
    let [q, k, v] = [0, 1, 2].map(|i| qkv.clone().narrow(0, i, 1).squeeze_dim::<4>(0));
    attention(q, k, v, None, bias, AttentionModuleOptions::default()) // [B, H, T, hd]
        .swap_dims(1, 2)
        .reshape([batch, tokens, embed_dim])
}
