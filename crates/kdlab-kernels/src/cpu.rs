//! The f32 kernels on plain slices, parallel over rayon.
//!
//! Attention reads q, k and v in place out of the packed `[B, T, 3D]` projection and writes the
//! heads side by side into `[B, T, D]`, so neither the split nor the merge of heads copies
//! anything; each (image, head) pair is one task with two GEMMs (the `gemm` crate burn's CPU
//! backend already uses) and a row-wise softmax between them.

use std::f64::consts::FRAC_1_SQRT_2;

use gemm::Parallelism;
use rayon::prelude::*;

/// Elements per rayon task of the elementwise kernels.
const CHUNK: usize = 1 << 14;

/// erf by Eigen's rational approximation (`generic_fast_erf_float`), evaluated in f64: its own
/// error is below 7e-8, so after rounding to f32 the result is libm's `erff` to within one ulp,
/// and unlike `erff` the loop vectorises.
#[inline]
pub fn erf(x: f64) -> f64 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let p = -2.726_142_258_013_06e-10;
    let p = p * x2 + 2.770_681_424_959_02e-08;
    let p = p * x2 - 2.101_024_020_825_08e-06;
    let p = p * x2 - 5.692_506_394_623_46e-05;
    let p = p * x2 - 7.349_906_303_268_55e-04;
    let p = p * x2 - 2.954_599_808_540_25e-03;
    let p = p * x2 - 1.609_603_332_624_15e-02;
    let q = -1.456_607_184_649_96e-05;
    let q = q * x2 - 2.133_740_552_789_05e-04;
    let q = q * x2 - 1.682_826_974_382_03e-03;
    let q = q * x2 - 7.373_329_167_204_68e-03;
    let q = q * x2 - 1.426_473_905_141_89e-02;
    x * p / q
}

/// Exact (erf) GELU: `y = x·Φ(x)`.
pub fn gelu(x: &[f32], y: &mut [f32]) {
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(y, x)| {
            for (y, &x) in y.iter_mut().zip(x) {
                let x = f64::from(x);
                *y = (0.5 * x * (1.0 + erf(x * FRAC_1_SQRT_2))) as f32;
            }
        });
}

/// `dx = dy · (Φ(x) + x·φ(x))`.
pub fn gelu_backward(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    // 1/√(2π)
    const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;
    dx.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK)))
        .for_each(|(dx, (x, dy))| {
            for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
                let x = f64::from(x);
                let cdf = 0.5 * (1.0 + erf(x * FRAC_1_SQRT_2));
                let pdf = (-0.5 * x * x).exp() * INV_SQRT_2PI;
                *dx = (f64::from(dy) * (cdf + x * pdf)) as f32;
            }
        });
}

/// The scalars of one AdamW update of one parameter (f64, as the tensor version passes them to
/// burn's scalar operations, which round each to f32; so does the kernel).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWScalars {
    /// `1 − lr·wd`; None when the parameter does not decay.
    pub decay: Option<f64>,
    pub one_minus_beta1: f64,
    pub beta2: f64,
    pub one_minus_beta2: f64,
    pub bias_correction2_sqrt: f64,
    pub eps: f64,
    /// `lr / (1 − β1^t)`.
    pub step_size: f64,
}

/// One AdamW update in place: the f32 operations of `optim::adamw`'s tensor version (PyTorch's
/// `_single_tensor_adamw`), in the same order, in one pass instead of thirteen.
pub fn adamw(
    param: &mut [f32],
    grad: &[f32],
    exp_avg: &mut [f32],
    exp_avg_sq: &mut [f32],
    s: AdamWScalars,
) {
    let decay = s.decay.map(|d| d as f32);
    let [
        one_minus_beta1,
        beta2,
        one_minus_beta2,
        bias_correction2_sqrt,
        eps,
        step_size,
    ] = [
        s.one_minus_beta1,
        s.beta2,
        s.one_minus_beta2,
        s.bias_correction2_sqrt,
        s.eps,
        s.step_size,
    ]
    .map(|x| x as f32);
    param
        .par_chunks_mut(CHUNK)
        .zip(grad.par_chunks(CHUNK))
        .zip(exp_avg.par_chunks_mut(CHUNK))
        .zip(exp_avg_sq.par_chunks_mut(CHUNK))
        .for_each(|(((p, g), m), v)| {
            for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m).zip(v) {
                let decayed = decay.map_or(*p, |d| *p * d);
                *m += (g - *m) * one_minus_beta1;
                *v = *v * beta2 + g * g * one_minus_beta2;
                let denom = v.sqrt() / bias_correction2_sqrt + eps;
                *p = decayed - *m / denom * step_size;
            }
        });
}

