//! PyTorch's two containers around the pickle, and the storages' bytes.
//!
//! - zip (torch ≥ 1.6): `<name>/data.pkl`, one entry `<name>/data/<key>` per storage, and
//!   `<name>/byteorder`. Entries are found through the zip's own index of names (constant time
//!   per storage); a storage entry must hold exactly the bytes its persistent id declares, and a
//!   stored (uncompressed, as `torch.save` writes) entry must lie inside the file.
//! - legacy (torch < 1.6): five pickles (magic number, protocol, system info, the object, the
//!   storage keys), then each storage as its element count and its bytes; the count must equal
//!   the one the pickle declares, and every storage must end inside the file.
//!
//! A tensor is a view of a storage (offset, shape, strides in elements); the view must lie inside
//! its storage and must not overlap itself, so that no tensor holds more elements than the file
//! holds bytes for. Only the bytes a view spans are read, and strides are honoured as torch does.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};

use zip::{CompressionMethod, ZipArchive};

use crate::elements::Dtype;
use crate::pickle::{self, Pickle, Storage, TensorView, Value};
use crate::{Error, Format, Limits, Location, Source, TensorInfo, WeightFile};

/// Index of a storage in `Storages::entries`.
pub(crate) type StorageId = usize;

/// The storages' places in the file, checked, and the file to read them from.
pub(crate) struct Storages {
    file: Container,
    entries: Vec<StorageEntry>,
    by_key: HashMap<String, StorageId>,
}

enum Container {
    Zip {
        archive: RefCell<ZipArchive<BufReader<File>>>,
        /// `<name>/`: where `data.pkl` and `data/` are.
        prefix: String,
        file_len: u64,
    },
    Legacy {
        file: RefCell<File>,
        /// Storage key → where its bytes start and its element count (from the file).
        places: HashMap<String, (u64, u64)>,
    },
}

struct StorageEntry {
    dtype: Dtype,
    numel: u64,
    /// Bytes per element.
    size: u64,
    place: Place,
}

enum Place {
    ZipEntry { index: usize, stored: bool },
    FileOffset(u64),
}

/// `pickle.dump(0x1950a86a20f9469cfc6c, f, protocol=2)`, as legacy `torch.save` begins.
const LEGACY_HEAD: [u8; 14] = [
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19,
];

pub(crate) fn looks_legacy(head: &[u8]) -> bool {
    head.starts_with(&LEGACY_HEAD)
}

pub(crate) fn open_zip(file: File, limits: Limits) -> Result<WeightFile, Error> {
    let file_len = file.metadata()?.len();
    let mut archive = ZipArchive::new(BufReader::new(file))
        .map_err(|e| Error::invalid(format!("not a readable zip archive ({e})")))?;
    // `<name>/data.pkl`, the one at the top of the archive's folder.
    let pickle_index = (0..archive.len())
        .find(|&i| {
            archive
                .name_for_index(i)
                .and_then(|n| n.strip_suffix("data.pkl"))
                .is_some_and(|prefix| {
                    prefix.is_empty() || prefix.matches('/').count() == 1 && prefix.ends_with('/')
                })
        })
        .ok_or_else(|| {
            Error::invalid("a zip without a data.pkl: not a checkpoint torch.save wrote")
        })?;
    let prefix = archive
        .name_for_index(pickle_index)
        .and_then(|n| n.strip_suffix("data.pkl"))
        .unwrap_or_default()
        .to_string();
    if let Some(index) = archive.index_for_name(&format!("{prefix}byteorder")) {
        let mut order = String::new();
        archive
            .by_index(index)
            .map_err(|e| Error::invalid(format!("cannot read {prefix}byteorder ({e})")))?
            .take(16)
            .read_to_string(&mut order)
            .map_err(|e| Error::invalid(format!("cannot read {prefix}byteorder ({e})")))?;
        if order.trim() != "little" {
            return Err(Error::invalid(format!(
                "{prefix}byteorder is '{}'; kdlab reads little-endian checkpoints only",
                order.trim()
            )));
        }
    }
    let pickle = {
        let mut entry = archive
            .by_index(pickle_index)
            .map_err(|e| Error::invalid(format!("cannot read {prefix}data.pkl ({e})")))?;
        pickle::parse(&mut entry, &limits, &mut |p, pid| zip_storage(p, pid))
            .map_err(|e| in_entry(e, &format!("{prefix}data.pkl")))?
    };
    let storages = Storages {
        file: Container::Zip {
            archive: RefCell::new(archive),
            prefix,
            file_len,
        },
        entries: Vec::new(),
        by_key: HashMap::new(),
    };
    finish(Format::PytorchZip, pickle, storages, limits)
}

