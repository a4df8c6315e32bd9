//! The fused CubeCL attention (src/kernels/cube) on WGPU — lavapipe here and in CI, which runs
//! CubeCL kernels as SPIR-V — against burn's unfused operations on the same device and against
//! kdlab's CPU kernel: the teacher's forward with its relative position bias, the student's
//! forward and gradients, on odd shapes; and f16 where the adapter has it (lavapipe has no bf16).
//! The reference numbers are computed here; the PyTorch goldens are checked through the whole
//! models in crates/kdlab-model/tests/model/parity.rs, with these kernels in the path.

use burn::backend::wgpu::WgpuDevice;
use burn::backend::{Autodiff, Flex, Wgpu};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};
use kdlab_kernels::{AttentionRoute, attention_route, multi_head_attention, unfused_attention};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use kdlab_testkit::{max_abs_diff, skip, to_f32, wgpu_available};

/// `(batch, tokens, heads, head_dim)`: T = 17, 37, 197 (one, several and a partial last tile of
/// 64 rows), head widths 16 and 64, batch 1 and 3.
const SHAPES: [(usize, usize, usize, usize); 4] = [
    (1, 17, 2, 16),
    (3, 37, 2, 64),
    (3, 197, 1, 16),
    (1, 197, 2, 64),
];

const FORWARD_TOL: f32 = 1e-5;
const GRADIENT_TOL: f32 = 1e-4;

struct Case {
    shape: (usize, usize, usize, usize),
    qkv: TensorData,
    bias: TensorData,
    /// The weights of the loss `Σ out ∘ weights`, so that every output's gradient differs.
    weights: TensorData,
}

impl Case {
    fn new(shape: (usize, usize, usize, usize), seed: u64) -> Self {
        let (batch, tokens, heads, head_dim) = shape;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut normal = |dims: Vec<usize>, scale: f32| {
            let n = dims.iter().product();
            let values: Vec<f32> = (0..n)
                .map(|_| scale * (rng.random::<f32>() * 2.0 - 1.0) * 1.7)
                .collect();
            TensorData::new(values, dims)
        };
        let dim = heads * head_dim;
        Self {
            shape,
            // Logits of a few units, as trained models have; the bias as BEiT's table gives.
            qkv: normal(vec![batch, tokens, 3 * dim], 1.0),
            bias: normal(vec![heads, tokens, tokens], 0.5),
            weights: normal(vec![batch, tokens, dim], 1.0),
        }
    }

    /// The same case with its projections rounded to `dtype` (and back to f32).
    fn rounded_to(&self, dtype: DType) -> Self {
        let qkv = Tensor::<Flex, 3>::from_data(self.qkv.clone(), &Default::default());
        Self {
            shape: self.shape,
            qkv: qkv.cast(dtype).cast(DType::F32).to_data(),
            bias: self.bias.clone(),
            weights: self.weights.clone(),
        }
    }

    fn heads(&self) -> usize {
        self.shape.2
    }

    fn forward<B: Backend>(&self, device: &B::Device, fused: bool, bias: bool) -> TensorData {
        let qkv = Tensor::<B, 3>::from_data(self.qkv.clone(), device);
        let bias = bias.then(|| Tensor::<B, 3>::from_data(self.bias.clone(), device));
        let out = if fused {
            multi_head_attention(qkv, self.heads(), bias)
        } else {
            unfused_attention(qkv, self.heads(), bias)
        };
        out.to_data()
    }

    /// The gradient of `Σ attention(qkv) ∘ weights` with respect to `qkv`, in `dtype`.
    fn gradient<B: burn::tensor::backend::AutodiffBackend>(
        &self,
        device: &B::Device,
        fused: bool,
        dtype: DType,
    ) -> TensorData {
        let qkv = Tensor::<B, 3>::from_data(self.qkv.clone(), device)
            .cast(dtype)
            .require_grad();
        let out = if fused {
            multi_head_attention(qkv.clone(), self.heads(), None)
        } else {
            unfused_attention(qkv.clone(), self.heads(), None)
        };
        let weights = Tensor::<B, 3>::from_data(self.weights.clone(), device);
        let grads = (out.cast(DType::F32) * weights).sum().backward();
        qkv.grad(&grads).expect("qkv takes part").to_data()
    }
}

