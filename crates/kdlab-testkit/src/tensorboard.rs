//! The reader of kdlab's TensorBoard event files: what the tests check a run's `tb/` with. It
//! reads back every record (both masked CRC-32Cs checked) and the subset of event.proto and
//! summary.proto that kdlab's writer (`kdlab_engine::session::tensorboard`) puts there.

use std::io;
use std::path::{Path, PathBuf};

use kdlab_engine::session::tensorboard::{
    FILE_PREFIX, WIRE_BYTES, WIRE_FIXED32, WIRE_FIXED64, WIRE_VARINT, masked_crc32c,
};

/// What a file's first event must say; the tests compare against the writer's.
pub use kdlab_engine::session::tensorboard::FILE_VERSION;

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
    use std::io::Cursor;

    use kdlab_engine::session::tensorboard::EventWriter;

    use super::*;

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
    fn varints_read_back() {
        for (bytes, value) in [
            (vec![0x00], 0),
            (vec![0x96, 0x01], 150),
            (vec![0xac, 0x02], 300),
            ([vec![0xff; 9], vec![0x01]].concat(), u64::MAX),
        ] {
            let mut rest = bytes.as_slice();
            assert_eq!(take_varint(&mut rest), Ok(value));
            assert!(rest.is_empty());
        }
        assert!(take_varint(&mut [0x80u8].as_slice()).is_err(), "cut short");
    }
}
