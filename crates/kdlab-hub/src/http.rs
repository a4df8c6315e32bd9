//! The network side: the hub's metadata request (HEAD on the resolve URL, as `huggingface_hub`
//! makes it) and a download to a partial file that resumes with a Range request, retries with
//! backoff, reports progress, can be cancelled, and is checked against the digest it must have
//! before it is handed over.

use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;
use std::thread;
use std::time::Duration;

use sha1::Digest as _;
use ureq::http::{HeaderMap, StatusCode};

use crate::error::FetchError;
use crate::{Progress, Stage, Watch};

/// What the hub says about a file before it is downloaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubHead {
    /// `X-Repo-Commit`: the commit the revision resolved to.
    pub commit: String,
    /// `X-Linked-Etag` (LFS: the sha256) or `ETag` (git: the blob's sha1), unquoted.
    pub etag: String,
    /// `X-Linked-Size` or `Content-Length`.
    pub size: Option<u64>,
}

/// What a finished download must be.
#[derive(Debug, Clone, Default)]
pub struct Expected {
    pub sha256: Option<String>,
    /// A git file's ETag: sha1 of `blob <size>\0<content>`.
    pub git_sha1: Option<String>,
    pub size: Option<u64>,
}

impl Expected {
    /// What an ETag promises: an LFS file's sha256 or a git file's sha1; other ETags (a
    /// proxy's own) promise only the size.
    pub fn of_etag(etag: &str, size: Option<u64>) -> Self {
        let etag = etag.to_ascii_lowercase();
        Self {
            sha256: crate::cache::is_sha256(&etag).then(|| etag.clone()),
            git_sha1: crate::cache::is_commit(&etag).then_some(etag),
            size,
        }
    }
}

/// The HTTP client: agents that follow redirects (downloads: the hub sends LFS files to a CDN)
/// and that do not (the metadata, read from the hub's own answer); each through the proxy of
/// the environment, and without it for this machine's own loopback (a mirror or a test hub on
/// 127.0.0.1), which no proxy can reach.
pub struct Http {
    follow: ureq::Agent,
    stay: ureq::Agent,
    follow_direct: ureq::Agent,
    stay_direct: ureq::Agent,
    token: Option<String>,
    pub retries: u32,
    pub first_backoff: Duration,
}

/// 1 MiB reads: progress often enough, few system calls.
const CHUNK: usize = 1 << 20;

impl Http {
    pub fn new(token: Option<String>) -> Self {
        let agent = |redirects: u32, proxy: Option<ureq::Proxy>| -> ureq::Agent {
            ureq::Agent::config_builder()
                .proxy(proxy)
                .http_status_as_error(false)
                .max_redirects(redirects)
                .max_redirects_will_error(false)
                .timeout_connect(Some(Duration::from_secs(20)))
                .timeout_recv_response(Some(Duration::from_secs(60)))
                // A stalled transfer is retried (and resumed) rather than waited on for ever.
                .timeout_per_read(Some(Duration::from_secs(60)))
                .user_agent(format!("kdlab/{}", env!("CARGO_PKG_VERSION")))
                .build()
                .into()
        };
        let proxy = ureq::Proxy::try_from_env();
        Self {
            follow: agent(10, proxy.clone()),
            stay: agent(0, proxy),
            follow_direct: agent(10, None),
            stay_direct: agent(0, None),
            token,
            retries: 5,
            first_backoff: Duration::from_millis(500),
        }
    }

    /// The agent for `url`: redirects followed or not; direct for loopback hosts.
    fn agent(&self, url: &str, follow: bool) -> &ureq::Agent {
        match (follow, is_loopback(url)) {
            (true, false) => &self.follow,
            (false, false) => &self.stay,
            (true, true) => &self.follow_direct,
            (false, true) => &self.stay_direct,
        }
    }

    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// The wait before retry `attempt` (1, 2, …): doubling from `first_backoff`, at most 8 s.
    fn backoff(&self, attempt: u32) -> Duration {
        (self.first_backoff * 2u32.pow(attempt.saturating_sub(1).min(6)))
            .min(Duration::from_secs(8))
    }

