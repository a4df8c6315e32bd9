//! Forward parity against `fixtures/golden_tiny.safetensors`, computed by the original PyTorch
//! code (unilm BEiT v2, timm `Beit`, fairseq data2vec 2.0, the thesis' `prepare_output` and
//! `kd_loss`); see fixtures/README.md §4. CPU backend (flex), f32, tolerance 1e-4 (loss 1e-5).
//! The same checks run on WGPU at 1e-3 when an adapter exists (`KDLAB_REQUIRE_WGPU=1` makes a
//! missing adapter a failure, as CI sets it).

use kdlab_testkit as common;

use burn::backend::wgpu::WgpuDevice;
use burn::backend::{Flex, Wgpu};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use kdlab_model::model::{BlockSelection, ModelOutput};
use kdlab_model::target::{kd_loss, prepare_target};
use kdlab_model::weights::Checkpoint;
use kdlab_testkit::*;

const TOL: f32 = 1e-4;

fn run_model<B: Backend>(
    file: &str,
    selection: Option<BlockSelection>,
    device: &B::Device,
) -> (ModelOutput<B>, Tensor<B, 3>) {
    let golden = golden();
    let checkpoint = Checkpoint::open(fixture(file)).unwrap();
    let model = checkpoint.load_encoder::<B>(selection, device).unwrap();
    let out = model.forward(Tensor::from_data(golden["image"].clone(), device));
    let target = prepare_target(&out.layer_results);
    (out, target)
}

fn check_layers<B: Backend>(prefix: &str, out: &ModelOutput<B>, tolerance: f32) {
    let golden = golden();
    let expected = golden
        .keys()
        .filter(|k| k.starts_with(&format!("{prefix}.layer.")))
        .count();
    assert_eq!(out.layer_results.len(), expected, "{prefix}: layer count");
    for (i, layer) in out.layer_results.iter().enumerate() {
        let name = format!("{prefix}.layer.{i}");
        assert_close(&name, &layer.to_data(), &golden[&name], tolerance);
    }
}

fn all_parity_checks<B: Backend>(device: &B::Device, tolerance: f32, loss_tolerance: f32) {
    let golden = golden();

    let (unilm, unilm_target) = run_model::<B>("beitv2_tiny_unilm.pth", None, device);
    check_layers("beit_unilm", &unilm, tolerance);
    assert_close(
        "beit_unilm.target",
        &unilm_target.to_data(),
        &golden["beit_unilm.target"],
        tolerance,
    );
    // The teacher's last hidden state is its last layer result (no final norm).
    assert_close(
        "beit_unilm final",
        &unilm.last_hidden.to_data(),
        &golden["beit_unilm.layer.3"],
        tolerance,
    );

    let (timm, timm_target) = run_model::<B>("beitv2_tiny_timm.safetensors", None, device);
    check_layers("beit_timm", &timm, tolerance);
    assert_close(
        "beit_timm.target",
        &timm_target.to_data(),
        &golden["beit_timm.target"],
        tolerance,
    );

    let (d2v2, _) = run_model::<B>("d2v2_tiny_fairseq.pt", None, device);
    check_layers("d2v2", &d2v2, tolerance);
    assert_close(
        "d2v2.x",
        &d2v2.last_hidden.to_data(),
        &golden["d2v2.x"],
        tolerance,
    );

    let (student, pred) = run_model::<B>(
        "d2v2_tiny_fairseq.pt",
        Some(BlockSelection::FirstMain(2)),
        device,
    );
    check_layers("student", &student, tolerance);
    assert_close(
        "student.x",
        &student.last_hidden.to_data(),
        &golden["student.x"],
        tolerance,
    );
    assert_close(
        "student.pred",
        &pred.to_data(),
        &golden["student.pred"],
        tolerance,
    );

    for (teacher_target, key) in [
        (unilm_target, "loss.unilm_teacher_vs_student"),
        (timm_target, "loss.timm_teacher_vs_student"),
    ] {
        let loss = kd_loss(pred.clone(), teacher_target).to_data();
        let expected = to_f32(&golden[key])[0];
        let diff = (to_f32(&loss)[0] - expected).abs();
        assert!(diff <= loss_tolerance, "{key}: |Δ| = {diff:e}");
    }
}

#[test]
fn cpu_matches_pytorch_goldens() {
    all_parity_checks::<Flex>(&Default::default(), TOL, 1e-5);
}

#[test]
fn wgpu_matches_pytorch_goldens_when_an_adapter_exists() {
    if !common::wgpu_available("wgpu_matches_pytorch_goldens_when_an_adapter_exists") {
        return;
    }
    all_parity_checks::<Wgpu>(&WgpuDevice::DefaultDevice, 1e-3, 1e-4);
}

#[test]
fn relative_position_index_matches_unilm() {
    let golden = golden();
    let index = kdlab_model::model::beit_v2::relative_position_index(4);
    let expected: Vec<i64> = golden["beit_unilm.rel_pos_index"].to_vec().unwrap();
    assert_eq!(
        index.iter().map(|&i| i64::from(i)).collect::<Vec<_>>(),
        expected
    );
}

