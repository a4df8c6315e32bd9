//! The attention layers alone, as `bench/reference.py` times PyTorch's
//! `scaled_dot_product_attention`: one teacher layer's forward (with its relative position bias
//! for BEiT v2),
//! and one student layer's forward and backward, at the bench's batch and compute type, on
//! random projections (the time does not depend on the values).

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, Distribution, ElementConversion, Tensor};

use super::timed;
use kdlab_kernels::multi_head_attention;
use kdlab_model::model::generator::seeded;
use kdlab_model::weights::Architecture;

/// Milliseconds per call, for the whole batch.
#[derive(Debug, Clone, Copy)]
pub struct AttentionTimes {
    pub teacher_forward_ms: f64,
    pub student_step_ms: f64,
}

/// What the bench measures the attention with.
pub struct AttentionBench<'a> {
    pub teacher: &'a Architecture,
    pub student: &'a Architecture,
    pub batch: usize,
    pub warmup: usize,
    pub steps: usize,
    pub dtype: DType,
    pub seed: u64,
}

impl AttentionBench<'_> {
    pub fn run<B: AutodiffBackend>(&self, device: &B::Device) -> anyhow::Result<AttentionTimes> {
        let normal = Distribution::Normal(0.0, 1.0);
        let tokens =
            |a: &Architecture| (a.image_size() / a.patch_size()).pow(2) + a.tokens().prefix();
        let t_tokens = tokens(self.teacher);
        let s_tokens = tokens(self.student);
        let teacher_bias = matches!(self.teacher, Architecture::BeitV2(_));
        let (teacher_qkv, bias, student_qkv) =
            seeded::<B::InnerBackend, _>(device, self.seed, || {
                let qkv = |tokens, dim| {
                    Tensor::<B::InnerBackend, 3>::random(
                        [self.batch, tokens, 3 * dim],
                        normal,
                        device,
                    )
                    .cast(self.dtype)
                };
                let heads = self.teacher.num_heads();
                let bias = teacher_bias
                    .then(|| Tensor::random([heads, t_tokens, t_tokens], normal, device));
                let teacher = qkv(t_tokens, self.teacher.embed_dim());
                (teacher, bias, qkv(s_tokens, self.student.embed_dim()))
            });
        // As in `bench`: every result feeds a sum read at the end, so no work can be skipped.
        let mut checksum = Tensor::<B::InnerBackend, 1>::zeros([1], device);
        let teacher_seconds = timed::<B>(device, self.warmup, self.steps, || {
            let heads = self.teacher.num_heads();
            let out = multi_head_attention(teacher_qkv.clone(), heads, bias.clone());
            checksum = checksum.clone() + out.cast(DType::F32).sum();
            Ok(())
        })?;
        let student_qkv = Tensor::<B, 3>::from_inner(student_qkv).require_grad();
        let student_seconds = timed::<B>(device, self.warmup, self.steps, || {
            let out = multi_head_attention(student_qkv.clone(), self.student.num_heads(), None);
            let grads = out.cast(DType::F32).sum().backward();
            let grad = student_qkv
                .grad(&grads)
                .ok_or_else(|| anyhow::anyhow!("the projections got no gradient"))?;
            checksum = checksum.clone() + grad.cast(DType::F32).sum();
            Ok(())
        })?;
        let checksum = checksum.into_scalar().elem::<f64>();
        anyhow::ensure!(
            checksum.is_finite(),
            "the attention's outputs are not finite ({checksum})"
        );
        let per_call_ms = |seconds: f64| seconds * 1e3 / self.steps as f64;
        Ok(AttentionTimes {
            teacher_forward_ms: per_call_ms(teacher_seconds),
            student_step_ms: per_call_ms(student_seconds),
        })
    }

    /// The attention's share of one KD step, from the per-layer times: every teacher layer's
    /// forward and every student layer's forward and backward.
    pub fn per_kd_step_ms(&self, times: AttentionTimes) -> f64 {
        let student_layers = self.student.prenet_depth() + self.student.depth();
        self.teacher.depth() as f64 * times.teacher_forward_ms
            + student_layers as f64 * times.student_step_ms
    }
}
