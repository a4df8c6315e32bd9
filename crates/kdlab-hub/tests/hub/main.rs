//! kdlab-hub's test suite, one binary: names fetched from a hub on 127.0.0.1 (the testkit's
//! `HubServer`) into the hub's cache layout, read back from a cache written by hand, offline,
//! resumed, refused. No test touches the network.

use std::fs;
use std::ops::ControlFlow;
use std::path::Path;
use std::time::Duration;

use kdlab_hub::{
    FetchError, Fetched, Fetcher, Freshness, How, Known, Origin, Progress, Settings, WeightsName,
};
use kdlab_testkit::hub_server::{HubServer, ServedFile, git_sha1_hex, sha256_hex};

const REPO: &str = "timm/vit_tiny_test.lvd142m";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn weights() -> Vec<u8> {
    (0..300_000u32)
        .flat_map(|i| (i * 2654435761).to_le_bytes())
        .collect()
}

const CONFIG: &[u8] = br#"{"architecture": "vit_tiny_test", "num_classes": 0}"#;

fn serve_repo(server: &HubServer) {
    server.add_repo(
        REPO,
        COMMIT,
        vec![
            ServedFile::lfs("model.safetensors", weights()),
            ServedFile::git("config.json", CONFIG.to_vec()),
        ],
    );
}

fn fetcher(server: &HubServer, root: &Path) -> Fetcher {
    Fetcher::new(Settings {
        hub_cache: root.join("hub"),
        release_cache: root.join("kdlab"),
        endpoint: server.url.clone(),
        release_mirror: Some(server.url.clone()),
        token: None,
        offline: None,
    })
    .with_first_backoff(Duration::from_millis(10))
}

fn fetch(fetcher: &Fetcher, name: &str, freshness: Freshness) -> Result<Fetched, FetchError> {
    let parsed = WeightsName::parse(name)?;
    let fetched = fetcher.fetch(&parsed, name, freshness, &mut |_: &Progress| {
        ControlFlow::Continue(())
    })?;
    Ok(fetched.expect("a name, not a path"))
}

fn repo_dir(root: &Path) -> std::path::PathBuf {
    root.join("hub/models--timm--vit_tiny_test.lvd142m")
}

#[test]
fn a_hub_name_lands_in_the_hubs_layout_and_is_then_used_without_a_request() {
    let server = HubServer::start();
    serve_repo(&server);
    let root = tempfile::tempdir().unwrap();
    let fetcher = fetcher(&server, root.path());
    let name = format!("hf:{REPO}");

    let first = fetch(&fetcher, &name, Freshness::UseCached).unwrap();
    let sha = sha256_hex(&weights());
    assert_eq!(first.how, How::Downloaded);
    assert_eq!(first.sha256, sha);
    assert_eq!(first.commit.as_deref(), Some(COMMIT));
    assert_eq!(
        first.source,
        format!("hf:{REPO}@{COMMIT}/model.safetensors")
    );
    let repo = repo_dir(root.path());
    // huggingface_hub's layout: the blob by its ETag, the ref, relative links in the snapshot.
    assert_eq!(fs::read(repo.join("blobs").join(&sha)).unwrap(), weights());
    assert_eq!(fs::read_to_string(repo.join("refs/main")).unwrap(), COMMIT);
    let snapshot = repo.join("snapshots").join(COMMIT);
    assert_eq!(first.file, snapshot.join("model.safetensors"));
    #[cfg(unix)]
    {
        assert_eq!(
            fs::read_link(snapshot.join("model.safetensors")).unwrap(),
            Path::new("../../blobs").join(&sha)
        );
        assert_eq!(
            fs::read_link(snapshot.join("config.json")).unwrap(),
            Path::new("../../blobs").join(git_sha1_hex(CONFIG))
        );
    }
    assert_eq!(fs::read(snapshot.join("config.json")).unwrap(), CONFIG);
    assert!(!fs::read_dir(repo.join("blobs")).unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".incomplete")
    }));
    let log = server.requests();
    assert!(
        log.contains(&format!("HEAD /{REPO}/resolve/main/model.safetensors")),
        "{log:?}"
    );
    assert!(
        log.contains(&format!("GET {}", HubServer::cdn_path(&weights()))),
        "{log:?}"
    );
    // The config.json comes from the same commit as the weights.
    assert!(
        log.contains(&format!("HEAD /{REPO}/resolve/{COMMIT}/config.json")),
        "{log:?}"
    );

    let again = fetch(&fetcher, &name, Freshness::UseCached).unwrap();
    assert_eq!(
        (again.how, &again.file, &again.sha256),
        (How::Cached, &first.file, &sha)
    );
    assert_eq!(
        server.requests().len(),
        log.len(),
        "a cached name asks nothing"
    );

    // A renamed repo: the hub's redirect on its own host is followed (the CDN's is not: the
    // metadata is on the hub's answer).
    server.rename_repo("timm/vit_tiny_old_name", REPO);
    let renamed = fetch(&fetcher, "hf:timm/vit_tiny_old_name", Freshness::UseCached).unwrap();
    assert_eq!(renamed.sha256, sha);
    let log_now = server.requests();
    assert!(
        log_now
            .contains(&"HEAD /timm/vit_tiny_old_name/resolve/main/model.safetensors".to_string())
    );
    let log = log_now;

    // `kdlab fetch` asks the hub for the revision's commit and reads the blob again.
    let refreshed = fetch(&fetcher, &name, Freshness::Refresh).unwrap();
    assert_eq!(refreshed.how, How::Verified);
    assert!(
        !server.requests()[log.len()..]
            .iter()
            .any(|r| r.starts_with("GET /cdn")),
        "nothing downloaded again"
    );
}