#[test]
fn sincos_table_matches_the_checkpoint() {
    let golden = golden();
    let table = kdlab_model::model::sincos::sincos_2d(4, 64);
    let expected = TensorData::new(table, [1, 16, 64]);
    assert_close("d2v2.positions", &expected, &golden["d2v2.positions"], 1e-6);
}

/// The unilm file rewritten in timm's layout (shared table copied into every block, fixtures
/// README §11) must give the same numbers as the unilm file.
#[test]
fn unilm_and_timm_layouts_of_the_same_weights_agree() {
    let dir = tempfile::tempdir().unwrap();
    let timm_path = dir.path().join("unilm_as_timm.safetensors");
    let checkpoint = Checkpoint::open(fixture("beitv2_tiny_unilm.pth")).unwrap();
    let device = Default::default();
    let model = checkpoint.load_beit_v2::<Flex>(&device).unwrap();
    // Re-export the loaded parameters under timm names, the table replicated per block.
    let tensors = unilm_weights_as_timm(&model);
    write_safetensors(&timm_path, &tensors, None);

    let as_timm = Checkpoint::open(&timm_path).unwrap();
    assert_eq!(as_timm.layout.name(), "beitv2-timm");
    let timm_model = as_timm.load_beit_v2::<Flex>(&device).unwrap();
    let images = Tensor::<Flex, 4>::from_data(golden()["image"].clone(), &device);
    let a = model.forward(images.clone());
    let b = timm_model.forward(images);
    for (i, (x, y)) in a.layer_results.iter().zip(&b.layer_results).enumerate() {
        assert_close(&format!("layer {i}"), &y.to_data(), &x.to_data(), 1e-6);
    }
}

fn unilm_weights_as_timm(
    model: &kdlab_model::model::BeitV2<Flex>,
) -> Vec<(String, Vec<usize>, Vec<u8>, safetensors::Dtype)> {
    use burn_store::{BurnToPyTorchAdapter, ModuleSnapshot};
    let snapshots = model.collect(None, Some(Box::new(BurnToPyTorchAdapter)), true);
    let mut out = Vec::new();
    let mut table = None;
    for s in snapshots {
        let data = s.to_data().unwrap();
        let entry = (
            s.full_path(),
            data.shape.to_vec(),
            data.as_bytes().to_vec(),
            safetensors::Dtype::F32,
        );
        if entry.0 == "rel_pos_bias.relative_position_bias_table" {
            table = Some(entry);
        } else {
            out.push(entry);
        }
    }
    let (_, shape, bytes, dtype) = table.expect("unilm model has a shared table");
    for i in 0..model.blocks.len() {
        out.push((
            format!("blocks.{i}.attn.relative_position_bias_table"),
            shape.clone(),
            bytes.clone(),
            dtype,
        ));
    }
    out
}

