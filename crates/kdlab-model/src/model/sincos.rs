//! The fixed 2-D sin-cos position table of data2vec 2.0 (and MAE).
//!
//! Upstream: fairseq `examples/data2vec/models/modalities/images.py` (`get_2d_sincos_pos_embed`).

/// Table `[g², D]` flattened row-major: for patch p = r·g + c and K = D/4, ω_k = 10000^(−k/K),
/// dims `[0,K)` = sin(c·ω_k), `[K,2K)` = cos(c·ω_k), `[2K,3K)` = sin(r·ω_k), `[3K,4K)` = cos(r·ω_k).
/// Column first, then row; computed in f64 and rounded to f32 like the reference.
pub fn sincos_2d(grid: usize, embed_dim: usize) -> Vec<f32> {
    let quarter = embed_dim / 4;
    let omega = |k: usize| 10000f64.powf(-(k as f64) / quarter as f64);
    let mut table = Vec::with_capacity(grid * grid * embed_dim);
    for r in 0..grid {
        for c in 0..grid {
            for (pos, f) in [
                (c, f64::sin as fn(f64) -> f64),
                (c, f64::cos),
                (r, f64::sin),
                (r, f64::cos),
            ] {
                table.extend((0..quarter).map(|k| f(pos as f64 * omega(k)) as f32));
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_patch_is_sin0_cos0() {
        let t = sincos_2d(2, 8);
        assert_eq!(&t[..8], &[0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]);
        // patch 1 = row 0, column 1: sin(1·ω_0) = sin 1 in dim 0.
        assert!((t[8] - 1f32.sin()).abs() < 1e-7);
        assert_eq!(t[8 + 4], 0.0);
    }
}
