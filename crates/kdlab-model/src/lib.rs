//! kdlab's method, below every file and device: the encoders (BEiT v2 teacher, data2vec 2.0
//! student), the data2vec KD target, AdamW with its schedule, and the readers of every
//! checkpoint layout the models come from.
//!
//! ```text
//! weights          checkpoints in (unilm .pth, timm .safetensors, fairseq .pt, kdlab) and out
//! optim, target    AdamW, clipping, loss scaling and the schedule; the data2vec target and loss
//! pair             the target across two families: registers, width connector, grid matching
//! model            the encoders, autocast, the vit parts they share
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
