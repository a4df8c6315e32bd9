//! The plain pre-LN ViTs of timm, as teacher or student: `VisionTransformer` (ViT, DeiT, DeiT III,
//! DINOv2 with or without registers) and `Eva` in its DINOv3 form.
//!
//! `patch_embed → _pos_embed → blocks → norm`; a block is
//! `x ← x + ls1(attn(norm1(x))); x ← x + ls2(mlp(norm2(x)))` (layer scale `γ`, identity without
//! it), GELU exact, one qkv Linear (bias optional). Positions are either a learned table (with or
//! without slots for the prefix tokens, resampled bicubically with antialias for another grid)
//! or DINOv3's rotary positions on q and k of the patches. The token order is
//! `[CLS, registers…, patches…]`. Layer results are the residual stream after each block, as for
//! BEiT v2; the final `norm` is loaded (so an exported student is a whole timm model) but the KD
//! target does not use it.
//!
//! Field names are timm `VisionTransformer`'s keys; `Eva`'s `gamma_1`/`gamma_2` map onto
//! `ls1.gamma`/`ls2.gamma` (`weights::layout`).
//!
//! Upstream: timm `models/vision_transformer.py` (`VisionTransformer._pos_embed`, `Block`,
//! `LayerScale`), `models/eva.py` (`Eva`, `EvaBlock`, `EvaAttention`), `layers/pos_embed.py`.

use burn::module::{Module, Param};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use serde::{Deserialize, Serialize};

use super::autocast::{self, Autocast};
use super::resample::{Interpolation, resample_grid};
use super::rope::RotaryTables;
use super::vit::{Mlp, PatchEmbed};
use super::{ModelOutput, TokenLayout};
use kdlab_kernels::{attention_weights, multi_head_attention};

/// The model family a timm ViT file holds: what `inspect` reports and how its keys are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VitFamily {
    /// Classic ViT and DeiT (`vit_*`, `deit_*`).
    Vit,
    /// DeiT III (`deit3_*`): layer scale, positions without the CLS slot.
    Deit3,
    /// DINOv2, with or without registers (`vit_*_dinov2`, `vit_*_reg4_dinov2`).
    Dinov2,
    /// DINOv3 as timm's `Eva` (`vit_*_dinov3`).
    Dinov3,
}

impl VitFamily {
    pub fn name(self) -> &'static str {
        match self {
            Self::Vit => "vit",
            Self::Deit3 => "deit3",
            Self::Dinov2 => "dinov2",
            Self::Dinov3 => "dinov3",
        }
    }

    /// timm's `Eva` class (DINOv3) names its layer scales `gamma_1`/`gamma_2`.
    pub fn is_eva(self) -> bool {
        self == Self::Dinov3
    }
}

/// Where the model's positions come from (in a config: `Learned(grid: 14, embed_class: true)`
/// or `Rotary(temperature: 100.0)`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum VitPositions {
    /// A learned table `pos_embed` for a `grid`×`grid` grid. `embed_class`: the table also has a
    /// slot for each prefix token (timm `no_embed_class=False`), added after they are put in front.
    Learned { grid: usize, embed_class: bool },
    /// DINOv3's 2-D rotary positions (no table).
    Rotary { temperature: f64 },
}

/// Architecture of a timm ViT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VitConfig {
    pub family: VitFamily,
    /// The size the model runs at (the run's, not necessarily the file's).
    pub image_size: usize,
    pub patch_size: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_hidden_dim: usize,
    pub qkv_bias: bool,
    pub layer_scale: bool,
    pub class_token: bool,
    pub reg_tokens: usize,
    pub positions: VitPositions,
    pub norm_eps: f64,
}

impl VitConfig {
    pub fn grid_size(&self) -> usize {
        self.image_size / self.patch_size
    }

    pub fn tokens(&self) -> TokenLayout {
        TokenLayout {
            class_token: self.class_token,
            registers: self.reg_tokens,
        }
    }

    /// Prefix slots of the learned position table.
    fn position_slots(&self) -> Option<(usize, usize)> {
        match self.positions {
            VitPositions::Learned { grid, embed_class } => {
                let prefix = if embed_class {
                    self.tokens().prefix()
                } else {
                    0
                };
                Some((prefix, grid))
            }
            VitPositions::Rotary { .. } => None,
        }
    }

