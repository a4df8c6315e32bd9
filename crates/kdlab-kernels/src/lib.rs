//! Fused kernels: on the CPU for the operations where burn's CPU backend (`flex`) lost most to
//! PyTorch, and attention on CUDA and WGPU (`cube`).
//!
//! flex runs elementwise operations and reductions on one thread, one element at a time (GELU
//! through libm's `erff`), its attention copies q, k and v out of the packed projection and works
//! head after head on one thread (under autodiff it falls back to separate matmul and softmax
//! operations), and strided reductions walk the tensor element by element. Measured on the
//! 2-core development machine at batch 4, per ViT-B block: GELU 21 ms (PyTorch 5), splitting
//! heads + attention + merging heads 67 ms (PyTorch 9); the data2vec target of the teacher's 12
//! layers 570 ms; the AdamW step of the 6-block student 470 ms. Fused here: exact GELU,
//! multi-head attention over packed projections, the data2vec target, and the AdamW update, each
//! one parallel pass (rayon; the attention's two products per head through the `gemm` crate flex
//! itself uses), with backward passes where the student needs them.
//!
//! The kernels run when the backend is `Flex` or `Autodiff<Flex>` and the tensors are f32; every
//! half type takes the autocast form of attention (`half_attention`). On CUDA and WGPU,
//! attention runs through the CubeCL kernels of `cube` (the teacher's with its bias, the
//! student's forward and backward, in f32, f16 and bf16); the rest takes burn's own operations,
//! and tests hold the paths equal. burn has no specialisation, so the backend is
//! recognised by its `TypeId` and the tensor moved out through `Any` (safe code, nothing
//! reinterpreted).

mod autodiff;
pub mod cpu;
mod cube;
mod flex;

use std::any::{Any, TypeId};
use std::sync::atomic::{AtomicBool, Ordering};

use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
use burn::tensor::module::attention as burn_attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{DType, Tensor, TensorPrimitive, activation};

use autodiff::AutodiffFlexTensor;

/// Exact (erf) GELU.
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    match on_cpu(x) {
        Cpu::Flex(x) => wrap(flex::gelu(&x)),
        Cpu::AutodiffFlex(x) => wrap(autodiff::gelu(x)),
        Cpu::Other(x) => activation::gelu(x),
    }
}

/// `softmax(q·kᵀ·hd^-0.5 + bias)·v` per head, over packed projections.
///
/// # Shapes
/// - qkv: `[B, T, 3D]`, columns `[q | k | v]`, head h at columns h·hd … (h+1)·hd − 1 of each
/// - bias: `[H, T, T]`, added to every image's logits (relative position bias)
/// - output: `[B, T, D]`, heads concatenated
pub fn multi_head_attention<B: Backend>(
    qkv: Tensor<B, 3>,
    num_heads: usize,
    bias: Option<Tensor<B, 3>>,
) -> Tensor<B, 3> {
    // One decision, the one `attention_route` reports.
    match attention_route(&qkv, num_heads, bias.as_ref()) {
        AttentionRoute::CubeCl => cube::multi_head_attention(qkv, num_heads, bias)
            .unwrap_or_else(|(qkv, bias)| unfused_attention(qkv, num_heads, bias)),
        AttentionRoute::Cpu => match on_cpu(qkv) {
            Cpu::Flex(qkv) => {
                let bias = bias.map(unwrap::<B, 3, FlexTensor>);
                wrap(flex::attention(&qkv, num_heads, bias.as_ref(), false).0)
            }
            // The route sends autodiff with a bias to burn: a trained bias would need a
            // gradient of its own.
            Cpu::AutodiffFlex(qkv) => wrap(autodiff::attention(qkv, num_heads)),
            Cpu::Other(qkv) => unfused_attention(qkv, num_heads, bias),
        },
        AttentionRoute::Burn => unfused_attention(qkv, num_heads, bias),
    }
}

/// What computes `multi_head_attention` for some projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionRoute {
    /// kdlab's CubeCL kernels, on CUDA and WGPU (`cube`).
    CubeCl,
    /// kdlab's CPU kernel (`cpu`).
    Cpu,
    /// burn's attention operation (`unfused_attention`).
    Burn,
}

