//! Crafted checkpoints, one per class of hostile or broken file: what the reader reads, what it
//! refuses and how it says so.

use std::path::{Path, PathBuf};

use crate::common::{Pickle, f32_bytes, torch_legacy, torch_zip, torch_zip_with};
use kdlab_weightfile::{Dtype, Error, Format, Limits, WeightFile};

fn open(path: &Path) -> Result<WeightFile, String> {
    WeightFile::open(path).map_err(|e| e.to_string())
}

fn temp(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    (dir, path)
}

/// `{'model': {key: tensor, …}}` around tensors written by `tensors`.
fn state_dict(tensors: impl FnOnce(Pickle) -> Pickle) -> Vec<u8> {
    let p = Pickle::new().op(b"}").str("model").op(b"}").mark();
    tensors(p).op(b"u").op(b"s").stop()
}

/// One f32 tensor `w` over storage `0` of `numel` elements.
fn one_tensor(numel: i32, offset: i32, shape: &[i32], stride: &[i32]) -> Vec<u8> {
    state_dict(|p| {
        p.str("w")
            .tensor("0", "FloatStorage", numel, offset, shape, stride)
    })
}

#[test]
fn reads_views_dtypes_and_nesting_as_torch_load_does() {
    // W = [[0, 1, 2], [3, 4, 5]]; `wt` is W.t() saved as torch saves a view: shape (3, 2),
    // stride (1, 3) over the same storage; torch.load gives [[0, 3], [1, 4], [2, 5]].
    let w = f32_bytes(&[0., 1., 2., 3., 4., 5.]);
    let h: Vec<u8> = [1.5f32, -0.25]
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
        .collect();
    let pickle = state_dict(|p| {
        p.str("w")
            .tensor("0", "FloatStorage", 6, 0, &[2, 3], &[3, 1])
            .str("wt")
            .tensor("0", "FloatStorage", 6, 0, &[3, 2], &[1, 3])
            .str("row")
            .tensor("0", "FloatStorage", 6, 3, &[3], &[1])
            .str("h")
            .tensor("1", "HalfStorage", 2, 0, &[2], &[1])
            .str("index")
            .tensor("2", "LongStorage", 1, 0, &[1], &[1])
    });
    let (_dir, path) = temp("ok.pth");
    torch_zip(
        &path,
        &pickle,
        &[("0", w), ("1", h), ("2", 7i64.to_le_bytes().to_vec())],
    );
    let file = WeightFile::open(&path).unwrap();
    assert_eq!(file.format, Format::PytorchZip);
    let keys: Vec<&str> = file.tensors().map(|(k, _)| k).collect();
    assert_eq!(
        keys,
        ["model.h", "model.index", "model.row", "model.w", "model.wt"]
    );
    assert_eq!(file.read_f32("model.w").unwrap(), [0., 1., 2., 3., 4., 5.]);
    assert_eq!(file.read_f32("model.wt").unwrap(), [0., 3., 1., 4., 2., 5.]);
    assert_eq!(file.tensor("model.wt").unwrap().shape, [3, 2]);
    assert_eq!(file.read_f32("model.row").unwrap(), [3., 4., 5.]);
    assert_eq!(file.read_f32("model.h").unwrap(), [1.5, -0.25]);
    assert_eq!(file.tensor("model.index").unwrap().dtype, Dtype::I64);
    assert_eq!(
        file.read_f32("model.index").unwrap_err().to_string(),
        "tensor 'model.index' is stored as int64; kdlab reads weights stored as f32, f16 or bf16"
    );
}

#[test]
fn reads_the_fixture_checkpoints() {
    for name in ["beitv2_tiny_unilm.pth", "d2v2_tiny_fairseq.pt"] {
        let file = WeightFile::open(&crate::common::fixture(name)).unwrap();
        let mut count = 0;
        for (key, info) in file.tensors() {
            if info.dtype == Dtype::F32 {
                let values = file.read_f32(key).unwrap();
                assert_eq!(values.len(), info.shape.iter().product::<usize>(), "{key}");
                count += 1;
            }
        }
        assert!(count > 50, "{name}: {count} tensors");
    }
    let fairseq = WeightFile::open(&crate::common::fixture("d2v2_tiny_fairseq.pt")).unwrap();
    let cfg = fairseq.pickle_value("cfg").unwrap().unwrap();
    assert!(cfg["model"]["num_heads"].is_u64(), "{cfg}");
}

