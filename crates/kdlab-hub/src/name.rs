//! What a weights field or argument names: a file, a hub file (`hf:ORG/REPO[@REVISION][/FILE]`)
//! or a short name of the catalogue.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::catalogue::{self, Known, Origin};

/// The default file of a hub repo, as timm's hub files are laid out.
pub const DEFAULT_FILE: &str = "model.safetensors";
/// The default revision, as `huggingface_hub` takes it.
pub const DEFAULT_REVISION: &str = "main";

/// One file of a model repo on the hub.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HubFile {
    /// `ORG/REPO`.
    pub repo: String,
    /// A branch, tag or commit.
    pub revision: String,
    /// The path in the repo.
    pub file: String,
}

impl HubFile {
    /// The `config.json` timm writes beside the weights (in the same folder of the repo).
    pub fn config_json(&self) -> HubFile {
        let file = match self.file.rsplit_once('/') {
            Some((folder, _)) => format!("{folder}/config.json"),
            None => "config.json".to_string(),
        };
        HubFile {
            file,
            ..self.clone()
        }
    }
}

impl fmt::Display for HubFile {
    /// The `hf:` name, written in full.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "hf:{}@{}/{}", self.repo, self.revision, self.file)
    }
}

/// What a weights text names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightsName {
    /// A file on disk (or one that should be there: opening it says what is wrong).
    Path(PathBuf),
    /// A file of a model repo on the hub.
    Hub(HubFile),
    /// A file published outside the hub, by its short name.
    Release(&'static Known),
}

/// A weights text that is neither a file nor a name kdlab knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error(
        "`{name}` is neither a file nor a model name kdlab knows{}",
        did_you_mean(closest)
    )]
    Unknown {
        name: String,
        closest: Vec<&'static str>,
    },
    #[error("`{text}` is not a hub name: {rule} (hf:ORG/REPO[@REVISION][/FILE])")]
    BadHubName { text: String, rule: String },
}

