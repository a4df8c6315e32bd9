//! Crafting checkpoints byte by byte: a pickle writer (the opcodes `torch.save` writes, and the
//! ones an attacker would), torch's zip and legacy containers around it, safetensors.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The workspace's fixtures (`tests/fixtures`).
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

/// A pickle, opcode by opcode (protocol 2).
#[derive(Clone, Default)]
pub struct Pickle {
    pub bytes: Vec<u8>,
    /// Storages named as a legacy (torch < 1.6) file names them.
    legacy: bool,
}

impl Pickle {
    pub fn new() -> Self {
        Self {
            bytes: vec![0x80, 2],
            legacy: false,
        }
    }

    /// The main pickle of a legacy file.
    pub fn legacy() -> Self {
        Self {
            legacy: true,
            ..Self::new()
        }
    }

    pub fn op(mut self, bytes: &[u8]) -> Self {
        self.bytes.extend_from_slice(bytes);
        self
    }

    pub fn mark(self) -> Self {
        self.op(b"(")
    }

    pub fn global(self, module: &str, name: &str) -> Self {
        self.op(format!("c{module}\n{name}\n").as_bytes())
    }

    /// An opcode and its argument's bytes.
    fn with_arg(mut self, code: u8, arg: &[u8]) -> Self {
        self.bytes.push(code);
        self.bytes.extend_from_slice(arg);
        self
    }

    pub fn str(self, s: &str) -> Self {
        let mut arg = (s.len() as u32).to_le_bytes().to_vec();
        arg.extend(s.as_bytes());
        self.with_arg(b'X', &arg)
    }

    pub fn int(self, i: i32) -> Self {
        self.with_arg(b'J', &i.to_le_bytes())
    }

    pub fn ints(self, values: &[i32]) -> Self {
        values.iter().fold(self.mark(), |p, &v| p.int(v)).op(b"t")
    }

    pub fn put(self, index: u32) -> Self {
        self.with_arg(b'r', &index.to_le_bytes())
    }

    pub fn get(self, index: u32) -> Self {
        self.with_arg(b'j', &index.to_le_bytes())
    }

    /// A storage's persistent id: `('storage', torch.<class>, key, 'cpu', numel)`, and a legacy
    /// file's view metadata (`None`) after it.
    pub fn storage(self, class: &str, key: &str, numel: i32) -> Self {
        let legacy = self.legacy;
        let p = self
            .mark()
            .str("storage")
            .global("torch", class)
            .str(key)
            .str("cpu")
            .int(numel);
        let p = if legacy { p.op(b"N") } else { p };
        p.op(b"tQ")
    }

    /// `torch._utils._rebuild_tensor_v2(storage, offset, shape, stride, False, OrderedDict())`.
    pub fn tensor(
        self,
        storage: &str,
        class: &str,
        numel: i32,
        offset: i32,
        shape: &[i32],
        stride: &[i32],
    ) -> Self {
        self.global("torch._utils", "_rebuild_tensor_v2")
            .mark()
            .storage(class, storage, numel)
            .int(offset)
            .ints(shape)
            .ints(stride)
            .op(b"\x89")
            .global("collections", "OrderedDict")
            .op(b")R")
            .op(b"tR")
    }

    pub fn stop(self) -> Vec<u8> {
        self.op(b".").bytes
    }
}

/// A torch ≥ 1.6 checkpoint: `archive/data.pkl`, `archive/byteorder`, `archive/data/<key>`.
pub fn torch_zip(path: &Path, pickle: &[u8], storages: &[(&str, Vec<u8>)]) {
    torch_zip_with(path, pickle, storages, zip::CompressionMethod::Stored)
}

pub fn torch_zip_with(
    path: &Path,
    pickle: &[u8],
    storages: &[(&str, Vec<u8>)],
    method: zip::CompressionMethod,
) {
    let file = std::fs::File::create(path).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", stored).unwrap();
    zip.write_all(pickle).unwrap();
    zip.start_file("archive/byteorder", stored).unwrap();
    zip.write_all(b"little").unwrap();
    for (key, bytes) in storages {
        let options = zip::write::SimpleFileOptions::default().compression_method(method);
        zip.start_file(format!("archive/data/{key}"), options)
            .unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
}

/// A legacy (torch < 1.6) checkpoint: magic, protocol, system info, `main`, the storage keys,
/// then each storage as (element count, bytes).
pub fn torch_legacy(path: &Path, main: &[u8], storages: &[(&str, u64, Vec<u8>)]) {
    let mut out = Vec::new();
    out.extend([
        0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, b'.',
    ]);
    out.extend(Pickle::new().op(b"M\xe9\x03").stop()); // 1001
    out.extend(
        Pickle::new()
            .op(b"}")
            .str("little_endian")
            .op(b"\x88s")
            .stop(),
    );
    out.extend(main);
    let keys = storages
        .iter()
        .fold(Pickle::new().op(b"]").mark(), |p, (k, _, _)| p.str(k))
        .op(b"e")
        .stop();
    out.extend(keys);
    for (_, count, bytes) in storages {
        out.extend(count.to_le_bytes());
        out.extend(bytes);
    }
    std::fs::write(path, out).unwrap();
}

pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub fn safetensors(path: &Path, tensors: &[(&str, safetensors::Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            (
                name.to_string(),
                safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}
