//! TensorBoard event files: the writer a run's scalars and probe maps go through
//! (`runs/<run>/tb/`, read by `tensorboard --logdir runs`). The reader the tests check them
//! with is test code: `kdlab_testkit::tensorboard`.
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
pub const FILE_PREFIX: &str = "events.out.tfevents.";

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

/// Cuts an event file back to its events at or before `step` (a resumed run writes the steps
/// after its checkpoint again): from the first event past it, and from a record cut off
/// halfway or failing its CRC, the file is cut off. Returns the events removed and whether a
/// broken record was among them.
pub fn cut_after(path: &Path, step: u64) -> anyhow::Result<(usize, bool)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (mut at, mut keep, mut removed, mut broken) = (0usize, 0usize, 0usize, false);
    while at < bytes.len() {
        let Some(data) = record_data(&bytes[at..]) else {
            broken = true;
            break;
        };
        let end = at + data.len() + 16;
        if removed > 0 || event_step(data) > step {
            removed += 1;
        } else {
            keep = end;
        }
        at = end;
    }
    if keep < bytes.len() {
        OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|file| file.set_len(keep as u64))
            .with_context(|| format!("cannot cut {} back", path.display()))?;
    }
    Ok((removed, broken))
}

/// The data of the record at the start of `bytes`, if it is whole and its CRCs hold.
fn record_data(bytes: &[u8]) -> Option<&[u8]> {
    let length: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    let length_crc = u32::from_le_bytes(bytes.get(8..12)?.try_into().ok()?);
    if masked_crc32c(&length) != length_crc {
        return None;
    }
    let len = usize::try_from(u64::from_le_bytes(length)).ok()?;
    let data = bytes.get(12..12usize.checked_add(len)?)?;
    let data_crc = u32::from_le_bytes(bytes.get(12 + len..16 + len)?.try_into().ok()?);
    (masked_crc32c(data) == data_crc).then_some(data)
}

/// `Event.step` (field 2), 0 when absent or unreadable.
fn event_step(mut event: &[u8]) -> u64 {
    fn varint(bytes: &mut &[u8]) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = bytes.split_first()?;
            *bytes = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }
    while let Some(key) = varint(&mut event) {
        let skip = match (key >> 3, key & 7) {
            (2, 0) => return varint(&mut event).unwrap_or(0),
            (_, 0) => varint(&mut event).map(|_| 0),
            (_, 1) => Some(8),
            (_, 5) => Some(4),
            (_, 2) => varint(&mut event).and_then(|n| usize::try_from(n).ok()),
            _ => None,
        };
        match skip.and_then(|n| event.get(n..)) {
            Some(rest) => event = rest,
            None => return 0,
        }
    }
    0
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
/// This machine's name, as file names may hold it (event files, a run's `status.json`).
pub(crate) fn hostname() -> String {
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

/// The wire types kdlab writes (and the tests' reader reads).
pub const WIRE_VARINT: u32 = 0;
pub const WIRE_FIXED64: u32 = 1;
pub const WIRE_BYTES: u32 = 2;
pub const WIRE_FIXED32: u32 = 5;

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

    #[test]
    fn varints_are_protobufs() {
        // The encoding guide's examples: 1 is one byte, 150 is 96 01; the largest takes 10.
        for (value, bytes) in [
            (0, vec![0x00]),
            (1, vec![0x01]),
            (150, vec![0x96, 0x01]),
            (300, vec![0xac, 0x02]),
            (u64::MAX, [vec![0xff; 9], vec![0x01]].concat()),
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            assert_eq!(out, bytes, "{value}");
        }
    }

    #[test]
    fn a_file_is_cut_back_to_a_step_and_a_half_record_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = EventWriter::create(dir.path()).unwrap();
        for step in 1..=5 {
            writer.scalar("loss", step, step as f32).unwrap();
        }
        let path = writer.path().to_path_buf();
        drop(writer);
        let whole = std::fs::read(&path).unwrap();
        // A record cut off halfway (a kill during a write) at the end.
        std::fs::write(
            &path,
            [&whole[..], &whole[whole.len() - 20..whole.len() - 5]].concat(),
        )
        .unwrap();
        assert_eq!(cut_after(&path, 3).unwrap(), (2, true));
        let steps: Vec<u64> = {
            let bytes = std::fs::read(&path).unwrap();
            let mut at = 0;
            let mut steps = Vec::new();
            while let Some(data) = record_data(&bytes[at..]) {
                steps.push(event_step(data));
                at += data.len() + 16;
            }
            assert_eq!(at, bytes.len());
            steps
        };
        // The file-version event (step 0), then steps 1..=3.
        assert_eq!(steps, [0, 1, 2, 3]);
        assert_eq!(cut_after(&path, 3).unwrap(), (0, false));
    }

    #[test]
    fn bytes_that_are_not_a_png_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = EventWriter::create(dir.path()).unwrap();
        let e = writer.image("probe/x", 0, b"not a png").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }
}
