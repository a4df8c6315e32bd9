//! Models by name. A weights text is a file, a hub name `hf:ORG/REPO[@REVISION][/FILE]` or a
//! short name of the catalogue (`kdlab fetch --list`); `Fetcher` turns a name into a file:
//!
//! - hub files live in the Hugging Face hub's own cache, laid out as `huggingface_hub` lays it
//!   out (`$HF_HUB_CACHE`, or `$HF_HOME/hub`, or `~/.cache/huggingface/hub`), so a file Python
//!   downloaded is used without a request and one kdlab downloads is found by Python; a hub
//!   name brings its `config.json` along (timm's files need it);
//! - files published outside the hub (the unilm and fairseq releases) live in kdlab's cache
//!   (`$KDLAB_CACHE`, or the platform's cache folder `/kdlab`) under their short name, with the
//!   sha256 kdlab checked beside them;
//! - downloads go to a partial file, resume with a Range request after a broken connection,
//!   retry with backoff, follow redirects (the hub sends LFS files to a CDN), take proxies
//!   from `HTTPS_PROXY`/`ALL_PROXY` (and `NO_PROXY`), and are checked against the hub's sha256
//!   (an LFS file's `X-Linked-Etag`), a git file's sha1 or a short name's pinned sha256 before
//!   they are renamed into place; a mismatch deletes the file.
//! - `HF_HUB_OFFLINE=1` (the CLI's `--offline` sets it) never touches the network; `HF_ENDPOINT`
//!   points at another hub (a mirror; the tests' server) and `KDLAB_RELEASE_MIRROR` does the
//!   same for the releases (`<mirror>/<host>/<path>` for `https://<host>/<path>`); the token is
//!   `HF_TOKEN`, or the file `$HF_TOKEN_PATH`, or `$HF_HOME/token`.

pub mod cache;
pub mod catalogue;
mod error;
mod http;
pub mod name;

use std::fmt;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

pub use catalogue::{CATALOGUE, Known, Origin};
pub use error::FetchError;
pub use name::{HubFile, NameError, WeightsName};

use cache::{HubCache, Lock, ReleaseCache, with_suffix};
use http::{Expected, Http};

/// Where a transfer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Downloading,
    /// Reading the finished (or cached) file for its digest.
    Verifying,
}

/// One report of a transfer, many times a second.
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    /// What is being fetched (`timm/vit_small_patch14_dinov2.lvd142m/model.safetensors`).
    pub file: &'a str,
    pub done: u64,
    pub total: Option<u64>,
    /// The bytes a resumed download already had.
    pub resumed_from: u64,
    pub stage: Stage,
}

/// Sees every progress report; `Break` cancels the download (its partial file is kept).
pub type Watch<'a> = dyn FnMut(&Progress) -> ControlFlow<()> + 'a;

/// A name turned into a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub file: PathBuf,
    pub sha256: String,
    /// The hub commit the file is from (None outside the hub).
    pub commit: Option<String>,
    /// Where it came from: the hub name at its commit, or the URL.
    pub source: String,
    pub bytes: u64,
    pub how: How,
}

/// Whether the file was there already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// From the cache, without a request.
    Cached,
    /// From the cache, its digest read again and found right (`kdlab fetch`).
    Verified,
    Downloaded,
}

impl fmt::Display for How {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            How::Cached => "cached",
            How::Verified => "cached, verified",
            How::Downloaded => "downloaded, verified",
        })
    }
}

/// What `fetch` does with a file that is already cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Use it without a request (a run's first use of a name).
    UseCached,
    /// Ask the hub what the revision is now, fetch what changed, and read every cached file
    /// again for its digest (`kdlab fetch`).
    Refresh,
}

/// Resolves names to files: the caches, the hub and the network settings of this process.
pub struct Fetcher {
    pub hub_cache: HubCache,
    pub release_cache: ReleaseCache,
    /// `HF_ENDPOINT`, without a trailing `/`.
    pub endpoint: String,
    /// `KDLAB_RELEASE_MIRROR`.
    pub release_mirror: Option<String>,
    offline: Option<&'static str>,
    http: Http,
}

