//! BEiT v2 (Peng et al. 2022, arXiv:2208.06366) as the frozen KD teacher.
//!
//! Upstream: microsoft/unilm `beit2/modeling_pretrain.py` (`VisionTransformerForMaskedImageModeling`)
//! and `modeling_finetune.py` (`Block`, `Attention`, `RelativePositionBias`); timm
//! `models/beit.py` for the per-block table layout. Field names equal the checkpoint keys, so the
//! unilm and timm files load without remapping. `mask_token`, `norm`, `lm_head` are not built: the
//! KD teacher never masks and uses the residual stream before the final norm.

use burn::module::{Module, ModuleMapper, Param};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::ModelOutput;
use super::autocast::{self, Autocast};
use super::vit::{Mlp, PatchEmbed};
use kdlab_kernels::{attention_weights, multi_head_attention};

/// Architecture of a BEiT v2 encoder; `vit_base_patch16_224` is the released teacher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BeitV2Config {
    pub image_size: usize,
    pub patch_size: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_hidden_dim: usize,
    /// One table shared by all blocks (unilm pretraining files) or one per block (timm).
    pub shared_rel_pos_bias: bool,
    pub norm_eps: f64,
}

impl BeitV2Config {
    pub fn vit_base_patch16_224() -> Self {
        Self {
            image_size: 224,
            patch_size: 16,
            embed_dim: 768,
            depth: 12,
            num_heads: 12,
            mlp_hidden_dim: 3072,
            shared_rel_pos_bias: true,
            norm_eps: 1e-6,
        }
    }

    pub fn grid_size(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Rows of the relative position table: (2g−1)² offsets + 3 CLS entries.
    pub fn num_relative_distance(&self) -> usize {
        let span = 2 * self.grid_size() - 1;
        span * span + 3
    }

    /// Modules are created lazily by burn, so a full-size model costs no memory until used.
    pub fn init<B: Backend>(&self, device: &B::Device) -> BeitV2<B> {
        let table = || {
            Param::from_tensor(Tensor::zeros(
                [self.num_relative_distance(), self.num_heads],
                device,
            ))
        };
        let blocks = (0..self.depth)
            .map(|_| BeitBlock::new(self, (!self.shared_rel_pos_bias).then(table), device))
            .collect();
        let index = relative_position_index(self.grid_size());
        let tokens = index.len();
        BeitV2 {
            cls_token: Param::from_tensor(Tensor::random(
                [1, 1, self.embed_dim],
                burn::tensor::Distribution::Normal(0.0, 0.02),
                device,
            )),
            patch_embed: PatchEmbed::new(self.patch_size, self.embed_dim, device),
            rel_pos_bias: self.shared_rel_pos_bias.then(|| RelativePositionBias {
                relative_position_bias_table: table(),
            }),
            blocks,
            relative_position_index: Tensor::from_data(TensorData::new(index, [tokens]), device),
            num_heads: self.num_heads,
            autocast: Autocast::OFF,
        }
    }
}

#[derive(Module, Debug)]
pub struct RelativePositionBias<B: Backend> {
    /// `[(2g−1)² + 3, H]`
    pub relative_position_bias_table: Param<Tensor<B, 2>>,
}

#[derive(Module, Debug)]
pub struct BeitAttention<B: Backend> {
    /// `qkv` has no bias of its own: the bias is `[q_bias | 0 | v_bias]`.
    pub qkv: Linear<B>,
    pub q_bias: Param<Tensor<B, 1>>,
    pub v_bias: Param<Tensor<B, 1>>,
    pub proj: Linear<B>,
    /// Present in per-block (timm) mode only.
    pub relative_position_bias_table: Option<Param<Tensor<B, 2>>>,
    num_heads: usize,
}

impl<B: Backend> BeitAttention<B> {
    /// # Shapes
    /// - x: `[B, T, D]`, bias: `[H, T, T]` (f32) → `[B, T, D]` in the compute type
    fn forward(&self, x: Tensor<B, 3>, bias: Tensor<B, 3>, amp: Autocast) -> Tensor<B, 3> {
        let qkv = self.qkv(x, amp);
        amp.linear(
            &self.proj,
            multi_head_attention(qkv, self.num_heads, Some(bias)),
        )
    }

