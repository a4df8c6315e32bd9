//! kdlab's method, below every file and device: the encoders (BEiT v2, data2vec 2.0 and timm's
//! ViT family — ViT, DeiT, DeiT III, DINOv2, DINOv3 — each as teacher or student), the data2vec
//! KD target and how it meets across two families, AdamW with its schedule, and the readers of
//! every checkpoint layout the models come from.
//!
//! ```text
//! weights          checkpoints in (unilm .pth, timm .safetensors, fairseq .pt, kdlab) and out
//! optim, target    AdamW, clipping, loss scaling and the schedule; the data2vec target and loss
//! pair             the target across two families: registers, width connector, grid matching
//! model            the encoders, autocast, the vit parts they share, rotary positions, resampling
//! guard            a panic turned into an error (burn's backends and the pickle reader panic)
//! ```
//!
//! The fused kernels are the crate below (`kdlab_kernels`).

pub mod guard;
pub mod model;
pub mod optim;
pub mod pair;
pub mod target;
pub mod weights;
