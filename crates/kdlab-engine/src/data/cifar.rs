//! The CIFAR-10 and CIFAR-100 binary releases (`cifar-10-binary.tar.gz`, `cifar-100-binary.tar.gz`).
//!
//! Each record is the label byte(s) followed by 3,072 pixel bytes: the 1,024 red values of the
//! 32×32 image row by row, then green, then blue. CIFAR-10 records have one label byte; CIFAR-100
//! records have two, the coarse (20 super-classes) then the fine (100 classes) label, and kdlab
//! uses the fine one as the thesis did. Upstream: <https://www.cs.toronto.edu/~kriz/cifar.html>.

use std::path::{Path, PathBuf};

use image::RgbImage;

use super::image_file::DecodeError;
use super::source::ImageSource;

pub const SIDE: u32 = 32;
const PIXEL_BYTES: usize = 3 * 32 * 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CifarKind {
    Cifar10,
    Cifar100,
}

/// Which half of the release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

impl CifarKind {
    fn name(self) -> &'static str {
        match self {
            Self::Cifar10 => "CIFAR-10",
            Self::Cifar100 => "CIFAR-100",
        }
    }

    fn label_bytes(self) -> usize {
        match self {
            Self::Cifar10 => 1,
            Self::Cifar100 => 2,
        }
    }

    pub fn record_bytes(self) -> usize {
        self.label_bytes() + PIXEL_BYTES
    }

    pub fn classes(self) -> usize {
        match self {
            Self::Cifar10 => 10,
            Self::Cifar100 => 100,
        }
    }

    /// The folder the release unpacks to.
    fn release_folder(self) -> &'static str {
        match self {
            Self::Cifar10 => "cifar-10-batches-bin",
            Self::Cifar100 => "cifar-100-binary",
        }
    }

    fn class_names_file(self) -> &'static str {
        match self {
            Self::Cifar10 => "batches.meta.txt",
            Self::Cifar100 => "fine_label_names.txt",
        }
    }

    /// The files of a split, by the release's names.
    fn split_files(self, dir: &Path, split: Split) -> std::io::Result<Vec<PathBuf>> {
        let wanted = |name: &str| match (self, split) {
            (Self::Cifar10, Split::Train) => {
                name.starts_with("data_batch_") && name.ends_with(".bin")
            }
            (Self::Cifar10, Split::Test) => name == "test_batch.bin",
            (Self::Cifar100, Split::Train) => name == "train.bin",
            (Self::Cifar100, Split::Test) => name == "test.bin",
        };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_file()
                && path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(wanted)
            {
                files.push(path);
            }
        }
        files.sort();
        Ok(files)
    }

    fn expected_files(self, split: Split) -> &'static str {
        match (self, split) {
            (Self::Cifar10, Split::Train) => "data_batch_1.bin … data_batch_5.bin",
            (Self::Cifar10, Split::Test) => "test_batch.bin",
            (Self::Cifar100, Split::Train) => "train.bin",
            (Self::Cifar100, Split::Test) => "test.bin",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CifarError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{dir} holds no {kind} {split} file ({expected}); kdlab reads the binary release \
         ({archive}){hint}"
    )]
    NoFiles {
        dir: PathBuf,
        kind: &'static str,
        split: &'static str,
        expected: &'static str,
        archive: &'static str,
        hint: &'static str,
    },
    #[error(
        "{path} is {len} bytes, not a whole number of {kind} records ({record} bytes each): \
         truncated, or not a {kind} binary file"
    )]
    BadLength {
        path: PathBuf,
        len: usize,
        kind: &'static str,
        record: usize,
    },
    #[error("{path}: record {record} has label {label}, but {kind} has {classes} classes")]
    BadLabel {
        path: PathBuf,
        record: usize,
        label: u8,
        kind: &'static str,
        classes: usize,
    },
}

/// One split of a CIFAR release, held in memory (CIFAR-10 train is 150 MB).
#[derive(Debug, Clone)]
pub struct CifarSet {
    pub kind: CifarKind,
    pub classes: Vec<String>,
    /// `PIXEL_BYTES` per image, planar as in the file.
    pixels: Vec<u8>,
    labels: Vec<u8>,
    /// First record index of each file, for messages.
    files: Vec<(usize, PathBuf)>,
}