#[test]
fn a_cache_written_by_hand_is_used_offline_and_a_missing_one_is_named() {
    let root = tempfile::tempdir().unwrap();
    let repo = repo_dir(root.path());
    let sha = sha256_hex(&weights());
    fs::create_dir_all(repo.join("blobs")).unwrap();
    fs::create_dir_all(repo.join("refs")).unwrap();
    fs::create_dir_all(repo.join("snapshots").join(COMMIT)).unwrap();
    fs::write(repo.join("blobs").join(&sha), weights()).unwrap();
    fs::write(repo.join("refs/main"), COMMIT).unwrap();
    let snapshot = repo
        .join("snapshots")
        .join(COMMIT)
        .join("model.safetensors");
    #[cfg(unix)]
    std::os::unix::fs::symlink(Path::new("../../blobs").join(&sha), &snapshot).unwrap();
    #[cfg(not(unix))]
    fs::write(&snapshot, weights()).unwrap();

    // No server at all: an endpoint nothing listens on.
    let offline = Fetcher::new(Settings {
        hub_cache: root.path().join("hub"),
        release_cache: root.path().join("kdlab"),
        endpoint: "http://127.0.0.1:9".into(),
        release_mirror: None,
        token: None,
        offline: Some("HF_HUB_OFFLINE is set"),
    });
    for name in [
        format!("hf:{REPO}"),
        format!("hf:{REPO}@{COMMIT}"),
        format!("hf:{REPO}@main/model.safetensors"),
    ] {
        let found = fetch(&offline, &name, Freshness::Refresh).unwrap();
        assert_eq!((found.how, &found.file), (How::Cached, &snapshot), "{name}");
        #[cfg(unix)]
        assert_eq!(found.sha256, sha, "the blob's name is its sha256");
    }

    let missing = fetch(&offline, "hf:timm/other_model", Freshness::UseCached).unwrap_err();
    let message = missing.to_string();
    assert!(matches!(missing, FetchError::Offline { .. }), "{message}");
    assert!(
        message.contains("`hf:timm/other_model` is not in the cache"),
        "{message}"
    );
    assert!(message.contains("HF_HUB_OFFLINE"), "{message}");
    let revision = fetch(&offline, &format!("hf:{REPO}@v2"), Freshness::UseCached).unwrap_err();
    assert!(matches!(revision, FetchError::Offline { .. }), "{revision}");

    #[cfg(unix)]
    {
        // A snapshot whose blob is gone is a broken entry, never a file to open.
        fs::remove_file(repo.join("blobs").join(&sha)).unwrap();
        let broken = fetch(&offline, &format!("hf:{REPO}"), Freshness::UseCached).unwrap_err();
        let message = broken.to_string();
        assert!(
            matches!(broken, FetchError::BrokenCache { .. }),
            "{message}"
        );
        assert!(message.contains("which is missing"), "{message}");

        // Online, it is repaired.
        let server = HubServer::start();
        serve_repo(&server);
        let online = fetcher(&server, root.path());
        let repaired = fetch(&online, &format!("hf:{REPO}"), Freshness::UseCached).unwrap();
        assert_eq!(repaired.how, How::Downloaded);
        assert_eq!(fs::read(&repaired.file).unwrap(), weights());
    }
}

