//! TensorBoard event files: the writer a run's scalars and probe maps go through
//! (`runs/<run>/tb/`, read by `tensorboard --logdir runs`), and the reader the tests check them
//! with.
//!
//! An event file is a sequence of records (TFRecord framing,
//! tensorflow/core/lib/io/record_writer.cc), each holding one `Event` protobuf:
//!
//! ```text
//! u64 length (LE) | u32 masked CRC-32C of those 8 bytes | Event | u32 masked CRC-32C of Event
//! ```
//!
//! The first event carries only `file_version: "brain.Event:2"`; every later one a `Summary`
//! with one value, a scalar or a PNG.
//!
//! Why no crate: tensorboard-rs (last release 2022) pulls protobuf 2 and a second `image`
//! (0.23), and tboard generates its code with prost-build, which needs `protoc` at build time.
//! kdlab writes four small messages, encoded by hand below from
//! tensorflow/core/util/event.proto and tensorflow/core/framework/summary.proto.

use std::fs::{File, OpenOptions};
use std::io::{self, Cursor, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use image::ImageDecoder;

/// The file version TensorBoard's loader expects in the first event.
pub const FILE_VERSION: &str = "brain.Event:2";

/// Event files start with this (TensorBoard lists any file whose name contains "tfevents").
const FILE_PREFIX: &str = "events.out.tfevents.";

const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// CRC-32C (Castagnoli), the checksum of TFRecord framing.
pub fn crc32c(bytes: &[u8]) -> u32 {
    CRC32C.checksum(bytes)
}

/// The CRC as records store it, rotated and offset (tensorflow/core/lib/hash/crc32c.h, `Mask`):
/// a CRC computed over data that itself holds CRCs is then no longer trivially related.
pub fn masked_crc32c(bytes: &[u8]) -> u32 {
    crc32c(bytes).rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Appends events to a new file in a folder; each event is written whole and at once, so a live
/// run shows up in TensorBoard as it goes.
#[derive(Debug)]
pub struct EventWriter {
    file: File,
    path: PathBuf,
}

impl EventWriter {
    /// `dir/events.out.tfevents.<unix secs>.<host>.<pid>`, new, with its file-version event. The
    /// pid keeps two writers started in the same second (a quick resume) apart.
    pub fn create(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let (secs, pid) = (wall_time() as u64, std::process::id());
        let path = dir.join(format!("{FILE_PREFIX}{secs}.{}.{pid}", hostname()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let mut writer = Self { file, path };
        writer
            .write_event(0, 3, FILE_VERSION.as_bytes())
            .with_context(|| format!("cannot write {}", writer.path.display()))?;
        Ok(writer)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A scalar summary: `tag`'s value at `step`.
    pub fn scalar(&mut self, tag: &str, step: u64, value: f32) -> io::Result<()> {
        let mut value_message = Vec::new();
        put_bytes(&mut value_message, 1, tag.as_bytes());
        put_fixed32(&mut value_message, 2, value.to_bits());
        self.write_summary(step, &value_message)
    }

    /// An image summary of a PNG file's bytes, its size and colour space read from its header;
    /// bytes that are not a PNG are an `InvalidData` error and nothing is written.
    pub fn image(&mut self, tag: &str, step: u64, png: &[u8]) -> io::Result<()> {
        let header = PngHeader::of(png)?;
        let mut image = Vec::new();
        put_varint_field(&mut image, 1, header.height.into());
        put_varint_field(&mut image, 2, header.width.into());
        put_varint_field(&mut image, 3, header.colorspace.into());
        put_bytes(&mut image, 4, png);
        let mut value_message = Vec::new();
        put_bytes(&mut value_message, 1, tag.as_bytes());
        put_bytes(&mut value_message, 4, &image);
        self.write_summary(step, &value_message)
    }

    /// An Event whose Summary holds the one encoded `Value`.
    fn write_summary(&mut self, step: u64, value: &[u8]) -> io::Result<()> {
        let mut summary = Vec::new();
        put_bytes(&mut summary, 1, value);
        self.write_event(step, 5, &summary)
    }

    /// An Event with its wall time, `step`, and one length-delimited field (3: file_version,
    /// 5: summary), framed as a record.
    fn write_event(&mut self, step: u64, field: u32, payload: &[u8]) -> io::Result<()> {
        let mut event = Vec::with_capacity(payload.len() + 24);
        put_key(&mut event, 1, WIRE_FIXED64);
        event.extend(wall_time().to_bits().to_le_bytes());
        put_varint_field(&mut event, 2, step);
        put_bytes(&mut event, field, payload);
        self.file.write_all(&record(&event))?;
        self.file.flush()
    }
}

/// One TFRecord: length, its masked CRC, the data, the data's masked CRC.
fn record(data: &[u8]) -> Vec<u8> {
    let length = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend(length);
    out.extend(masked_crc32c(&length).to_le_bytes());
    out.extend(data);
    out.extend(masked_crc32c(data).to_le_bytes());
    out
}

/// Seconds since the Unix epoch, as Event.wall_time holds them.
fn wall_time() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The machine's name for the file name, as TensorFlow's writer puts it there; "localhost" where
/// the system does not say, and only file-name-safe characters.
fn hostname() -> String {
    let name = ["/etc/hostname", "/proc/sys/kernel/hostname"]
        .iter()
        .find_map(|path| {
            let text = std::fs::read_to_string(path).ok()?;
            let name = text.trim().to_string();
            (!name.is_empty()).then_some(name)
        })
        .unwrap_or_else(|| "localhost".to_string());
    name.chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' | '.' => c,
            _ => '_',
        })
        .collect()
}

/// What summary.proto's `Image` says about a PNG besides its bytes.
struct PngHeader {
    width: u32,
    height: u32,
    /// 1 grayscale, 2 grayscale + alpha, 3 RGB, 4 RGBA.
    colorspace: u32,
}

impl PngHeader {
    fn of(png: &[u8]) -> io::Result<Self> {
        let invalid = |e: image::ImageError| io::Error::new(io::ErrorKind::InvalidData, e);
        let decoder = image::codecs::png::PngDecoder::new(Cursor::new(png)).map_err(invalid)?;
        let (width, height) = decoder.dimensions();
        let color = decoder.color_type();
        let colorspace = match (color.has_color(), color.has_alpha()) {
            (false, false) => 1,
            (false, true) => 2,
            (true, false) => 3,
            (true, true) => 4,
        };
        Ok(Self {
            width,
            height,
            colorspace,
        })
    }
}

// ---- Protobuf encoding (https://protobuf.dev/programming-guides/encoding/) ----------------

const WIRE_VARINT: u32 = 0;
const WIRE_FIXED64: u32 = 1;
const WIRE_BYTES: u32 = 2;
const WIRE_FIXED32: u32 = 5;

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, wire: u32) {
    put_varint(out, u64::from(field << 3 | wire));
}

fn put_varint_field(out: &mut Vec<u8>, field: u32, value: u64) {
    put_key(out, field, WIRE_VARINT);
    put_varint(out, value);
}

fn put_fixed32(out: &mut Vec<u8>, field: u32, bits: u32) {
    put_key(out, field, WIRE_FIXED32);
    out.extend(bits.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, WIRE_BYTES);
    put_varint(out, bytes.len() as u64);
    out.extend(bytes);
}

// ---- Reading back: the check the tests use ------------------------------------------------

/// One event as read back: the subset of event.proto kdlab writes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TbEvent {
    pub wall_time: f64,
    pub step: i64,
    /// Set on the first event of a file only.
    pub file_version: Option<String>,
    /// The summary's values (none on the file-version event).
    pub values: Vec<TbValue>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TbValue {
    pub tag: String,
    pub data: TbData,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TbData {
    Scalar(f32),
    Image {
        width: u32,
        height: u32,
        colorspace: u32,
        encoded: Vec<u8>,
    },
    /// A kind kdlab does not write (histogram, audio, tensor).
    Other,
}

#[derive(Debug, thiserror::Error)]
pub enum TbReadError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: record {record} (at byte {offset}): {problem}")]
    Record {
        path: PathBuf,
        /// 0 is the file-version event.
        record: usize,
        offset: usize,
        problem: RecordProblem,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordProblem {
    #[error("the file ends inside the record")]
    Truncated,
    #[error("the length's masked CRC-32C is {found:#010x}, its bytes give {computed:#010x}")]
    LengthCrc { found: u32, computed: u32 },
    #[error("the event's masked CRC-32C is {found:#010x}, its bytes give {computed:#010x}")]
    DataCrc { found: u32, computed: u32 },
    #[error("not an Event protobuf: {0}")]
    Protobuf(&'static str),
}

/// The event files in `dir`, sorted by name (their creation time), as TensorBoard reads them.
pub fn event_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(FILE_PREFIX))
        .map(|e| e.path())
        .collect();
    files.sort();
    files
}

/// Every event of a file, after checking both CRCs of every record; the first bad record is an
/// error naming its index and byte offset.
pub fn read_events(path: &Path) -> Result<Vec<TbEvent>, TbReadError> {
    let bytes = std::fs::read(path).map_err(|source| TbReadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let (mut events, mut offset) = (Vec::new(), 0);
    while offset < bytes.len() {
        let at = |problem| TbReadError::Record {
            path: path.to_path_buf(),
            record: events.len(),
            offset,
            problem,
        };
        let (data, next) = next_record(&bytes, offset).map_err(at)?;
        let event = decode_event(data).map_err(|e| at(RecordProblem::Protobuf(e)))?;
        events.push(event);
        offset = next;
    }
    Ok(events)
}

/// The data of the record at `offset`, checked, and where the next record starts.
fn next_record(bytes: &[u8], offset: usize) -> Result<(&[u8], usize), RecordProblem> {
    let rest = &bytes[offset..];
    let (length, rest) = rest
        .split_first_chunk::<8>()
        .ok_or(RecordProblem::Truncated)?;
    let (length_crc, rest) = rest
        .split_first_chunk::<4>()
        .ok_or(RecordProblem::Truncated)?;
    let (found, computed) = (u32::from_le_bytes(*length_crc), masked_crc32c(length));
    if found != computed {
        return Err(RecordProblem::LengthCrc { found, computed });
    }
    let data_len =
        usize::try_from(u64::from_le_bytes(*length)).map_err(|_| RecordProblem::Truncated)?;
    let (data, rest) = rest
        .split_at_checked(data_len)
        .ok_or(RecordProblem::Truncated)?;
    let (data_crc, _) = rest
        .split_first_chunk::<4>()
        .ok_or(RecordProblem::Truncated)?;
    let (found, computed) = (u32::from_le_bytes(*data_crc), masked_crc32c(data));
    if found != computed {
        return Err(RecordProblem::DataCrc { found, computed });
    }
    Ok((data, offset + 12 + data_len + 4))
}

type Decoded<T> = Result<T, &'static str>;

fn decode_event(bytes: &[u8]) -> Decoded<TbEvent> {
    let mut event = TbEvent::default();
    for (field, wire) in fields(bytes)? {
        match field {
            1 => event.wall_time = f64::from_bits(wire.fixed64()?),
            2 => event.step = wire.varint()? as i64,
            3 => event.file_version = Some(utf8(wire.bytes()?)?),
            5 => event.values = decode_summary(wire.bytes()?)?,
            _ => {} // graph_def, log_message, …: kdlab writes none
        }
    }
    Ok(event)
}

fn decode_summary(bytes: &[u8]) -> Decoded<Vec<TbValue>> {
    let values = fields(bytes)?.into_iter().filter(|(field, _)| *field == 1);
    values
        .map(|(_, wire)| decode_value(wire.bytes()?))
        .collect()
}

fn decode_value(bytes: &[u8]) -> Decoded<TbValue> {
    let (mut tag, mut data) = (String::new(), TbData::Other);
    for (field, wire) in fields(bytes)? {
        match field {
            1 => tag = utf8(wire.bytes()?)?,
            2 => data = TbData::Scalar(f32::from_bits(wire.fixed32()?)),
            4 => data = decode_image(wire.bytes()?)?,
            _ => {} // node_name, histo, audio, tensor, metadata
        }
    }
    Ok(TbValue { tag, data })
}

fn decode_image(bytes: &[u8]) -> Decoded<TbData> {
    let (mut width, mut height, mut colorspace, mut encoded) = (0, 0, 0, Vec::new());
    for (field, wire) in fields(bytes)? {
        match field {
            1 => height = wire.varint()? as u32,
            2 => width = wire.varint()? as u32,
            3 => colorspace = wire.varint()? as u32,
            4 => encoded = wire.bytes()?.to_vec(),
            _ => {}
        }
    }
    Ok(TbData::Image {
        width,
        height,
        colorspace,
        encoded,
    })
}

fn utf8(bytes: &[u8]) -> Decoded<String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| "a string that is not UTF-8")
}

/// A field's value as the wire carries it.
enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

impl<'a> Wire<'a> {
    fn varint(self) -> Decoded<u64> {
        match self {
            Self::Varint(v) => Ok(v),
            _ => Err("a varint field with another wire type"),
        }
    }

    fn fixed64(self) -> Decoded<u64> {
        match self {
            Self::Fixed64(v) => Ok(v),
            _ => Err("a 64-bit field with another wire type"),
        }
    }

    fn fixed32(self) -> Decoded<u32> {
        match self {
            Self::Fixed32(v) => Ok(v),
            _ => Err("a 32-bit field with another wire type"),
        }
    }

    fn bytes(self) -> Decoded<&'a [u8]> {
        match self {
            Self::Bytes(v) => Ok(v),
            _ => Err("a length-delimited field with another wire type"),
        }
    }
}

/// A message's fields in order, as (field number, value).
fn fields(mut bytes: &[u8]) -> Decoded<Vec<(u64, Wire<'_>)>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let key = take_varint(&mut bytes)?;
        let wire = match (key & 7) as u32 {
            WIRE_VARINT => Wire::Varint(take_varint(&mut bytes)?),
            WIRE_FIXED64 => Wire::Fixed64(u64::from_le_bytes(take_chunk(&mut bytes)?)),
            WIRE_BYTES => {
                let len = usize::try_from(take_varint(&mut bytes)?).map_err(|_| PAST_END)?;
                let (value, rest) = bytes.split_at_checked(len).ok_or(PAST_END)?;
                bytes = rest;
                Wire::Bytes(value)
            }
            WIRE_FIXED32 => Wire::Fixed32(u32::from_le_bytes(take_chunk(&mut bytes)?)),
            _ => return Err("a wire type kdlab does not read (groups)"),
        };
        out.push((key >> 3, wire));
    }
    Ok(out)
}

