//! The attention kernels in CubeCL: one source, compiled to CUDA C++ by NVRTC and to SPIR-V or
//! WGSL by WGPU.
//!
//! FlashAttention-2's scheme (Dao, 2023, Algorithms 1 and 2), without tensor cores: a cube of
//! [`BLOCK_ROWS`] units owns that many rows of one image's head, one row per unit held in
//! registers, and walks the other side in tiles that the units copy together into shared memory.
//! The forward keeps a running maximum and sum per query (online softmax) and stores the row's
//! log-sum-exp; the backward recomputes every probability from it, so no `[T, T]` matrix is ever
//! written. The backward is three launches: `Δ_i = dO_i · O_i`, then dK and dV with one unit per
//! key (queries in tiles), then dQ with one unit per query (keys in tiles) — two passes instead
//! of FlashAttention-2's atomic adds into dQ, so the result does not depend on the order of
//! floating-point additions.
//!
//! Inputs and outputs are in the tensors' own type (f32, f16 or bf16); everything is computed and
//! accumulated in f32; the bias, log-sum-exp and Δ are f32.
//!
//! Layout: `qkv` `[B, T, 3D]` with columns `[q | k | v]`, head `h` at columns `h·hd … (h+1)·hd − 1`
//! of each; `out` and `grad_out` `[B, T, D]`; `bias` `[H, T, T]`; `lse` and `delta` `[B, H, T]`.
//! All contiguous. −10³⁰ stands in for −∞ (WGSL has no infinite literal).

// The launch functions take every tensor and size the kernels read. `#[cube]` translates a
// subset of Rust, so the code keeps to forms it is known to translate (`(a + b - 1) / b` rather
// than `div_ceil`), and the comptime `if has_bias` stays a branch of its own, resolved when the
// kernel is compiled, rather than joining a runtime condition.
#![allow(
    clippy::too_many_arguments,
    clippy::manual_div_ceil,
    clippy::collapsible_if
)]

use cubecl::prelude::*;

/// Units per cube, each owning one query (forward, dQ) or one key (dK, dV).
pub const BLOCK_ROWS: usize = 64;

/// Rows `first … first + rows − 1` of one head's columns of `source` into `tile` (row-major,
/// `head_dim` per row) as f32, zeros past the last token; the cube's units share the copy, each
/// step of them reading consecutive addresses.
#[cube]
fn load_tile<F: Float>(
    tile: &mut SharedMemory<f32>,
    source: &Tensor<F>,
    head_base: usize,
    row_stride: usize,
    first: usize,
    tokens: usize,
    #[comptime] rows: usize,
    #[comptime] head_dim: usize,
) {
    let mut i = UNIT_POS_X as usize;
    while i < comptime!(rows * head_dim) {
        let token = first + i / head_dim;
        let mut value = 0.0f32;
        if token < tokens {
            value = f32::cast_from(source[head_base + token * row_stride + i % head_dim]);
        }
        tile[i] = value;
        i += CUBE_DIM_X as usize;
    }
}

/// `head_dim` values of `source` from `start` into registers as f32 (zeros when not `valid`).
#[cube]
fn load_row<F: Float>(
    row: &mut Array<f32>,
    source: &Tensor<F>,
    start: usize,
    valid: bool,
    #[comptime] head_dim: usize,
    #[comptime] unroll: bool,
) {
    #[unroll(unroll)]
    for d in 0..head_dim {
        row[d] = 0.0f32;
    }
    if valid {
        #[unroll(unroll)]
        for d in 0..head_dim {
            row[d] = f32::cast_from(source[start + d]);
        }
    }
}

#[cube]
fn zero_row(row: &mut Array<f32>, #[comptime] head_dim: usize, #[comptime] unroll: bool) {
    #[unroll(unroll)]
    for d in 0..head_dim {
        row[d] = 0.0f32;
    }
}