fn cases() -> Vec<Case> {
    SHAPES
        .iter()
        .zip(1..)
        .map(|(&shape, seed)| Case::new(shape, seed))
        .collect()
}

/// The kernels must be what runs, or the comparisons below compare burn with itself.
fn assert_fused_route<B: Backend>(case: &Case, device: &B::Device, bias: bool) {
    let qkv = Tensor::<B, 3>::from_data(case.qkv.clone(), device);
    let bias = bias.then(|| Tensor::<B, 3>::from_data(case.bias.clone(), device));
    assert_eq!(
        attention_route(&qkv, case.heads(), bias.as_ref()),
        AttentionRoute::CubeCl,
        "{:?}",
        case.shape
    );
}

#[test]
fn wgpu_fused_forward_matches_burn_and_the_cpu_kernel() {
    if !wgpu_available("wgpu_fused_forward_matches_burn_and_the_cpu_kernel") {
        return;
    }
    let device = WgpuDevice::DefaultDevice;
    for case in cases() {
        for bias in [true, false] {
            assert_fused_route::<Wgpu>(&case, &device, bias);
            let fused = case.forward::<Wgpu>(&device, true, bias);
            let burn = case.forward::<Wgpu>(&device, false, bias);
            let cpu = case.forward::<Flex>(&Default::default(), true, bias);
            let name = format!("{:?} bias {bias}", case.shape);
            let vs_burn = max_abs_diff(&name, &fused, &burn);
            let vs_cpu = max_abs_diff(&name, &fused, &cpu);
            eprintln!("forward {name}: vs burn {vs_burn:.2e}, vs cpu {vs_cpu:.2e}");
            assert!(vs_burn <= FORWARD_TOL, "{name}: vs burn {vs_burn:e}");
            assert!(vs_cpu <= FORWARD_TOL, "{name}: vs cpu {vs_cpu:e}");
        }
    }
}

#[test]
fn wgpu_fused_gradients_match_burn_and_the_cpu_kernel() {
    if !wgpu_available("wgpu_fused_gradients_match_burn_and_the_cpu_kernel") {
        return;
    }
    type W = Autodiff<Wgpu>;
    let device = WgpuDevice::DefaultDevice;
    for case in cases() {
        assert_fused_route::<W>(&case, &device, false);
        let fused = case.gradient::<W>(&device, true, DType::F32);
        let burn = case.gradient::<W>(&device, false, DType::F32);
        let cpu = case.gradient::<Autodiff<Flex>>(&Default::default(), true, DType::F32);
        let name = format!("{:?}", case.shape);
        let vs_burn = max_abs_diff(&name, &fused, &burn);
        let vs_cpu = max_abs_diff(&name, &fused, &cpu);
        eprintln!("gradient {name}: vs burn {vs_burn:.2e}, vs cpu {vs_cpu:.2e}");
        assert!(vs_burn <= GRADIENT_TOL, "{name}: vs burn {vs_burn:e}");
        assert!(vs_cpu <= GRADIENT_TOL, "{name}: vs cpu {vs_cpu:e}");
        // Each of q, k and v receives a gradient (the kernels write disjoint columns).
        let values = to_f32(&fused);
        let dim = values.len() / case.shape.0 / case.shape.1 / 3;
        for part in 0..3 {
            let any = values
                .chunks(3 * dim)
                .any(|row| row[part * dim..(part + 1) * dim].iter().any(|v| *v != 0.0));
            assert!(any, "{name}: part {part} of qkv got no gradient");
        }
    }
}