    /// A randomly initialised model (timm's truncated-normal 0.02 approximated by a normal).
    pub fn init<B: Backend>(&self, device: &B::Device) -> Vit<B> {
        let d = self.embed_dim;
        let normal = |shape: [usize; 3]| {
            Param::from_tensor(Tensor::random(
                shape,
                Distribution::Normal(0.0, 0.02),
                device,
            ))
        };
        let norm = || {
            LayerNormConfig::new(d)
                .with_epsilon(self.norm_eps)
                .init(device)
        };
        let layer_scale = || {
            self.layer_scale.then(|| LayerScale {
                // timm's DINOv2/DINOv3 initial value.
                gamma: Param::from_tensor(Tensor::full([d], 1e-5, device)),
            })
        };
        let blocks = (0..self.depth)
            .map(|_| VitBlock {
                norm1: norm(),
                attn: VitAttention {
                    qkv: LinearConfig::new(d, 3 * d)
                        .with_bias(self.qkv_bias)
                        .init(device),
                    proj: LinearConfig::new(d, d).init(device),
                    num_heads: self.num_heads,
                },
                ls1: layer_scale(),
                norm2: norm(),
                mlp: Mlp::new(d, self.mlp_hidden_dim, device),
                ls2: layer_scale(),
            })
            .collect();
        Vit {
            cls_token: self.class_token.then(|| normal([1, 1, d])),
            reg_token: (self.reg_tokens > 0).then(|| normal([1, self.reg_tokens, d])),
            pos_embed: self
                .position_slots()
                .map(|(prefix, grid)| normal([1, prefix + grid * grid, d])),
            patch_embed: PatchEmbed::new(self.patch_size, d, device),
            blocks,
            norm: norm(),
            config: VitSettings::of(self),
            autocast: Autocast::OFF,
        }
    }
}

/// The parts of the config the forward needs (burn modules hold plain fields, not configs).
#[derive(Debug, Clone, Copy)]
pub struct VitSettings {
    family: VitFamily,
    num_heads: usize,
    class_token: bool,
    reg_tokens: usize,
    /// 0: rotary positions (or none).
    position_grid: usize,
    embed_class: bool,
    rotary_temperature: f64,
}

impl VitSettings {
    fn of(config: &VitConfig) -> Self {
        let (position_grid, embed_class, rotary_temperature) = match config.positions {
            VitPositions::Learned { grid, embed_class } => (grid, embed_class, 0.0),
            VitPositions::Rotary { temperature } => (0, false, temperature),
        };
        Self {
            family: config.family,
            num_heads: config.num_heads,
            class_token: config.class_token,
            reg_tokens: config.reg_tokens,
            position_grid,
            embed_class,
            rotary_temperature,
        }
    }
}

/// timm `LayerScale`: `x · γ`.
#[derive(Module, Debug)]
pub struct LayerScale<B: Backend> {
    pub gamma: Param<Tensor<B, 1>>,
}

#[derive(Module, Debug)]
pub struct VitAttention<B: Backend> {
    /// `[q | k | v]`, bias optional (DINOv3 has none).
    pub qkv: Linear<B>,
    pub proj: Linear<B>,
    num_heads: usize,
}

#[derive(Module, Debug)]
pub struct VitBlock<B: Backend> {
    pub norm1: LayerNorm<B>,
    pub attn: VitAttention<B>,
    pub ls1: Option<LayerScale<B>>,
    pub norm2: LayerNorm<B>,
    pub mlp: Mlp<B>,
    pub ls2: Option<LayerScale<B>>,
}

fn scaled<B: Backend>(x: Tensor<B, 3>, scale: &Option<LayerScale<B>>) -> Tensor<B, 3> {
    match scale {
        Some(s) => x * s.gamma.val().unsqueeze::<3>(),
        None => x,
    }
}

impl<B: Backend> VitBlock<B> {
    fn qkv(&self, x: Tensor<B, 3>, rope: Option<&RotaryTables<B>>, amp: Autocast) -> Tensor<B, 3> {
        let qkv = amp.linear(&self.attn.qkv, amp.layer_norm(&self.norm1, x));
        match rope {
            Some(tables) => tables.apply(qkv, self.attn.num_heads),
            None => qkv,
        }
    }

    /// The residual stream in f32.
    fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: Option<&RotaryTables<B>>,
        amp: Autocast,
    ) -> Tensor<B, 3> {
        let qkv = self.qkv(x.clone(), rope, amp);
        let attn = amp.linear(
            &self.attn.proj,
            multi_head_attention(qkv, self.attn.num_heads, None),
        );
        let x = x + scaled(autocast::f32(attn), &self.ls1);
        let mlp = self
            .mlp
            .forward(amp.layer_norm(&self.norm2, x.clone()), amp);
        x + scaled(autocast::f32(mlp), &self.ls2)
    }
}

#[derive(Module, Debug)]
pub struct Vit<B: Backend> {
    pub cls_token: Option<Param<Tensor<B, 3>>>,
    pub reg_token: Option<Param<Tensor<B, 3>>>,
    /// `[1, slots + g², D]`; absent with rotary positions.
    pub pos_embed: Option<Param<Tensor<B, 3>>>,
    pub patch_embed: PatchEmbed<B>,
    pub blocks: Vec<VitBlock<B>>,
    /// The final norm: loaded and exported, unused by the KD target.
    pub norm: LayerNorm<B>,
    #[module(skip)]
    config: VitSettings,
    autocast: Autocast,
}

impl<B: Backend> Vit<B> {
    /// The same model, computing its matrix products in `dtype` from now on (autocast).
    pub fn computing_in(mut self, dtype: burn::tensor::DType) -> Self {
        self.autocast = Autocast::new(dtype);
        self
    }

