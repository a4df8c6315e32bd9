//! The attention kernels launched on `CubeTensor`s: shapes checked, buffers made, tiles sized.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Shape};
use burn_cubecl::kernel::{cast, into_contiguous};
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, cubecl};
use cubecl::{CubeCount, CubeDim};

use super::kernel::{
    BLOCK_ROWS, attention_backward_kv, attention_backward_q, attention_delta, attention_forward,
};

/// The widest head the kernels keep in registers (four rows of it per unit in dK/dV).
pub const MAX_HEAD_DIM: usize = 128;

/// Rows of the other side per shared-memory tile: two tiles of f32 fill at most 16 KiB, which
/// every GPU (and lavapipe) offers a cube.
fn tile_rows(head_dim: usize) -> usize {
    (2048 / head_dim).clamp(8, 64)
}

/// Whether the kernels compute attention over these projections on this device: a float type
/// the device has, and a head no wider than `MAX_HEAD_DIM`.
pub fn covers<R: CubeRuntime, BT: BoolElement>(
    device: &R::Device,
    dtype: DType,
    head_dim: usize,
) -> bool {
    let float = matches!(dtype, DType::F32 | DType::F16 | DType::BF16);
    float
        && (1..=MAX_HEAD_DIM).contains(&head_dim)
        && CubeBackend::<R, f32, i32, BT>::supports_dtype(device, dtype)
}

/// Batch, tokens and head width of packed projections `[B, T, 3D]` with `heads` heads.
fn dims<R: CubeRuntime>(qkv: &CubeTensor<R>, heads: usize) -> [usize; 3] {
    let shape = qkv.meta.shape();
    let [batch, tokens, width] = [shape[0], shape[1], shape[2]];
    [batch, tokens, width / 3 / heads]
}

fn cubes(tokens: usize, batch: usize, heads: usize) -> CubeCount {
    CubeCount::Static(
        tokens.div_ceil(BLOCK_ROWS) as u32,
        (batch * heads) as u32,
        1,
    )
}

/// Whether the kernels unroll their loops over a head's width, keeping its rows in registers:
/// on CUDA yes; on WGPU the adapter's own compiler decides, since lavapipe (LLVM turning every
/// cube barrier into a coroutine) takes minutes over the unrolled forms and real GPUs' shader
/// compilers unroll loops of a constant count by themselves.
fn unrolled<R: CubeRuntime>(client: &cubecl::prelude::ComputeClient<R>) -> bool {
    R::name(client).starts_with("cuda")
}

fn scale(head_dim: usize) -> f32 {
    (head_dim as f32).powf(-0.5)
}

/// `(out, lse)`: `softmax(q·kᵀ·hd^-0.5 + bias)·v` per head, `[B, T, D]` in the type of `qkv`,
/// and each row's log-sum-exp, `[B, H, T]` f32.
///
/// # Shapes
/// - qkv: `[B, T, 3D]` (layout as `crate::multi_head_attention`), bias: `[H, T, T]`
pub fn forward<R: CubeRuntime>(
    qkv: CubeTensor<R>,
    heads: usize,
    bias: Option<CubeTensor<R>>,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let qkv = into_contiguous(qkv);
    let [batch, tokens, head_dim] = dims(&qkv, heads);
    let (client, device, dtype) = (qkv.client.clone(), qkv.device.clone(), qkv.dtype);
    let unroll = unrolled(&client);
    let empty = |shape: Vec<usize>, dtype| {
        empty_device_contiguous_dtype(client.clone(), device.clone(), Shape::from(shape), dtype)
    };
    let out = empty(vec![batch, tokens, heads * head_dim], dtype);
    let lse = empty(vec![batch, heads, tokens], DType::F32);
    let has_bias = bias.is_some();
    // Without a bias the kernel never reads this argument; it only needs a buffer.
    let bias = match bias {
        Some(bias) if bias.dtype == DType::F32 => into_contiguous(bias),
        Some(bias) => into_contiguous(cast(bias, DType::F32)),
        None => empty(vec![1], DType::F32),
    };
    attention_forward::launch::<R>(
        &client,
        cubes(tokens, batch, heads),
        CubeDim::new_1d(BLOCK_ROWS as u32),
        qkv.into_tensor_arg(),
        bias.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        lse.clone().into_tensor_arg(),
        tokens as u32,
        heads as u32,
        scale(head_dim),
        head_dim,
        unroll,
        tile_rows(head_dim),
        has_bias,
        dtype.into(),
    );
    (out, lse)
}

/// The gradient of `forward`'s output with respect to `qkv`, `[B, T, 3D]` in the type of `qkv`,
/// from `forward`'s `out` and `lse` and the output's gradient `grad_out` `[B, T, D]`.
pub fn backward<R: CubeRuntime>(
    qkv: CubeTensor<R>,
    out: CubeTensor<R>,
    lse: CubeTensor<R>,
    grad_out: CubeTensor<R>,
    heads: usize,
) -> CubeTensor<R> {
    let qkv = into_contiguous(qkv);
    let [batch, tokens, head_dim] = dims(&qkv, heads);
    let (client, device, dtype) = (qkv.client.clone(), qkv.device.clone(), qkv.dtype);
    let unroll = unrolled(&client);
    let out = into_contiguous(out);
    let lse = into_contiguous(lse);
    let grad_out = if grad_out.dtype == dtype {
        into_contiguous(grad_out)
    } else {
        into_contiguous(cast(grad_out, dtype))
    };
    let delta = empty_device_contiguous_dtype(
        client.clone(),
        device.clone(),
        Shape::from(vec![batch, heads, tokens]),
        DType::F32,
    );
    let grad_qkv = empty_device_contiguous_dtype(
        client.clone(),
        device,
        Shape::from(vec![batch, tokens, 3 * heads * head_dim]),
        dtype,
    );
    let units = 256;
    attention_delta::launch::<R>(
        &client,
        CubeCount::Static((batch * heads * tokens).div_ceil(units) as u32, 1, 1),
        CubeDim::new_1d(units as u32),
        out.into_tensor_arg(),
        grad_out.clone().into_tensor_arg(),
        delta.clone().into_tensor_arg(),
        tokens as u32,
        heads as u32,
        head_dim,
        unroll,
        dtype.into(),
    );
    attention_backward_kv::launch::<R>(
        &client,
        cubes(tokens, batch, heads),
        CubeDim::new_1d(BLOCK_ROWS as u32),
        qkv.clone().into_tensor_arg(),
        grad_out.clone().into_tensor_arg(),
        lse.clone().into_tensor_arg(),
        delta.clone().into_tensor_arg(),
        grad_qkv.clone().into_tensor_arg(),
        tokens as u32,
        heads as u32,
        scale(head_dim),
        head_dim,
        unroll,
        tile_rows(head_dim),
        dtype.into(),
    );
    attention_backward_q::launch::<R>(
        &client,
        cubes(tokens, batch, heads),
        CubeDim::new_1d(BLOCK_ROWS as u32),
        qkv.into_tensor_arg(),
        grad_out.into_tensor_arg(),
        lse.into_tensor_arg(),
        delta.into_tensor_arg(),
        grad_qkv.clone().into_tensor_arg(),
        tokens as u32,
        heads as u32,
        scale(head_dim),
        head_dim,
        unroll,
        tile_rows(head_dim),
        dtype.into(),
    );
    grad_qkv
}