/// `('storage', torch.FloatStorage, key, location, numel)`.
fn zip_storage(pickle: &Pickle, pid: pickle::Id) -> Result<Storage, String> {
    let items = persistent_id(pickle, pid)?;
    if items.len() != 5 {
        return Err(format!(
            "a storage's persistent id has {} fields, not 5",
            items.len()
        ));
    }
    storage_of(pickle, &items)
}

fn persistent_id(pickle: &Pickle, pid: pickle::Id) -> Result<Vec<pickle::Id>, String> {
    let Value::Tuple(items) = pickle.value(pid) else {
        return Err("a persistent id that is not a tuple".into());
    };
    match items.first().map(|&i| pickle.value(i)) {
        Some(Value::Str(s)) if &**s == "storage" => Ok(items.to_vec()),
        _ => Err("a persistent id that is not a storage's".into()),
    }
}

fn storage_of(pickle: &Pickle, items: &[pickle::Id]) -> Result<Storage, String> {
    let dtype = match pickle.value(items[1]) {
        Value::Global(g) if g.0 == "torch" => Dtype::of_torch_storage(&g.1),
        Value::Global(g) => Dtype::Other(format!("{}.{}", g.0, g.1)),
        _ => return Err("a storage's type is not a class".into()),
    };
    let key = match pickle.value(items[2]) {
        Value::Str(s) => s.to_string(),
        Value::Int(i) => i.to_string(),
        _ => return Err("a storage's key is not a string".into()),
    };
    let numel = match pickle.value(items[4]) {
        Value::Int(n) if *n >= 0 => *n as u64,
        _ => return Err(format!("storage '{key}' has no element count")),
    };
    Ok(Storage { key, dtype, numel })
}

pub(crate) fn open_legacy(mut file: File, limits: Limits) -> Result<WeightFile, Error> {
    let file_len = file.metadata()?.len();
    file.rewind()?;
    let mut reader = Counting {
        inner: BufReader::new(file),
        read: 0,
    };
    let no_storage = |_: &Pickle, _| Err("a storage outside the file's main pickle".to_string());
    for what in ["magic number", "protocol version"] {
        let p = pickle::parse(&mut reader, &limits, &mut no_storage.clone())
            .map_err(|e| in_entry(e, &format!("the {what} pickle")))?;
        if what == "protocol version" && !matches!(p.value(p.root()), Value::Int(1001)) {
            return Err(Error::invalid(
                "a legacy checkpoint whose protocol version is not 1001",
            ));
        }
    }
    let system = pickle::parse(&mut reader, &limits, &mut no_storage.clone())
        .map_err(|e| in_entry(e, "the system-information pickle"))?;
    let system = system.to_json(system.root(), "system information", &limits)?;
    if system.get("little_endian") == Some(&serde_json::Value::Bool(false)) {
        return Err(Error::invalid(
            "a big-endian legacy checkpoint; kdlab reads little-endian checkpoints only",
        ));
    }
    let main = pickle::parse(&mut reader, &limits, &mut |p, pid| {
        let items = persistent_id(p, pid)?;
        if items.len() != 6 {
            return Err(format!(
                "a legacy storage's persistent id has {} fields, not 6",
                items.len()
            ));
        }
        if !matches!(p.value(items[5]), Value::None) {
            return Err("a storage view (PyTorch < 1.0) is not read".into());
        }
        storage_of(p, &items)
    })
    .map_err(|e| in_entry(e, "the main pickle"))?;
    let keys = pickle::parse(&mut reader, &limits, &mut no_storage.clone())
        .map_err(|e| in_entry(e, "the storage-keys pickle"))?;
    let Value::List(key_ids) = keys.value(keys.root()) else {
        return Err(Error::invalid("the storage-keys pickle is not a list"));
    };
    let declared = declared_storages(&main, &limits)?;
    let mut file = reader.inner.into_inner();
    let mut at = reader.read;
    let mut places = HashMap::new();
    for &id in key_ids {
        let key = match keys.value(id) {
            Value::Str(s) => s.to_string(),
            _ => return Err(Error::invalid("a storage key that is not a string")),
        };
        let Some(storage) = declared.get(&key) else {
            return Err(Error::invalid(format!(
                "storage '{key}' is in the file but no tensor names its type"
            )));
        };
        let size = storage.dtype.size().ok_or_else(|| {
            Error::invalid(format!(
                "storage '{key}' is of type {}, which kdlab does not read",
                storage.dtype
            ))
        })?;
        file.seek(SeekFrom::Start(at))?;
        let mut count = [0u8; 8];
        file.read_exact(&mut count).map_err(|_| {
            Error::invalid(format!(
                "the file ends before storage '{key}' (at byte {at})"
            ))
        })?;
        let count = u64::from_le_bytes(count);
        if count != storage.numel {
            return Err(Error::invalid(format!(
                "storage '{key}' holds {count} elements but its persistent id declares {}",
                storage.numel
            )));
        }
        let start = at + 8;
        let end = count
            .checked_mul(size)
            .and_then(|bytes| start.checked_add(bytes))
            .filter(|&end| end <= file_len)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "storage '{key}' declares {count} elements of {} but the file ends after \
                     {file_len} bytes",
                    storage.dtype
                ))
            })?;
        places.insert(key, (start, count));
        at = end;
    }
    if let Some(missing) = declared.keys().find(|k| !places.contains_key(*k)) {
        return Err(Error::invalid(format!(
            "storage '{missing}' is used by a tensor but is not in the file's list of storages"
        )));
    }
    let storages = Storages {
        file: Container::Legacy {
            file: RefCell::new(file),
            places,
        },
        entries: Vec::new(),
        by_key: HashMap::new(),
    };
    finish(Format::PytorchLegacy, main, storages, limits)
}