const PAST_END: &str = "a field runs past the end of its message";

fn take_chunk<const N: usize>(bytes: &mut &[u8]) -> Decoded<[u8; N]> {
    let (chunk, rest) = bytes.split_first_chunk::<N>().ok_or(PAST_END)?;
    *bytes = rest;
    Ok(*chunk)
}

fn take_varint(bytes: &mut &[u8]) -> Decoded<u64> {
    let mut value = 0;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first().ok_or(PAST_END)?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("a varint longer than 10 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_check_value() {
        // The catalogue's check value of CRC-32/ISCSI (the CRC of "123456789").
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn masked_crc32c_is_tensorflows_mask() {
        // Computed with a bitwise CRC-32C (reflected polynomial 0x82F63B78) and TensorFlow's
        // Mask, ((crc >> 15) | (crc << 17)) + 0xa282ead8, in Python.
        assert_eq!(masked_crc32c(b"123456789"), 0xC78A_B0E5);
        assert_eq!(masked_crc32c(&0u64.to_le_bytes()), 0x0798_0329);
    }

    /// A 3×2 RGBA PNG.
    fn tiny_png() -> Vec<u8> {
        let image = image::RgbaImage::from_pixel(3, 2, image::Rgba([10, 20, 30, 255]));
        let mut png = Vec::new();
        image
            .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        png
    }

    /// A file of: file version, two scalars, one image.
    fn written(dir: &Path) -> PathBuf {
        let mut writer = EventWriter::create(dir).unwrap();
        writer.scalar("loss", 1, 0.25).unwrap();
        writer.scalar("lr", 1, 1e-3).unwrap();
        writer.image("probe/a", 2, &tiny_png()).unwrap();
        writer.path().to_path_buf()
    }

    #[test]
    fn scalars_and_an_image_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = written(dir.path());
        assert_eq!(event_files(dir.path()), [path.as_path()]);
        let events = read_events(&path).unwrap();
        assert_eq!(events.len(), 4);
        assert_eq!(events[0].file_version.as_deref(), Some(FILE_VERSION));
        assert!(events[0].values.is_empty() && events[0].wall_time > 1.6e9);
        let value = |i: usize| (events[i].step, &events[i].values[0]);
        assert_eq!(value(1).0, 1);
        assert_eq!(value(1).1.tag, "loss");
        assert_eq!(value(1).1.data, TbData::Scalar(0.25));
        assert_eq!(value(2).1.data, TbData::Scalar(1e-3));
        let (step, image) = value(3);
        assert_eq!((step, image.tag.as_str()), (2, "probe/a"));
        let expected = TbData::Image {
            width: 3,
            height: 2,
            colorspace: 4,
            encoded: tiny_png(),
        };
        assert_eq!(image.data, expected);
    }

    /// Flips one byte at `at` and returns what reading then reports.
    fn corrupted_at(path: &Path, at: usize) -> TbReadError {
        let mut bytes = std::fs::read(path).unwrap();
        bytes[at] ^= 0x01;
        let bad = path.with_extension("bad");
        std::fs::write(&bad, bytes).unwrap();
        read_events(&bad).unwrap_err()
    }

    #[test]
    fn a_corrupted_byte_names_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = written(dir.path());
        let bytes = std::fs::read(&path).unwrap();
        // Where each record starts: 8 + 4 + data + 4 bytes each.
        let mut starts = vec![0];
        while *starts.last().unwrap() < bytes.len() {
            let at = *starts.last().unwrap();
            let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
            starts.push(at + 16 + len);
        }
        let in_data = corrupted_at(&path, starts[2] + 20);
        assert!(
            matches!(
                in_data,
                TbReadError::Record { record: 2, offset, problem: RecordProblem::DataCrc { .. }, .. }
                    if offset == starts[2]
            ),
            "{in_data}"
        );
        let in_length = corrupted_at(&path, starts[3]);
        assert!(
            matches!(
                in_length,
                TbReadError::Record {
                    record: 3,
                    problem: RecordProblem::LengthCrc { .. },
                    ..
                }
            ),
            "{in_length}"
        );
        assert!(in_length.to_string().contains("record 3"), "{in_length}");
    }

    #[test]
    fn a_cut_file_is_truncated_not_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = written(dir.path());
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let e = read_events(&path).unwrap_err();
        assert!(
            matches!(
                e,
                TbReadError::Record {
                    record: 3,
                    problem: RecordProblem::Truncated,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn bytes_that_are_not_a_png_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = EventWriter::create(dir.path()).unwrap();
        let e = writer.image("probe/x", 0, b"not a png").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert_eq!(read_events(writer.path()).unwrap().len(), 1);
    }

    #[test]
    fn varints_round_trip() {
        for value in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            let mut bytes = out.as_slice();
            assert_eq!(take_varint(&mut bytes), Ok(value));
            assert!(bytes.is_empty());
        }
    }
}
