//! Image folders: `<root>/<class>/*` (ImageNet style) or a flat `<root>/*`, listed in sorted order.

use std::path::{Path, PathBuf};

use super::image_file::DecodeLimits;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageEntry {
    pub path: PathBuf,
    /// Index into `ImageFolder::classes`; flat folders have one class, "".
    pub class: usize,
}

#[derive(Debug, Clone)]
pub struct ImageFolder {
    pub root: PathBuf,
    pub classes: Vec<String>,
    pub entries: Vec<ImageEntry>,
    /// Entries of the folder that are not listed, with why (a link to nothing or to itself, a
    /// FIFO or device, a file beside the class folders): a run reports them as skipped.
    pub skipped: Vec<(PathBuf, String)>,
    /// How large a picture its images may be decoded at.
    pub limits: DecodeLimits,
}

#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    #[error("cannot list image folder {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("image folder {0} holds no files")]
    Empty(PathBuf),
    #[error(
        "image folder {root} has both class folders ({classes}) and images beside them ({loose}, \
         e.g. {example}): which are the data? Move the loose images into a class folder, or \
         point the config at one of the two"
    )]
    Mixed {
        root: PathBuf,
        classes: usize,
        loose: usize,
        example: String,
    },
}

/// What an entry of an image folder is, links followed.
enum Kind {
    Folder,
    File,
    /// Not listed, for this reason.
    Skipped(String),
}

fn kind(path: &Path) -> Kind {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Kind::Folder,
        Ok(m) if m.is_file() => Kind::File,
        Ok(_) => Kind::Skipped("not a regular file (a FIFO, socket or device)".into()),
        Err(e) if path.is_symlink() => Kind::Skipped(format!("a link that leads nowhere ({e})")),
        Err(e) => Kind::Skipped(format!("cannot be read ({e})")),
    }
}

/// Whether a file's name says it is a picture (for telling loose images from a folder's notes).
fn named_like_an_image(path: &Path) -> bool {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    matches!(
        ext.as_str(),
        "jpg" | "jpeg" | "png" | "bmp" | "gif" | "tif" | "tiff" | "webp"
    )
}

/// Hidden files and the usual companions of image folders are not images.
fn is_candidate(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    !name.starts_with('.') && !matches!(name, "LICENSES.md" | "README.md" | "Thumbs.db")
}

fn sorted_children(dir: &Path) -> Result<Vec<PathBuf>, FolderError> {
    let io = |source| FolderError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut children = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io)?;
    children.sort();
    Ok(children.into_iter().filter(|p| is_candidate(p)).collect())
}

impl ImageFolder {
    /// Every file is listed (decoding decides what is an image); sub-folders are classes.
    /// Entries that cannot be images (links to nothing, FIFOs, devices, notes beside the class
    /// folders) are kept in `skipped` with the reason; images beside class folders are an error.
    pub fn scan(root: &Path) -> Result<Self, FolderError> {
        let mut skipped = Vec::new();
        let mut dirs = Vec::new();
        let mut files = Vec::new();
        for path in sorted_children(root)? {
            match kind(&path) {
                Kind::Folder => dirs.push(path),
                Kind::File => files.push(path),
                Kind::Skipped(why) => skipped.push((path, why)),
            }
        }
        let mut classes = Vec::new();
        let mut entries = Vec::new();
        if dirs.is_empty() {
            classes.push(String::new());
            entries.extend(files.into_iter().map(|path| ImageEntry { path, class: 0 }));
        } else {
            let loose: Vec<&PathBuf> = files.iter().filter(|p| named_like_an_image(p)).collect();
            if let Some(first) = loose.first() {
                return Err(FolderError::Mixed {
                    root: root.to_path_buf(),
                    classes: dirs.len(),
                    loose: loose.len(),
                    example: first
                        .file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned(),
                });
            }
            skipped.extend(files.into_iter().map(|p| {
                (
                    p,
                    "a file beside the class folders, in none of them".to_string(),
                )
            }));
            for dir in dirs {
                let class = classes.len();
                classes.push(
                    dir.file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned(),
                );
                for path in sorted_children(&dir)? {
                    match kind(&path) {
                        Kind::File => entries.push(ImageEntry { path, class }),
                        Kind::Folder => skipped.push((
                            path,
                            "a folder inside a class folder (classes are one level deep)".into(),
                        )),
                        Kind::Skipped(why) => skipped.push((path, why)),
                    }
                }
            }
        }
        if entries.is_empty() {
            return Err(FolderError::Empty(root.to_path_buf()));
        }
        Ok(Self {
            root: root.to_path_buf(),
            classes,
            entries,
            skipped,
            limits: DecodeLimits::default(),
        })
    }

    pub fn with_limits(mut self, limits: DecodeLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Holds out every k-th image (k ≈ 1/fraction) for validation; deterministic, spread over classes.
    pub fn split_off_validation(&mut self, fraction: f64) -> Option<Self> {
        if fraction <= 0.0 || self.entries.len() < 2 {
            return None;
        }
        let every = (1.0 / fraction).round().max(2.0) as usize;
        let (val, train): (Vec<_>, Vec<_>) = std::mem::take(&mut self.entries)
            .into_iter()
            .enumerate()
            .partition(|(i, _)| i % every == every - 1);
        self.entries = train.into_iter().map(|(_, e)| e).collect();
        Some(Self {
            root: self.root.clone(),
            classes: self.classes.clone(),
            entries: val.into_iter().map(|(_, e)| e).collect(),
            skipped: Vec::new(),
            limits: self.limits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"x").unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn entries_that_cannot_be_images_are_skipped_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        touch(&root.join("a.jpg"));
        std::os::unix::fs::symlink(root.join("gone.jpg"), root.join("dangling.jpg")).unwrap();
        std::os::unix::fs::symlink(root.join("loop.jpg"), root.join("loop.jpg")).unwrap();
        let mkfifo = std::process::Command::new("mkfifo")
            .arg(root.join("pipe.jpg"))
            .status();
        assert!(mkfifo.unwrap().success());
        let folder = ImageFolder::scan(root).unwrap();
        assert_eq!(folder.entries.len(), 1);
        let skipped: Vec<(String, &str)> = folder
            .skipped
            .iter()
            .map(|(p, why)| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                (name, why.split(" (").next().unwrap())
            })
            .collect();
        assert_eq!(
            skipped,
            [
                ("dangling.jpg".to_string(), "a link that leads nowhere"),
                ("loop.jpg".to_string(), "a link that leads nowhere"),
                ("pipe.jpg".to_string(), "not a regular file"),
            ]
        );
    }

    #[test]
    fn images_beside_class_folders_are_an_error_and_notes_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        touch(&root.join("cat/1.jpg"));
        touch(&root.join("dog/2.png"));
        touch(&root.join("labels.txt"));
        touch(&root.join("cat/nested/3.jpg"));
        let folder = ImageFolder::scan(root).unwrap();
        assert_eq!(folder.classes, ["cat", "dog"]);
        assert_eq!(folder.entries.len(), 2);
        let reasons: Vec<&str> = folder.skipped.iter().map(|(_, why)| why.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "a file beside the class folders, in none of them",
                "a folder inside a class folder (classes are one level deep)"
            ]
        );
        touch(&root.join("stray.JPG"));
        let error = ImageFolder::scan(root).unwrap_err().to_string();
        assert!(
            error.contains("has both class folders (2) and images beside them (1, e.g. stray.JPG)"),
            "{error}"
        );
    }
}