/// Where the caches are and how to reach the hub: read from the environment as
/// `huggingface_hub` reads it (`Settings::from_env`), or given (tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub hub_cache: PathBuf,
    pub release_cache: PathBuf,
    pub endpoint: String,
    pub release_mirror: Option<String>,
    pub token: Option<String>,
    /// Why downloads are off, if they are.
    pub offline: Option<&'static str>,
}

impl Settings {
    /// `HF_HUB_CACHE` (or the older `HUGGINGFACE_HUB_CACHE`), else `$HF_HOME/hub`, `HF_HOME`
    /// defaulting to `$XDG_CACHE_HOME/huggingface` or `~/.cache/huggingface`; `KDLAB_CACHE`,
    /// else the platform's cache folder; `HF_ENDPOINT`; `KDLAB_RELEASE_MIRROR`; `HF_TOKEN`, else
    /// the file `$HF_TOKEN_PATH` or `$HF_HOME/token`; `HF_HUB_OFFLINE` (1, ON, YES, TRUE).
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let home = dirs::home_dir().unwrap_or_else(|| PathBuf::from("."));
        let hf_home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| home.join(".cache"))
                .join("huggingface")
        });
        let hub_cache = var("HF_HUB_CACHE")
            .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("hub"));
        let release_cache = var("KDLAB_CACHE").map(PathBuf::from).unwrap_or_else(|| {
            dirs::cache_dir()
                .unwrap_or_else(|| home.join(".cache"))
                .join("kdlab")
        });
        let token = var("HF_TOKEN")
            .or_else(|| var("HUGGING_FACE_HUB_TOKEN"))
            .or_else(|| {
                let path = var("HF_TOKEN_PATH")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| hf_home.join("token"));
                std::fs::read_to_string(path).ok()
            })
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        let offline = var("HF_HUB_OFFLINE")
            .is_some_and(|v| {
                matches!(
                    v.trim().to_ascii_uppercase().as_str(),
                    "1" | "ON" | "YES" | "TRUE"
                )
            })
            .then_some("HF_HUB_OFFLINE=1 or --offline");
        Self {
            hub_cache,
            release_cache,
            endpoint: var("HF_ENDPOINT")
                .unwrap_or_else(|| "https://huggingface.co".to_string())
                .trim_end_matches('/')
                .to_string(),
            release_mirror: var("KDLAB_RELEASE_MIRROR")
                .map(|m| m.trim_end_matches('/').to_string()),
            token,
            offline,
        }
    }
}

impl Fetcher {
    pub fn new(settings: Settings) -> Self {
        Self {
            hub_cache: HubCache {
                root: settings.hub_cache,
            },
            release_cache: ReleaseCache {
                root: settings.release_cache,
            },
            endpoint: settings.endpoint.trim_end_matches('/').to_string(),
            release_mirror: settings.release_mirror,
            offline: settings.offline,
            http: Http::new(settings.token),
        }
    }

    /// The settings of this process's environment.
    pub fn from_env() -> Self {
        Self::new(Settings::from_env())
    }

    pub fn is_offline(&self) -> bool {
        self.offline.is_some()
    }

    /// Waits before retries: tests shorten them.
    pub fn with_first_backoff(mut self, first: std::time::Duration) -> Self {
        self.http.first_backoff = first;
        self
    }

    /// The file `name` stands for, downloading what the cache lacks (unless offline). `label`
    /// is the name as the user wrote it, for messages.
    pub fn fetch(
        &self,
        name: &WeightsName,
        label: &str,
        freshness: Freshness,
        watch: &mut Watch,
    ) -> Result<Option<Fetched>, FetchError> {
        match name {
            WeightsName::Path(_) => Ok(None),
            WeightsName::Hub(file) => self
                .fetch_hub_model(file, label, freshness, watch)
                .map(Some),
            WeightsName::Release(known) => {
                self.fetch_release(known, label, freshness, watch).map(Some)
            }
        }
    }

    /// The cached file `name` stands for, without a request; None when it is not cached.
    pub fn cached(&self, name: &WeightsName) -> Result<Option<PathBuf>, FetchError> {
        match name {
            WeightsName::Path(path) => Ok(Some(path.clone())),
            WeightsName::Hub(file) => Ok(self.hub_cache.find(file)?.map(|f| f.path)),
            WeightsName::Release(known) => match known.origin {
                Origin::Release { url, .. } => Ok(self
                    .release_cache
                    .find(known.name, url)?
                    .map(|(file, _)| file)),
                Origin::Hub { .. } => unreachable!("hub names parse as WeightsName::Hub"),
            },
        }
    }