#[test]
fn refuses_storages_that_are_missing_short_or_read_past_their_end() {
    let (_dir, path) = temp("bad.pth");
    torch_zip(&path, &one_tensor(6, 0, &[2, 3], &[3, 1]), &[]);
    assert_eq!(
        open(&path).unwrap_err(),
        "tensor 'model.w' needs zip entry 'archive/data/0', which the file lacks"
    );

    torch_zip(
        &path,
        &one_tensor(6, 0, &[2, 3], &[3, 1]),
        &[("0", f32_bytes(&[1.0; 4]))],
    );
    assert_eq!(
        open(&path).unwrap_err(),
        "tensor 'model.w' needs zip entry 'archive/data/0' to hold 24 bytes (6 elements of f32), \
         but it holds 16"
    );

    // A view that reads past its storage: offset 2 + 6 elements of a 6-element storage.
    torch_zip(
        &path,
        &one_tensor(6, 2, &[2, 3], &[3, 1]),
        &[("0", f32_bytes(&[1.0; 6]))],
    );
    assert_eq!(
        open(&path).unwrap_err(),
        "tensor 'model.w' reads elements 2..=7 (offset 2, shape [2, 3], stride [3, 1]) of \
         storage '0', which declares 6 elements"
    );

    // An expanded view (stride 0): 10⁶ × 10³ elements out of one.
    torch_zip(
        &path,
        &one_tensor(1, 0, &[1_000_000, 1000], &[0, 0]),
        &[("0", f32_bytes(&[1.0]))],
    );
    assert!(
        open(&path)
            .unwrap_err()
            .contains("its elements overlap, which kdlab does not read"),
        "{:?}",
        open(&path).err()
    );
    torch_zip(
        &path,
        &one_tensor(6, 0, &[3, 3], &[1, 1]),
        &[("0", f32_bytes(&[1.0; 6]))],
    );
    assert!(open(&path).unwrap_err().contains("its elements overlap"));

    // Sizes and strides that overflow.
    torch_zip(
        &path,
        &one_tensor(6, 0, &[i32::MAX, i32::MAX, i32::MAX], &[1, 1, 1]),
        &[("0", f32_bytes(&[1.0; 6]))],
    );
    assert!(open(&path).is_err());
}

#[test]
fn reads_deflated_storages_and_refuses_one_that_claims_more_than_deflate_can_hold() {
    let (_dir, path) = temp("deflated.pth");
    let values: Vec<f32> = (0..1000).map(|i| i as f32).collect();
    torch_zip_with(
        &path,
        &one_tensor(1000, 0, &[1000], &[1]),
        &[("0", f32_bytes(&values))],
        zip::CompressionMethod::Deflated,
    );
    // Deflated honestly: read, as torch.load reads it.
    let file = WeightFile::open(&path).unwrap();
    assert_eq!(file.read_f32("model.w").unwrap(), values);

    // 4 kB of zeros deflated into a few bytes, its headers then claiming 4 GB: a zip bomb for
    // a reader that believes them.
    torch_zip_with(
        &path,
        &one_tensor(1_000_000_000, 0, &[1_000_000_000], &[1]),
        &[("0", vec![0; 4000])],
        zip::CompressionMethod::Deflated,
    );
    let mut bytes = std::fs::read(&path).unwrap();
    let name = b"archive/data/0";
    let mut patched = 0;
    for pos in 46..bytes.len() - name.len() {
        if &bytes[pos..pos + name.len()] != name {
            continue;
        }
        for (header, size_at) in [(30, 22), (46, 24)] {
            let sig = if header == 30 {
                b"PK\x03\x04"
            } else {
                b"PK\x01\x02"
            };
            if &bytes[pos - header..pos - header + 4] == sig {
                let at = pos - header + size_at;
                bytes[at..at + 4].copy_from_slice(&4_000_000_000u32.to_le_bytes());
                patched += 1;
            }
        }
    }
    assert_eq!(patched, 2);
    std::fs::write(&path, bytes).unwrap();
    let error = open(&path).unwrap_err();
    assert!(
        error.starts_with(
            "tensor 'model.w' needs zip entry 'archive/data/0', which claims to inflate"
        ),
        "{error}"
    );
}

