//! Why a name could not be fetched, each case with what a user can do about it.

use std::io;
use std::path::PathBuf;

use crate::name::NameError;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Name(#[from] NameError),

    #[error(
        "`{name}` is not in the cache ({}) and downloads are off ({why}); run `kdlab fetch {name}` where there is network (and copy the cache here)",
        looked_in.display()
    )]
    Offline {
        name: String,
        looked_in: PathBuf,
        why: &'static str,
    },

    #[error("the cache entry {} is broken: it {problem}; `kdlab fetch` with network repairs it", path.display())]
    BrokenCache { path: PathBuf, problem: String },

    #[error("{endpoint} has no model repo `{repo}`{}", if *token {
        " that the token can see (check the name, or that the token's account has access)"
    } else {
        " (or it is private: set HF_TOKEN to a token of an account with access)"
    })]
    RepoNotFound {
        repo: String,
        endpoint: String,
        token: bool,
    },

    #[error("the repo `{repo}` has no revision `{revision}` (a branch, tag or commit hash)")]
    RevisionNotFound { repo: String, revision: String },

    #[error("the repo `{repo}` has no file `{file}` at revision `{revision}`")]
    EntryNotFound {
        repo: String,
        revision: String,
        file: String,
    },

    #[error("`{repo}` is gated: {}", if *token {
        format!("the token given (HF_TOKEN or the token file) has no access yet; accept the terms at {endpoint}/{repo} while logged in as its account")
    } else {
        format!("accept its terms at {endpoint}/{repo} while logged in, then set HF_TOKEN (or run `hf auth login`) with a token of that account")
    })]
    Gated {
        repo: String,
        endpoint: String,
        token: bool,
    },

    #[error("{url} answered {status}{}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Http {
        url: String,
        status: u16,
        message: Option<String>,
    },

    #[error(
        "{url}: {problem} (after {attempts} attempts); check the connection and the proxy \
         (HTTPS_PROXY), or work from the cache with --offline"
    )]
    Network {
        url: String,
        attempts: u32,
        problem: String,
    },

    #[error("{url} gave no {header} header: the server is not a Hugging Face hub (HF_ENDPOINT)")]
    MissingHeader { url: String, header: &'static str },

    #[error(
        "{url}: the download's {digest} is {found}, but {expected} was expected; the file was deleted ({})",
        deleted.display()
    )]
    Mismatch {
        url: String,
        digest: &'static str,
        expected: String,
        found: String,
        deleted: PathBuf,
    },

    #[error(
        "{}: its sha256 is {found}, not the {expected} it was checked as; the file was deleted ({}), `kdlab fetch` downloads it again",
        path.display(), path.display()
    )]
    Corrupt {
        path: PathBuf,
        expected: String,
        found: String,
    },

    #[error(
        "writing {} failed: {source}; the {done} bytes downloaded so far are kept there and the next fetch resumes from them",
        partial.display()
    )]
    Write {
        partial: PathBuf,
        done: u64,
        source: io::Error,
    },

    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },

    #[error(
        "the download was cancelled; the {done} bytes so far are kept in {} and the next fetch resumes from them",
        partial.display()
    )]
    Cancelled { partial: PathBuf, done: u64 },
}

impl FetchError {
    /// A mistake in what was asked for (the name, the repo, the revision, the file): the user's
    /// to fix in the config or the command line, not a failure of the machine or the network.
    pub fn is_config_mistake(&self) -> bool {
        matches!(
            self,
            FetchError::Name(_)
                | FetchError::RepoNotFound { .. }
                | FetchError::RevisionNotFound { .. }
                | FetchError::EntryNotFound { .. }
        )
    }

    pub fn is_cancelled(&self) -> bool {
        matches!(self, FetchError::Cancelled { .. })
    }
}