    /// HEAD on a hub resolve URL, following only redirects that stay on the hub's host (a
    /// renamed repo), as `huggingface_hub` does: its answer (or the redirect to the CDN, which
    /// is not followed, and never sees the token) carries the commit, the ETag and the size.
    /// `repo`, `revision` and `file` name the error cases.
    pub fn hub_head(
        &self,
        url: &str,
        endpoint: &str,
        repo: &str,
        revision: &str,
        file: &str,
    ) -> Result<HubHead, FetchError> {
        let mut url = url.to_string();
        let mut last_status = 0;
        for _ in 0..5 {
            let response = self.retrying(&url, |attempt_url| {
                let mut request = self
                    .agent(attempt_url, false)
                    .head(attempt_url)
                    .header("Accept-Encoding", "identity");
                if let Some(token) = &self.token {
                    request = request.header("Authorization", format!("Bearer {token}"));
                }
                request.call()
            })?;
            let status = response.status();
            last_status = status.as_u16();
            let headers = response.headers();
            if status.is_redirection()
                && let Some(location) = header(headers, "location")
            {
                let target = match location.starts_with('/') {
                    true => format!("{}{location}", origin_of(&url)),
                    false => location,
                };
                if origin_of(&target).eq_ignore_ascii_case(origin_of(&url)) {
                    url = target;
                    continue;
                }
            }
            if !(status.is_success() || status.is_redirection()) {
                return Err(self.hub_error(status, headers, &url, endpoint, repo, revision, file));
            }
            let commit = header(headers, "x-repo-commit").ok_or(FetchError::MissingHeader {
                url: url.clone(),
                header: "X-Repo-Commit",
            })?;
            let etag = header(headers, "x-linked-etag")
                .or_else(|| header(headers, "etag"))
                .ok_or(FetchError::MissingHeader {
                    url: url.clone(),
                    header: "ETag",
                })?;
            let size = header(headers, "x-linked-size")
                .or_else(|| header(headers, "content-length"))
                .and_then(|s| s.parse().ok());
            return Ok(HubHead {
                commit,
                etag: unquote(&etag),
                size,
            });
        }
        Err(FetchError::Http {
            url,
            status: last_status,
            message: Some("still a redirect after 5 of them inside the hub".into()),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn hub_error(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        url: &str,
        endpoint: &str,
        repo: &str,
        revision: &str,
        file: &str,
    ) -> FetchError {
        let code = header(headers, "x-error-code");
        let token = self.has_token();
        let (repo, endpoint) = (repo.to_string(), endpoint.to_string());
        match (status.as_u16(), code.as_deref()) {
            (_, Some("GatedRepo")) => FetchError::Gated {
                repo,
                endpoint,
                token,
            },
            (_, Some("RepoNotFound")) | (401, None) => FetchError::RepoNotFound {
                repo,
                endpoint,
                token,
            },
            (_, Some("RevisionNotFound")) => FetchError::RevisionNotFound {
                repo,
                revision: revision.to_string(),
            },
            (_, Some("EntryNotFound")) => FetchError::EntryNotFound {
                repo,
                revision: revision.to_string(),
                file: file.to_string(),
            },
            (403, None) => FetchError::Gated {
                repo,
                endpoint,
                token,
            },
            (status, _) => FetchError::Http {
                url: url.to_string(),
                status,
                message: header(headers, "x-error-message"),
            },
        }
    }

    /// Runs `call` until it gets an answer that is not worth retrying: a network failure, a
    /// 429 or a 5xx is retried `retries` times, waiting longer each time.
    fn retrying(
        &self,
        url: &str,
        call: impl Fn(&str) -> Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<ureq::http::Response<ureq::Body>, FetchError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let problem = match call(url) {
                Ok(response) if !retryable(response.status()) => return Ok(response),
                Ok(response) => format!("answered {}", response.status()),
                Err(error) => error.to_string(),
            };
            if attempt > self.retries {
                return Err(FetchError::Network {
                    url: url.to_string(),
                    attempts: attempt,
                    problem,
                });
            }
            thread::sleep(self.backoff(attempt));
        }
    }

    /// Downloads `url` into `partial`, going on from what `partial` already holds (a Range
    /// request; a server that ignores it sends the whole file, which then starts over), and
    /// checks the result against `expected`. Returns the file's sha256. A failure leaves the
    /// partial file for the next attempt; only a digest mismatch deletes it.
    pub fn download(
        &self,
        url: &str,
        authorize: bool,
        partial: &Path,
        label: &str,
        expected: &Expected,
        watch: &mut Watch,
    ) -> Result<String, FetchError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.download_once(url, authorize, partial, label, expected, watch) {
                Ok(()) => break,
                Err(Transfer::Fatal(error)) => return Err(error),
                Err(Transfer::Retry(problem)) if attempt > self.retries => {
                    return Err(FetchError::Network {
                        url: url.to_string(),
                        attempts: attempt,
                        problem,
                    });
                }
                Err(Transfer::Retry(_)) => thread::sleep(self.backoff(attempt)),
            }
        }
        verify(url, partial, label, expected, watch)
    }