#[test]
fn refuses_non_finite_weights_by_key() {
    let (_dir, path) = temp("nan.pth");
    torch_zip(
        &path,
        &one_tensor(3, 0, &[3], &[1]),
        &[("0", f32_bytes(&[1.0, f32::NAN, f32::NEG_INFINITY]))],
    );
    let file = WeightFile::open(&path).unwrap();
    assert_eq!(
        file.read_f32("model.w").unwrap_err().to_string(),
        "tensor 'model.w' holds 2 non-finite value(s) of 3 (the first, NaN, at element 1); kdlab \
         does not load weights that are not finite"
    );
}

#[test]
fn never_calls_what_a_pickle_names() {
    // `os.system('touch <marker>')`, which Python's pickle would run: kept as an inert object.
    let (dir, path) = temp("evil.pth");
    let marker = dir.path().join("ran");
    let pickle = Pickle::new()
        .op(b"}")
        .str("cfg")
        .global("os", "system")
        .mark()
        .str(&format!("touch {}", marker.display()))
        .op(b"tR")
        .op(b"s")
        .stop();
    torch_zip(&path, &pickle, &[]);
    let file = WeightFile::open(&path).unwrap();
    assert_eq!(file.tensors().count(), 0);
    assert_eq!(
        file.pickle_value("cfg").unwrap(),
        Some(serde_json::Value::Null)
    );
    assert!(!marker.exists());
}

#[test]
fn survives_deep_nesting_without_recursion() {
    // 100,000 lists, each appended to the one before: 100,000 levels deep in 300 kB.
    let depth = 100_000;
    let mut p = Pickle::new().op(b"}").str("cfg");
    for _ in 0..depth {
        p = p.op(b"]");
    }
    for _ in 1..depth {
        p = p.op(b"a");
    }
    let pickle = p.op(b"s").stop();
    let (_dir, path) = temp("deep.pth");
    torch_zip(&path, &pickle, &[]);
    let error = open(&path).unwrap_err();
    assert_eq!(
        error,
        "the pickle's containers nest deeper than 100 levels (at 'cfg.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.…')"
    );
}

#[test]
fn memo_references_share_instead_of_copying() {
    // x = []; then 40 times x = (x, x): 2⁴⁰ leaves if copied, 41 objects shared.
    let mut p = Pickle::new().op(b"}").str("cfg").op(b"]").put(0);
    for _ in 0..40 {
        p = p.op(b"0").get(0).get(0).op(b"\x86").put(0);
    }
    let pickle = p.op(b"s").stop();
    assert!(pickle.len() < 1000);
    let (_dir, path) = temp("doubling.pth");
    torch_zip(&path, &pickle, &[]);
    let error = open(&path).unwrap_err();
    assert!(
        error.starts_with("the pickle's containers reach more than 4194304 objects"),
        "{error}"
    );
}

#[test]
fn a_list_that_holds_itself_ends_at_the_depth_limit() {
    // x = []; x.append(x)
    let pickle = Pickle::new()
        .op(b"}")
        .str("cfg")
        .op(b"]")
        .put(0)
        .get(0)
        .op(b"a")
        .op(b"s")
        .stop();
    let (_dir, path) = temp("cycle.pth");
    torch_zip(&path, &pickle, &[]);
    assert!(
        open(&path)
            .unwrap_err()
            .contains("nest deeper than 100 levels")
    );
}

#[test]
fn large_pickles_are_read_in_linear_time_within_the_object_budget() {
    // One dict of 200,000 items set one at a time, each value memoised and fetched again: a
    // reader that copies the memo or shifts a Vec per item takes minutes here.
    let mut p = Pickle::new().op(b"}").str("cfg").op(b"}").put(0);
    for i in 0..200_000u32 {
        p = p.str(&format!("k{i}")).int(i as i32).put(i + 1).op(b"s");
    }
    let pickle = p.op(b"s").stop();
    assert!(pickle.len() > 3_000_000);
    let (_dir, path) = temp("wide.pth");
    torch_zip(&path, &pickle, &[]);
    let file = WeightFile::open(&path).unwrap();
    let cfg = file.pickle_value("cfg").unwrap().unwrap();
    assert_eq!(cfg.as_object().unwrap().len(), 200_000);
    assert_eq!(cfg["k199999"], 199_999);

    // The same file under a budget of 10,000 objects.
    let limits = Limits {
        pickle_objects: 10_000,
        ..Limits::default()
    };
    let error = WeightFile::open_with(&path, limits)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("the pickle creates more than 10000 objects"),
        "{error}"
    );
}