fn did_you_mean(closest: &[&str]) -> String {
    match closest {
        [] => "; `kdlab fetch --list` shows the names".to_string(),
        names => format!(
            "; did you mean {}? (`kdlab fetch --list` shows them all)",
            names
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

impl WeightsName {
    /// Reads a weights text: `hf:…` is a hub name; a file that exists is a file; a short name of
    /// the catalogue is that name; anything else that looks like a name (no folder, no weights
    /// extension) is an unknown name with the closest ones; the rest is a path.
    pub fn parse(text: &str) -> Result<Self, NameError> {
        if let Some(rest) = text.strip_prefix("hf:") {
            return parse_hub(text, rest).map(WeightsName::Hub);
        }
        let path = Path::new(text);
        if path.exists() {
            return Ok(WeightsName::Path(path.to_path_buf()));
        }
        if let Some(known) = catalogue::find(text) {
            return Ok(Self::known(known));
        }
        if looks_like_a_name(text) {
            return Err(NameError::Unknown {
                name: text.to_string(),
                closest: catalogue::closest(text),
            });
        }
        Ok(WeightsName::Path(path.to_path_buf()))
    }

    /// As `parse`, for a path field that may hold a name.
    pub fn of_path(path: &Path) -> Result<Self, NameError> {
        match path.to_str() {
            Some(text) => Self::parse(text),
            None => Ok(WeightsName::Path(path.to_path_buf())),
        }
    }

    /// What a catalogue entry names.
    pub fn known(known: &'static Known) -> Self {
        match known.origin {
            Origin::Hub { repo, .. } => WeightsName::Hub(HubFile {
                repo: repo.to_string(),
                revision: DEFAULT_REVISION.to_string(),
                file: DEFAULT_FILE.to_string(),
            }),
            Origin::Release { .. } => WeightsName::Release(known),
        }
    }

    /// Whether it names something to fetch (not a file on disk).
    pub fn is_name(&self) -> bool {
        !matches!(self, WeightsName::Path(_))
    }
}

const WEIGHTS_EXTENSIONS: [&str; 6] = ["pth", "pt", "safetensors", "bin", "ckpt", "mpk"];

/// A bare word such as `vit_small_patch14_dinov2.lvd142m` (timm names have a dot, so only a
/// weights extension makes a dotted word a file name).
fn looks_like_a_name(text: &str) -> bool {
    let path = Path::new(text);
    !text.is_empty()
        && path.components().count() == 1
        && !text.contains(['/', '\\'])
        && !path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| WEIGHTS_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// `ORG/REPO[@REVISION][/FILE]`, with the hub's rules for repo names.
fn parse_hub(text: &str, rest: &str) -> Result<HubFile, NameError> {
    let bad = |rule: &str| NameError::BadHubName {
        text: text.to_string(),
        rule: rule.to_string(),
    };
    let (org, after_org) = rest
        .split_once('/')
        .ok_or_else(|| bad("it needs an owner and a repo, ORG/REPO"))?;
    let repo_end = after_org.find(['@', '/']).unwrap_or(after_org.len());
    let (repo, after_repo) = after_org.split_at(repo_end);
    for (what, part) in [("owner", org), ("repo", repo)] {
        check_repo_part(what, part).map_err(|rule| bad(&rule))?;
    }
    let (revision, file) = match after_repo.strip_prefix('@') {
        Some(revision_and_file) => split_revision(revision_and_file),
        None => (DEFAULT_REVISION, after_repo.strip_prefix('/')),
    };
    if revision.is_empty() {
        return Err(bad("the revision after `@` is empty"));
    }
    if revision.contains("..") {
        return Err(bad("a revision has no `..`"));
    }
    let file = match file {
        None => DEFAULT_FILE,
        Some("") => return Err(bad("the file after the last `/` is empty")),
        Some(file) => file,
    };
    if file
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
        || file.starts_with('/')
        || file.contains('\\')
    {
        return Err(bad(
            "the file is a path inside the repo, without `.`, `..` or empty parts",
        ));
    }
    Ok(HubFile {
        repo: format!("{org}/{repo}"),
        revision: revision.to_string(),
        file: file.to_string(),
    })
}

/// `REVISION[/FILE]`: a revision ends at the first `/`, except the hub's own `refs/pr/N` and
/// `refs/convert/NAME`, which hold two.
fn split_revision(text: &str) -> (&str, Option<&str>) {
    let slashes_in_revision =
        match text.starts_with("refs/pr/") || text.starts_with("refs/convert/") {
            true => 2,
            false => 0,
        };
    match text.match_indices('/').nth(slashes_in_revision) {
        Some((end, _)) => (&text[..end], Some(&text[end + 1..])),
        None => (text, None),
    }
}

/// The hub's rule for owner and repo names: letters, digits, `-`, `_`, `.`; no `--` or `..`;
/// not starting or ending with `-` or `.`; at most 96 characters.
fn check_repo_part(what: &str, part: &str) -> Result<(), String> {
    if part.is_empty() {
        return Err(format!("the {what} is empty"));
    }
    if part.len() > 96 {
        return Err(format!("the {what} is longer than 96 characters"));
    }
    if !part
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "the {what} `{part}` may hold only letters, digits, `-`, `_` and `.`"
        ));
    }
    if part.contains("--") || part.contains("..") {
        return Err(format!("the {what} `{part}` may not hold `--` or `..`"));
    }
    if part.starts_with(['-', '.']) || part.ends_with(['-', '.']) {
        return Err(format!(
            "the {what} `{part}` may not start or end with `-` or `.`"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(text: &str) -> HubFile {
        match WeightsName::parse(text) {
            Ok(WeightsName::Hub(file)) => file,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn hub_names_take_a_revision_and_a_file() {
        let plain = hub("hf:timm/vit_small_patch14_dinov2.lvd142m");
        assert_eq!(plain.repo, "timm/vit_small_patch14_dinov2.lvd142m");
        assert_eq!(
            (plain.revision.as_str(), plain.file.as_str()),
            ("main", DEFAULT_FILE)
        );
        let pinned = hub("hf:timm/vit_small_patch14_dinov2.lvd142m@v1.2/sub/pytorch_model.bin");
        assert_eq!(pinned.revision, "v1.2");
        assert_eq!(pinned.file, "sub/pytorch_model.bin");
        assert_eq!(pinned.config_json().file, "sub/config.json");
        let pr = hub("hf:org/repo@refs/pr/3/weights.safetensors");
        assert_eq!(
            (pr.revision.as_str(), pr.file.as_str()),
            ("refs/pr/3", "weights.safetensors")
        );
        assert_eq!(hub("hf:org/repo@refs/pr/3").file, DEFAULT_FILE);
        let file_only = hub("hf:org/repo/weights.safetensors");
        assert_eq!(
            (file_only.revision.as_str(), file_only.file.as_str()),
            ("main", "weights.safetensors")
        );
        assert_eq!(
            file_only.to_string(),
            "hf:org/repo@main/weights.safetensors"
        );
    }

    #[test]
    fn bad_hub_names_say_the_rule() {
        for (text, rule) in [
            ("hf:justrepo", "ORG/REPO"),
            ("hf:org/re po", "letters, digits"),
            ("hf:org/a--b", "`--`"),
            ("hf:org/repo@", "revision after `@` is empty"),
            ("hf:org/repo@main/../x", "without `.`, `..`"),
            ("hf:org/repo/", "file after the last `/` is empty"),
            ("hf:/repo", "owner is empty"),
        ] {
            let message = WeightsName::parse(text).unwrap_err().to_string();
            assert!(message.contains(rule), "{text}: {message}");
        }
    }

    #[test]
    fn short_names_paths_and_unknown_names() {
        assert!(matches!(
            WeightsName::parse("beitv2_base_patch16_224_pt1k"),
            Ok(WeightsName::Release(known)) if known.name == "beitv2_base_patch16_224_pt1k"
        ));
        assert_eq!(
            hub("vit_base_patch14_dinov2").repo,
            "timm/vit_base_patch14_dinov2.lvd142m"
        );
        assert!(matches!(
            WeightsName::parse("checkpoints/missing.pth"),
            Ok(WeightsName::Path(_))
        ));
        assert!(matches!(
            WeightsName::parse("missing.safetensors"),
            Ok(WeightsName::Path(_))
        ));
        let message = WeightsName::parse("beitv2_base_patch16_224_pt1")
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("did you mean `beitv2_base_patch16_224_pt1k`"),
            "{message}"
        );
    }
}