    fn qkv(&self, x: Tensor<B, 3>, amp: Autocast) -> Tensor<B, 3> {
        let q_bias = self.q_bias.val();
        let k_bias = q_bias.zeros_like();
        let qkv_bias = Tensor::cat(vec![q_bias, k_bias, self.v_bias.val()], 0);
        amp.linear(&self.qkv, x) + amp.half(qkv_bias).unsqueeze::<3>()
    }
}

#[derive(Module, Debug)]
pub struct BeitBlock<B: Backend> {
    pub norm1: LayerNorm<B>,
    pub attn: BeitAttention<B>,
    pub norm2: LayerNorm<B>,
    pub mlp: Mlp<B>,
    /// Layer scale of the attention and MLP branches.
    pub gamma_1: Param<Tensor<B, 1>>,
    pub gamma_2: Param<Tensor<B, 1>>,
}

impl<B: Backend> BeitBlock<B> {
    fn new(
        config: &BeitV2Config,
        relative_position_bias_table: Option<Param<Tensor<B, 2>>>,
        device: &B::Device,
    ) -> Self {
        let d = config.embed_dim;
        let norm = || {
            LayerNormConfig::new(d)
                .with_epsilon(config.norm_eps)
                .init(device)
        };
        let layer_scale = || Param::from_tensor(Tensor::full([d], 0.1, device));
        Self {
            norm1: norm(),
            attn: BeitAttention {
                qkv: LinearConfig::new(d, 3 * d).with_bias(false).init(device),
                q_bias: Param::from_tensor(Tensor::zeros([d], device)),
                v_bias: Param::from_tensor(Tensor::zeros([d], device)),
                proj: LinearConfig::new(d, d).init(device),
                relative_position_bias_table,
                num_heads: config.num_heads,
            },
            norm2: norm(),
            mlp: Mlp::new(d, config.mlp_hidden_dim, device),
            gamma_1: layer_scale(),
            gamma_2: layer_scale(),
        }
    }

    /// Pre-LN with layer scale: `x ← x + γ₁·attn(norm1(x)); x ← x + γ₂·mlp(norm2(x))`; the
    /// residual stream `x` in f32.
    fn forward(&self, x: Tensor<B, 3>, bias: Tensor<B, 3>, amp: Autocast) -> Tensor<B, 3> {
        let gamma_1 = self.gamma_1.val().unsqueeze::<3>();
        let gamma_2 = self.gamma_2.val().unsqueeze::<3>();
        let attn = self
            .attn
            .forward(amp.layer_norm(&self.norm1, x.clone()), bias, amp);
        let x = x + autocast::f32(attn) * gamma_1;
        let mlp = self
            .mlp
            .forward(amp.layer_norm(&self.norm2, x.clone()), amp);
        x + autocast::f32(mlp) * gamma_2
    }

    /// The attention weights of this block for its input `x` (`[B, T, D]`) → `[B, H, T, T]`.
    fn attention_weights(
        &self,
        x: Tensor<B, 3>,
        bias: Tensor<B, 3>,
        amp: Autocast,
    ) -> Tensor<B, 4> {
        let qkv = self.attn.qkv(amp.layer_norm(&self.norm1, x), amp);
        attention_weights(qkv, self.attn.num_heads, Some(bias))
    }
}

#[derive(Module, Debug)]
pub struct BeitV2<B: Backend> {
    pub cls_token: Param<Tensor<B, 3>>,
    pub patch_embed: PatchEmbed<B>,
    /// Shared table (unilm); `None` when each block carries its own (timm).
    pub rel_pos_bias: Option<RelativePositionBias<B>>,
    pub blocks: Vec<BeitBlock<B>>,
    /// Flattened `[T·T]` index into the table (§8.2 of the fixtures README); rebuilt, never loaded.
    #[module(skip)]
    relative_position_index: Tensor<B, 1, Int>,
    num_heads: usize,
    /// What the forward computes in (the matrix weights are stored in it: the teacher is frozen).
    autocast: Autocast,
}

impl<B: Backend> BeitV2<B> {
    /// The same frozen model computing its matrix products in `dtype` (autocast), with the
    /// weights of those products stored in `dtype` once rather than cast at every forward; norms,
    /// biases, layer scales, the CLS token and the position table stay f32.
    pub fn computing_in(self, dtype: burn::tensor::DType) -> Self {
        let mut model = self.map(&mut MatrixWeightsTo {
            dtype,
            name: String::new(),
        });
        model.autocast = Autocast::new(dtype);
        model
    }

    /// The same model computing its matrix products in `dtype`, its parameters kept f32: BEiT v2
    /// as a trained student (the master weights stay f32, as for data2vec 2.0).
    pub fn training_in(mut self, dtype: burn::tensor::DType) -> Self {
        self.autocast = Autocast::new(dtype);
        self
    }

