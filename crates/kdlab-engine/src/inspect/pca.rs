//! PCA of patch vectors to RGB: the first three principal components of the teacher's patches
//! become red, green and blue. The student's patches are projected on the *teacher's* basis, mean
//! and ranges, so equal colours mean equal features in both pictures.

/// A basis fitted on one set of `[N, D]` patch vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct PcaBasis {
    pub mean: Vec<f32>,
    /// Up to three unit vectors of length D, by decreasing explained variance.
    pub components: Vec<Vec<f32>>,
    /// Variance along each component.
    pub variances: Vec<f64>,
    /// Per component, the (min, max) of the fitted patches' projections: the colour range.
    pub ranges: Vec<(f32, f32)>,
}

impl PcaBasis {
    /// Fits on `patches` (`[N, D]` row-major). The eigenproblem is solved on the smaller of the
    /// N×N Gram and the D×D covariance matrix (196 × 196 for ViT-B/16, not 768 × 768).
    pub fn fit(patches: &[f32], dim: usize) -> Self {
        let n = patches.len() / dim.max(1);
        let mean: Vec<f32> = (0..dim)
            .map(|j| (0..n).map(|i| f64::from(patches[i * dim + j])).sum::<f64>() / n.max(1) as f64)
            .map(|m| m as f32)
            .collect();
        let centred: Vec<f64> = patches
            .iter()
            .enumerate()
            .map(|(k, &v)| f64::from(v - mean[k % dim]))
            .collect();
        let wanted = 3.min(n.saturating_sub(1)).min(dim);
        let mut components = Vec::new();
        let mut variances = Vec::new();
        if n <= dim {
            let gram = symmetric(n, |a, b| dot(row(&centred, a, dim), row(&centred, b, dim)));
            for (value, u) in top_eigenvectors(gram, n, wanted) {
                // v = Xᵀu / ‖Xᵀu‖
                let v: Vec<f64> = (0..dim)
                    .map(|j| (0..n).map(|i| centred[i * dim + j] * u[i]).sum())
                    .collect();
                components.push(unit(v));
                variances.push(value / (n.max(2) - 1) as f64);
            }
        } else {
            let covariance = symmetric(dim, |a, b| {
                (0..n)
                    .map(|i| centred[i * dim + a] * centred[i * dim + b])
                    .sum()
            });
            for (value, v) in top_eigenvectors(covariance, dim, wanted) {
                components.push(unit(v));
                variances.push(value / (n - 1) as f64);
            }
        }
        let components: Vec<Vec<f32>> = components
            .into_iter()
            .map(|v| orient(v).into_iter().map(|x| x as f32).collect())
            .collect();
        let mut basis = Self {
            mean,
            components,
            variances,
            ranges: Vec::new(),
        };
        let projected = basis.project(patches, dim);
        basis.ranges = (0..basis.components.len())
            .map(|k| {
                projected.iter().fold((f32::MAX, f32::MIN), |(lo, hi), p| {
                    (lo.min(p[k]), hi.max(p[k]))
                })
            })
            .collect();
        basis
    }

    /// Coordinates of each patch on the (up to three) components; missing ones are 0.
    pub fn project(&self, patches: &[f32], dim: usize) -> Vec<[f32; 3]> {
        patches
            .chunks_exact(dim)
            .map(|x| {
                let mut p = [0f32; 3];
                for (k, c) in self.components.iter().enumerate() {
                    p[k] = x
                        .iter()
                        .zip(&self.mean)
                        .zip(c)
                        .map(|((v, m), c)| (v - m) * c)
                        .sum();
                }
                p
            })
            .collect()
    }

    /// Patch colours: each component scaled by the fitted range to 0–255 (clamped), so the
    /// fitted set spans the full range and another set is shown in the same colours.
    pub fn to_rgb(&self, patches: &[f32], dim: usize) -> Vec<[u8; 3]> {
        self.project(patches, dim)
            .into_iter()
            .map(|p| {
                let mut rgb = [0u8; 3];
                for (k, &(lo, hi)) in self.ranges.iter().enumerate() {
                    let t = if hi > lo {
                        (p[k] - lo) / (hi - lo)
                    } else {
                        0.5
                    };
                    rgb[k] = (t.clamp(0.0, 1.0) * 255.0).round() as u8;
                }
                rgb
            })
            .collect()
    }
}