impl CifarSet {
    /// `path` is a `.bin` file, the release folder, or the folder the release was unpacked in.
    pub fn open(kind: CifarKind, path: &Path, split: Split) -> Result<Self, CifarError> {
        let files = if path.is_file() {
            vec![path.to_path_buf()]
        } else {
            let nested = path.join(kind.release_folder());
            let dir = if nested.is_dir() {
                nested
            } else {
                path.to_path_buf()
            };
            let files = kind
                .split_files(&dir, split)
                .map_err(|source| CifarError::Io {
                    path: dir.clone(),
                    source,
                })?;
            if files.is_empty() {
                return Err(no_files(kind, &dir, split));
            }
            files
        };
        let mut set = Self {
            kind,
            classes: Vec::new(),
            pixels: Vec::new(),
            labels: Vec::new(),
            files: Vec::new(),
        };
        for file in &files {
            set.append(file)?;
        }
        let dir = files[0].parent().unwrap_or(Path::new("."));
        set.classes = class_names(kind, dir);
        Ok(set)
    }

    /// Reads records from raw bytes (the file's contents), checking the layout.
    fn append(&mut self, path: &Path) -> Result<(), CifarError> {
        let bytes = std::fs::read(path).map_err(|source| CifarError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let record = self.kind.record_bytes();
        if bytes.is_empty() || bytes.len() % record != 0 {
            return Err(CifarError::BadLength {
                path: path.to_path_buf(),
                len: bytes.len(),
                kind: self.kind.name(),
                record,
            });
        }
        self.files.push((self.labels.len(), path.to_path_buf()));
        for (i, chunk) in bytes.chunks_exact(record).enumerate() {
            let (labels, pixels) = chunk.split_at(self.kind.label_bytes());
            // CIFAR-100: coarse label first, then the fine label.
            let label = labels[labels.len() - 1];
            if usize::from(label) >= self.kind.classes() {
                return Err(CifarError::BadLabel {
                    path: path.to_path_buf(),
                    record: i,
                    label,
                    kind: self.kind.name(),
                    classes: self.kind.classes(),
                });
            }
            self.labels.push(label);
            self.pixels.extend_from_slice(pixels);
        }
        Ok(())
    }

    pub fn image(&self, index: usize) -> RgbImage {
        let planes = &self.pixels[index * PIXEL_BYTES..(index + 1) * PIXEL_BYTES];
        let plane = PIXEL_BYTES / 3;
        RgbImage::from_fn(SIDE, SIDE, |x, y| {
            let p = (y * SIDE + x) as usize;
            image::Rgb([planes[p], planes[plane + p], planes[2 * plane + p]])
        })
    }
}

fn no_files(kind: CifarKind, dir: &Path, split: Split) -> CifarError {
    let python_release = dir.join(match kind {
        CifarKind::Cifar10 => "data_batch_1",
        CifarKind::Cifar100 => "train",
    });
    CifarError::NoFiles {
        dir: dir.to_path_buf(),
        kind: kind.name(),
        split: match split {
            Split::Train => "training",
            Split::Test => "test",
        },
        expected: kind.expected_files(split),
        archive: match kind {
            CifarKind::Cifar10 => "cifar-10-binary.tar.gz",
            CifarKind::Cifar100 => "cifar-100-binary.tar.gz",
        },
        hint: if python_release.is_file() {
            "; this folder looks like the Python (pickle) release, which kdlab does not read"
        } else {
            ""
        },
    }
}

/// The release's class-name file next to the data, else `class 0`, `class 1`, ….
fn class_names(kind: CifarKind, dir: &Path) -> Vec<String> {
    let listed: Vec<String> = std::fs::read_to_string(dir.join(kind.class_names_file()))
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if listed.len() == kind.classes() {
        listed
    } else {
        (0..kind.classes()).map(|c| format!("class {c}")).collect()
    }
}

impl ImageSource for CifarSet {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn label(&self, index: usize) -> usize {
        usize::from(self.labels[index])
    }

    fn load(&self, index: usize) -> Result<RgbImage, DecodeError> {
        Ok(self.image(index))
    }