/// What the backward pass of `kd_target` needs.
pub struct TargetSaved {
    /// `[L, B, T, D]`: each layer instance-normed over the tokens.
    pub normed: Vec<f32>,
    /// `[L, B, D]`: `1/σ` of each layer, image and channel.
    pub inv_std_tokens: Vec<f32>,
    /// `[B, T, D]`: the target itself.
    pub target: Vec<f32>,
    /// `[B, T]`: `1/σ` of the final layer norm.
    pub inv_std_channels: Vec<f32>,
}

/// `layer_norm_D(mean_l instance_norm_T(h_l))` (biased variances, `eps` in both), the data2vec
/// target, for layer results `[B, T, D]` each; one pass per layer, parallel over images.
/// Returns the target `[B, T, D]`, and what the backward pass needs when `keep` is set.
pub fn kd_target(
    layers: &[&[f32]],
    [batch, tokens, dim]: [usize; 3],
    eps: f32,
    keep: bool,
) -> (Vec<f32>, Option<TargetSaved>) {
    let per_image = tokens * dim;
    let count = layers.len();
    assert!(count > 0, "a model has at least one layer result");
    for layer in layers {
        assert_eq!(layer.len(), batch * per_image, "layer result size");
    }
    let mut target = vec![0.0f32; batch * per_image];
    let mut normed = vec![0.0f32; if keep { count * batch * per_image } else { 0 }];
    let mut inv_std_tokens = vec![0.0f32; count * batch * dim];
    let mut inv_std_channels = vec![0.0f32; batch * tokens];
    let normed_at = Shared(normed.as_mut_ptr());
    let inv_tokens_at = Shared(inv_std_tokens.as_mut_ptr());
    target
        .par_chunks_mut(per_image)
        .zip(inv_std_channels.par_chunks_mut(tokens))
        .enumerate()
        .for_each(|(b, (sum, inv_channels))| {
            let mut mean = vec![0.0f32; dim];
            let mut var = vec![0.0f32; dim];
            for (l, layer) in layers.iter().enumerate() {
                let h = &layer[b * per_image..(b + 1) * per_image];
                mean_var_over_rows(h, dim, &mut mean, &mut var);
                // SAFETY: layer l, image b: blocks no other task writes.
                let inv = unsafe {
                    std::slice::from_raw_parts_mut(inv_tokens_at.at((l * batch + b) * dim), dim)
                };
                for (inv, v) in inv.iter_mut().zip(&var) {
                    *inv = 1.0 / (v + eps).sqrt();
                }
                let rows = h.chunks_exact(dim).zip(sum.chunks_exact_mut(dim));
                if keep {
                    let normed = unsafe {
                        let at = normed_at.at((l * batch + b) * per_image);
                        std::slice::from_raw_parts_mut(at, per_image)
                    };
                    for ((row, sum), normed) in rows.zip(normed.chunks_exact_mut(dim)) {
                        for d in 0..dim {
                            normed[d] = (row[d] - mean[d]) * inv[d];
                            sum[d] += normed[d];
                        }
                    }
                } else {
                    for (row, sum) in rows {
                        for d in 0..dim {
                            sum[d] += (row[d] - mean[d]) * inv[d];
                        }
                    }
                }
            }
            for (row, inv) in sum.chunks_exact_mut(dim).zip(inv_channels.iter_mut()) {
                row.iter_mut().for_each(|s| *s /= count as f32);
                let m = row.iter().sum::<f32>() / dim as f32;
                let v = row.iter().map(|s| (s - m) * (s - m)).sum::<f32>() / dim as f32;
                *inv = 1.0 / (v + eps).sqrt();
                row.iter_mut().for_each(|s| *s = (*s - m) * *inv);
            }
        });
    let saved = keep.then(|| TargetSaved {
        normed,
        inv_std_tokens,
        target: target.clone(),
        inv_std_channels,
    });
    (target, saved)
}