/// Which implementation `multi_head_attention` takes for these arguments, without running it.
pub fn attention_route<B: Backend>(
    qkv: &Tensor<B, 3>,
    num_heads: usize,
    bias: Option<&Tensor<B, 3>>,
) -> AttentionRoute {
    let backend = TypeId::of::<B>();
    let f32_cpu = qkv.dtype() == DType::F32
        && (backend == TypeId::of::<Flex>()
            || (backend == TypeId::of::<Autodiff<Flex>>() && bias.is_none()));
    if attention_kernels() == AttentionKernels::Unfused {
        AttentionRoute::Burn
    } else if cube::covers(qkv, num_heads, bias) {
        AttentionRoute::CubeCl
    } else if f32_cpu {
        AttentionRoute::Cpu
    } else {
        AttentionRoute::Burn
    }
}

/// Which attention `multi_head_attention` runs: kdlab's fused kernels where they cover the
/// backend (the default), or burn's attention operation everywhere, for comparing the two
/// (`kdlab bench --attention`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttentionKernels {
    Fused,
    Unfused,
}

static UNFUSED_ATTENTION: AtomicBool = AtomicBool::new(false);

/// Chooses the attention of every model in this process from now on.
pub fn set_attention_kernels(kernels: AttentionKernels) {
    UNFUSED_ATTENTION.store(kernels == AttentionKernels::Unfused, Ordering::Relaxed);
}

pub fn attention_kernels() -> AttentionKernels {
    if UNFUSED_ATTENTION.load(Ordering::Relaxed) {
        AttentionKernels::Unfused
    } else {
        AttentionKernels::Fused
    }
}

/// `layer_norm_D(mean_l instance_norm_T(h_l))` of f32 layer results `[B, T, D]` (the data2vec
/// target, `kdlab_model::target`), fused on the CPU; `Err` hands the layers back for the tensor
/// version.
pub fn kd_target<B: Backend>(
    layers: Vec<Tensor<B, 3>>,
    eps: f64,
) -> Result<Tensor<B, 3>, Vec<Tensor<B, 3>>> {
    let all_f32 = layers.iter().all(|t| t.dtype() == DType::F32);
    if layers.is_empty() || !all_f32 {
        return Err(layers);
    }
    let backend = TypeId::of::<B>();
    if backend == TypeId::of::<Flex>() {
        let layers: Vec<FlexTensor> = layers.into_iter().map(unwrap::<B, 3, _>).collect();
        Ok(wrap(flex::kd_target(&layers, eps, false).0))
    } else if backend == TypeId::of::<Autodiff<Flex>>() {
        let stacked = unwrap::<B, 4, _>(Tensor::stack(layers, 0));
        Ok(wrap(autodiff::kd_target(stacked, eps)))
    } else {
        Err(layers)
    }
}

/// One AdamW update of a flattened parameter `[param, exp_avg, exp_avg_sq]` with its gradient,
/// fused on the CPU; `Err` hands the tensors back, as given, for the tensor version elsewhere.
#[allow(clippy::type_complexity)]
pub fn adamw<B: Backend>(
    [param, exp_avg, exp_avg_sq]: [Tensor<B, 1>; 3],
    grad: Tensor<B, 1>,
    scalars: cpu::AdamWScalars,
) -> Result<[Tensor<B, 1>; 3], ([Tensor<B, 1>; 3], Tensor<B, 1>)> {
    let all_f32 = [&param, &exp_avg, &exp_avg_sq, &grad]
        .iter()
        .all(|t| t.dtype() == DType::F32);
    if TypeId::of::<B>() != TypeId::of::<Flex>() || !all_f32 {
        return Err(([param, exp_avg, exp_avg_sq], grad));
    }
    let [p, m, v] = [param, exp_avg, exp_avg_sq].map(unwrap::<B, 1, FlexTensor>);
    let updated = flex::adamw(p, &unwrap(grad), m, v, scalars);
    Ok(updated.map(wrap))
}

/// `multi_head_attention` by burn's operations on split heads: its attention operation in f32
/// (under autodiff, and on CUDA and WGPU whenever a bias is given, matmul → softmax → matmul);
/// in a half type, the products in it and the softmax in f32 (`half_attention`). What the fused
/// kernels are tested against.
pub fn unfused_attention<B: Backend>(
    qkv: Tensor<B, 3>,
    num_heads: usize,
    bias: Option<Tensor<B, 3>>,
) -> Tensor<B, 3> {
    let [batch, tokens, width3] = qkv.dims();
    let embed_dim = width3 / 3;
    let [q, k, v] = split_heads(qkv, num_heads);
    let bias = bias.map(|b| {
        b.unsqueeze::<4>()
            .expand([batch, num_heads, tokens, tokens])
    });
    let heads = if q.dtype() == DType::F32 {
        burn_attention(q, k, v, None, bias, AttentionModuleOptions::default())
    } else {
        half_attention(q, k, v, bias)
    }; // [B, H, T, hd]
    heads.swap_dims(1, 2).reshape([batch, tokens, embed_dim])
}