/// `row · tile[j]`.
#[cube]
fn dot(
    row: &Array<f32>,
    tile: &SharedMemory<f32>,
    j: usize,
    #[comptime] head_dim: usize,
    #[comptime] unroll: bool,
) -> f32 {
    let start = j * head_dim;
    let mut sum = 0.0f32;
    #[unroll(unroll)]
    for d in 0..head_dim {
        sum += row[d] * tile[start + d];
    }
    sum
}

/// `out = softmax(q·kᵀ·scale + bias)·v` per head and the row's log-sum-exp `lse`, over tiles of
/// `block_keys` keys. Cubes: `(⌈T / BLOCK_ROWS⌉, B·H)`.
#[cube(launch)]
pub fn attention_forward<F: Float>(
    qkv: &Tensor<F>,
    bias: &Tensor<f32>,
    out: &mut Tensor<F>,
    lse: &mut Tensor<f32>,
    tokens: u32,
    heads: u32,
    scale: f32,
    #[comptime] head_dim: usize,
    #[comptime] unroll: bool,
    #[comptime] block_keys: usize,
    #[comptime] has_bias: bool,
    #[define(F)] _dtype: StorageType,
) {
    let tokens = tokens as usize;
    let heads = heads as usize;
    let dim = heads * head_dim;
    let width = 3 * dim;
    let image_head = CUBE_POS_Y as usize;
    let image = image_head / heads;
    let head = image_head % heads;
    let query = (CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X) as usize;
    let valid = query < tokens;
    // (image, token 0, this head's q columns) of qkv.
    let head_base = image * tokens * width + head * head_dim;

    let mut q = Array::<f32>::new(head_dim);
    load_row::<F>(
        &mut q,
        qkv,
        head_base + query * width,
        valid,
        head_dim,
        unroll,
    );
    #[unroll(unroll)]
    for d in 0..head_dim {
        q[d] *= scale;
    }
    let mut acc = Array::<f32>::new(head_dim);
    zero_row(&mut acc, head_dim, unroll);
    let mut scores = Array::<f32>::new(block_keys);
    let mut keys = SharedMemory::<f32>::new(comptime!(block_keys * head_dim));
    let mut values = SharedMemory::<f32>::new(comptime!(block_keys * head_dim));
    let mut running_max = f32::new(-1.0e30);
    let mut running_sum = 0.0f32;
    let bias_row = (head * tokens + query) * tokens;

    let tiles = (tokens + block_keys - 1) / block_keys;
    for tile in 0..tiles {
        let first = tile * block_keys;
        load_tile::<F>(
            &mut keys,
            qkv,
            head_base + dim,
            width,
            first,
            tokens,
            block_keys,
            head_dim,
        );
        load_tile::<F>(
            &mut values,
            qkv,
            head_base + 2 * dim,
            width,
            first,
            tokens,
            block_keys,
            head_dim,
        );
        sync_cube();

        let mut tile_max = running_max;
        for j in 0..block_keys {
            let key = first + j;
            let mut score = f32::new(-1.0e30);
            if key < tokens {
                score = dot(&q, &keys, j, head_dim, unroll);
                if has_bias {
                    if valid {
                        score += bias[bias_row + key];
                    }
                }
            }
            scores[j] = score;
            if score > tile_max {
                tile_max = score;
            }
        }
        // Rescale what was summed under the old maximum, then add this tile.
        let correction = f32::exp(running_max - tile_max);
        running_sum *= correction;
        #[unroll(unroll)]
        for d in 0..head_dim {
            acc[d] *= correction;
        }
        for j in 0..block_keys {
            let p = f32::exp(scores[j] - tile_max);
            running_sum += p;
            let start = j * head_dim;
            #[unroll(unroll)]
            for d in 0..head_dim {
                acc[d] += p * values[start + d];
            }
        }
        running_max = tile_max;
        sync_cube();
    }

    if valid {
        let out_start = (image * tokens + query) * dim + head * head_dim;
        let inverse = 1.0f32 / running_sum;
        #[unroll(unroll)]
        for d in 0..head_dim {
            out[out_start + d] = F::cast_from(acc[d] * inverse);
        }
        lse[image_head * tokens + query] = running_max + f32::ln(running_sum);
    }
}

