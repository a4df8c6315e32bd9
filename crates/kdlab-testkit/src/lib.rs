//! The helpers every test suite of kdlab shares (each crate's `tests/<crate>/main.rs` and the
//! binary's `tests/cli`): fixtures, goldens and tolerances, synthetic images and configs, loud
//! skips, the reader of TensorBoard files (`tensorboard`) and a Hugging Face hub on 127.0.0.1
//! (`hub_server`). Test code only: a dev-dependency, never shipped.
//!
//! Running the `kdlab` binary is the one thing not here: its path is known only to the tests of
//! the package that builds it (tests/cli/common.rs).

pub mod hub_server;
pub mod tensorboard;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{DType, TensorData};
use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The repository's root: fixtures, assets and configs live there, shared by every crate.
pub fn repo_root() -> &'static Path {
    // crates/kdlab-testkit → crates → the root.
    let testkit = Path::new(env!("CARGO_MANIFEST_DIR"));
    testkit
        .parent()
        .and_then(Path::parent)
        .expect("the testkit lives in crates/ of the repository")
}

pub fn fixture(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(name)
}

/// All tensors of a safetensors file, as f32 (ints and f64 scalars converted).
pub fn read_all(path: &Path) -> BTreeMap<String, TensorData> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            let dtype = match view.dtype() {
                safetensors::Dtype::F32 => DType::F32,
                safetensors::Dtype::F64 => DType::F64,
                safetensors::Dtype::I64 => DType::I64,
                safetensors::Dtype::U8 => DType::U8,
                other => panic!("unexpected dtype {other:?}"),
            };
            let data =
                TensorData::from_bytes_vec(view.data().to_vec(), view.shape().to_vec(), dtype);
            (name, data)
        })
        .collect()
}

pub fn golden() -> BTreeMap<String, TensorData> {
    read_all(&fixture("golden_tiny.safetensors"))
}

pub fn to_f32(data: &TensorData) -> Vec<f32> {
    data.clone()
        .convert_dtype(DType::F32)
        .into_vec::<f32>()
        .unwrap()
}

/// Max |a − b| after checking the shapes agree.
pub fn max_abs_diff(name: &str, actual: &TensorData, expected: &TensorData) -> f32 {
    assert_eq!(actual.shape, expected.shape, "{name}: shape");
    to_f32(actual)
        .iter()
        .zip(to_f32(expected))
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

#[track_caller]
pub fn assert_close(name: &str, actual: &TensorData, expected: &TensorData, tolerance: f32) {
    let diff = max_abs_diff(name, actual, expected);
    assert!(
        diff <= tolerance,
        "{name}: max |Δ| = {diff:e} > {tolerance:e}"
    );
}

/// Writes f32 tensors into a safetensors file (with optional metadata).
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, Vec<u8>, safetensors::Dtype)],
    metadata: Option<std::collections::HashMap<String, String>>,
) {
    let views: Vec<_> = tensors
        .iter()
        .map(|(n, s, b, d)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, metadata, path).unwrap();
}

/// A batch of already normalised images as the `image` tensor `features --input` reads.
pub fn write_image_input(path: &Path, image: &TensorData) {
    write_safetensors(
        path,
        &[(
            "image".into(),
            image.shape.to_vec(),
            image.as_bytes().to_vec(),
            safetensors::Dtype::F32,
        )],
        None,
    );
}

/// Every tensor of a safetensors file as (name, shape, bytes, dtype).
pub fn raw_tensors(path: &Path) -> Vec<(String, Vec<usize>, Vec<u8>, safetensors::Dtype)> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<_> = file
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec(), v.dtype()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

pub const CLASSES: [&str; 4] = ["blue", "green", "red", "stripes"];

/// A side×side image of `kind`: a noisy solid colour, or noisy black-and-white vertical stripes.
pub fn synthetic_image(kind: usize, side: u32, rng: &mut ChaCha8Rng) -> RgbImage {
    let brightness = rng.random_range(0.6..1.0);
    let phase = rng.random_range(0..4);
    RgbImage::from_fn(side, side, |x, _| {
        let mut noise = || rng.random_range(-30i32..30);
        let base: [f32; 3] = match kind {
            0 => [30.0, 40.0, 220.0],
            1 => [40.0, 200.0, 50.0],
            2 => [210.0, 40.0, 30.0],
            _ if (x + phase) % 4 < 2 => [230.0; 3],
            _ => [20.0; 3],
        };
        Rgb(base.map(|v| ((v * brightness) as i32 + noise()).clamp(0, 255) as u8))
    })
}

