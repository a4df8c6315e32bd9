//! The layer views of Inspect and `heatmap`: linear CKA against NumPy (tests/fixtures/
//! cka_linear.py), and the CLS attention maps of the tiny fixture models against a hand
//! computation from their weights. CPU backend (flex), f32.

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use kdlab_engine::inspect::attention::model_attention;
use kdlab_engine::inspect::cka::CkaAccumulator;
use kdlab_model::model::Encoder;
use kdlab_model::model::beit_v2::relative_position_index;
use kdlab_model::weights::Checkpoint;
use kdlab_testkit::*;

type B = Flex;

fn tensor3(data: &TensorData) -> Tensor<B, 3> {
    Tensor::from_data(data.clone(), &Default::default())
}

/// Images 0 and 1–2 of the fixture as two chunks: streaming must not change the matrix.
#[test]
fn layer_cka_matches_numpy_over_chunks_of_images() {
    let fixture = read_all(&fixture("cka_linear.safetensors"));
    let layers = |prefix: &str| -> Vec<Tensor<B, 3>> {
        (0..)
            .map_while(|i| fixture.get(&format!("{prefix}.{i}")))
            .map(tensor3)
            .collect()
    };
    let (teacher, student) = (layers("teacher"), layers("student"));
    assert_eq!((teacher.len(), student.len()), (3, 2));
    let chunk = |layers: &[Tensor<B, 3>], range: std::ops::Range<usize>| -> Vec<Tensor<B, 3>> {
        layers
            .iter()
            .map(|l| l.clone().narrow(0, range.start, range.len()))
            .collect()
    };
    let mut cka = CkaAccumulator::<B>::default();
    cka.add(&chunk(&teacher, 0..1), &chunk(&student, 0..1));
    cka.add(&chunk(&teacher, 1..3), &chunk(&student, 1..3));
    let matrix = cka.finish(3).unwrap();
    let expected = to_f32(&fixture["cka"]);
    let worst = matrix
        .values
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - f64::from(*b)).abs())
        .fold(0.0, f64::max);
    eprintln!("layer CKA vs NumPy: max abs difference {worst:.2e} (3 × 2 layers, 15 tokens)");
    assert!(worst < 1e-5, "{matrix:?} vs {expected:?}");
}

/// `softmax(q_cls · k_j / √hd + bias_j)` over the tokens, per head, by loops; the patches only.
fn cls_row_by_hand(
    qkv: &[f32],
    tokens: usize,
    dim: usize,
    heads: usize,
    bias: impl Fn(usize, usize) -> f32,
) -> Vec<Vec<f32>> {
    let hd = dim / heads;
    (0..heads)
        .map(|h| {
            let q = &qkv[h * hd..(h + 1) * hd];
            let logits: Vec<f64> = (0..tokens)
                .map(|j| {
                    let k = &qkv[j * 3 * dim + dim + h * hd..][..hd];
                    let dot: f64 = q.iter().zip(k).map(|(a, b)| f64::from(a * b)).sum();
                    dot / (hd as f64).sqrt() + f64::from(bias(h, j))
                })
                .collect();
            let top = logits.iter().cloned().fold(f64::MIN, f64::max);
            let sum: f64 = logits.iter().map(|l| (l - top).exp()).sum();
            logits[1..]
                .iter()
                .map(|l| ((l - top).exp() / sum) as f32)
                .collect()
        })
        .collect()
}

/// `x · W + b` for the first image, `[T, out]` row-major (burn's Linear stores W as [in, out]).
fn linear_first_image(x: &Tensor<B, 3>, w: Tensor<B, 2>, b: Vec<f32>) -> Vec<f32> {
    let [_, tokens, dim] = x.dims();
    let x = to_f32(&x.clone().narrow(0, 0, 1).into_data());
    let [_, out] = w.dims();
    let w = to_f32(&w.into_data());
    let mut y = vec![0f32; tokens * out];
    for t in 0..tokens {
        for o in 0..out {
            y[t * out + o] = b[o]
                + (0..dim)
                    .map(|i| x[t * dim + i] * w[i * out + o])
                    .sum::<f32>();
        }
    }
    y
}

