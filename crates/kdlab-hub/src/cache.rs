//! The two caches on disk: the Hugging Face hub's own (shared with Python's `huggingface_hub`,
//! `models--ORG--REPO/{blobs,refs,snapshots}`) and kdlab's for files published outside the hub
//! (`<name>/<file>` with the sha256 kdlab checked beside it as `<file>.sha256`).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::error::FetchError;
use crate::name::HubFile;

/// Whether `text` is a full commit hash (then it is its own snapshot, with no ref to read).
pub fn is_commit(text: &str) -> bool {
    text.len() == 40 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether `text` is a sha256 in hex (an LFS file's ETag is its sha256).
pub fn is_sha256(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The hub's cache: `$HF_HUB_CACHE`, or `$HF_HOME/hub`, or `~/.cache/huggingface/hub`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubCache {
    pub root: PathBuf,
}

/// A file of the hub cache, found without a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedHubFile {
    /// `snapshots/<commit>/<file>` (a link to its blob, or a copy where links are refused).
    pub path: PathBuf,
    pub commit: String,
    /// The blob's name: the ETag the hub gave (an LFS file's sha256, a git file's sha1).
    pub etag: Option<String>,
}

impl HubCache {
    /// `models--ORG--REPO`.
    pub fn repo_dir(&self, repo: &str) -> PathBuf {
        self.root
            .join(format!("models--{}", repo.replace('/', "--")))
    }

    pub fn blob(&self, repo: &str, etag: &str) -> PathBuf {
        self.repo_dir(repo).join("blobs").join(etag)
    }

    pub fn snapshot(&self, repo: &str, commit: &str, file: &str) -> PathBuf {
        self.repo_dir(repo)
            .join("snapshots")
            .join(commit)
            .join(file)
    }

    fn ref_file(&self, repo: &str, revision: &str) -> PathBuf {
        self.repo_dir(repo).join("refs").join(revision)
    }

    /// Where `huggingface_hub` marks a file the repo does not have at a commit.
    pub fn no_exist(&self, repo: &str, commit: &str, file: &str) -> PathBuf {
        self.repo_dir(repo)
            .join(".no_exist")
            .join(commit)
            .join(file)
    }

    /// The lock `huggingface_hub` also takes while it downloads a blob.
    pub fn lock(&self, repo: &str, etag: &str) -> PathBuf {
        self.root
            .join(".locks")
            .join(format!("models--{}", repo.replace('/', "--")))
            .join(format!("{etag}.lock"))
    }

    /// The commit a revision points at in the cache (a commit is its own).
    pub fn commit_of(&self, repo: &str, revision: &str) -> Result<Option<String>, FetchError> {
        if is_commit(revision) {
            return Ok(Some(revision.to_string()));
        }
        let path = self.ref_file(repo, revision);
        match fs::read_to_string(&path) {
            Ok(text) if is_commit(text.trim()) => Ok(Some(text.trim().to_string())),
            Ok(text) => Err(FetchError::BrokenCache {
                path,
                problem: format!("holds `{}`, not a commit hash", text.trim()),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(FetchError::Io { path, source }),
        }
    }

    /// `file` as the cache holds it: None when it is not there; an error when the entry is
    /// there but its blob is not.
    pub fn find(&self, file: &HubFile) -> Result<Option<CachedHubFile>, FetchError> {
        let Some(commit) = self.commit_of(&file.repo, &file.revision)? else {
            return Ok(None);
        };
        self.find_at(&file.repo, &commit, &file.file)
    }

    /// `file` of the snapshot `commit`.
    pub fn find_at(
        &self,
        repo: &str,
        commit: &str,
        file: &str,
    ) -> Result<Option<CachedHubFile>, FetchError> {
        let path = self.snapshot(repo, commit, file);
        let link = match fs::symlink_metadata(&path) {
            Ok(meta) => meta.file_type().is_symlink(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(FetchError::Io { path, source }),
        };
        let etag = if link {
            let target = fs::read_link(&path).map_err(|source| FetchError::Io {
                path: path.clone(),
                source,
            })?;
            if !path.exists() {
                return Err(FetchError::BrokenCache {
                    path,
                    problem: format!("links to {}, which is missing", target.display()),
                });
            }
            target
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_string)
        } else {
            None
        };
        Ok(Some(CachedHubFile {
            path,
            commit: commit.to_string(),
            etag,
        }))
    }

    /// Whether the repo is known not to have `file` at `commit`.
    pub fn known_missing(&self, repo: &str, commit: &str, file: &str) -> bool {
        self.no_exist(repo, commit, file).is_file()
    }

    /// Records that `revision` points at `commit` (a commit needs no ref).
    pub fn write_ref(&self, repo: &str, revision: &str, commit: &str) -> Result<(), FetchError> {
        if revision == commit {
            return Ok(());
        }
        write_atomically(&self.ref_file(repo, revision), commit.as_bytes())
    }

    /// Puts `snapshots/<commit>/<file>` in place for the blob: a relative link as
    /// `huggingface_hub` makes it, or a copy where the system refuses links.
    pub fn link_snapshot(
        &self,
        repo: &str,
        commit: &str,
        file: &str,
        etag: &str,
    ) -> Result<PathBuf, FetchError> {
        let path = self.snapshot(repo, commit, file);
        let blob = self.blob(repo, etag);
        let folder = path.parent().expect("a snapshot file has a folder");
        create_dir(folder)?;
        // snapshots/<commit>/<a>/<b> → ../../../blobs/<etag>: one `..` per folder of the file.
        let depth = file.split('/').count() + 1;
        let mut target = PathBuf::new();
        for _ in 0..depth {
            target.push("..");
        }
        target.push("blobs");
        target.push(etag);
        match fs::symlink_metadata(&path) {
            Ok(_) => fs::remove_file(&path).map_err(|source| FetchError::Io {
                path: path.clone(),
                source,
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(FetchError::Io { path, source }),
        }
        if symlink(&target, &path).is_err() {
            fs::copy(&blob, &path).map_err(|source| FetchError::Io {
                path: path.clone(),
                source,
            })?;
        }
        Ok(path)
    }

    /// Marks `file` as missing from the repo at `commit`, as `huggingface_hub` does.
    pub fn mark_missing(&self, repo: &str, commit: &str, file: &str) -> Result<(), FetchError> {
        write_atomically(&self.no_exist(repo, commit, file), b"")
    }
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(windows)]
fn symlink(target: &Path, link: &Path) -> io::Result<()> {
    std::os::windows::fs::symlink_file(target, link)
}

#[cfg(not(any(unix, windows)))]
fn symlink(_: &Path, _: &Path) -> io::Result<()> {
    Err(io::Error::other("no symbolic links here"))
}

/// kdlab's cache of files published outside the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseCache {
    pub root: PathBuf,
}

impl ReleaseCache {
    /// `<name>/<file name of the URL>`.
    pub fn file(&self, name: &str, url: &str) -> PathBuf {
        let file_name = url.rsplit('/').next().unwrap_or(name);
        self.root.join(name).join(file_name)
    }

    /// The sha256 kdlab checked, beside the file.
    pub fn record(file: &Path) -> PathBuf {
        with_suffix(file, ".sha256")
    }

    /// The file and its checked sha256, when both are there.
    pub fn find(&self, name: &str, url: &str) -> Result<Option<(PathBuf, String)>, FetchError> {
        let file = self.file(name, url);
        let record = Self::record(&file);
        if !file.is_file() {
            return Ok(None);
        }
        match fs::read_to_string(&record) {
            Ok(text) if is_sha256(text.trim()) => Ok(Some((file, text.trim().to_string()))),
            Ok(text) => Err(FetchError::BrokenCache {
                path: record,
                problem: format!("holds `{}`, not a sha256", text.trim()),
            }),
            // A file without its record was never checked: fetched again.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(FetchError::Io {
                path: record,
                source,
            }),
        }
    }

    pub fn lock(&self, name: &str) -> PathBuf {
        self.root.join(name).join(".lock")
    }
}

/// `path` with `suffix` after its whole name (`a.pth` → `a.pth.sha256`).
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

pub fn create_dir(folder: &Path) -> Result<(), FetchError> {
    fs::create_dir_all(folder).map_err(|source| FetchError::Io {
        path: folder.to_path_buf(),
        source,
    })
}

/// Writes a small file whole or not at all (a temporary file renamed over it).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), FetchError> {
    if let Some(folder) = path.parent() {
        create_dir(folder)?;
    }
    let temporary = with_suffix(path, &format!(".{}.tmp", std::process::id()));
    fs::write(&temporary, bytes)
        .and_then(|()| fs::rename(&temporary, path))
        .map_err(|source| {
            let _ = fs::remove_file(&temporary);
            FetchError::Io {
                path: path.to_path_buf(),
                source,
            }
        })
}

/// An exclusive lock on `path` (created), held until dropped: two processes never write the
/// same partial file. It is the lock `huggingface_hub` takes for a blob, so kdlab and Python
/// wait for each other too.
pub struct Lock {
    _file: fs::File,
}

impl Lock {
    pub fn take(path: &Path) -> Result<Self, FetchError> {
        if let Some(folder) = path.parent() {
            create_dir(folder)?;
        }
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|source| FetchError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        file.lock().map_err(|source| FetchError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self { _file: file })
    }
}
