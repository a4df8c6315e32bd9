//! A Hugging Face hub on 127.0.0.1 for the tests of models by name (no test touches the
//! network): the resolve endpoint as the hub answers it (a git file with its sha1 ETag; an LFS
//! file as a redirect to a CDN path with `X-Linked-Etag`/`X-Linked-Size`; `X-Repo-Commit`;
//! `X-Error-Code` for a missing repo, revision or file and a gated repo), Range requests, and
//! release files at plain paths — plus the faults a download meets: a connection dropped
//! halfway, bytes that do not match their hash.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;

use sha1::Digest as _;

/// A file of a served repo.
#[derive(Debug, Clone)]
pub struct ServedFile {
    pub path: String,
    pub bytes: Vec<u8>,
    /// LFS (large files: redirected to the CDN, ETag = sha256) or git (ETag = blob sha1).
    pub lfs: bool,
}

impl ServedFile {
    pub fn lfs(path: &str, bytes: Vec<u8>) -> Self {
        Self {
            path: path.into(),
            bytes,
            lfs: true,
        }
    }

    pub fn git(path: &str, bytes: Vec<u8>) -> Self {
        Self {
            path: path.into(),
            bytes,
            lfs: false,
        }
    }
}

#[derive(Debug, Clone)]
struct Repo {
    commit: String,
    /// The token a gated repo wants.
    gated: Option<String>,
    files: Vec<ServedFile>,
}

#[derive(Debug, Default)]
struct State {
    repos: BTreeMap<String, Repo>,
    /// CDN blobs by sha256, and release files by path.
    blobs: BTreeMap<String, Vec<u8>>,
    /// Path → bytes after which the next transfer of it closes the connection.
    drop_once: BTreeMap<String, usize>,
    /// Paths whose bytes are served with one byte changed.
    corrupt: Vec<String>,
    /// Old repo name → new one (the hub redirects a renamed repo on its own host).
    renamed: BTreeMap<String, String>,
    log: Vec<String>,
}

/// The server: it runs until the test process ends. LFS files redirect to its CDN, another
/// port (another origin, as the hub's CDN is another host).
pub struct HubServer {
    pub url: String,
    state: Arc<Mutex<State>>,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&sha2::Sha256::digest(bytes))
}

/// A git blob's id, the ETag the hub gives a file kept in git.
pub fn git_sha1_hex(bytes: &[u8]) -> String {
    let mut hasher = sha1::Sha1::new();
    hasher.update(format!("blob {}\0", bytes.len()).as_bytes());
    hasher.update(bytes);
    hex(&hasher.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl HubServer {
    pub fn start() -> Self {
        let bind = || TcpListener::bind("127.0.0.1:0").expect("a port on 127.0.0.1");
        let (hub, cdn) = (bind(), bind());
        let url = format!("http://{}", hub.local_addr().unwrap());
        let cdn_url = format!("http://{}", cdn.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        for listener in [hub, cdn] {
            let served = state.clone();
            let cdn_url = cdn_url.clone();
            thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    let state = served.clone();
                    let cdn_url = cdn_url.clone();
                    thread::spawn(move || {
                        let _ = serve(stream, &state, &cdn_url);
                    });
                }
            });
        }
        Self { url, state }
    }

    /// A public model repo at `commit` (its `main`).
    pub fn add_repo(&self, repo: &str, commit: &str, files: Vec<ServedFile>) {
        self.insert(repo, commit, None, files);
    }

    /// A gated repo that answers only `Authorization: Bearer <token>`.
    pub fn add_gated_repo(&self, repo: &str, commit: &str, token: &str, files: Vec<ServedFile>) {
        self.insert(repo, commit, Some(token.to_string()), files);
    }

    fn insert(&self, repo: &str, commit: &str, gated: Option<String>, files: Vec<ServedFile>) {
        let mut state = self.state.lock().unwrap();
        for file in files.iter().filter(|f| f.lfs) {
            state.blobs.insert(
                format!("/cdn/{}", sha256_hex(&file.bytes)),
                file.bytes.clone(),
            );
        }
        state.repos.insert(
            repo.to_string(),
            Repo {
                commit: commit.to_string(),
                gated,
                files,
            },
        );
    }

    /// `old` answers with a redirect to `new`, as the hub answers for a renamed repo.
    pub fn rename_repo(&self, old: &str, new: &str) {
        self.state
            .lock()
            .unwrap()
            .renamed
            .insert(old.to_string(), new.to_string());
    }

    /// A file at a plain path (`/github.com/…`), as a release mirror serves it.
    pub fn add_release(&self, path: &str, bytes: Vec<u8>) {
        self.state
            .lock()
            .unwrap()
            .blobs
            .insert(path.to_string(), bytes);
    }

    /// The CDN path of an LFS file's bytes.
    pub fn cdn_path(bytes: &[u8]) -> String {
        format!("/cdn/{}", sha256_hex(bytes))
    }

    /// The next transfer of `path` (a CDN or release path) closes after `bytes` bytes.
    pub fn drop_once_after(&self, path: &str, bytes: usize) {
        self.state
            .lock()
            .unwrap()
            .drop_once
            .insert(path.to_string(), bytes);
    }

    /// `path` is served with one byte changed (its headers still promise the right bytes).
    pub fn corrupt(&self, path: &str) {
        self.state.lock().unwrap().corrupt.push(path.to_string());
    }

    /// Every request so far: `METHOD path` and ` range=…` when one was asked.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }
}