#[test]
fn broken_pickles_say_where() {
    let (_dir, path) = temp("broken.pth");
    torch_zip(&path, &Pickle::new().op(b"}").str("x").bytes, &[]);
    assert_eq!(
        open(&path).unwrap_err(),
        "archive/data.pkl: the pickle ends at byte 9 without its STOP opcode"
    );
    torch_zip(&path, &Pickle::new().op(b"0").stop(), &[]);
    assert_eq!(
        open(&path).unwrap_err(),
        "archive/data.pkl: pickle opcode 0x30 at byte 2: pops from an empty stack"
    );
    torch_zip(&path, &Pickle::new().op(b"\x82\x01").stop(), &[]);
    assert_eq!(
        open(&path).unwrap_err(),
        "archive/data.pkl: pickle opcode 0x82 at byte 2: is not read (a copyreg extension)"
    );
    // BINUNICODE8 declaring 2⁶⁰ bytes: refused before anything is allocated.
    let mut huge = Pickle::new().op(b"\x8d").bytes;
    huge.extend((1u64 << 60).to_le_bytes());
    torch_zip(&path, &huge, &[]);
    assert!(
        open(&path)
            .unwrap_err()
            .contains("may have at most 268435456 in all")
    );
}

#[test]
fn reads_and_checks_legacy_files() {
    let main = |numel: i32| {
        let p = Pickle::legacy().op(b"}").mark();
        p.str("w")
            .tensor("k0", "FloatStorage", numel, 0, &[2], &[1])
            .str("v")
            .tensor("k1", "FloatStorage", 1, 0, &[1], &[1])
            .op(b"u")
            .stop()
    };
    let (_dir, path) = temp("legacy.pt");
    torch_legacy(
        &path,
        &main(2),
        &[
            ("k0", 2, f32_bytes(&[1.0, 2.0])),
            ("k1", 1, f32_bytes(&[3.0])),
        ],
    );
    let file = WeightFile::open(&path).unwrap();
    assert_eq!(file.format, Format::PytorchLegacy);
    assert_eq!(file.read_f32("w").unwrap(), [1.0, 2.0]);
    assert_eq!(file.read_f32("v").unwrap(), [3.0]);

    // A count smaller than the data would shift every later storage: refused.
    torch_legacy(
        &path,
        &main(2),
        &[
            ("k0", 1, f32_bytes(&[1.0, 2.0])),
            ("k1", 1, f32_bytes(&[3.0])),
        ],
    );
    assert_eq!(
        open(&path).unwrap_err(),
        "storage 'k0' holds 1 elements but its persistent id declares 2"
    );
    // 2⁴⁰ elements declared, a few bytes there.
    torch_legacy(
        &path,
        &main(2),
        &[
            ("k0", 2, f32_bytes(&[1.0, 2.0])),
            ("k1", 1 << 40, f32_bytes(&[3.0])),
        ],
    );
    assert!(
        open(&path)
            .unwrap_err()
            .contains("holds 1099511627776 elements")
    );
}

#[test]
fn safetensors_dtypes_are_named_and_non_finite_values_refused() {
    let (_dir, path) = temp("w.safetensors");
    crate::common::safetensors(
        &path,
        &[
            (
                "ok",
                safetensors::Dtype::F32,
                vec![2],
                f32_bytes(&[1.0, 2.0]),
            ),
            ("bytes", safetensors::Dtype::U8, vec![3], vec![1, 2, 3]),
            (
                "nan",
                safetensors::Dtype::F32,
                vec![1],
                f32_bytes(&[f32::NAN]),
            ),
        ],
    );
    let file = WeightFile::open(&path).unwrap();
    assert_eq!(file.format, Format::Safetensors);
    assert_eq!(file.read_f32("ok").unwrap(), [1.0, 2.0]);
    assert_eq!(
        file.read_f32("bytes").unwrap_err().to_string(),
        "tensor 'bytes' is stored as uint8; kdlab reads weights stored as f32, f16 or bf16"
    );
    assert!(matches!(file.read_f32("nan"), Err(Error::Tensor { .. })));
}

