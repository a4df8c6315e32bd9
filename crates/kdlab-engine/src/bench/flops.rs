//! Floating-point work of the distillation, counted from the architectures: 2 × the
//! multiply-adds of the matrix products (REFERENCE.md: 2.91 GFLOP per ViT-B block on 197 tokens,
//! ≈106 GFLOP per image for one KD step with the 8-block student). Norms, softmax and GELU are
//! left out, as in the usual MFU accounting.

use kdlab_model::model::{BeitV2Config, Data2Vec2Config};

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

pub fn teacher_forward_gflop(c: &BeitV2Config) -> f64 {
    let tokens = (c.image_size / c.patch_size).pow(2) + 1;
    c.depth as f64 * block_gflop(tokens, c.embed_dim, c.mlp_hidden_dim)
        + embed_gflop(c.image_size, c.patch_size, c.embed_dim)
}

/// `c.depth` is the number of main blocks the student keeps.
pub fn student_forward_gflop(c: &Data2Vec2Config) -> f64 {
    let tokens = (c.image_size / c.patch_size).pow(2) + 1;
    (c.prenet_depth + c.depth) as f64 * block_gflop(tokens, c.embed_dim, c.mlp_hidden_dim)
        + embed_gflop(c.image_size, c.patch_size, c.embed_dim)
}

/// Teacher forward + student forward and backward (twice the forward).
pub fn kd_step_gflop_per_image(teacher: &BeitV2Config, student: &Data2Vec2Config) -> f64 {
    teacher_forward_gflop(teacher) + 3.0 * student_forward_gflop(student)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_figures_for_vit_b() {
        assert!((block_gflop(197, 768, 3072) - 2.91).abs() < 0.01);
        let teacher = BeitV2Config::vit_base_patch16_224();
        assert!((teacher_forward_gflop(&teacher) - 35.1).abs() < 0.1);
        let student = Data2Vec2Config {
            depth: 6,
            ..Data2Vec2Config::vit_base_patch16_224()
        };
        assert!((student_forward_gflop(&student) - 23.5).abs() < 0.1);
        assert!((kd_step_gflop_per_image(&teacher, &student) - 106.0).abs() < 0.5);
    }
}