fn assert_heads_close(name: &str, got: &[Vec<f32>], want: &[Vec<f32>]) {
    let worst = got
        .iter()
        .flatten()
        .zip(want.iter().flatten())
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!("{name}: CLS attention vs hand computation, max abs difference {worst:.2e}");
    assert_eq!(got.len(), want.len(), "{name}: heads");
    assert!(worst < 1e-5, "{name}: {worst}");
}

/// The tiny BEiT v2 (timm layout, per-block relative position tables): the last block's CLS
/// attention from its input (the residual stream after block 3), norm1, qkv with
/// `[q_bias | 0 | v_bias]`, and the block's relative position bias.
#[test]
fn teacher_cls_attention_matches_a_hand_computation() {
    let checkpoint = Checkpoint::open(fixture("beitv2_tiny_timm.safetensors")).unwrap();
    let Encoder::BeitV2(model) = checkpoint
        .load_encoder::<B>(None, &Default::default())
        .unwrap()
    else {
        panic!("a BEiT v2 checkpoint")
    };
    let images: Tensor<B, 4> = Tensor::from_data(golden()["image"].clone(), &Default::default());
    let out = model.forward(images.clone());
    let maps = model_attention(&model.attention_weights(images), 1).unwrap();

    let blocks = model.blocks.len();
    let input = &out.layer_results[blocks - 2]; // [2, 17, 64]
    let [_, tokens, dim] = input.dims();
    let last = &model.blocks[blocks - 1];
    let normed = last.norm1.forward(input.clone());
    let q_bias = to_f32(&last.attn.q_bias.val().into_data());
    let v_bias = to_f32(&last.attn.v_bias.val().into_data());
    let bias: Vec<f32> = [q_bias, vec![0.0; dim], v_bias].concat();
    let qkv = linear_first_image(&normed, last.attn.qkv.weight.val(), bias);
    let table = last
        .attn
        .relative_position_bias_table
        .as_ref()
        .expect("timm layout: a table per block")
        .val();
    let heads = table.dims()[1];
    let table = to_f32(&table.into_data());
    let index = relative_position_index(4);
    let want = cls_row_by_hand(&qkv, tokens, dim, heads, |h, j| {
        table[index[j] as usize * heads + h]
    });
    assert_heads_close("teacher", &maps[0].heads, &want);
}

/// The tiny data2vec 2.0 (post-LN): the last main block's CLS attention from its input (the
/// output of the model without that block) and its qkv with bias.
#[test]
fn student_cls_attention_matches_a_hand_computation() {
    let load = |selection| {
        let checkpoint = Checkpoint::open(fixture("d2v2_tiny_fairseq.pt")).unwrap();
        match checkpoint
            .load_encoder::<B>(selection, &Default::default())
            .unwrap()
        {
            Encoder::Data2Vec2(model) => model,
            Encoder::BeitV2(_) | Encoder::Vit(_) => panic!("a data2vec 2.0 checkpoint"),
        }
    };
    let model = load(None);
    let blocks = model.blocks.len();
    let images: Tensor<B, 4> = Tensor::from_data(golden()["image"].clone(), &Default::default());
    let maps = model_attention(&model.attention_weights(images.clone()), 1).unwrap();
    let keep: Vec<usize> = (0..blocks - 1).collect();
    let input = load(None)
        .select_main_blocks(&keep)
        .forward(images)
        .last_hidden;
    let [_, tokens, dim] = input.dims();
    let attn = &model.blocks[blocks - 1].attn;
    let bias = to_f32(
        &attn
            .qkv
            .bias
            .as_ref()
            .expect("qkv has a bias")
            .val()
            .into_data(),
    );
    let qkv = linear_first_image(&input, attn.qkv.weight.val(), bias);
    let want = cls_row_by_hand(&qkv, tokens, dim, 4, |_, _| 0.0);
    assert_heads_close("student", &maps[0].heads, &want);
    assert_eq!(maps[0].rollout.len(), tokens - 1);
}