    fn origin(&self, index: usize) -> PathBuf {
        let (first, file) = self
            .files
            .iter()
            .rev()
            .find(|(first, _)| *first <= index)
            .expect("record indices start at the first file");
        PathBuf::from(format!("{}#{}", file.display(), index - first))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: CifarKind, label: u8, rgb: [u8; 3]) -> Vec<u8> {
        let mut bytes = match kind {
            CifarKind::Cifar10 => vec![label],
            CifarKind::Cifar100 => vec![label / 5, label],
        };
        for channel in rgb {
            bytes.extend(std::iter::repeat_n(channel, 1024));
        }
        bytes
    }

    #[test]
    fn reads_planar_pixels_and_the_fine_label() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = record(CifarKind::Cifar100, 42, [10, 20, 30]);
        // One distinctive pixel: row 1, column 2 → offset 34 in each plane.
        bytes[2 + 34] = 200;
        bytes[2 + 1024 + 34] = 201;
        bytes[2 + 2048 + 34] = 202;
        std::fs::write(dir.path().join("test.bin"), bytes).unwrap();
        let set = CifarSet::open(CifarKind::Cifar100, dir.path(), Split::Test).unwrap();
        assert_eq!(set.len(), 1);
        assert_eq!(set.label(0), 42);
        let image = set.image(0);
        assert_eq!(image.get_pixel(2, 1).0, [200, 201, 202]);
        assert_eq!(image.get_pixel(0, 0).0, [10, 20, 30]);
        assert_eq!(set.classes[42], "class 42");
        assert!(set.origin(0).to_string_lossy().ends_with("test.bin#0"));
    }

    #[test]
    fn train_split_is_every_data_batch_in_order_with_class_names() {
        let dir = tempfile::tempdir().unwrap();
        let release = dir.path().join("cifar-10-batches-bin");
        std::fs::create_dir(&release).unwrap();
        for (batch, label) in [(2, 7u8), (1, 3u8)] {
            std::fs::write(
                release.join(format!("data_batch_{batch}.bin")),
                record(CifarKind::Cifar10, label, [0, 0, 0]),
            )
            .unwrap();
        }
        std::fs::write(
            release.join("test_batch.bin"),
            record(CifarKind::Cifar10, 0, [0; 3]),
        )
        .unwrap();
        let names = "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n";
        std::fs::write(release.join("batches.meta.txt"), names).unwrap();
        // The folder the archive was unpacked in works as well as the release folder.
        let set = CifarSet::open(CifarKind::Cifar10, dir.path(), Split::Train).unwrap();
        assert_eq!((set.len(), set.label(0), set.label(1)), (2, 3, 7));
        assert_eq!(set.classes[3], "cat");
        assert!(
            set.origin(1)
                .to_string_lossy()
                .ends_with("data_batch_2.bin#0")
        );
    }

    #[test]
    fn truncated_files_bad_labels_and_wrong_releases_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("test_batch.bin");
        let mut bytes = record(CifarKind::Cifar10, 1, [0; 3]);
        bytes.pop();
        std::fs::write(&file, &bytes).unwrap();
        let e = CifarSet::open(CifarKind::Cifar10, dir.path(), Split::Test).unwrap_err();
        assert!(e.to_string().contains("3073 bytes"), "{e}");
        assert!(e.to_string().contains("test_batch.bin"), "{e}");

        std::fs::write(&file, record(CifarKind::Cifar10, 12, [0; 3])).unwrap();
        let e = CifarSet::open(CifarKind::Cifar10, &file, Split::Test).unwrap_err();
        assert!(e.to_string().contains("label 12"), "{e}");

        // A CIFAR-100 file read as CIFAR-10 has the wrong record length.
        std::fs::write(&file, record(CifarKind::Cifar100, 12, [0; 3])).unwrap();
        let e = CifarSet::open(CifarKind::Cifar10, &file, Split::Test).unwrap_err();
        assert!(e.to_string().contains("not a CIFAR-10 binary file"), "{e}");

        let python = tempfile::tempdir().unwrap();
        std::fs::write(python.path().join("data_batch_1"), b"\x80\x02").unwrap();
        let e = CifarSet::open(CifarKind::Cifar10, python.path(), Split::Train).unwrap_err();
        assert!(e.to_string().contains("Python (pickle) release"), "{e}");
    }
}
