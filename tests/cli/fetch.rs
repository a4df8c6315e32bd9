//! Models by name through the command a user types: `kdlab fetch`, and names in a config and
//! in `--weights`/`inspect`, served by a hub on 127.0.0.1 (`HF_ENDPOINT`) and a mirror of the
//! releases (`KDLAB_RELEASE_MIRROR`), with the caches in a temporary folder. No test touches
//! the network.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::*;
use hub_server::{HubServer, ServedFile, sha256_hex};

const BEIT_PATH: &str =
    "/github.com/addf400/files/releases/download/BEiT-v2/beitv2_base_patch16_224_pt1k.pth";
const D2V2_PATH: &str = "/dl.fbaipublicfiles.com/fairseq/data2vec2/base_imagenet.pt";
const DINOV2_REPO: &str = "timm/vit_small_patch14_dinov2.lvd142m";
const COMMIT: &str = "4f2a1c9e0b7d3a5c6e8f0a1b2c3d4e5f6a7b8c9d";

/// A hub with the tiny DINOv2 fixture as `timm/vit_small_patch14_dinov2.lvd142m` and the tiny
/// unilm and fairseq fixtures at the releases' paths.
fn hub() -> HubServer {
    let server = HubServer::start();
    let read = |name: &str| std::fs::read(fixture(name)).unwrap();
    server.add_repo(
        DINOV2_REPO,
        COMMIT,
        vec![
            ServedFile::lfs(
                "model.safetensors",
                read("vits/dinov2_tiny_timm.safetensors"),
            ),
            ServedFile::git("config.json", read("vits/dinov2_tiny_timm.config.json")),
        ],
    );
    server.add_release(BEIT_PATH, read("beitv2_tiny_unilm.pth"));
    server.add_release(D2V2_PATH, read("d2v2_tiny_fairseq.pt"));
    server
}

/// `kdlab --no-gui ARGS…` pointed at `server` (when given) with its caches under `home`, and
/// nothing of this machine's own settings.
fn kdlab_at(server: Option<&HubServer>, home: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kdlab"));
    command.arg("--no-gui");
    for var in [
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_HUB_OFFLINE",
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_TOKEN_PATH",
    ] {
        command.env_remove(var);
    }
    command
        .env("HF_HOME", home.join("hf"))
        .env("KDLAB_CACHE", home.join("kdlab"))
        // Nothing listens on port 9: a request without a server fails at once.
        .env(
            "HF_ENDPOINT",
            server.map_or("http://127.0.0.1:9".into(), |s| s.url.clone()),
        )
        .env(
            "KDLAB_RELEASE_MIRROR",
            server.map_or("http://127.0.0.1:9".into(), |s| s.url.clone()),
        );
    command
}

fn run(mut command: Command, args: &[&str]) -> Output {
    command.args(args).output().expect("kdlab runs")
}

/// `kdlab fetch NAME` against `server` that fails: its exit code and what it said.
fn fetch_failing(server: &HubServer, home: &Path, name: &str) -> (Option<i32>, String) {
    let out = run(kdlab_at(Some(server), home), &["fetch", name]);
    assert!(!out.status.success(), "{name} fetched");
    (out.status.code(), stderr(&out))
}

fn hub_snapshot(home: &Path) -> PathBuf {
    home.join("hf/hub/models--timm--vit_small_patch14_dinov2.lvd142m/snapshots")
        .join(COMMIT)
}

#[test]
fn fetch_lists_the_names_with_size_and_source() {
    let home = tempfile::tempdir().unwrap();
    let out = run(kdlab_at(None, home.path()), &["fetch", "--list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "beitv2_base_patch16_224_pt1k",
        "https://github.com/addf400/files/releases/download/BEiT-v2/beitv2_base_patch16_224_pt1k.pth",
        "data2vec2_base_imagenet",
        "https://dl.fbaipublicfiles.com/fairseq/data2vec2/base_imagenet.pt",
        "hf:timm/vit_large_patch14_reg4_dinov2.lvd142m",
        "hf:timm/vit_base_patch16_dinov3.lvd1689m (gated)",
        "hf:timm/deit3_base_patch16_224.fb_in1k",
        "≈346 MB",
    ] {
        assert!(text.contains(needle), "{needle}: {text}");
    }
    let out = run(kdlab_at(None, home.path()), &["fetch", "--list", "--json"]);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 13);
    assert!(
        lines
            .iter()
            .all(|l| l["approx_bytes"].as_u64().unwrap() > 50_000_000)
    );
}