struct Request {
    method: String,
    path: String,
    range_from: Option<u64>,
    authorization: Option<String>,
}

fn read_request(stream: &TcpStream) -> std::io::Result<Request> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let (mut range_from, mut authorization) = (None, None);
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "range" => {
                range_from = value
                    .strip_prefix("bytes=")
                    .and_then(|r| r.strip_suffix('-'))
                    .and_then(|n| n.parse().ok())
            }
            "authorization" => authorization = Some(value.to_string()),
            _ => {}
        }
    }
    Ok(Request {
        method,
        path,
        range_from,
        authorization,
    })
}

fn respond(
    mut stream: &TcpStream,
    status: &str,
    headers: &[(&str, String)],
    body: &[u8],
    send_body: bool,
) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !headers.iter().any(|(n, _)| *n == "Content-Length") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if send_body {
        stream.write_all(body)?;
    }
    stream.flush()
}

fn error(stream: &TcpStream, status: &str, code: &str, send_body: bool) -> std::io::Result<()> {
    respond(
        stream,
        status,
        &[
            ("X-Error-Code", code.to_string()),
            ("X-Error-Message", format!("{code} (test hub)")),
        ],
        b"",
        send_body,
    )
}

fn serve(stream: TcpStream, state: &Mutex<State>, cdn_url: &str) -> std::io::Result<()> {
    let request = read_request(&stream)?;
    let send_body = request.method != "HEAD";
    {
        let mut state = state.lock().unwrap();
        let range = request
            .range_from
            .map(|r| format!(" range={r}-"))
            .unwrap_or_default();
        state
            .log
            .push(format!("{} {}{range}", request.method, request.path));
    }
    if let Some((repo, revision, file)) = parse_resolve(&request.path) {
        let renamed = state.lock().unwrap().renamed.get(&repo).cloned();
        if let Some(new) = renamed {
            let location = format!("/{new}/resolve/{revision}/{file}");
            return respond(
                &stream,
                "307 Temporary Redirect",
                &[("Location", location)],
                b"",
                send_body,
            );
        }
        let found = state.lock().unwrap().repos.get(&repo).cloned();
        let Some(found) = found else {
            return error(&stream, "401 Unauthorized", "RepoNotFound", send_body);
        };
        if let Some(token) = &found.gated {
            match &request.authorization {
                None => return error(&stream, "401 Unauthorized", "GatedRepo", send_body),
                Some(given) if *given != format!("Bearer {token}") => {
                    return error(&stream, "403 Forbidden", "GatedRepo", send_body);
                }
                Some(_) => {}
            }
        }
        if revision != "main" && revision != found.commit {
            return error(&stream, "404 Not Found", "RevisionNotFound", send_body);
        }
        let Some(file) = found.files.iter().find(|f| f.path == file) else {
            return error(&stream, "404 Not Found", "EntryNotFound", send_body);
        };
        if file.lfs {
            let sha = sha256_hex(&file.bytes);
            return respond(
                &stream,
                "302 Found",
                &[
                    ("Location", format!("{cdn_url}/cdn/{sha}")),
                    ("X-Repo-Commit", found.commit.clone()),
                    ("X-Linked-Etag", format!("\"{sha}\"")),
                    ("X-Linked-Size", file.bytes.len().to_string()),
                    ("ETag", "\"a-git-pointer-etag\"".to_string()),
                ],
                b"",
                send_body,
            );
        }
        return respond(
            &stream,
            "200 OK",
            &[
                ("X-Repo-Commit", found.commit.clone()),
                ("ETag", format!("\"{}\"", git_sha1_hex(&file.bytes))),
            ],
            &file.bytes,
            send_body,
        );
    }
    let (bytes, drop_after, corrupt) = {
        let mut state = state.lock().unwrap();
        let bytes = state.blobs.get(&request.path).cloned();
        let drop_after = state.drop_once.remove(&request.path);
        let corrupt = state.corrupt.contains(&request.path);
        (bytes, drop_after, corrupt)
    };
    let Some(mut bytes) = bytes else {
        return respond(&stream, "404 Not Found", &[], b"", send_body);
    };
    if corrupt && !bytes.is_empty() {
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
    }
    let total = bytes.len();
    let (status, start) = match request.range_from {
        Some(from) if (from as usize) < total => ("206 Partial Content", from as usize),
        Some(_) => {
            return respond(
                &stream,
                "416 Range Not Satisfiable",
                &[("Content-Range", format!("bytes */{total}"))],
                b"",
                send_body,
            );
        }
        None => ("200 OK", 0),
    };
    let mut headers = vec![("Content-Length", (total - start).to_string())];
    if start > 0 {
        headers.push((
            "Content-Range",
            format!("bytes {start}-{}/{total}", total - 1),
        ));
    }
    match drop_after {
        Some(cut) if send_body => {
            let end = (start + cut).min(total);
            respond(&stream, status, &headers, &bytes[start..end], true)?;
            stream.shutdown(Shutdown::Both)
        }
        _ => respond(&stream, status, &headers, &bytes[start..], send_body),
    }
}

/// `/<org>/<repo>/resolve/<revision>/<file>`.
fn parse_resolve(path: &str) -> Option<(String, String, String)> {
    let mut parts = path.trim_start_matches('/').splitn(5, '/');
    let (org, repo, resolve, revision, file) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    (resolve == "resolve").then(|| {
        (
            format!("{org}/{repo}"),
            revision.to_string(),
            file.to_string(),
        )
    })
}