/// `Δ = rowsum(dO ∘ O)` per head: `softmax`'s backward term. One unit per `(b, h, t)`.
#[cube(launch)]
pub fn attention_delta<F: Float>(
    out: &Tensor<F>,
    grad_out: &Tensor<F>,
    delta: &mut Tensor<f32>,
    tokens: u32,
    heads: u32,
    #[comptime] head_dim: usize,
    #[comptime] unroll: bool,
    #[define(F)] _dtype: StorageType,
) {
    let row = ABSOLUTE_POS;
    if row >= delta.len() {
        terminate!();
    }
    let tokens = tokens as usize;
    let heads = heads as usize;
    let image_head = row / tokens;
    let query = row % tokens;
    let start = ((image_head / heads) * tokens + query) * heads * head_dim
        + (image_head % heads) * head_dim;
    let mut sum = 0.0f32;
    #[unroll(unroll)]
    for d in 0..head_dim {
        sum += f32::cast_from(out[start + d]) * f32::cast_from(grad_out[start + d]);
    }
    delta[row] = sum;
}

/// dK and dV into their columns of `grad_qkv`: one unit per key, queries in tiles of
/// `block_queries` with their dO, log-sum-exp and Δ. Cubes: `(⌈T / BLOCK_ROWS⌉, B·H)`.
#[cube(launch)]
pub fn attention_backward_kv<F: Float>(
    qkv: &Tensor<F>,
    grad_out: &Tensor<F>,
    lse: &Tensor<f32>,
    delta: &Tensor<f32>,
    grad_qkv: &mut Tensor<F>,
    tokens: u32,
    heads: u32,
    scale: f32,
    #[comptime] head_dim: usize,
    #[comptime] unroll: bool,
    #[comptime] block_queries: usize,
    #[define(F)] _dtype: StorageType,
) {
    let tokens = tokens as usize;
    let heads = heads as usize;
    let dim = heads * head_dim;
    let width = 3 * dim;
    let image_head = CUBE_POS_Y as usize;
    let image = image_head / heads;
    let head = image_head % heads;
    let key = (CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X) as usize;
    let valid = key < tokens;
    let head_base = image * tokens * width + head * head_dim;
    let grad_base = image * tokens * dim + head * head_dim;
    let rows = image_head * tokens;

    let mut k = Array::<f32>::new(head_dim);
    let mut v = Array::<f32>::new(head_dim);
    load_row::<F>(
        &mut k,
        qkv,
        head_base + key * width + dim,
        valid,
        head_dim,
        unroll,
    );
    load_row::<F>(
        &mut v,
        qkv,
        head_base + key * width + 2 * dim,
        valid,
        head_dim,
        unroll,
    );
    let mut dk = Array::<f32>::new(head_dim);
    let mut dv = Array::<f32>::new(head_dim);
    zero_row(&mut dk, head_dim, unroll);
    zero_row(&mut dv, head_dim, unroll);
    let mut queries = SharedMemory::<f32>::new(comptime!(block_queries * head_dim));
    let mut grads = SharedMemory::<f32>::new(comptime!(block_queries * head_dim));
    let mut lse_tile = SharedMemory::<f32>::new(block_queries);
    let mut delta_tile = SharedMemory::<f32>::new(block_queries);

    let tiles = (tokens + block_queries - 1) / block_queries;
    for tile in 0..tiles {
        let first = tile * block_queries;
        load_tile::<F>(
            &mut queries,
            qkv,
            head_base,
            width,
            first,
            tokens,
            block_queries,
            head_dim,
        );
        load_tile::<F>(
            &mut grads,
            grad_out,
            grad_base,
            dim,
            first,
            tokens,
            block_queries,
            head_dim,
        );
        let mut i = UNIT_POS_X as usize;
        while i < block_queries {
            let query = first + i;
            // Past the last token: a log-sum-exp above every score makes p = 0.
            let mut row_lse = 1.0e30f32;
            let mut row_delta = 0.0f32;
            if query < tokens {
                row_lse = lse[rows + query];
                row_delta = delta[rows + query];
            }
            lse_tile[i] = row_lse;
            delta_tile[i] = row_delta;
            i += CUBE_DIM_X as usize;
        }
        sync_cube();

        for i in 0..block_queries {
            let p = f32::exp(dot(&k, &queries, i, head_dim, unroll) * scale - lse_tile[i]);
            let dp = dot(&v, &grads, i, head_dim, unroll);
            let ds = p * (dp - delta_tile[i]);
            let start = i * head_dim;
            #[unroll(unroll)]
            for d in 0..head_dim {
                dv[d] += p * grads[start + d];
                dk[d] += ds * queries[start + d];
            }
        }
        sync_cube();
    }

    if valid {
        let start = head_base + key * width;
        #[unroll(unroll)]
        for d in 0..head_dim {
            grad_qkv[start + dim + d] = F::cast_from(dk[d] * scale);
            grad_qkv[start + 2 * dim + d] = F::cast_from(dv[d]);
        }
    }
}