/// The storages the tensors of `pickle` name, by key.
fn declared_storages(pickle: &Pickle, limits: &Limits) -> Result<BTreeMap<String, Storage>, Error> {
    let mut declared = BTreeMap::new();
    for view in pickle.tensors(limits)?.tensors.values() {
        declared.insert(view.storage.key.clone(), view.storage.clone());
    }
    Ok(declared)
}

/// Checks every tensor against its storage and the storage against the file.
fn finish(
    format: Format,
    pickle: Pickle,
    mut storages: Storages,
    limits: Limits,
) -> Result<WeightFile, Error> {
    let mut tensors = BTreeMap::new();
    let mut unreadable = BTreeMap::new();
    {
        let found = pickle.tensors(&limits)?;
        unreadable.extend(found.unreadable);
        for (key, view) in found.tensors {
            let tensor_error = |message: String| Error::Tensor {
                key: key.clone(),
                message,
            };
            let Some(size) = view.storage.dtype.size() else {
                unreadable.insert(
                    key.clone(),
                    format!(
                        "is stored as {}, which kdlab does not read",
                        view.storage.dtype
                    ),
                );
                continue;
            };
            check_view(view).map_err(tensor_error)?;
            let storage = storages
                .resolve(&view.storage, size)
                .map_err(tensor_error)?;
            let shape = view
                .shape
                .iter()
                .map(|&d| {
                    usize::try_from(d).map_err(|_| tensor_error(format!("has a size of {d}")))
                })
                .collect::<Result<_, _>>()?;
            tensors.insert(
                key,
                TensorInfo {
                    dtype: view.storage.dtype.clone(),
                    shape,
                    location: Location::Storage {
                        storage,
                        offset: view.offset,
                        strides: view.strides.clone(),
                    },
                },
            );
        }
    }
    check_aliasing(&tensors, &storages)?;
    Ok(WeightFile {
        format,
        tensors,
        unreadable,
        metadata: BTreeMap::new(),
        pickle: Some(pickle),
        limits,
        source: std::rc::Rc::new(Source::Torch(storages)),
    })
}

/// Tensors may view one storage (tied weights, a saved `w` beside `w.t()`), but a file whose
/// tensors show its storages' bytes many times over would make a reader allocate far more than
/// the file holds: refused past `ALIAS_FACTOR` times (and a floor for small files).
fn check_aliasing(
    tensors: &BTreeMap<String, TensorInfo>,
    storages: &Storages,
) -> Result<(), Error> {
    const ALIAS_FACTOR: u128 = 4;
    const FLOOR: u128 = 64 << 20;
    let stored: u128 = storages
        .entries
        .iter()
        .map(|e| u128::from(e.numel) * u128::from(e.size))
        .sum();
    let viewed: u128 = tensors
        .values()
        .map(|t| {
            let size = t.dtype.size().unwrap_or(1);
            t.shape.iter().map(|&d| d as u128).product::<u128>() * u128::from(size)
        })
        .sum();
    if viewed > ALIAS_FACTOR * stored + FLOOR {
        return Err(Error::invalid(format!(
            "the tensors show {viewed} bytes of the {stored} bytes the file's storages hold: \
             views of one storage by many tensors, more than {ALIAS_FACTOR} times over, which no \
             checkpoint needs"
        )));
    }
    Ok(())
}

