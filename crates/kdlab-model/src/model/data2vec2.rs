//! data2vec 2.0 image encoder (Baevski et al. 2023, arXiv:2212.07525) as the KD student.
//!
//! Upstream: facebookresearch/fairseq `examples/data2vec/models/data2vec2.py`
//! (`Data2VecMultiModel.forward`, `AltBlock`), `modalities/base.py` and `modalities/images.py`.
//! The checkpoint nests the image encoder under `modality_encoders.IMAGE.*`; this module flattens
//! it (`weights::fairseq` holds the one remap table).

use burn::module::{Module, Param};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::ModelOutput;
use super::autocast::{self, Autocast};
use super::sincos::sincos_2d;
use super::vit::{Mlp, PatchEmbed};
use kdlab_kernels::{attention_weights, multi_head_attention};

/// Which main blocks of the pretrained model a student keeps (the prenet blocks are always kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlockSelection {
    /// The first N main blocks: the thesis' `model.blocks = model.blocks[:N]`.
    FirstMain(usize),
    /// N blocks in total, prenet included: `FirstMain(N − prenet_depth)`.
    Total(usize),
    /// Main blocks 0, 2, 4, … (DistilBERT-style initialisation from every second layer).
    EverySecond,
    /// Every main block (the full pretrained encoder).
    All,
}

impl BlockSelection {
    /// Indices of the kept main blocks, or an error naming what was asked and what exists.
    pub fn main_blocks(self, prenet_depth: usize, depth: usize) -> Result<Vec<usize>, String> {
        let first = |n: usize| {
            if n == 0 || n > depth {
                Err(format!(
                    "the student needs 1..={depth} main blocks (the model has {depth}), asked for {n}"
                ))
            } else {
                Ok((0..n).collect())
            }
        };
        match self {
            Self::FirstMain(n) => first(n),
            Self::Total(n) if n > prenet_depth => first(n - prenet_depth),
            Self::Total(n) => Err(format!(
                "a student of {n} blocks in total leaves no main block after the {prenet_depth} prenet blocks"
            )),
            Self::EverySecond => Ok((0..depth).step_by(2).collect()),
            Self::All => Ok((0..depth).collect()),
        }
    }
}

/// Architecture of a data2vec 2.0 image encoder (`base_images_only_task.yaml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Data2Vec2Config {
    pub image_size: usize,
    pub patch_size: usize,
    pub embed_dim: usize,
    /// Main blocks (`blocks.*`).
    pub depth: usize,
    /// Context-encoder blocks (`modality_encoders.IMAGE.context_encoder.blocks.*`).
    pub prenet_depth: usize,
    pub num_heads: usize,
    pub mlp_hidden_dim: usize,
    pub norm_eps: f64,
}

impl Data2Vec2Config {
    pub fn vit_base_patch16_224() -> Self {
        Self {
            image_size: 224,
            patch_size: 16,
            embed_dim: 768,
            depth: 10,
            prenet_depth: 2,
            num_heads: 12,
            mlp_hidden_dim: 3072,
            norm_eps: 1e-6,
        }
    }

    pub fn grid_size(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// A randomly initialised encoder; `positions` is the genuine sin-cos table, frozen.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Data2Vec2<B> {
        let grid = self.grid_size();
        let positions = Tensor::from_data(
            TensorData::new(
                sincos_2d(grid, self.embed_dim),
                [1, grid * grid, self.embed_dim],
            ),
            device,
        );
        let norm = || {
            LayerNormConfig::new(self.embed_dim)
                .with_epsilon(self.norm_eps)
                .init(device)
        };
        let blocks = |n| (0..n).map(|_| AltBlock::new(self, device)).collect();
        Data2Vec2 {
            patch_embed: PatchEmbed::new(self.patch_size, self.embed_dim, device),
            positions: Param::from_tensor(positions).set_require_grad(false),
            extra_tokens: Param::from_tensor(Tensor::random(
                [1, 1, self.embed_dim],
                burn::tensor::Distribution::Normal(0.0, 0.02),
                device,
            )),
            context_norm: norm(),
            prenet_blocks: blocks(self.prenet_depth),
            blocks: blocks(self.depth),
            autocast: Autocast::OFF,
        }
    }
}

#[derive(Module, Debug)]
pub struct D2vAttention<B: Backend> {
    /// `[q | k | v]` with a full learned bias.
    pub qkv: Linear<B>,
    pub proj: Linear<B>,
    num_heads: usize,
}

/// fairseq's `AltBlock` with `layer_norm_first = False` (post-LN).
#[derive(Module, Debug)]
pub struct AltBlock<B: Backend> {
    pub attn: D2vAttention<B>,
    pub norm1: LayerNorm<B>,
    pub mlp: Mlp<B>,
    pub norm2: LayerNorm<B>,
}