/// dQ into its columns of `grad_qkv`: one unit per query, keys and values in tiles of
/// `block_keys`. Cubes: `(⌈T / BLOCK_ROWS⌉, B·H)`.
#[cube(launch)]
pub fn attention_backward_q<F: Float>(
    qkv: &Tensor<F>,
    grad_out: &Tensor<F>,
    lse: &Tensor<f32>,
    delta: &Tensor<f32>,
    grad_qkv: &mut Tensor<F>,
    tokens: u32,
    heads: u32,
    scale: f32,
    #[comptime] head_dim: usize,
    #[comptime] unroll: bool,
    #[comptime] block_keys: usize,
    #[define(F)] _dtype: StorageType,
) {
    let tokens = tokens as usize;
    let heads = heads as usize;
    let dim = heads * head_dim;
    let width = 3 * dim;
    let image_head = CUBE_POS_Y as usize;
    let image = image_head / heads;
    let head = image_head % heads;
    let query = (CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X) as usize;
    let valid = query < tokens;
    let head_base = image * tokens * width + head * head_dim;
    let grad_base = image * tokens * dim + head * head_dim;

    let mut q = Array::<f32>::new(head_dim);
    let mut grad = Array::<f32>::new(head_dim);
    load_row::<F>(
        &mut q,
        qkv,
        head_base + query * width,
        valid,
        head_dim,
        unroll,
    );
    load_row::<F>(
        &mut grad,
        grad_out,
        grad_base + query * dim,
        valid,
        head_dim,
        unroll,
    );
    let mut dq = Array::<f32>::new(head_dim);
    zero_row(&mut dq, head_dim, unroll);
    let mut row_lse = 0.0f32;
    let mut row_delta = 0.0f32;
    if valid {
        row_lse = lse[image_head * tokens + query];
        row_delta = delta[image_head * tokens + query];
    }
    let mut keys = SharedMemory::<f32>::new(comptime!(block_keys * head_dim));
    let mut values = SharedMemory::<f32>::new(comptime!(block_keys * head_dim));

    let tiles = (tokens + block_keys - 1) / block_keys;
    for tile in 0..tiles {
        let first = tile * block_keys;
        load_tile::<F>(
            &mut keys,
            qkv,
            head_base + dim,
            width,
            first,
            tokens,
            block_keys,
            head_dim,
        );
        load_tile::<F>(
            &mut values,
            qkv,
            head_base + 2 * dim,
            width,
            first,
            tokens,
            block_keys,
            head_dim,
        );
        sync_cube();

        for j in 0..block_keys {
            if first + j < tokens {
                let p = f32::exp(dot(&q, &keys, j, head_dim, unroll) * scale - row_lse);
                let ds = p * (dot(&grad, &values, j, head_dim, unroll) - row_delta);
                let start = j * head_dim;
                #[unroll(unroll)]
                for d in 0..head_dim {
                    dq[d] += ds * keys[start + d];
                }
            }
        }
        sync_cube();
    }

    if valid {
        let start = head_base + query * width;
        #[unroll(unroll)]
        for d in 0..head_dim {
            grad_qkv[start + d] = F::cast_from(dq[d] * scale);
        }
    }
}