/// Half-precision files load (converted to f32): the model equals the f32 one up to f16 rounding.
#[test]
fn f16_and_bf16_weights_load() {
    let dir = tempfile::tempdir().unwrap();
    let device = Default::default();
    let reference = run_model::<Flex>("beitv2_tiny_timm.safetensors", None, &device)
        .1
        .to_data();
    for (dtype, tolerance) in [
        (safetensors::Dtype::F16, 0.05),
        (safetensors::Dtype::BF16, 0.3),
    ] {
        let path = dir.path().join(format!("half_{dtype:?}.safetensors"));
        let tensors: Vec<_> = raw_tensors(&fixture("beitv2_tiny_timm.safetensors"))
            .into_iter()
            .map(|(n, s, b, _)| {
                let values: Vec<f32> = b
                    .chunks(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                let bytes: Vec<u8> = match dtype {
                    safetensors::Dtype::F16 => values
                        .iter()
                        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                        .collect(),
                    _ => values
                        .iter()
                        .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                        .collect(),
                };
                (n, s, bytes, dtype)
            })
            .collect();
        write_safetensors(&path, &tensors, None);
        let model = Checkpoint::open(&path)
            .unwrap()
            .load_beit_v2::<Flex>(&device)
            .unwrap();
        let out = model.forward(Tensor::from_data(golden()["image"].clone(), &device));
        let target = prepare_target(&out.layer_results).to_data();
        assert_close(&format!("{dtype:?} target"), &target, &reference, tolerance);
    }
}

/// Multi-head attention written out with burn's tensor operations, the reference for the fused
/// CPU kernels.
fn attention_by_definition<B: Backend>(
    qkv: Tensor<B, 3>,
    heads: usize,
    bias: Option<Tensor<B, 3>>,
) -> Tensor<B, 3> {
    let [batch, tokens, width3] = qkv.dims();
    let width = width3 / 3;
    let split = |i: usize| {
        qkv.clone()
            .narrow(2, i * width, width)
            .reshape([batch, tokens, heads, width / heads])
            .swap_dims(1, 2)
    };
    let (q, k, v) = (split(0), split(1), split(2));
    let mut logits = q.matmul(k.swap_dims(2, 3)) * ((width / heads) as f64).powf(-0.5);
    if let Some(bias) = bias {
        logits = logits + bias.unsqueeze::<4>();
    }
    burn::tensor::activation::softmax(logits, 3)
        .matmul(v)
        .swap_dims(1, 2)
        .reshape([batch, tokens, width])
}

fn random<B: Backend, const D: usize>(shape: [usize; D], device: &B::Device) -> Tensor<B, D> {
    Tensor::random(shape, burn::tensor::Distribution::Normal(0.0, 2.0), device)
}

#[test]
fn fused_cpu_attention_matches_its_definition_forward_and_backward() {
    use burn::backend::Autodiff;
    let device = Default::default();
    let (batch, tokens, heads, width) = (3, 11, 4, 32);
    Flex::seed(&device, 7);

    let qkv = random::<Flex, 3>([batch, tokens, 3 * width], &device);
    let bias = random::<Flex, 3>([heads, tokens, tokens], &device);
    let fused = kdlab_kernels::multi_head_attention(qkv.clone(), heads, Some(bias.clone()));
    let reference = attention_by_definition(qkv.clone(), heads, Some(bias));
    assert_close("forward", &fused.to_data(), &reference.to_data(), 1e-5);

    // Gradients through a weighted sum, so that every output element matters differently.
    let weights = random::<Autodiff<Flex>, 3>([batch, tokens, width], &device);
    let grad_of = |attend: &dyn Fn(Tensor<Autodiff<Flex>, 3>) -> Tensor<Autodiff<Flex>, 3>| {
        let x = Tensor::<Autodiff<Flex>, 3>::from_inner(qkv.clone()).require_grad();
        let grads = (attend(x.clone()) * weights.clone()).sum().backward();
        x.grad(&grads).expect("qkv has a gradient").to_data()
    };
    let fused = grad_of(&|x| kdlab_kernels::multi_head_attention(x, heads, None));
    let reference = grad_of(&|x| attention_by_definition(x, heads, None));
    // Gradients here reach ~10; both sides round sums of T·hd f32 products differently.
    assert_close("d qkv", &fused, &reference, 1e-4);
}

#[test]
fn fused_cpu_gelu_matches_burns_forward_and_backward() {
    use burn::backend::Autodiff;
    let device = Default::default();
    Flex::seed(&device, 8);
    let x = random::<Flex, 2>([64, 1000], &device);
    let fused = kdlab_kernels::gelu(x.clone());
    let reference = burn::tensor::activation::gelu(x.clone());
    assert_close("gelu", &fused.to_data(), &reference.to_data(), 2e-6);

    let grad_of = |gelu: &dyn Fn(Tensor<Autodiff<Flex>, 2>) -> Tensor<Autodiff<Flex>, 2>| {
        let x = Tensor::<Autodiff<Flex>, 2>::from_inner(x.clone()).require_grad();
        let grads = (gelu(x.clone()) * x.clone().detach()).sum().backward();
        x.grad(&grads).expect("x has a gradient").to_data()
    };
    let fused = grad_of(&|x| kdlab_kernels::gelu(x));
    let reference = grad_of(&|x| burn::tensor::activation::gelu(x));
    assert_close("d gelu", &fused, &reference, 2e-6);
}

#[test]
fn fused_cpu_target_matches_the_tensor_version_forward_and_backward() {
    use burn::backend::Autodiff;
    use kdlab_model::target::prepare_target_by_tensors;
    let device = Default::default();
    Flex::seed(&device, 9);
    let layers: Vec<Tensor<Flex, 3>> = (0..3).map(|_| random([2, 9, 16], &device)).collect();
    let fused = prepare_target(&layers);
    let reference = prepare_target_by_tensors(layers.clone());
    assert_close("target", &fused.to_data(), &reference.to_data(), 1e-5);

    let weights = random::<Autodiff<Flex>, 3>([2, 9, 16], &device);
    let grads_of =
        |target: &dyn Fn(Vec<Tensor<Autodiff<Flex>, 3>>) -> Tensor<Autodiff<Flex>, 3>| {
            let xs: Vec<_> = layers
                .iter()
                .map(|h| Tensor::<Autodiff<Flex>, 3>::from_inner(h.clone()).require_grad())
                .collect();
            let grads = (target(xs.clone()) * weights.clone()).sum().backward();
            xs.iter()
                .map(|x| {
                    x.grad(&grads)
                        .expect("every layer has a gradient")
                        .to_data()
                })
                .collect::<Vec<_>>()
        };
    let fused = grads_of(&|xs| prepare_target(&xs));
    let reference = grads_of(&|xs| prepare_target_by_tensors(xs));
    for (l, (a, b)) in fused.iter().zip(&reference).enumerate() {
        assert_close(&format!("d layer {l}"), a, b, 1e-4);
    }
}
