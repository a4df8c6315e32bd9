//! Floating-point work of the distillation, counted from the architectures: 2 × the
//! multiply-adds of the matrix products (REFERENCE.md: 2.91 GFLOP per ViT-B block on 197 tokens,
//! ≈106 GFLOP per image for one KD step with the 8-block student). Norms, softmax and GELU are
//! left out, as in the usual MFU accounting.

use kdlab_model::weights::Architecture;

/// One transformer block on `tokens` tokens of width `dim` with an `mlp`-wide FFN.
pub fn block_gflop(tokens: usize, dim: usize, mlp: usize) -> f64 {
    let (t, d, m) = (tokens as f64, dim as f64, mlp as f64);
    let projections = 2.0 * t * d * (3.0 * d + d + 2.0 * m); // qkv, output, two FFN layers
    let attention = 2.0 * 2.0 * t * t * d; // q·kᵀ and attention·v
    (projections + attention) / 1e9
}

fn embed_gflop(image: usize, patch: usize, dim: usize) -> f64 {
    let patches = (image / patch).pow(2) as f64;
    2.0 * patches * dim as f64 * (3 * patch * patch) as f64 / 1e9
}

/// One forward pass of a model as it runs (its prefix tokens and every block, data2vec 2.0's
/// prenet included).
pub fn forward_gflop(a: &Architecture) -> f64 {
    let (image, patch) = (a.image_size(), a.patch_size());
    let tokens = (image / patch).pow(2) + a.tokens().prefix();
    let blocks = a.prenet_depth() + a.depth();
    blocks as f64 * block_gflop(tokens, a.embed_dim(), a.mlp_hidden_dim())
        + embed_gflop(image, patch, a.embed_dim())
}

/// Teacher forward + student forward and backward (twice the forward).
pub fn kd_step_gflop_per_image(teacher: &Architecture, student: &Architecture) -> f64 {
    forward_gflop(teacher) + 3.0 * forward_gflop(student)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kdlab_model::model::{BeitV2Config, Data2Vec2Config};

    #[test]
    fn the_reference_figures_for_vit_b() {
        assert!((block_gflop(197, 768, 3072) - 2.91).abs() < 0.01);
        let teacher = Architecture::BeitV2(BeitV2Config::vit_base_patch16_224());
        assert!((forward_gflop(&teacher) - 35.1).abs() < 0.1);
        let student = Architecture::Data2Vec2(Data2Vec2Config {
            depth: 6,
            ..Data2Vec2Config::vit_base_patch16_224()
        });
        assert!((forward_gflop(&student) - 23.5).abs() < 0.1);
        assert!((kd_step_gflop_per_image(&teacher, &student) - 106.0).abs() < 0.5);
    }
}