#[test]
fn fetch_downloads_into_the_hub_layout_and_offline_use_needs_no_server() {
    let server = hub();
    let home = tempfile::tempdir().unwrap();
    let name = format!("hf:{DINOV2_REPO}");
    let out = run(
        kdlab_at(Some(&server), home.path()),
        &["fetch", &name, "--json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let weights = std::fs::read(fixture("vits/dinov2_tiny_timm.safetensors")).unwrap();
    assert_eq!(report["sha256"], sha256_hex(&weights));
    assert_eq!(report["commit"], COMMIT);
    assert_eq!(report["how"], "downloaded, verified");
    let snapshot = hub_snapshot(home.path());
    assert_eq!(
        report["file"],
        snapshot.join("model.safetensors").to_str().unwrap()
    );
    assert!(snapshot.join("config.json").is_file());

    // Again: the hub is asked for the commit, nothing is downloaded, the file is read again.
    let out = run(kdlab_at(Some(&server), home.path()), &["fetch", &name]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("cached, verified"));

    // Offline, with no server: the name is a file of the cache, config.json beside it.
    let requests = server.requests().len();
    for offline in [&["--offline"][..], &[]] {
        let mut command = kdlab_at(None, home.path());
        if offline.is_empty() {
            command.env("HF_HUB_OFFLINE", "1");
        }
        let mut args = offline.to_vec();
        args.extend(["inspect", name.as_str(), "--json"]);
        let out = run(command, &args);
        assert!(out.status.success(), "{}", stderr(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            (report["family"].as_str(), report["layout"].as_str()),
            (Some("dinov2"), Some("vit-timm"))
        );
    }
    assert_eq!(server.requests().len(), requests);

    // Offline without the file: named, with what to do; nothing asked of anyone.
    let out = run(
        kdlab_at(None, home.path()),
        &[
            "--offline",
            "fetch",
            "hf:timm/vit_base_patch14_dinov2.lvd142m",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("`hf:timm/vit_base_patch14_dinov2.lvd142m` is not in the cache"),
        "{err}"
    );
    assert!(err.contains("--offline"), "{err}");
}

#[test]
fn a_config_with_names_trains_and_its_run_records_the_files_and_their_sha256() {
    let server = hub();
    let home = tempfile::tempdir().unwrap();
    let runs = home.path().join("runs");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/beitv2_to_d2v2_imagenet.ron");
    // The real experiment's config as the README gives it, on the tiny releases the mirror
    // serves under the real names, and on the sample images.
    let assets = assets();
    let args = [
        "train",
        "--backend",
        "cpu",
        "--config",
        config.to_str().unwrap(),
        "--runs-dir",
        runs.to_str().unwrap(),
        "--max-steps",
        "1",
        "--set",
        &format!("data.train={}", assets.display()),
        "--set",
        "data.val=None",
        "--set",
        "data.workers=1",
        "--set",
        "optim.batch_size=2",
        "--set",
        "student.blocks=FirstMain(1)",
        "--set",
        "precision=f32",
    ];
    let out = run(kdlab_at(Some(&server), home.path()), &args);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("downloading beitv2_base_patch16_224_pt1k"),
        "{err}"
    );
    let run_dir = run_dirs(&runs)[0].clone();
    let recorded: kdlab_engine::config::RunConfig =
        ron::from_str(&std::fs::read_to_string(run_dir.join("config.ron")).unwrap()).unwrap();
    let teacher = recorded
        .teacher
        .fetched
        .expect("the teacher's name is recorded");
    assert_eq!(teacher.name, "beitv2_base_patch16_224_pt1k");
    assert_eq!(
        teacher.sha256,
        sha256_hex(&std::fs::read(fixture("beitv2_tiny_unilm.pth")).unwrap())
    );
    assert_eq!(
        teacher.file,
        home.path()
            .join("kdlab/beitv2_base_patch16_224_pt1k/beitv2_base_patch16_224_pt1k.pth")
    );
    assert!(teacher.source.ends_with("beitv2_base_patch16_224_pt1k.pth"));
    let student = recorded
        .student
        .fetched
        .expect("the student's name is recorded");
    assert_eq!(
        student.sha256,
        sha256_hex(&std::fs::read(fixture("d2v2_tiny_fairseq.pt")).unwrap())
    );

    // Resumed offline with no server: the recorded files are used.
    let out = run(
        kdlab_at(None, home.path()),
        &[
            "--offline",
            "train",
            "--backend",
            "cpu",
            "--resume",
            run_dir.to_str().unwrap(),
            "--max-steps",
            "2",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));

    // A cache emptied since: the name is fetched again and must be the file the run used.
    std::fs::remove_dir_all(home.path().join("kdlab")).unwrap();
    server.add_release(BEIT_PATH, b"another file under the same name".to_vec());
    let out = run(
        kdlab_at(Some(&server), home.path()),
        &[
            "train",
            "--backend",
            "cpu",
            "--resume",
            run_dir.to_str().unwrap(),
            "--max-steps",
            "3",
        ],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("teacher.weights"), "{err}");
    assert!(
        err.contains("the run used `beitv2_base_patch16_224_pt1k`"),
        "{err}"
    );
    assert!(err.contains(&teacher.sha256), "{err}");
}

#[test]
fn unknown_names_and_missing_repos_are_config_mistakes_with_the_closest_names() {
    let server = hub();
    let home = tempfile::tempdir().unwrap();
    let (code, err) = fetch_failing(&server, home.path(), "beitv2_base_patch16_224_pt1");
    assert_eq!(code, Some(2));
    assert!(
        err.contains("did you mean `beitv2_base_patch16_224_pt1k`"),
        "{err}"
    );

    for (name, needle) in [
        (
            "hf:timm/no_such_model",
            "has no model repo `timm/no_such_model`",
        ),
        (
            "hf:timm/vit_small_patch14_dinov2.lvd142m@v7",
            "has no revision `v7`",
        ),
        (
            "hf:timm/vit_small_patch14_dinov2.lvd142m/open_clip_model.safetensors",
            "has no file `open_clip_model.safetensors`",
        ),
    ] {
        let (code, err) = fetch_failing(&server, home.path(), name);
        assert_eq!(code, Some(2), "{name}: {err}");
        assert!(err.contains(needle), "{name}: {err}");
    }

    // In a config: the field and the rule, before anything starts.
    let asked = server.requests().len();
    let config = home.path().join("named.ron");
    std::fs::write(
        &config,
        replace_once(
            &tiny_config_text(&assets(), ""),
            "teacher: (architecture: Some(",
            "teacher: (weights: Some(\"vit_smal_patch14_dinov2\"), architecture: Some(",
        ),
    )
    .unwrap();
    let out = run(
        kdlab_at(Some(&server), home.path()),
        &[
            "train",
            "--backend",
            "cpu",
            "--config",
            config.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("teacher.weights"), "{err}");
    assert!(
        err.contains("did you mean `vit_small_patch14_dinov2.lvd142m`"),
        "{err}"
    );
    assert_eq!(
        server.requests().len(),
        asked,
        "a misspelt name asks nothing"
    );
}

#[test]
fn a_gated_repo_takes_the_token_from_hf_token_or_the_token_file() {
    let server = hub();
    let weights = std::fs::read(fixture("vits/dinov3_tiny_timm.safetensors")).unwrap();
    server.add_gated_repo(
        "timm/vit_small_patch16_dinov3.lvd1689m",
        COMMIT,
        "hf_test_token",
        vec![
            ServedFile::lfs("model.safetensors", weights),
            ServedFile::git(
                "config.json",
                std::fs::read(fixture("vits/dinov3_tiny_timm.config.json")).unwrap(),
            ),
        ],
    );
    let home = tempfile::tempdir().unwrap();
    let (code, err) = fetch_failing(&server, home.path(), "vit_small_patch16_dinov3");
    assert_eq!(code, Some(1));
    assert!(
        err.contains("`timm/vit_small_patch16_dinov3.lvd1689m` is gated"),
        "{err}"
    );
    assert!(err.contains("HF_TOKEN"), "{err}");

    let mut with_env = kdlab_at(Some(&server), home.path());
    with_env.env("HF_TOKEN", "hf_test_token");
    let out = run(with_env, &["fetch", "vit_small_patch16_dinov3"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // The token file huggingface_hub writes on login.
    let other = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(other.path().join("hf")).unwrap();
    std::fs::write(other.path().join("hf/token"), "hf_test_token\n").unwrap();
    let out = run(
        kdlab_at(Some(&server), other.path()),
        &["fetch", "vit_small_patch16_dinov3"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A disk that fills during a download (here: a file-size limit): the part is kept for the next
/// fetch, never used, and the next fetch resumes it.
#[cfg(unix)]
#[test]
fn a_disk_that_fills_keeps_the_part_and_the_next_fetch_resumes_it() {
    use std::os::unix::process::CommandExt;
    let server = hub();
    let home = tempfile::tempdir().unwrap();
    let mut command = kdlab_at(Some(&server), home.path());
    // SAFETY: between fork and exec only async-signal-safe calls (setrlimit, signal).
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 20_000,
                rlim_max: libc::RLIM_INFINITY,
            };
            // Writes past the limit fail (EFBIG) as they do on a full disk, instead of a signal.
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = run(command, &["fetch", "data2vec2_base_imagenet"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("base_imagenet.pt.incomplete failed"), "{err}");
    assert!(err.contains("the next fetch resumes from them"), "{err}");
    let folder = home.path().join("kdlab/data2vec2_base_imagenet");
    assert!(!folder.join("base_imagenet.pt").exists(), "never used");
    let part = std::fs::metadata(folder.join("base_imagenet.pt.incomplete"))
        .unwrap()
        .len();
    assert!(part > 0 && part <= 20_000, "{part}");

    let out = run(
        kdlab_at(Some(&server), home.path()),
        &["fetch", "data2vec2_base_imagenet"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        server
            .requests()
            .contains(&format!("GET {D2V2_PATH} range={part}-")),
        "{:?}",
        server.requests()
    );
    assert_eq!(
        std::fs::read(folder.join("base_imagenet.pt")).unwrap(),
        std::fs::read(fixture("d2v2_tiny_fairseq.pt")).unwrap()
    );
}
