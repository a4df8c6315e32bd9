//! Weights that a model must not be built from: a used tensor of another dtype, non-finite
//! values, a file that is not a regular file. Each refused with the file and the key.

use burn::backend::Flex;
use kdlab_model::weights::Checkpoint;
use kdlab_testkit::*;

/// The tiny timm BEiT v2 with tensor `key` replaced by `bytes` of `dtype`.
fn timm_beit_with(
    dir: &std::path::Path,
    key: &str,
    dtype: safetensors::Dtype,
    bytes: impl Fn(usize) -> Vec<u8>,
) -> std::path::PathBuf {
    let path = dir.join("edited.safetensors");
    let tensors: Vec<_> = raw_tensors(&fixture("beitv2_tiny_timm.safetensors"))
        .into_iter()
        .map(|(n, s, b, d)| {
            if n == key {
                let numel = s.iter().product();
                (n, s, bytes(numel), dtype)
            } else {
                (n, s, b, d)
            }
        })
        .collect();
    write_safetensors(&path, &tensors, None);
    path
}

fn load_error(path: &std::path::Path) -> String {
    let device = Default::default();
    match Checkpoint::open(path) {
        Ok(c) => c.load_beit_v2::<Flex>(&device).err().unwrap().to_string(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_used_weight_of_another_dtype_is_refused_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = timm_beit_with(dir.path(), "cls_token", safetensors::Dtype::I64, |n| {
        vec![0; 8 * n]
    });
    assert_eq!(
        load_error(&path),
        format!(
            "{}: key 'cls_token' is stored as int64; kdlab reads weights stored as f32, f16 or \
             bf16",
            path.display()
        )
    );
}

#[test]
fn non_finite_weights_are_refused_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = timm_beit_with(dir.path(), "cls_token", safetensors::Dtype::F32, |n| {
        (0..n)
            .flat_map(|i| if i == 3 { f32::INFINITY } else { 0.5 }.to_le_bytes())
            .collect()
    });
    let error = load_error(&path);
    assert!(
        error.ends_with(
            "tensor 'cls_token' holds 1 non-finite value(s) of 64 (the first, inf, at element \
             3); kdlab does not load weights that are not finite"
        ),
        "{error}"
    );
}

#[cfg(unix)]
#[test]
fn a_fifo_is_refused_without_waiting_for_a_writer() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("weights.pth");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        Checkpoint::open(&fifo).err().unwrap().to_string(),
        format!(
            "cannot read weights file {}: is not a regular file but a FIFO (named pipe)",
            fifo.display()
        )
    );
}