/// `[q, k, v]`, each `[B, H, T, hd]`, of `qkv` `[B, T, 3D]` (layout as `multi_head_attention`).
fn split_heads<B: Backend>(qkv: Tensor<B, 3>, num_heads: usize) -> [Tensor<B, 4>; 3] {
    let [batch, tokens, width3] = qkv.dims();
    let head_dim = width3 / 3 / num_heads;
    let qkv = qkv
        .reshape([batch, tokens, 3, num_heads, head_dim])
        .permute([2, 0, 3, 1, 4]); // [3, B, H, T, hd]
    [0, 1, 2].map(|i| qkv.clone().narrow(0, i, 1).squeeze_dim::<4>(0))
}

/// The attention weights `softmax(q·kᵀ·hd^-0.5 + bias)` that `multi_head_attention` applies,
/// in f32, for looking at them (the attention maps); the fused kernels never form them.
///
/// # Shapes
/// - qkv: `[B, T, 3D]`, bias: `[H, T, T]` → `[B, H, T, T]`, each row summing to 1
pub fn attention_weights<B: Backend>(
    qkv: Tensor<B, 3>,
    num_heads: usize,
    bias: Option<Tensor<B, 3>>,
) -> Tensor<B, 4> {
    let [q, k, _] = split_heads(qkv.cast(DType::F32), num_heads);
    let [.., head_dim] = q.dims();
    let logits = q
        .matmul(k.swap_dims(2, 3))
        .mul_scalar((head_dim as f64).powf(-0.5)); // [B, H, T, T]
    let logits = match bias {
        Some(bias) => logits + bias.cast(DType::F32).unsqueeze::<4>(),
        None => logits,
    };
    activation::softmax(logits, 3)
}

/// `softmax(q·kᵀ·hd^-0.5 + bias)·v` as autocast computes the models' own attention code: both
/// products in the half type of q, k, v; scaling, the f32 bias and the softmax in f32.
///
/// # Shapes
/// - q, k, v: `[B, H, T, hd]`, bias: `[B, H, T, T]` → `[B, H, T, hd]`
fn half_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    bias: Option<Tensor<B, 4>>,
) -> Tensor<B, 4> {
    let half = q.dtype();
    let [.., head_dim] = q.dims();
    let logits = q
        .matmul(k.swap_dims(2, 3))
        .cast(DType::F32)
        .mul_scalar((head_dim as f64).powf(-0.5));
    let logits = match bias {
        Some(bias) => logits + bias.cast(DType::F32),
        None => logits,
    };
    activation::softmax(logits, 3).cast(half).matmul(v)
}

/// A tensor on one of the backends the kernels serve, or any other.
enum Cpu<B: Backend, const D: usize> {
    Flex(FlexTensor),
    AutodiffFlex(AutodiffFlexTensor),
    Other(Tensor<B, D>),
}

fn on_cpu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Cpu<B, D> {
    if x.dtype() != DType::F32 {
        return Cpu::Other(x);
    }
    let backend = TypeId::of::<B>();
    if backend == TypeId::of::<Flex>() {
        Cpu::Flex(unwrap::<B, D, _>(x))
    } else if backend == TypeId::of::<Autodiff<Flex>>() {
        Cpu::AutodiffFlex(unwrap::<B, D, _>(x))
    } else {
        Cpu::Other(x)
    }
}

/// The primitive of `x`, as the type `B`'s primitive is known to be.
fn unwrap<B: Backend, const D: usize, P: 'static>(x: Tensor<B, D>) -> P {
    cast(x.into_primitive().tensor())
}

fn wrap<B: Backend, const D: usize, P: 'static>(primitive: P) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(cast(primitive)))
}

fn cast<From: 'static, To: 'static>(value: From) -> To {
    *(Box::new(value) as Box<dyn Any>)
        .downcast::<To>()
        .unwrap_or_else(|_| unreachable!("the backend's TypeId was checked"))
}