fn row(m: &[f64], i: usize, dim: usize) -> &[f64] {
    &m[i * dim..(i + 1) * dim]
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn unit(v: Vec<f64>) -> Vec<f64> {
    let norm = dot(&v, &v).sqrt();
    if norm > 0.0 {
        v.into_iter().map(|x| x / norm).collect()
    } else {
        v
    }
}

/// Eigenvectors have no sign; make the largest loading positive so colours are reproducible.
fn orient(v: Vec<f64>) -> Vec<f64> {
    let largest = v
        .iter()
        .copied()
        .fold(0f64, |a, x| if x.abs() > a.abs() { x } else { a });
    if largest < 0.0 {
        v.into_iter().map(|x| -x).collect()
    } else {
        v
    }
}

fn symmetric(n: usize, entry: impl Fn(usize, usize) -> f64) -> Vec<f64> {
    let mut m = vec![0f64; n * n];
    for a in 0..n {
        for b in a..n {
            let v = entry(a, b);
            m[a * n + b] = v;
            m[b * n + a] = v;
        }
    }
    m
}

/// The `count` largest eigenpairs of a symmetric n×n matrix, by the cyclic Jacobi method
/// (Golub & Van Loan §8.5): exact to rounding and deterministic, fine for n of a few hundred.
fn top_eigenvectors(mut a: Vec<f64>, n: usize, count: usize) -> Vec<(f64, Vec<f64>)> {
    let mut v = vec![0f64; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    let scale: f64 = a.iter().map(|x| x * x).sum::<f64>().max(f64::MIN_POSITIVE);
    for _sweep in 0..60 {
        let off: f64 = (0..n)
            .flat_map(|p| (0..n).filter(move |&q| q != p).map(move |q| (p, q)))
            .map(|(p, q)| a[p * n + q].powi(2))
            .sum();
        if off <= 1e-24 * scale {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| a[j * n + j].total_cmp(&a[i * n + i]));
    order
        .into_iter()
        .take(count)
        .map(|i| (a[i * n + i], (0..n).map(|k| v[k * n + i]).collect()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Patches built from three known orthonormal directions with coordinates that are exactly
    /// uncorrelated over the set (cos/sin waves of whole periods), amplitudes 3, 2, 1, plus a
    /// little noise and an offset.
    fn synthetic(n: usize, dim: usize) -> (Vec<f32>, [Vec<f64>; 3]) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut directions: Vec<Vec<f64>> = Vec::new();
        while directions.len() < 3 {
            let mut d: Vec<f64> = (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect();
            for e in &directions {
                let proj = dot(&d, e);
                d.iter_mut().zip(e).for_each(|(x, y)| *x -= proj * y);
            }
            directions.push(unit(d));
        }
        let mut patches = Vec::with_capacity(n * dim);
        for i in 0..n {
            let phase = std::f64::consts::TAU * i as f64 / n as f64;
            let coords = [3.0 * phase.cos(), 2.0 * phase.sin(), (2.0 * phase).cos()];
            let mut point = vec![5.0f64; dim]; // an offset the mean must remove
            for (c, direction) in coords.iter().zip(&directions) {
                point
                    .iter_mut()
                    .zip(direction)
                    .for_each(|(p, d)| *p += c * d);
            }
            for p in point {
                patches.push((p + 0.001 * rng.random_range(-1.0..1.0)) as f32);
            }
        }
        let [a, b, c] = <[Vec<f64>; 3]>::try_from(directions).unwrap();
        (patches, [a, b, c])
    }

    fn recovers(n: usize, dim: usize) {
        let (patches, directions) = synthetic(n, dim);
        let basis = PcaBasis::fit(&patches, dim);
        assert_eq!(basis.components.len(), 3);
        for (found, expected) in basis.components.iter().zip(&directions) {
            let found: Vec<f64> = found.iter().map(|&x| f64::from(x)).collect();
            assert!(
                dot(&found, expected).abs() > 0.999,
                "component not recovered"
            );
        }
        assert!(basis.variances[0] > basis.variances[1] && basis.variances[1] > basis.variances[2]);
    }

    #[test]
    fn recovers_known_components_through_the_gram_matrix() {
        recovers(16, 40); // N ≤ D
    }

    #[test]
    fn recovers_known_components_through_the_covariance() {
        recovers(64, 10); // N > D
    }

    #[test]
    fn the_fitted_set_spans_the_colour_range_and_another_set_is_clamped() {
        let (patches, _) = synthetic(16, 12);
        let basis = PcaBasis::fit(&patches, 12);
        let rgb = basis.to_rgb(&patches, 12);
        for k in 0..3 {
            assert_eq!(rgb.iter().map(|c| c[k]).min(), Some(0));
            assert_eq!(rgb.iter().map(|c| c[k]).max(), Some(255));
        }
        // The same vectors give the same colours, whichever set they are in.
        let first = basis.to_rgb(&patches[..12], 12);
        assert_eq!(first[0], rgb[0]);
        let far: Vec<f32> = patches[..12].iter().map(|x| x * 100.0).collect();
        assert_eq!(basis.to_rgb(&far, 12).len(), 1);
    }
}