    fn download_once(
        &self,
        url: &str,
        authorize: bool,
        partial: &Path,
        label: &str,
        expected: &Expected,
        watch: &mut Watch,
    ) -> Result<(), Transfer> {
        let have = fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
        if expected.size.is_some_and(|size| have == size) {
            return Ok(());
        }
        let mut request = self
            .agent(url, true)
            .get(url)
            .header("Accept-Encoding", "identity");
        if have > 0 {
            request = request.header("Range", format!("bytes={have}-"));
        }
        if authorize && let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let mut response = match request.call() {
            Ok(response) => response,
            Err(error) => return Err(Transfer::Retry(error.to_string())),
        };
        let status = response.status();
        let start = match status.as_u16() {
            206 => have,
            200 => 0,
            // The partial file is not a prefix of this file (or is all of it and the size was
            // not known): start over.
            416 => {
                remove(partial).map_err(Transfer::Fatal)?;
                return Err(Transfer::Retry(
                    "the partial file did not fit the file".into(),
                ));
            }
            s if retryable(status) => return Err(Transfer::Retry(format!("answered {s}"))),
            s => {
                return Err(Transfer::Fatal(FetchError::Http {
                    url: url.to_string(),
                    status: s,
                    message: header(response.headers(), "x-error-message"),
                }));
            }
        };
        let total = response
            .body()
            .content_length()
            .map(|length| start + length)
            .or(expected.size);
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(start > 0)
            .write(true)
            .truncate(start == 0)
            .open(partial)
            .map_err(|source| write_error(partial, start, source))?;
        let mut reader = response.body_mut().as_reader();
        let mut buffer = vec![0u8; CHUNK];
        let mut done = start;
        loop {
            let report = Progress {
                file: label,
                done,
                total,
                resumed_from: have.min(start),
                stage: Stage::Downloading,
            };
            if watch(&report).is_break() {
                return Err(Transfer::Fatal(FetchError::Cancelled {
                    partial: partial.to_path_buf(),
                    done,
                }));
            }
            let read = match reader.read(&mut buffer) {
                Ok(0) => break,
                Ok(read) => read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    let _ = file.flush();
                    return Err(Transfer::Retry(error.to_string()));
                }
            };
            file.write_all(&buffer[..read])
                .map_err(|source| write_error(partial, done, source))?;
            done += read as u64;
        }
        file.flush()
            .and_then(|()| file.sync_all())
            .map_err(|source| write_error(partial, done, source))?;
        match total {
            Some(total) if done < total => Err(Transfer::Retry(format!(
                "the connection closed after {done} of {total} bytes"
            ))),
            _ => Ok(()),
        }
    }
}

/// How one attempt at a transfer failed.
enum Transfer {
    /// Worth another attempt (the partial file stays).
    Retry(String),
    Fatal(FetchError),
}