impl<B: Backend> AltBlock<B> {
    fn new(config: &Data2Vec2Config, device: &B::Device) -> Self {
        let d = config.embed_dim;
        let norm = || {
            LayerNormConfig::new(d)
                .with_epsilon(config.norm_eps)
                .init(device)
        };
        Self {
            attn: D2vAttention {
                qkv: LinearConfig::new(d, 3 * d).init(device),
                proj: LinearConfig::new(d, d).init(device),
                num_heads: config.num_heads,
            },
            norm1: norm(),
            mlp: Mlp::new(d, config.mlp_hidden_dim, device),
            norm2: norm(),
        }
    }

    /// `x ← x + attn(x); r ← norm1(x); m ← mlp(r); x ← norm2(r + m)`.
    ///
    /// Returns `(x, m)`: the block output (f32) and its layer result, the FFN output before the
    /// residual (`end_of_block_targets = False`), in the compute type.
    fn forward(&self, x: Tensor<B, 3>, amp: Autocast) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let attn = multi_head_attention(
            amp.linear(&self.attn.qkv, x.clone()),
            self.attn.num_heads,
            None,
        );
        let attn = autocast::f32(amp.linear(&self.attn.proj, attn));
        let r = amp.layer_norm(&self.norm1, x + attn);
        let m = self.mlp.forward(r.clone(), amp);
        (amp.layer_norm(&self.norm2, r + autocast::f32(m.clone())), m)
    }

    /// The attention weights of this block for its input `x` (`[B, T, D]`) → `[B, H, T, T]`.
    fn attention_weights(&self, x: Tensor<B, 3>, amp: Autocast) -> Tensor<B, 4> {
        attention_weights(amp.linear(&self.attn.qkv, x), self.attn.num_heads, None)
    }
}

#[derive(Module, Debug)]
pub struct Data2Vec2<B: Backend> {
    pub patch_embed: PatchEmbed<B>,
    /// Fixed 2-D sin-cos table `[1, N, D]`, not trained.
    pub positions: Param<Tensor<B, 3>>,
    /// The CLS ("extra") token `[1, 1, D]`; it gets no position.
    pub extra_tokens: Param<Tensor<B, 3>>,
    /// `context_encoder.norm`, applied before the prenet blocks (the model is post-LN).
    pub context_norm: LayerNorm<B>,
    pub prenet_blocks: Vec<AltBlock<B>>,
    pub blocks: Vec<AltBlock<B>>,
    /// What the forward computes in; the parameters stay f32 (the master weights).
    autocast: Autocast,
}

impl<B: Backend> Data2Vec2<B> {
    /// The same model, computing its matrix products in `dtype` from now on (autocast); its
    /// parameters stay f32.
    pub fn computing_in(mut self, dtype: burn::tensor::DType) -> Self {
        self.autocast = Autocast::new(dtype);
        self
    }

    /// Keeps the prenet and only the given main blocks, in order.
    pub fn select_main_blocks(mut self, keep: &[usize]) -> Self {
        self.blocks = super::keep_in_order(self.blocks, keep);
        self
    }

    /// Layer results come from the main blocks only (the prenet contributes none).
    ///
    /// # Shapes
    /// - images: `[B, 3, H, W]`, normalised
    /// - each layer result and `last_hidden`: `[B, 1 + N, D]`, CLS first
    /// - layer results in the compute type, `last_hidden` in f32
    pub fn forward(&self, images: Tensor<B, 4>) -> ModelOutput<B> {
        self.forward_watching(images, |_, _| {})
    }

    /// Every block's attention weights, prenet blocks first, each `[B, H, T, T]` (f32).
    pub fn attention_weights(&self, images: Tensor<B, 4>) -> Vec<Tensor<B, 4>> {
        let mut weights = Vec::with_capacity(self.prenet_blocks.len() + self.blocks.len());
        self.forward_watching(images, |block, x| {
            weights.push(block.attention_weights(x.clone(), self.autocast));
        });
        weights
    }

    /// `forward`, showing `watch` each block (prenet and main) with its input before it runs.
    fn forward_watching(
        &self,
        images: Tensor<B, 4>,
        mut watch: impl FnMut(&AltBlock<B>, &Tensor<B, 3>),
    ) -> ModelOutput<B> {
        let amp = self.autocast;
        let patches = autocast::f32(self.patch_embed.forward(images, amp)) + self.positions.val(); // [B, N, D]
        let [batch, _, dim] = patches.dims();
        let cls = self.extra_tokens.val().expand([batch, 1, dim]);
        let mut x = amp.layer_norm(&self.context_norm, Tensor::cat(vec![cls, patches], 1));
        for block in &self.prenet_blocks {
            watch(block, &x);
            x = block.forward(x, amp).0;
        }
        let mut layer_results = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            watch(block, &x);
            let (out, layer_result) = block.forward(x, amp);
            layer_results.push(layer_result);
            x = out;
        }
        ModelOutput {
            layer_results,
            last_hidden: x,
            tokens: super::TokenLayout::CLS,
        }
    }
}