    /// A hub model: its file and, from the same commit, the `config.json` beside it (a repo
    /// without one is marked so, as `huggingface_hub` marks it, and not asked again).
    fn fetch_hub_model(
        &self,
        file: &HubFile,
        label: &str,
        freshness: Freshness,
        watch: &mut Watch,
    ) -> Result<Fetched, FetchError> {
        let fetched = self.fetch_hub_file(file, label, freshness, watch)?;
        let commit = fetched.commit.clone().expect("a hub file has a commit");
        let config = HubFile {
            revision: commit.clone(),
            ..file.config_json()
        };
        let have_config = self.hub_cache.find(&config)?.is_some()
            || self
                .hub_cache
                .known_missing(&config.repo, &commit, &config.file);
        if !have_config || freshness == Freshness::Refresh {
            match self.fetch_hub_file(&config, label, freshness, watch) {
                Ok(_) => {}
                Err(FetchError::EntryNotFound { .. }) => {
                    self.hub_cache
                        .mark_missing(&config.repo, &commit, &config.file)?
                }
                // Offline with the weights cached but not their config.json: the loader says
                // what it misses, if it needs it.
                Err(FetchError::Offline { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(fetched)
    }

    fn resolve_url(&self, file: &HubFile) -> String {
        format!(
            "{}/{}/resolve/{}/{}",
            self.endpoint,
            file.repo,
            encode(&file.revision, true),
            encode(&file.file, false)
        )
    }

    fn fetch_hub_file(
        &self,
        file: &HubFile,
        label: &str,
        freshness: Freshness,
        watch: &mut Watch,
    ) -> Result<Fetched, FetchError> {
        let repo = &file.repo;
        // The hub name pinned to the commit it resolved to.
        let source_at = |commit: &str| {
            HubFile {
                revision: commit.to_string(),
                ..file.clone()
            }
            .to_string()
        };
        let cached = self.hub_cache.find(file);
        let use_cached = freshness == Freshness::UseCached || self.offline.is_some();
        match (cached, use_cached) {
            (Ok(Some(found)), true) => {
                let (sha256, bytes) = self.sha256_of_cached(&found, label, watch)?;
                return Ok(Fetched {
                    file: found.path,
                    sha256,
                    source: source_at(&found.commit),
                    commit: Some(found.commit),
                    bytes,
                    how: How::Cached,
                });
            }
            // A broken entry: repaired online, reported offline.
            (Err(e), _) if self.offline.is_some() => return Err(e),
            _ => {}
        }
        if let Some(why) = self.offline {
            return Err(FetchError::Offline {
                name: label.to_string(),
                looked_in: self.hub_cache.repo_dir(repo),
                why,
            });
        }
        let url = self.resolve_url(file);
        let head = self
            .http
            .hub_head(&url, &self.endpoint, repo, &file.revision, &file.file)?;
        let blob = self.hub_cache.blob(repo, &head.etag);
        let expected = Expected::of_etag(&head.etag, head.size);
        let display = format!("{repo}/{}", file.file);
        let how = if blob.is_file() {
            // Already downloaded (by kdlab or Python): read again for its digest.
            http::verify(&url, &blob, &display, &expected, watch).map_err(|e| match e {
                FetchError::Mismatch {
                    expected,
                    found,
                    deleted,
                    ..
                } => FetchError::Corrupt {
                    path: deleted,
                    expected,
                    found,
                },
                e => e,
            })?;
            How::Verified
        } else {
            let _lock = Lock::take(&self.hub_cache.lock(repo, &head.etag))?;
            if !blob.is_file() {
                let partial = with_suffix(&blob, ".incomplete");
                cache::create_dir(partial.parent().expect("blobs/ is a folder"))?;
                self.http
                    .download(&url, true, &partial, &display, &expected, watch)?;
                rename(&partial, &blob)?;
            }
            How::Downloaded
        };
        let path = self
            .hub_cache
            .link_snapshot(repo, &head.commit, &file.file, &head.etag)?;
        self.hub_cache
            .write_ref(repo, &file.revision, &head.commit)?;
        let found = cache::CachedHubFile {
            path,
            commit: head.commit.clone(),
            etag: Some(head.etag),
        };
        let (sha256, bytes) = self.sha256_of_cached(&found, label, watch)?;
        Ok(Fetched {
            file: found.path,
            sha256,
            source: source_at(&head.commit),
            commit: Some(head.commit),
            bytes,
            how,
        })
    }

    /// A cached hub file's sha256: its blob's name where that is one (LFS), else read.
    fn sha256_of_cached(
        &self,
        found: &cache::CachedHubFile,
        label: &str,
        watch: &mut Watch,
    ) -> Result<(String, u64), FetchError> {
        let bytes = std::fs::metadata(&found.path)
            .map_err(|source| FetchError::Io {
                path: found.path.clone(),
                source,
            })?
            .len();
        match &found.etag {
            Some(etag) if cache::is_sha256(etag) => Ok((etag.to_ascii_lowercase(), bytes)),
            _ => Ok((
                http::digests_of(&found.path, label, bytes, watch)?.sha256,
                bytes,
            )),
        }
    }

    /// A release: kdlab's cache, else its URL (or the mirror's copy of it).
    fn fetch_release(
        &self,
        known: &'static Known,
        label: &str,
        freshness: Freshness,
        watch: &mut Watch,
    ) -> Result<Fetched, FetchError> {
        let Origin::Release {
            url,
            sha256: pinned,
        } = known.origin
        else {
            unreachable!("hub names parse as WeightsName::Hub")
        };
        let fetched = |file: PathBuf, sha256: String, how| -> Result<Fetched, FetchError> {
            let bytes = std::fs::metadata(&file)
                .map_err(|source| FetchError::Io {
                    path: file.clone(),
                    source,
                })?
                .len();
            Ok(Fetched {
                file,
                sha256,
                commit: None,
                source: url.to_string(),
                bytes,
                how,
            })
        };
        if let Some((file, recorded)) = self.release_cache.find(known.name, url)? {
            if pinned.is_some_and(|pin| pin != recorded) {
                // Checked against another pin (an older kdlab's): fetched again below.
                remove_cached_release(&file)?;
            } else if freshness == Freshness::UseCached {
                return fetched(file, recorded, How::Cached);
            } else {
                let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
                let digests = http::digests_of(&file, label, size, watch)?;
                if digests.sha256 != recorded {
                    remove_cached_release(&file)?;
                    return Err(FetchError::Corrupt {
                        path: file,
                        expected: recorded,
                        found: digests.sha256,
                    });
                }
                return fetched(file, recorded, How::Verified);
            }
        }
        let file = self.release_cache.file(known.name, url);
        if let Some(why) = self.offline {
            return Err(FetchError::Offline {
                name: label.to_string(),
                looked_in: file,
                why,
            });
        }
        let _lock = Lock::take(&self.release_cache.lock(known.name))?;
        let partial = with_suffix(&file, ".incomplete");
        let from = self.release_url(url);
        let expected = Expected {
            sha256: pinned.map(str::to_string),
            ..Expected::default()
        };
        let sha256 = self
            .http
            .download(&from, false, &partial, known.name, &expected, watch)?;
        // The record first: a file without one is never taken as checked.
        cache::write_atomically(&ReleaseCache::record(&file), sha256.as_bytes())?;
        rename(&partial, &file)?;
        fetched(file, sha256, How::Downloaded)
    }

    /// A release's URL, or its copy on `KDLAB_RELEASE_MIRROR` (`<mirror>/<host>/<path>`).
    pub fn release_url(&self, url: &str) -> String {
        match (&self.release_mirror, url.split_once("://")) {
            (Some(mirror), Some((_, host_and_path))) => format!("{mirror}/{host_and_path}"),
            _ => url.to_string(),
        }
    }
}

fn remove_cached_release(file: &Path) -> Result<(), FetchError> {
    for path in [file.to_path_buf(), ReleaseCache::record(file)] {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(FetchError::Io { path, source }),
        }
    }
    Ok(())
}

fn rename(from: &Path, to: &Path) -> Result<(), FetchError> {
    std::fs::rename(from, to).map_err(|source| FetchError::Io {
        path: to.to_path_buf(),
        source,
    })
}

/// Percent-encodes a URL path part (`/` too for a revision such as `refs/pr/1`).
fn encode(text: &str, slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            b'/' if !slash => out.push('/'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}