    /// Keeps only the given blocks, in order, each with its own table (timm layout) or the shared
    /// one (unilm layout): the seed's student made of the teacher's own blocks.
    pub fn select_blocks(mut self, keep: &[usize]) -> Self {
        self.blocks = super::keep_in_order(self.blocks, keep);
        self
    }

    /// Layer results are the residual stream after each block (no final norm).
    ///
    /// # Shapes
    /// - images: `[B, 3, H, W]`, normalised
    /// - each layer result and `last_hidden`: `[B, 1 + N, D]`, CLS first
    pub fn forward(&self, images: Tensor<B, 4>) -> ModelOutput<B> {
        self.forward_watching(images, |_, _, _| {})
    }

    /// Every block's attention weights, first block first, each `[B, H, T, T]` (f32).
    pub fn attention_weights(&self, images: Tensor<B, 4>) -> Vec<Tensor<B, 4>> {
        let mut weights = Vec::with_capacity(self.blocks.len());
        self.forward_watching(images, |block, x, bias| {
            weights.push(block.attention_weights(x.clone(), bias.clone(), self.autocast));
        });
        weights
    }

    /// `forward`, showing `watch` each block with its input and bias before it runs.
    fn forward_watching(
        &self,
        images: Tensor<B, 4>,
        mut watch: impl FnMut(&BeitBlock<B>, &Tensor<B, 3>, &Tensor<B, 3>),
    ) -> ModelOutput<B> {
        let amp = self.autocast;
        let patches = autocast::f32(self.patch_embed.forward(images, amp)); // [B, N, D]
        let [batch, _, dim] = patches.dims();
        let cls = self.cls_token.val().expand([batch, 1, dim]);
        let mut x = Tensor::cat(vec![cls, patches], 1); // [B, T, D]
        let shared_bias = self
            .rel_pos_bias
            .as_ref()
            .map(|r| self.gather_bias(r.relative_position_bias_table.val()));
        let mut layer_results = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            let bias = match (&shared_bias, &block.attn.relative_position_bias_table) {
                (Some(bias), _) => bias.clone(),
                (None, Some(table)) => self.gather_bias(table.val()),
                (None, None) => unreachable!("BeitV2Config::init gives every block a table"),
            };
            watch(block, &x, &bias);
            x = block.forward(x, bias, amp);
            layer_results.push(x.clone());
        }
        ModelOutput {
            layer_results,
            last_hidden: x,
            tokens: super::TokenLayout::CLS,
        }
    }

    /// `table[I[a, b], h]` as `[H, T, T]`.
    fn gather_bias(&self, table: Tensor<B, 2>) -> Tensor<B, 3> {
        let [tokens2] = self.relative_position_index.dims();
        let tokens = tokens2.isqrt();
        table
            .select(0, self.relative_position_index.clone()) // [T·T, H]
            .reshape([tokens, tokens, self.num_heads])
            .permute([2, 0, 1])
    }
}

/// Casts the weights of the linear layers and the patch convolution (`*.weight`, rank ≥ 2).
struct MatrixWeightsTo {
    dtype: burn::tensor::DType,
    /// The name of the module being entered (the parameter's own name inside `map_float`).
    name: String,
}

impl<B: Backend> ModuleMapper<B> for MatrixWeightsTo {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.name = name.to_string();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if D >= 2 && self.name == "weight" {
            let dtype = self.dtype;
            param.map(|t| t.cast(dtype))
        } else {
            param
        }
    }
}

/// Index `I[a, b]` over T = g²+1 tokens (0 = CLS), row-major, as unilm's
/// `RelativePositionBias.__init__` builds it.
pub fn relative_position_index(grid: usize) -> Vec<i32> {
    let span = 2 * grid - 1;
    let offsets = span * span;
    let tokens = grid * grid + 1;
    let mut index = vec![0i32; tokens * tokens];
    for a in 0..tokens {
        for b in 0..tokens {
            index[a * tokens + b] = match (a, b) {
                (0, 0) => offsets + 2,
                (0, _) => offsets,
                (_, 0) => offsets + 1,
                _ => {
                    let (ra, ca) = ((a - 1) / grid, (a - 1) % grid);
                    let (rb, cb) = ((b - 1) / grid, (b - 1) % grid);
                    (ra + grid - 1 - rb) * span + (ca + grid - 1 - cb)
                }
            } as i32;
        }
    }
    index
}