    pub fn family(&self) -> VitFamily {
        self.config.family
    }

    pub fn tokens(&self) -> TokenLayout {
        TokenLayout {
            class_token: self.config.class_token,
            registers: self.config.reg_tokens,
        }
    }

    /// Keeps only the given blocks, in order.
    pub fn select_blocks(mut self, keep: &[usize]) -> Self {
        self.blocks = super::keep_in_order(self.blocks, keep);
        self
    }

    /// The learned position table resampled for a `grid`×`grid` grid, once, as timm's
    /// `resample_abs_pos_embed` does (prefix slots kept); a rotary model is unchanged.
    pub fn with_position_grid(mut self, grid: usize) -> Self {
        if let Some(table) = self.pos_embed.take() {
            let resampled = self.positions_for(table.val(), grid);
            self.pos_embed = Some(Param::from_tensor(resampled));
            self.config.position_grid = grid;
        }
        self
    }

    /// The table for `grid`: the stored one, or the patch part resampled (bicubic, antialias).
    fn positions_for(&self, table: Tensor<B, 3>, grid: usize) -> Tensor<B, 3> {
        let stored = self.config.position_grid;
        if stored == grid {
            return table;
        }
        let [_, slots_and_patches, _] = table.dims();
        let slots = slots_and_patches - stored * stored;
        let patches = table.clone().narrow(1, slots, stored * stored);
        let patches = resample_grid(patches, stored, grid, Interpolation::BicubicAntialias);
        if slots == 0 {
            patches
        } else {
            Tensor::cat(vec![table.narrow(1, 0, slots), patches], 1)
        }
    }

    /// Layer results are the residual stream after each block (no final norm).
    ///
    /// # Shapes
    /// - images: `[B, 3, H, W]`, normalised, H = W
    /// - each layer result and `last_hidden`: `[B, prefix + N, D]`, f32, CLS, registers, patches
    pub fn forward(&self, images: Tensor<B, 4>) -> ModelOutput<B> {
        self.forward_watching(images, |_, _, _| {})
    }

    /// The final norm of the last hidden state (what timm's `forward_features` returns).
    pub fn final_norm(&self, last_hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        self.norm.forward(last_hidden)
    }

    /// Every block's attention weights, first block first, each `[B, H, T, T]` (f32).
    pub fn attention_weights(&self, images: Tensor<B, 4>) -> Vec<Tensor<B, 4>> {
        let mut weights = Vec::with_capacity(self.blocks.len());
        self.forward_watching(images, |block, x, rope| {
            let qkv = block.qkv(x.clone(), rope, self.autocast);
            weights.push(attention_weights(qkv, block.attn.num_heads, None));
        });
        weights
    }

    /// The token sequence before the first block: `[B, T, D]` (f32).
    fn embed(&self, images: Tensor<B, 4>) -> (Tensor<B, 3>, usize) {
        let amp = self.autocast;
        let [_, _, height, _] = images.dims();
        let patch = self.patch_embed.proj.weight.dims()[2];
        let grid = height / patch;
        let mut patches = autocast::f32(self.patch_embed.forward(images, amp)); // [B, N, D]
        let [batch, _, dim] = patches.dims();
        let mut prefix = Vec::new();
        if let Some(cls) = &self.cls_token {
            prefix.push(cls.val().expand([batch, 1, dim]));
        }
        if let Some(reg) = &self.reg_token {
            prefix.push(reg.val().expand([batch, self.config.reg_tokens, dim]));
        }
        let positions = self
            .pos_embed
            .as_ref()
            .map(|table| self.positions_for(table.val(), grid));
        let x = match positions {
            Some(positions) if !self.config.embed_class => {
                patches = patches + positions;
                prefix.push(patches);
                Tensor::cat(prefix, 1)
            }
            Some(positions) => {
                prefix.push(patches);
                Tensor::cat(prefix, 1) + positions
            }
            None => {
                prefix.push(patches);
                Tensor::cat(prefix, 1)
            }
        };
        (x, grid)
    }

    /// `forward`, showing `watch` each block with its input (and the rotary tables) first.
    fn forward_watching(
        &self,
        images: Tensor<B, 4>,
        mut watch: impl FnMut(&VitBlock<B>, &Tensor<B, 3>, Option<&RotaryTables<B>>),
    ) -> ModelOutput<B> {
        let amp = self.autocast;
        let device = images.device();
        let (mut x, grid) = self.embed(images);
        let rope = (self.config.rotary_temperature > 0.0).then(|| {
            let dim = x.dims()[2];
            RotaryTables::new(
                grid,
                self.tokens().prefix(),
                dim / self.config.num_heads,
                self.config.rotary_temperature,
                &device,
            )
        });
        let mut layer_results = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            watch(block, &x, rope.as_ref());
            x = block.forward(x, rope.as_ref(), amp);
            layer_results.push(x.clone());
        }
        ModelOutput {
            layer_results,
            last_hidden: x,
            tokens: self.tokens(),
        }
    }
}
