//! Fused multi-head attention on the GPU backends, in CubeCL (one source for CUDA and every WGPU
//! adapter): the teacher's attention with its relative position bias and the student's forward
//! and backward, none of them writing the `[B, H, T, T]` scores.
//!
//! burn 0.21 has neither: its fused CubeCL attention is skipped whenever a bias is given
//! (burn-cubecl ops/module.rs) and its autodiff always falls back to matmul → softmax → matmul
//! (burn-autodiff ops/module.rs). The kernels serve `Wgpu` and `Cuda` (both
//! `Fusion<CubeBackend<…>>`) and their `Autodiff`, with f32, f16 and bf16 projections where the
//! device has the type and heads up to `launch::MAX_HEAD_DIM` wide; anything else is handed
//! back for burn's operations.

mod autodiff;
mod fusion;
mod kernel;
pub mod launch;

use std::any::TypeId;

use burn::backend::Autodiff;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use burn_cubecl::cubecl::cuda::CudaRuntime;
use burn_cubecl::cubecl::wgpu::WgpuRuntime;
use burn_cubecl::{BoolElement, CubeRuntime};

use super::{cast, unwrap, wrap};
use autodiff::Fused;

/// The projections and bias, handed back when no kernel here covers them.
pub type NotCovered<B> = (Tensor<B, 3>, Option<Tensor<B, 3>>);

/// `crate::multi_head_attention` by the fused kernels, when `covers` says they serve
/// these projections.
pub fn multi_head_attention<B: Backend>(
    qkv: Tensor<B, 3>,
    heads: usize,
    bias: Option<Tensor<B, 3>>,
) -> Result<Tensor<B, 3>, NotCovered<B>> {
    let (qkv, bias) = match on_runtime::<B, WgpuRuntime, u32>(qkv, heads, bias) {
        Ok(out) => return Ok(out),
        Err(given) => given,
    };
    on_runtime::<B, CudaRuntime, u8>(qkv, heads, bias)
}

/// Whether the kernels serve attention over `qkv` `[B, T, 3D]` with `heads` heads and `bias`:
/// the backend is `Wgpu`, `Cuda` or their `Autodiff`, the device has the float type, the head is
/// at most `launch::MAX_HEAD_DIM` wide; a bias only without autodiff (a trained bias would need
/// a gradient of its own), and of shape `[H, T, T]`.
pub fn covers<B: Backend>(qkv: &Tensor<B, 3>, heads: usize, bias: Option<&Tensor<B, 3>>) -> bool {
    route::<B, WgpuRuntime, u32>(qkv, heads, bias).is_some()
        || route::<B, CudaRuntime, u8>(qkv, heads, bias).is_some()
}

/// How the kernels run on `B`, when it is `Fusion<CubeBackend<R, …>>` or its `Autodiff`.
enum Route {
    Plain,
    Tracked,
}

fn route<B: Backend, R: CubeRuntime, BT: BoolElement>(
    qkv: &Tensor<B, 3>,
    heads: usize,
    bias: Option<&Tensor<B, 3>>,
) -> Option<Route> {
    let backend = TypeId::of::<B>();
    let route = if backend == TypeId::of::<Fused<R, BT>>() {
        Route::Plain
    } else if backend == TypeId::of::<Autodiff<Fused<R, BT>>>() && bias.is_none() {
        Route::Tracked
    } else {
        return None;
    };
    let [batch, tokens, width] = qkv.dims();
    let head_dim = width / 3 / heads.max(1);
    // The cube grid's second axis is one cube per image and head (at most 65535 on every API).
    let fits = heads > 0
        && width == 3 * heads * head_dim
        && batch * heads <= u16::MAX as usize
        && bias.is_none_or(|b| b.dims() == [heads, tokens, tokens]);
    let device: R::Device = cast(qkv.device());
    (fits && launch::covers::<R, BT>(&device, qkv.dtype(), head_dim)).then_some(route)
}

fn on_runtime<B: Backend, R: CubeRuntime, BT: BoolElement>(
    qkv: Tensor<B, 3>,
    heads: usize,
    bias: Option<Tensor<B, 3>>,
) -> Result<Tensor<B, 3>, NotCovered<B>> {
    match route::<B, R, BT>(&qkv, heads, bias.as_ref()) {
        Some(Route::Plain) => {
            let bias = bias.map(unwrap::<B, 3, _>);
            let [out, _lse] = fusion::forward::<R, BT>(unwrap::<B, 3, _>(qkv), heads, bias);
            Ok(wrap(out))
        }
        Some(Route::Tracked) => Ok(wrap(autodiff::attention::<R, BT>(
            unwrap::<B, 3, _>(qkv),
            heads,
        ))),
        None => Err((qkv, bias)),
    }
}