fn write_error(partial: &Path, done: u64, source: io::Error) -> Transfer {
    Transfer::Fatal(FetchError::Write {
        partial: partial.to_path_buf(),
        done,
        source,
    })
}

fn remove(path: &Path) -> Result<(), FetchError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(FetchError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Checks a finished file against what it must be; a mismatch deletes it. Returns its sha256.
pub fn verify(
    url: &str,
    path: &Path,
    label: &str,
    expected: &Expected,
    watch: &mut Watch,
) -> Result<String, FetchError> {
    let size = fs::metadata(path)
        .map_err(|source| FetchError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    let mismatch = |digest: &'static str, expected: String, found: String| {
        let _ = fs::remove_file(path);
        FetchError::Mismatch {
            url: url.to_string(),
            digest,
            expected,
            found,
            deleted: path.to_path_buf(),
        }
    };
    if let Some(expected_size) = expected.size
        && expected_size != size
    {
        return Err(mismatch(
            "size",
            format!("{expected_size} bytes"),
            format!("{size} bytes"),
        ));
    }
    let digests = digests_of(path, label, size, watch)?;
    if let Some(sha256) = &expected.sha256
        && *sha256 != digests.sha256
    {
        return Err(mismatch("sha256", sha256.clone(), digests.sha256));
    }
    if let Some(sha1) = &expected.git_sha1
        && *sha1 != digests.git_sha1
    {
        return Err(mismatch("git blob sha1", sha1.clone(), digests.git_sha1));
    }
    Ok(digests.sha256)
}

pub struct Digests {
    pub sha256: String,
    pub git_sha1: String,
}

/// The sha256 and the git blob sha1 of a file, reading it once (progress as `Verifying`).
pub fn digests_of(
    path: &Path,
    label: &str,
    size: u64,
    watch: &mut Watch,
) -> Result<Digests, FetchError> {
    let io_error = |source| FetchError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = fs::File::open(path).map_err(io_error)?;
    let mut sha256 = sha2::Sha256::new();
    let mut git_sha1 = sha1::Sha1::new();
    git_sha1.update(format!("blob {size}\0").as_bytes());
    let mut buffer = vec![0u8; CHUNK];
    let mut done = 0u64;
    loop {
        let read = match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_error(e)),
        };
        sha256.update(&buffer[..read]);
        git_sha1.update(&buffer[..read]);
        done += read as u64;
        // Verifying is not cancelled: it is short, and a half-checked file is not kept.
        let _ = watch(&Progress {
            file: label,
            done,
            total: Some(size),
            resumed_from: 0,
            stage: Stage::Verifying,
        });
    }
    Ok(Digests {
        sha256: hex(&sha256.finalize()),
        git_sha1: hex(&git_sha1.finalize()),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn retryable(status: StatusCode) -> bool {
    status.as_u16() == 429 || status.is_server_error()
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// An ETag without its weak marker and quotes.
fn unquote(etag: &str) -> String {
    etag.trim_start_matches("W/").trim_matches('"').to_string()
}

/// Whether a URL's host is this machine's loopback (`127.x.x.x`, `[::1]`, `localhost`).
fn is_loopback(url: &str) -> bool {
    let origin = origin_of(url);
    let host_and_port = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    let host = match host_and_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host_and_port.split(':').next().unwrap_or_default(),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `scheme://host[:port]` of a URL.
fn origin_of(url: &str) -> &str {
    let after_scheme = url.find("://").map(|i| i + 3).unwrap_or(0);
    match url[after_scheme..].find('/') {
        Some(i) => &url[..after_scheme + i],
        None => url,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_go_direct() {
        for url in [
            "http://127.0.0.1:8080/a",
            "http://localhost/x",
            "http://[::1]:9/y",
            "http://127.1.2.3",
        ] {
            assert!(is_loopback(url), "{url}");
        }
        for url in [
            "https://huggingface.co/a",
            "http://10.0.0.1:80/",
            "https://cdn-lfs.hf.co",
        ] {
            assert!(!is_loopback(url), "{url}");
        }
    }
}