/// `<root>/{train,val}/<class>/NN.png`; with `shuffled`, the folder an image lands in is drawn
/// independently of what it shows.
pub fn synthetic_folders(
    root: &Path,
    train_per_class: usize,
    val_per_class: usize,
    shuffled: bool,
) -> (PathBuf, PathBuf) {
    let mut rng = ChaCha8Rng::seed_from_u64(if shuffled { 11 } else { 5 });
    for (split, per_class) in [("train", train_per_class), ("val", val_per_class)] {
        for (kind, _) in CLASSES.iter().enumerate() {
            for i in 0..per_class {
                let label = if shuffled {
                    rng.random_range(0..CLASSES.len())
                } else {
                    kind
                };
                let dir = root.join(split).join(CLASSES[label]);
                std::fs::create_dir_all(&dir).unwrap();
                synthetic_image(kind, 24, &mut rng)
                    .save(dir.join(format!("{kind}-{i:02}.png")))
                    .unwrap();
            }
        }
    }
    (root.join("train"), root.join("val"))
}

pub fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn assets() -> PathBuf {
    repo_root().join("assets")
}

pub fn demo_config() -> PathBuf {
    repo_root().join("configs/demo.ron")
}

/// A new folder `dir` holding copies of the sample photos in assets/.
pub fn sample_photos_in(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for entry in std::fs::read_dir(assets()).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "jpg") {
            std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
        }
    }
    dir.to_path_buf()
}

/// A PNG whose header says `side`×`side` 1-bit gray pixels, all black: ≈ 110 kB on disk for
/// `side` = 30 000, 2.7 GB once decoded to RGB (a decompression bomb).
pub fn bomb_png(path: &Path, side: u32) {
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut encoder = png::Encoder::new(file, side, side);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::One);
    encoder.set_compression(png::Compression::Fast);
    let mut writer = encoder
        .write_header()
        .unwrap()
        .into_stream_writer()
        .unwrap();
    let row = vec![0u8; (side as usize).div_ceil(8)];
    for _ in 0..side {
        std::io::Write::write_all(&mut writer, &row).unwrap();
    }
    writer.finish().unwrap();
}

/// A tiny run: 6 training images × 2 repeats, batch 4 → 3 steps per epoch.
pub fn tiny_config(dir: &Path, data: &Path, extra: &str) -> PathBuf {
    let path = dir.join("tiny.ron");
    std::fs::write(&path, tiny_config_text(data, extra)).unwrap();
    path
}

pub fn tiny_config_text(data: &Path, extra: &str) -> String {
    format!(
        r#"(
    name: "tiny",
    seed: 7,
    teacher: (architecture: Some((image_size: 32, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2,
        mlp_hidden_dim: 64, shared_rel_pos_bias: true, norm_eps: 1e-6))),
    student: (architecture: Some((image_size: 32, patch_size: 8, embed_dim: 32, depth: 2, prenet_depth: 1,
        num_heads: 2, mlp_hidden_dim: 64, norm_eps: 1e-6)), blocks: All),
    data: (train: "{}", val_fraction: 0.25, repeats: 2, workers: 2),
    optim: (base_lr: 1e-2, batch_size: 4, epochs: 4),
    log_every: 1,
    {extra}
)"#,
        data.display()
    )
}

/// The run directories under `runs`, sorted.
pub fn run_dirs(runs: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<_> = std::fs::read_dir(runs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    dirs
}

/// The run's metrics lines (read as the app and the engine read them) without the wall-clock
/// field.
pub fn metrics(run: &Path) -> Vec<kdlab_engine::session::MetricsLine> {
    let mut lines = kdlab_engine::session::RunDir::at(run)
        .read_metrics()
        .unwrap();
    for line in &mut lines {
        line.img_per_s = None;
    }
    lines
}

// ---- Honest tests ---------------------------------------------------------------------------

/// `text` with `from` replaced by `to`, failing unless `from` occurs exactly once: an edit of a
/// config that silently did nothing would make the test test nothing.
#[track_caller]
pub fn replace_once(text: &str, from: &str, to: &str) -> String {
    let count = text.matches(from).count();
    assert_eq!(count, 1, "{from:?} occurs {count} times, not once");
    text.replacen(from, to, 1)
}

/// Says on the terminal — past the test harness's capture, which hides the output of passing
/// tests — that a check could not run here and why. The caller then returns: skipped, loudly.
pub fn skip(test: &str, reason: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "\n*** SKIPPED {test}: {reason} ***\n");
}

/// Whether a WGPU adapter exists; without one the test is skipped loudly, unless
/// `KDLAB_REQUIRE_WGPU` is set (CI installs lavapipe), which makes its absence a failure.
pub fn wgpu_available(test: &str) -> bool {
    if kdlab_engine::backend::BackendChoice::Wgpu.select().is_ok() {
        return true;
    }
    assert!(
        std::env::var("KDLAB_REQUIRE_WGPU").is_err(),
        "KDLAB_REQUIRE_WGPU is set but no WGPU adapter was found"
    );
    skip(
        test,
        "no WGPU adapter (Vulkan, Metal or DX12) here; on Linux install mesa-vulkan-drivers",
    );
    false
}

/// `configs/demo.ron` with its training folder made absolute, to be written anywhere.
pub fn demo_config_text() -> String {
    let demo = std::fs::read_to_string(demo_config()).unwrap();
    replace_once(
        &demo,
        "train: \"../assets\"",
        &format!("train: {:?}", assets()),
    )
}
