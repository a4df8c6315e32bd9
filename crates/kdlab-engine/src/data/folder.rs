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
    pub fn scan(root: &Path) -> Result<Self, FolderError> {
        let children = sorted_children(root)?;
        let dirs: Vec<&PathBuf> = children.iter().filter(|p| p.is_dir()).collect();
        let mut classes = Vec::new();
        let mut entries = Vec::new();
        if dirs.is_empty() {
            classes.push(String::new());
            entries.extend(children.iter().filter(|p| p.is_file()).map(|p| ImageEntry {
                path: p.clone(),
                class: 0,
            }));
        } else {
            for dir in dirs {
                let class = classes.len();
                classes.push(
                    dir.file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned(),
                );
                entries.extend(
                    sorted_children(dir)?
                        .into_iter()
                        .filter(|p| p.is_file())
                        .map(|path| ImageEntry { path, class }),
                );
            }
        }
        if entries.is_empty() {
            return Err(FolderError::Empty(root.to_path_buf()));
        }
        Ok(Self {
            root: root.to_path_buf(),
            classes,
            entries,
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
            limits: self.limits,
        })
    }
}