/// In a half type the kernels read and write the type and compute in f32; the reference is f32
/// on the same (rounded) inputs, so the difference is the output's rounding and the inputs' own.
#[test]
fn wgpu_fused_half_types_where_the_adapter_has_them() {
    let test = "wgpu_fused_half_types_where_the_adapter_has_them";
    if !wgpu_available(test) {
        return;
    }
    type W = Autodiff<Wgpu>;
    let device = WgpuDevice::DefaultDevice;
    let mut ran = 0;
    for (dtype, unit_roundoff) in [(DType::F16, 2f32.powi(-11)), (DType::BF16, 2f32.powi(-8))] {
        if !<Wgpu as Backend>::supports_dtype(&device, dtype) {
            skip(test, &format!("the WGPU adapter has no {dtype:?}"));
            continue;
        }
        for case in cases() {
            let rounded = case.rounded_to(dtype);
            let qkv = Tensor::<Wgpu, 3>::from_data(rounded.qkv.clone(), &device).cast(dtype);
            let bias = Tensor::<Wgpu, 3>::from_data(rounded.bias.clone(), &device);
            let route = attention_route(&qkv, rounded.heads(), Some(&bias));
            assert_eq!(route, AttentionRoute::CubeCl, "{dtype:?}");
            let half = multi_head_attention(qkv, rounded.heads(), Some(bias)).to_data();
            assert_eq!(half.dtype, dtype, "the output keeps the inputs' type");
            let reference = rounded.forward::<Flex>(&Default::default(), true, true);
            let name = format!("{dtype:?} {:?}", case.shape);
            let forward = max_abs_diff(&name, &half, &reference);
            // |out| ≤ max |v| ≈ 1.7: the output's rounding, with room for the f32 sums.
            assert!(
                forward <= 4.0 * unit_roundoff,
                "{name}: forward {forward:e}"
            );

            let gradient = rounded.gradient::<W>(&device, true, dtype);
            assert_eq!(gradient.dtype, dtype, "the gradient keeps the inputs' type");
            let reference =
                rounded.gradient::<Autodiff<Flex>>(&Default::default(), true, DType::F32);
            let scale = to_f32(&reference).iter().fold(0f32, |m, v| m.max(v.abs()));
            let backward = max_abs_diff(&name, &gradient, &reference) / scale;
            eprintln!("{name}: forward {forward:.2e}, gradient {backward:.2e} of its largest");
            assert!(
                backward <= 16.0 * unit_roundoff,
                "{name}: gradient {backward:e}"
            );
        }
        ran += 1;
    }
    eprintln!("wgpu: {ran} half type(s) checked");
}

/// Wider heads than the kernels keep in registers, and autodiff with a bias, take burn's
/// operations — and still compute attention.
#[test]
fn what_the_kernels_do_not_cover_falls_back_to_burn() {
    let test = "what_the_kernels_do_not_cover_falls_back_to_burn";
    if !wgpu_available(test) {
        return;
    }
    let device = WgpuDevice::DefaultDevice;
    let wide = Case::new((1, 9, 1, 160), 7);
    let qkv = Tensor::<Wgpu, 3>::from_data(wide.qkv.clone(), &device);
    assert_eq!(attention_route(&qkv, 1, None), AttentionRoute::Burn);
    let out = wide.forward::<Wgpu>(&device, true, false);
    let cpu = wide.forward::<Flex>(&Default::default(), true, false);
    assert!(max_abs_diff("wide head", &out, &cpu) <= FORWARD_TOL);

    let case = Case::new((1, 17, 2, 16), 8);
    let qkv = Tensor::<Autodiff<Wgpu>, 3>::from_data(case.qkv.clone(), &device);
    let bias = Tensor::<Autodiff<Wgpu>, 3>::from_data(case.bias.clone(), &device);
    assert_eq!(attention_route(&qkv, 2, Some(&bias)), AttentionRoute::Burn);
}
