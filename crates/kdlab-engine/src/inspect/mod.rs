//! Per-patch distillation quality (SPEC.md §4): similarity and error maps, PCA-to-RGB, colour
//! maps and the pictures, as pure functions shared by the app, the `heatmap` command and the
//! per-epoch probe. `analysis` runs the models; `request` is what the app and `heatmap` call.

pub mod analysis;
pub mod attention;
pub mod cka;
pub mod colormap;
pub mod files;
mod font;
pub mod patch_maps;
pub mod pca;
pub mod render;
pub mod request;

pub use analysis::{Analysis, ProbeImage};
pub use attention::{AttentionMaps, AttentionView, ModelAttention};
pub use cka::CkaMatrix;
pub use colormap::{Colormap, ValueRange};
pub use files::{HeatmapRecord, Provenance};
pub use patch_maps::{Metric, PatchMaps};
pub use pca::PcaBasis;
pub use request::{HeatmapRequest, InspectRequest, Inspected, inspect, write_heatmaps};