/// Per column of a row-major `[rows, dim]` block: the mean and the biased variance.
fn mean_var_over_rows(h: &[f32], dim: usize, mean: &mut [f32], var: &mut [f32]) {
    let rows = (h.len() / dim) as f32;
    mean.fill(0.0);
    var.fill(0.0);
    for row in h.chunks_exact(dim) {
        mean.iter_mut().zip(row).for_each(|(m, x)| *m += x);
    }
    mean.iter_mut().for_each(|m| *m /= rows);
    for row in h.chunks_exact(dim) {
        for ((v, x), m) in var.iter_mut().zip(row).zip(mean.iter()) {
            *v += (x - m) * (x - m);
        }
    }
    var.iter_mut().for_each(|v| *v /= rows);
}

/// The gradient of `kd_target` with respect to each layer result, `[L, B, T, D]`.
///
/// Both normalisations have the backward `dx = (dy − mean(dy) − y·mean(dy·y))/σ` over their
/// own axis; the mean over layers hands every layer `1/L` of the gradient.
pub fn kd_target_backward(
    saved: &TargetSaved,
    grad: &[f32],
    [batch, tokens, dim]: [usize; 3],
) -> Vec<f32> {
    let per_image = tokens * dim;
    let count = saved.inv_std_tokens.len() / (batch * dim);
    let mut grads = vec![0.0f32; count * batch * per_image];
    let grads_at = Shared(grads.as_mut_ptr());
    (0..batch).into_par_iter().for_each(|b| {
        let image = b * per_image..(b + 1) * per_image;
        // Through the layer norm over channels, then the mean over layers.
        let mut g_mean = vec![0.0f32; per_image];
        let rows = grad[image.clone()]
            .chunks_exact(dim)
            .zip(saved.target[image].chunks_exact(dim))
            .zip(&saved.inv_std_channels[b * tokens..(b + 1) * tokens]);
        for (row, ((gy, y), inv)) in g_mean.chunks_exact_mut(dim).zip(rows) {
            let a = gy.iter().sum::<f32>() / dim as f32;
            let c = gy.iter().zip(y).map(|(g, y)| g * y).sum::<f32>() / dim as f32;
            let scale = inv / count as f32;
            for ((out, g), y) in row.iter_mut().zip(gy).zip(y) {
                *out = (g - a - y * c) * scale;
            }
        }
        // Through each layer's instance norm over tokens.
        let (mut a, mut c) = (vec![0.0f32; dim], vec![0.0f32; dim]);
        for l in 0..count {
            let block = (l * batch + b) * per_image;
            let u = &saved.normed[block..block + per_image];
            let inv = &saved.inv_std_tokens[(l * batch + b) * dim..(l * batch + b + 1) * dim];
            a.fill(0.0);
            c.fill(0.0);
            for (g, u) in g_mean.chunks_exact(dim).zip(u.chunks_exact(dim)) {
                for d in 0..dim {
                    a[d] += g[d];
                    c[d] += g[d] * u[d];
                }
            }
            let rows = tokens as f32;
            // SAFETY: layer l, image b: a block no other task writes.
            let out = unsafe { std::slice::from_raw_parts_mut(grads_at.at(block), per_image) };
            for ((out, g), u) in out
                .chunks_exact_mut(dim)
                .zip(g_mean.chunks_exact(dim))
                .zip(u.chunks_exact(dim))
            {
                for d in 0..dim {
                    out[d] = (g[d] - a[d] / rows - u[d] * (c[d] / rows)) * inv[d];
                }
            }
        }
    });
    grads
}

/// The sizes of a multi-head attention over packed projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heads {
    pub batch: usize,
    pub tokens: usize,
    pub heads: usize,
    pub head_dim: usize,
}