#[test]
fn a_connection_dropped_halfway_resumes_with_a_range_request() {
    let server = HubServer::start();
    serve_repo(&server);
    let cdn = HubServer::cdn_path(&weights());
    server.drop_once_after(&cdn, 400_000);
    let root = tempfile::tempdir().unwrap();
    let fetcher = fetcher(&server, root.path());
    let mut seen_resume = 0;
    let parsed = WeightsName::parse(&format!("hf:{REPO}")).unwrap();
    let fetched = fetcher
        .fetch(&parsed, "t", Freshness::UseCached, &mut |p: &Progress| {
            seen_resume = seen_resume.max(p.resumed_from);
            ControlFlow::Continue(())
        })
        .unwrap()
        .unwrap();
    assert_eq!(fs::read(&fetched.file).unwrap(), weights());
    assert_eq!(fetched.sha256, sha256_hex(&weights()));
    let log = server.requests();
    assert!(log.contains(&format!("GET {cdn} range=400000-")), "{log:?}");
    assert_eq!(seen_resume, 400_000);
}

#[test]
fn a_cancelled_download_keeps_its_part_and_the_next_fetch_resumes_it() {
    let server = HubServer::start();
    serve_repo(&server);
    let root = tempfile::tempdir().unwrap();
    let fetcher = fetcher(&server, root.path());
    let parsed = WeightsName::parse(&format!("hf:{REPO}")).unwrap();
    let cancelled = fetcher
        .fetch(&parsed, "t", Freshness::UseCached, &mut |p: &Progress| {
            if p.done > 0 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap_err();
    let FetchError::Cancelled { partial, done } = &cancelled else {
        panic!("{cancelled}")
    };
    assert_eq!(fs::metadata(partial).unwrap().len(), *done);
    assert!(
        !repo_dir(root.path()).join("snapshots").exists(),
        "nothing half-done is linked"
    );
    let fetched = fetch(&fetcher, &format!("hf:{REPO}"), Freshness::UseCached).unwrap();
    assert_eq!(fs::read(&fetched.file).unwrap(), weights());
    assert!(!partial.exists());
    assert!(server.requests().contains(&format!(
        "GET {} range={done}-",
        HubServer::cdn_path(&weights())
    )));
}

#[test]
fn bytes_that_do_not_match_the_hubs_sha256_are_deleted_and_never_used() {
    let server = HubServer::start();
    serve_repo(&server);
    server.corrupt(&HubServer::cdn_path(&weights()));
    let root = tempfile::tempdir().unwrap();
    let fetcher = fetcher(&server, root.path());
    let error = fetch(&fetcher, &format!("hf:{REPO}"), Freshness::UseCached).unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(
            error,
            FetchError::Mismatch {
                digest: "sha256",
                ..
            }
        ),
        "{message}"
    );
    assert!(message.contains(&sha256_hex(&weights())), "{message}");
    assert!(message.contains("the file was deleted"), "{message}");
    let repo = repo_dir(root.path());
    assert_eq!(
        fs::read_dir(repo.join("blobs")).unwrap().count(),
        0,
        "no blob, no partial"
    );
    assert!(!repo.join("snapshots").exists());
    assert!(!repo.join("refs").exists());
}

#[test]
fn gated_missing_and_misspelt_repos_say_what_to_do() {
    let server = HubServer::start();
    serve_repo(&server);
    server.add_gated_repo(
        "timm/vit_gated.lvd1689m",
        COMMIT,
        "hf_good",
        vec![ServedFile::lfs("model.safetensors", weights())],
    );
    let root = tempfile::tempdir().unwrap();
    let anonymous = fetcher(&server, root.path());
    let message = fetch(
        &anonymous,
        "hf:timm/vit_gated.lvd1689m",
        Freshness::UseCached,
    )
    .unwrap_err()
    .to_string();
    assert!(
        message.contains("`timm/vit_gated.lvd1689m` is gated"),
        "{message}"
    );
    assert!(
        message.contains(&format!("{}/timm/vit_gated.lvd1689m", server.url)),
        "{message}"
    );
    assert!(message.contains("HF_TOKEN"), "{message}");

    let with_token = |token: &str| {
        Fetcher::new(Settings {
            token: Some(token.into()),
            ..Settings {
                hub_cache: root.path().join("hub"),
                release_cache: root.path().join("kdlab"),
                endpoint: server.url.clone(),
                release_mirror: None,
                token: None,
                offline: None,
            }
        })
    };
    let message = fetch(
        &with_token("hf_wrong"),
        "hf:timm/vit_gated.lvd1689m",
        Freshness::UseCached,
    )
    .unwrap_err()
    .to_string();
    assert!(message.contains("has no access yet"), "{message}");
    let granted = fetch(
        &with_token("hf_good"),
        "hf:timm/vit_gated.lvd1689m",
        Freshness::UseCached,
    )
    .unwrap();
    assert_eq!(fs::read(&granted.file).unwrap(), weights());

    for (name, kind, words) in [
        (
            "hf:timm/no_such_model",
            "RepoNotFound",
            "has no model repo `timm/no_such_model`",
        ),
        (
            &format!("hf:{REPO}@v9") as &str,
            "RevisionNotFound",
            "has no revision `v9`",
        ),
        (
            &format!("hf:{REPO}/pytorch_model.bin"),
            "EntryNotFound",
            "has no file `pytorch_model.bin` at revision `main`",
        ),
    ] {
        let error = fetch(&anonymous, name, Freshness::UseCached).unwrap_err();
        assert!(error.is_config_mistake(), "{kind}: {error}");
        assert!(error.to_string().contains(words), "{kind}: {error}");
    }
}

static PINNED: Known = Known {
    name: "pinned_release",
    what: "a release with a pinned sha256",
    origin: Origin::Release {
        url: "https://example.org/files/pinned.pth",
        sha256: Some("0000000000000000000000000000000000000000000000000000000000000000"),
    },
    approx_bytes: 0,
};

#[test]
fn releases_are_cached_under_their_name_with_the_sha256_checked() {
    let server = HubServer::start();
    let bytes = weights();
    let beit =
        "/github.com/addf400/files/releases/download/BEiT-v2/beitv2_base_patch16_224_pt1k.pth";
    server.add_release(beit, bytes.clone());
    server.drop_once_after(beit, 100_000);
    let root = tempfile::tempdir().unwrap();
    let fetcher = fetcher(&server, root.path());

    let fetched = fetch(
        &fetcher,
        "beitv2_base_patch16_224_pt1k",
        Freshness::UseCached,
    )
    .unwrap();
    let file = root
        .path()
        .join("kdlab/beitv2_base_patch16_224_pt1k/beitv2_base_patch16_224_pt1k.pth");
    assert_eq!((fetched.how, &fetched.file), (How::Downloaded, &file));
    assert_eq!(fs::read(&file).unwrap(), bytes);
    assert_eq!(
        fs::read_to_string(file.with_extension("pth.sha256")).unwrap(),
        sha256_hex(&bytes)
    );
    assert!(
        server
            .requests()
            .contains(&format!("GET {beit} range=100000-"))
    );
    let requests = server.requests().len();
    assert_eq!(
        fetch(
            &fetcher,
            "beitv2_base_patch16_224_pt1k",
            Freshness::UseCached
        )
        .unwrap()
        .how,
        How::Cached
    );
    assert_eq!(server.requests().len(), requests);

    // A cached file changed on disk no longer matches the sha256 it was checked as.
    let mut tampered = bytes.clone();
    tampered[7] ^= 1;
    fs::write(&file, tampered).unwrap();
    let error = fetch(&fetcher, "beitv2_base_patch16_224_pt1k", Freshness::Refresh).unwrap_err();
    assert!(matches!(error, FetchError::Corrupt { .. }), "{error}");
    assert!(!file.exists(), "{error}");

    // A pinned sha256 the download does not have: deleted, named.
    server.add_release("/example.org/files/pinned.pth", bytes.clone());
    let error = fetcher
        .fetch(
            &WeightsName::Release(&PINNED),
            "pinned_release",
            Freshness::UseCached,
            &mut |_: &Progress| ControlFlow::Continue(()),
        )
        .unwrap_err();
    let message = error.to_string();
    assert!(message.contains("000000000000"), "{message}");
    assert!(message.contains(&sha256_hex(&bytes)), "{message}");
    let pinned = root.path().join("kdlab/pinned_release");
    assert!(!pinned.join("pinned.pth").exists() && !pinned.join("pinned.pth.incomplete").exists());
}