/// The view lies inside its storage and no two of its elements are the same element.
fn check_view(view: &TensorView) -> Result<(), String> {
    let (shape, strides) = (&view.shape, &view.strides);
    if shape.len() != strides.len() {
        return Err(format!(
            "has {} sizes but {} strides",
            shape.len(),
            strides.len()
        ));
    }
    let numel = shape
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d))
        .ok_or_else(|| format!("has a shape {shape:?} whose element count overflows"))?;
    if numel == 0 {
        return Ok(());
    }
    let last = last_element(view).ok_or_else(|| {
        format!(
            "has a view (offset {}, shape {shape:?}, stride {strides:?}) that overflows",
            view.offset
        )
    })?;
    if last >= view.storage.numel {
        return Err(format!(
            "reads elements {}..={last} (offset {}, shape {shape:?}, stride {strides:?}) of \
             storage '{}', which declares {} elements",
            view.offset, view.offset, view.storage.key, view.storage.numel
        ));
    }
    // Dimensions of size > 1 by increasing stride: each must step past all the elements of the
    // ones before it, or two indices would name one element (an expanded or overlapping view,
    // which torch.save never writes for a parameter).
    let mut dims: Vec<(u64, u64)> = shape
        .iter()
        .zip(strides)
        .filter(|&(&d, _)| d > 1)
        .map(|(&d, &s)| (s, d))
        .collect();
    dims.sort_unstable();
    let mut span = 1u64;
    for (stride, size) in dims {
        if stride < span {
            return Err(format!(
                "has strides {strides:?} for shape {shape:?}: its elements overlap, which kdlab \
                 does not read"
            ));
        }
        span = stride.saturating_mul(size);
    }
    Ok(())
}

/// `offset + Σ (size − 1) · stride`, the last element a non-empty view reads.
fn last_element(view: &TensorView) -> Option<u64> {
    view.shape
        .iter()
        .zip(&view.strides)
        .try_fold(view.offset, |at, (&d, &s)| {
            at.checked_add((d - 1).checked_mul(s)?)
        })
}

impl Storages {
    /// The storage's place in the file, checked the first time a tensor names it.
    fn resolve(&mut self, storage: &Storage, size: u64) -> Result<StorageId, String> {
        if let Some(&id) = self.by_key.get(&storage.key) {
            let known = &self.entries[id];
            if known.dtype != storage.dtype || known.numel != storage.numel {
                return Err(format!(
                    "names storage '{}' as {} × {}, which another tensor names differently",
                    storage.key, storage.numel, storage.dtype
                ));
            }
            return Ok(id);
        }
        let bytes = storage.numel.checked_mul(size).ok_or_else(|| {
            format!(
                "names storage '{}' of {} elements, which overflows",
                storage.key, storage.numel
            )
        })?;
        let place = match &self.file {
            Container::Zip {
                archive,
                prefix,
                file_len,
            } => {
                let name = format!("{prefix}data/{}", storage.key);
                let mut archive = archive.borrow_mut();
                let index = archive
                    .index_for_name(&name)
                    .ok_or_else(|| format!("needs zip entry '{name}', which the file lacks"))?;
                let entry = archive
                    .by_index_raw(index)
                    .map_err(|e| format!("cannot read zip entry '{name}' ({e})"))?;
                if entry.size() != bytes {
                    return Err(format!(
                        "needs zip entry '{name}' to hold {bytes} bytes ({} elements of {}), but \
                         it holds {}",
                        storage.numel,
                        storage.dtype,
                        entry.size()
                    ));
                }
                let stored = match entry.compression() {
                    CompressionMethod::Stored => {
                        let start = entry.data_start().unwrap_or(u64::MAX);
                        if entry.compressed_size() != bytes
                            || start.checked_add(bytes).is_none_or(|end| end > *file_len)
                        {
                            return Err(format!(
                                "needs zip entry '{name}' ({bytes} bytes from byte {start}) \
                                 but the file ends at byte {file_len}"
                            ));
                        }
                        true
                    }
                    // Deflate inflates at most 1032-fold: an entry that claims more lies.
                    CompressionMethod::Deflated
                        if bytes <= entry.compressed_size().saturating_mul(1032) + 64 =>
                    {
                        false
                    }
                    CompressionMethod::Deflated => {
                        return Err(format!(
                            "needs zip entry '{name}', which claims to inflate {} bytes into \
                             {bytes}, more than deflate can",
                            entry.compressed_size()
                        ));
                    }
                    other => {
                        return Err(format!(
                            "needs zip entry '{name}', compressed as {other}; torch.save stores \
                             storages uncompressed and kdlab reads them stored or deflated"
                        ));
                    }
                };
                Place::ZipEntry { index, stored }
            }
            Container::Legacy { places, .. } => match places.get(&storage.key) {
                Some(&(start, numel)) if numel == storage.numel => Place::FileOffset(start),
                Some(&(_, numel)) => {
                    return Err(format!(
                        "names storage '{}' of {} elements, but the file holds {numel}",
                        storage.key, storage.numel
                    ));
                }
                None => {
                    return Err(format!(
                        "needs storage '{}', which the file lacks",
                        storage.key
                    ));
                }
            },
        };
        let id = self.entries.len();
        self.entries.push(StorageEntry {
            dtype: storage.dtype.clone(),
            numel: storage.numel,
            size,
            place,
        });
        self.by_key.insert(storage.key.clone(), id);
        Ok(id)
    }