impl Heads {
    /// D, the width of q (and of the output).
    pub fn width(&self) -> usize {
        self.heads * self.head_dim
    }

    /// `hd^-0.5`, computed as burn's attention computes it.
    fn scale(&self) -> f32 {
        (1.0 / (self.head_dim as f64).sqrt()) as f32
    }

    fn pairs(&self) -> usize {
        self.batch * self.heads
    }

    /// Elements of the packed projections `[B, T, 3D]`.
    fn packed_len(&self) -> usize {
        self.batch * self.tokens * 3 * self.width()
    }

    /// Elements of the output `[B, T, D]`.
    fn output_len(&self) -> usize {
        self.batch * self.tokens * self.width()
    }

    /// Where (image, head) `pair`'s columns start: its q columns in the packed projections, its
    /// columns in the output.
    fn offsets(&self, pair: usize) -> (usize, usize) {
        let (b, h) = (pair / self.heads, pair % self.heads);
        let (rows, hd, d) = (b * self.tokens, h * self.head_dim, self.width());
        (rows * 3 * d + hd, rows * d + hd)
    }
}

/// A pointer that tasks writing disjoint parts of one buffer may share.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: every task writes only the elements of its own (image, head) pair.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// The pointer (a method, so that closures capture the `Shared`, not its raw field).
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// `dst (+)= lhs · rhs` on strided row-major views, single-threaded (the caller parallelises).
///
/// # Safety
/// Every pointer with its strides must address valid memory for the given sizes.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul(
    [m, n, k]: [usize; 3],
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: (*const f32, isize, isize),
    rhs: (*const f32, isize, isize),
) {
    let (lhs, lhs_rs, lhs_cs) = lhs;
    let (rhs, rhs_rs, rhs_cs) = rhs;
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs,
            lhs_cs,
            lhs_rs,
            rhs,
            rhs_cs,
            rhs_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

/// `softmax(q·kᵀ·hd^-0.5 + bias)·v` for every image and head.
///
/// - `qkv`: `[B, T, 3D]`, columns `[q | k | v]`, head h at columns h·hd … (h+1)·hd − 1 of each
/// - `bias`: `[H, T, T]`, the same for every image (relative position bias)
/// - `out`: `[B, T, D]`, heads concatenated
/// - `probs`: where given, `[B, H, T, T]` receives the attention weights (for the backward pass)
pub fn attention_forward(
    qkv: &[f32],
    bias: Option<&[f32]>,
    shape: Heads,
    out: &mut [f32],
    probs: Option<&mut [f32]>,
) {
    let (t, hd, d) = (shape.tokens, shape.head_dim, shape.width());
    assert_eq!(qkv.len(), shape.packed_len(), "packed qkv size");
    assert_eq!(out.len(), shape.output_len(), "attention output size");
    if let Some(bias) = bias {
        assert_eq!(bias.len(), shape.heads * t * t, "attention bias size");
    }
    let scale = shape.scale();
    let out = Shared(out.as_mut_ptr());
    let probs = probs.map(|p| {
        assert_eq!(p.len(), shape.pairs() * t * t, "attention weights size");
        Shared(p.as_mut_ptr())
    });
    (0..shape.pairs()).into_par_iter().for_each(|pair| {
        let (q_at, out_at) = shape.offsets(pair);
        let h = pair % shape.heads;
        let mut scratch = Vec::new();
        let scores: &mut [f32] = match probs {
            // SAFETY: pair's own T×T block of the [B, H, T, T] buffer.
            Some(p) => unsafe { std::slice::from_raw_parts_mut(p.at(pair * t * t), t * t) },
            None => {
                scratch.resize(t * t, 0.0);
                &mut scratch
            }
        };
        let row = (3 * d) as isize;
        let q = qkv[q_at..].as_ptr();
        // SAFETY: q, k and v of this head lie inside this image's rows of `qkv`; the output
        // columns h·hd … of this image's rows belong to this pair alone.
        unsafe {
            let (k, v) = (q.add(d), q.add(2 * d));
            matmul(
                [t, t, hd],
                scores.as_mut_ptr(),
                t,
                false,
                (q, row, 1),
                (k, 1, row),
            );
            let bias = bias.map(|bias| &bias[h * t * t..(h + 1) * t * t]);
            softmax_rows(scores, t, scale, bias);
            matmul(
                [t, hd, t],
                out.at(out_at),
                d,
                false,
                (scores.as_ptr(), t as isize, 1),
                (v, row, 1),
            );
        }
    });
}

/// `s ← softmax(s·scale + bias)` over each row of a `[T, T]` block.
fn softmax_rows(scores: &mut [f32], t: usize, scale: f32, bias: Option<&[f32]>) {
    for (i, row) in scores.chunks_exact_mut(t).enumerate() {
        match bias {
            Some(bias) => {
                for (s, &b) in row.iter_mut().zip(&bias[i * t..(i + 1) * t]) {
                    *s = *s * scale + b;
                }
            }
            None => row.iter_mut().for_each(|s| *s *= scale),
        }
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for s in row.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        let inv = 1.0 / sum;
        row.iter_mut().for_each(|s| *s *= inv);
    }
}

/// The gradient of `attention_forward` (without bias) with respect to the packed projections.
///
/// With `P` the saved weights and `dO` the output's gradient, per image and head:
/// `dV = Pᵀ·dO`, `dP = dO·Vᵀ`, `dS = P ∘ (dP − rowsum(P ∘ dP))·hd^-0.5`, `dQ = dS·K`,
/// `dK = dSᵀ·Q`, written into the q, k and v columns of `dqkv` (`[B, T, 3D]`).
pub fn attention_backward(
    qkv: &[f32],
    probs: &[f32],
    grad_out: &[f32],
    shape: Heads,
    dqkv: &mut [f32],
) {
    let (t, hd, d) = (shape.tokens, shape.head_dim, shape.width());
    assert_eq!(qkv.len(), shape.packed_len(), "packed qkv size");
    assert_eq!(dqkv.len(), qkv.len(), "packed qkv gradient size");
    assert_eq!(grad_out.len(), shape.output_len(), "output gradient size");
    assert_eq!(probs.len(), shape.pairs() * t * t, "attention weights size");
    let scale = shape.scale();
    let dqkv = Shared(dqkv.as_mut_ptr());
    (0..shape.pairs()).into_par_iter().for_each(|pair| {
        let (q_at, out_at) = shape.offsets(pair);
        let p = &probs[pair * t * t..(pair + 1) * t * t];
        let row = (3 * d) as isize;
        let q = qkv[q_at..].as_ptr();
        let d_out = grad_out[out_at..].as_ptr();
        let mut ds = vec![0.0f32; t * t];
        // SAFETY: reads stay inside this image's rows; writes go to this head's q, k and v
        // columns of this image's rows of `dqkv`, which no other pair touches.
        unsafe {
            let (k, v) = (q.add(d), q.add(2 * d));
            let dq = dqkv.at(q_at);
            let (dk, dv) = (dq.add(d), dq.add(2 * d));
            // dV = Pᵀ·dO
            matmul(
                [t, hd, t],
                dv,
                3 * d,
                false,
                (p.as_ptr(), 1, t as isize),
                (d_out, d as isize, 1),
            );
            // dP = dO·Vᵀ
            matmul(
                [t, t, hd],
                ds.as_mut_ptr(),
                t,
                false,
                (d_out, d as isize, 1),
                (v, 1, row),
            );
            for (ds, p) in ds.chunks_exact_mut(t).zip(p.chunks_exact(t)) {
                let dot: f32 = ds.iter().zip(p).map(|(a, b)| a * b).sum();
                for (ds, &p) in ds.iter_mut().zip(p) {
                    *ds = p * (*ds - dot) * scale;
                }
            }
            // dQ = dS·K, dK = dSᵀ·Q
            matmul(
                [t, hd, t],
                dq,
                3 * d,
                false,
                (ds.as_ptr(), t as isize, 1),
                (k, row, 1),
            );
            matmul(
                [t, hd, t],
                dk,
                3 * d,
                false,
                (ds.as_ptr(), 1, t as isize),
                (q, row, 1),
            );
        }
    });
}
