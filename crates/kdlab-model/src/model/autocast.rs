//! PyTorch autocast's rule for the operations of the two encoders, written out: burn has no
//! autocast.
//!
//! Under bf16 or f16 the linear layers, the patch convolution and attention's two products run in
//! the compute type, with their f32 weights cast at the operation — `Tensor::cast` is
//! differentiable and casts the gradient back, so the gradients reach the f32 master weights as
//! f32 (torch.amp's "ops that can autocast to lower precision"). Layer norms, the attention
//! softmax and the residual stream stay in f32: autocast runs `layer_norm` and `softmax` in f32,
//! and adding a half tensor to an f32 one promotes to f32 in PyTorch. GELU runs in its input's
//! type, as in PyTorch. Under f32 every cast is skipped, so the f32 path is exactly the one the
//! PyTorch goldens check.
//!
//! Upstream: pytorch `aten/src/ATen/autocast_mode.cpp` (the op lists), `torch/amp/autocast_mode.py`.

use burn::nn::{LayerNorm, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};

/// The type a model computes its matrix products in; f32 is autocast off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Autocast {
    compute: DType,
}

impl Default for Autocast {
    fn default() -> Self {
        Self::OFF
    }
}

impl Autocast {
    /// Everything in f32.
    pub const OFF: Self = Self {
        compute: DType::F32,
    };

    /// Matrix products in `compute` (f32, bf16 or f16), the rest in f32.
    pub fn new(compute: DType) -> Self {
        Self { compute }
    }

    /// Whether anything is computed in a half type.
    pub fn is_on(self) -> bool {
        self.compute != DType::F32
    }

    /// `x` in the compute type.
    pub fn half<B: Backend, const D: usize>(self, x: Tensor<B, D>) -> Tensor<B, D> {
        cast(x, self.compute)
    }

    /// `x @ weight + bias` over the tokens of all images as one `[B·T, D]` matrix, as PyTorch
    /// does, in the compute type.
    ///
    /// burn's linear on a `[B, T, D]` input runs one matrix product per image and, backwards,
    /// builds a `[B, D_in, D_out]` weight gradient before summing it over the images; flattened,
    /// both are one GEMM (half the student step's time on the CPU went to the per-image form).
    pub fn linear<B: Backend>(self, linear: &Linear<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let bias = linear.bias.as_ref().map(|b| b.val());
        self.linear_parts(x, linear.weight.val(), bias)
    }

    /// `linear` from a weight `[D_in, D_out]` and an optional bias `[D_out]`.
    pub fn linear_parts<B: Backend>(
        self,
        x: Tensor<B, 3>,
        weight: Tensor<B, 2>,
        bias: Option<Tensor<B, 1>>,
    ) -> Tensor<B, 3> {
        let [batch, tokens, width] = x.dims();
        let y = burn::tensor::module::linear(
            self.half(x.reshape([batch * tokens, width])),
            self.half(weight),
            bias.map(|b| self.half(b)),
        );
        let [_, out] = y.dims();
        y.reshape([batch, tokens, out])
    }

    /// A layer norm in f32 (input and output), whatever the input's type.
    pub fn layer_norm<B: Backend, const D: usize>(
        self,
        norm: &LayerNorm<B>,
        x: Tensor<B, D>,
    ) -> Tensor<B, D> {
        norm.forward(f32(x))
    }
}

/// `x` in f32: where a half result joins the f32 residual stream.
pub fn f32<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    cast(x, DType::F32)
}

/// `x` in `dtype`; no operation at all (not even an autodiff node) when it already is.
fn cast<B: Backend, const D: usize>(x: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if x.dtype() == dtype { x } else { x.cast(dtype) }
}