    /// The elements of a checked view, contiguous in row-major order, as bytes.
    pub(crate) fn read_view(
        &self,
        storage: StorageId,
        offset: u64,
        shape: &[usize],
        strides: &[u64],
    ) -> Result<Vec<u8>, Error> {
        let entry = &self.entries[storage];
        let size = entry.size as usize;
        let numel: usize = shape.iter().product();
        if numel == 0 {
            return Ok(Vec::new());
        }
        let shape64: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
        let view = TensorView {
            storage: Storage {
                key: String::new(),
                dtype: entry.dtype.clone(),
                numel: u64::MAX,
            },
            offset,
            shape: shape64,
            strides: strides.to_vec(),
        };
        // Checked when the file was opened.
        let last = last_element(&view).unwrap_or(offset);
        let start = offset * entry.size;
        let span = ((last - offset + 1) * entry.size) as usize;
        let mut bytes = vec![0u8; span];
        match (&self.file, &entry.place) {
            (
                Container::Zip { archive, .. },
                Place::ZipEntry {
                    index,
                    stored: true,
                },
            ) => {
                let mut archive = archive.borrow_mut();
                let mut data = archive
                    .by_index_seek(*index)
                    .map_err(|e| Error::invalid(format!("cannot read a storage ({e})")))?;
                data.seek(SeekFrom::Start(start))?;
                data.read_exact(&mut bytes)?;
            }
            (
                Container::Zip { archive, .. },
                Place::ZipEntry {
                    index,
                    stored: false,
                },
            ) => {
                let mut archive = archive.borrow_mut();
                let mut data = archive
                    .by_index(*index)
                    .map_err(|e| Error::invalid(format!("cannot read a storage ({e})")))?;
                let skipped = std::io::copy(&mut (&mut data).take(start), &mut std::io::sink())?;
                if skipped < start {
                    return Err(Error::invalid("a compressed storage ends early"));
                }
                data.read_exact(&mut bytes)?;
            }
            (Container::Legacy { file, .. }, Place::FileOffset(at)) => {
                let mut file = file.borrow_mut();
                file.seek(SeekFrom::Start(at + start))?;
                file.read_exact(&mut bytes)?;
            }
            _ => unreachable!("a storage's place comes from its own container"),
        }
        if is_contiguous(shape, strides) {
            return Ok(bytes);
        }
        // Gather in row-major order: an odometer over the indices, the source position kept
        // incrementally.
        let mut out = Vec::with_capacity(numel * size);
        let mut index = vec![0usize; shape.len()];
        let mut at = 0usize;
        for _ in 0..numel {
            out.extend_from_slice(&bytes[at * size..(at + 1) * size]);
            for d in (0..shape.len()).rev() {
                index[d] += 1;
                at += strides[d] as usize;
                if index[d] < shape[d] {
                    break;
                }
                at -= strides[d] as usize * shape[d];
                index[d] = 0;
            }
        }
        Ok(out)
    }
}

/// Row-major strides (dimensions of size 1 may have any stride).
fn is_contiguous(shape: &[usize], strides: &[u64]) -> bool {
    let mut expected = 1u64;
    for (&d, &s) in shape.iter().zip(strides).rev() {
        if d != 1 && s != expected {
            return false;
        }
        expected *= d as u64;
    }
    true
}

/// An error inside one part of the file, said with the part's name.
fn in_entry(error: Error, part: &str) -> Error {
    match error {
        Error::Invalid(message) => Error::Invalid(format!("{part}: {message}")),
        other => other,
    }
}

/// Counts the bytes the pickles consumed, so that the legacy storages are found after them.
struct Counting<R> {
    inner: R,
    read: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}