#[test]
fn files_that_are_nothing_known_say_what_they_begin_with() {
    let (_dir, path) = temp("x.bin");
    std::fs::write(&path, b"hello\x00world").unwrap();
    assert_eq!(
        open(&path).unwrap_err(),
        "not a PyTorch checkpoint (zip or legacy) nor a safetensors file: it begins with \
         \"hello\\x00world\""
    );
    std::fs::write(&path, b"").unwrap();
    assert_eq!(open(&path).unwrap_err(), "the file is empty");
}

#[test]
fn reads_views_that_torch_saved_in_both_formats_as_torch_load_reads_them() {
    // tests/fixtures/make_views.py: transposed, offset, strided, f16, bf16 and Parameter views,
    // saved by torch 2.x as a zip and in the legacy format, with what torch.load returned.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("views.json")).unwrap()).unwrap();
    for (name, format) in [
        ("views.pth", Format::PytorchZip),
        ("views_legacy.pt", Format::PytorchLegacy),
    ] {
        let file = WeightFile::open(&dir.join(name)).unwrap();
        assert_eq!(file.format, format);
        let keys: Vec<&str> = file.tensors().map(|(k, _)| k).collect();
        assert_eq!(
            keys.len(),
            expected.as_object().unwrap().len(),
            "{name}: {keys:?}"
        );
        for (key, want) in expected.as_object().unwrap() {
            let info = file
                .tensor(key)
                .unwrap_or_else(|| panic!("{name}: no {key}"));
            let shape: Vec<usize> = serde_json::from_value(want["shape"].clone()).unwrap();
            assert_eq!(info.shape, shape, "{name} {key}");
            if key == "model.index" {
                assert_eq!(info.dtype, Dtype::I64);
                continue;
            }
            let values: Vec<f32> = serde_json::from_value(want["values"].clone()).unwrap();
            assert_eq!(file.read_f32(key).unwrap(), values, "{name} {key}");
        }
    }
}

#[test]
fn many_storages_are_found_through_the_zips_index() {
    // 50,000 tensors, each its own storage entry: a reader that scans the entries per tensor
    // does 2.5·10⁹ name comparisons here.
    let n = 50_000;
    let pickle = state_dict(|mut p| {
        for i in 0..n {
            p = p
                .str(&format!("t{i}"))
                .tensor(&i.to_string(), "FloatStorage", 1, 0, &[1], &[1]);
        }
        p
    });
    let storages: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| (i.to_string(), f32_bytes(&[i as f32])))
        .collect();
    let storages: Vec<(&str, Vec<u8>)> = storages
        .iter()
        .map(|(k, b)| (k.as_str(), b.clone()))
        .collect();
    let (_dir, path) = temp("many.pth");
    torch_zip(&path, &pickle, &storages);
    let file = WeightFile::open(&path).unwrap();
    assert_eq!(file.tensors().count(), n as usize);
    assert_eq!(file.read_f32("model.t49999").unwrap(), [49_999.0]);
}

#[test]
fn tensors_that_show_one_storage_many_times_over_are_refused() {
    // 40 tensors of 1 M elements, all the same 4 MB storage: 160 MB to allocate from a 4 MB file.
    let n = 1 << 20;
    let pickle = state_dict(|mut p| {
        for i in 0..40 {
            p = p
                .str(&format!("t{i}"))
                .tensor("0", "FloatStorage", n, 0, &[n], &[1]);
        }
        p
    });
    let (_dir, path) = temp("aliased.pth");
    torch_zip(&path, &pickle, &[("0", vec![0; 4 << 20])]);
    assert_eq!(
        open(&path).unwrap_err(),
        "the tensors show 167772160 bytes of the 4194304 bytes the file's storages hold: views of \
         one storage by many tensors, more than 4 times over, which no checkpoint needs"
    );
}
