//! `kdlab fetch NAME…`: downloads (or checks) models by name into the caches; `--list` prints
//! the short names kdlab knows.

use std::ops::ControlFlow;
use std::process::ExitCode;

use serde_json::json;

use super::Downloads;
use kdlab_hub::{CATALOGUE, FetchError, Fetched, Fetcher, Freshness, WeightsName};

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["names", "list"])))]
pub struct FetchArgs {
    /// hf:ORG/REPO[@REVISION][/FILE] (default file model.safetensors, with its config.json) or
    /// a short name (--list). A cached name is checked again: the hub is asked for the
    /// revision's commit (unless offline) and the file's sha256 is read again.
    names: Vec<String>,
    /// Print the short names with their size and source, and where each is cached.
    #[arg(long)]
    list: bool,
    /// One JSON object per name (with --list: one per short name) instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: FetchArgs) -> anyhow::Result<ExitCode> {
    let fetcher = Fetcher::from_env();
    if args.list {
        list(&fetcher, args.json);
        return Ok(ExitCode::SUCCESS);
    }
    let stop = super::ctrl_c_flag();
    let mut code = ExitCode::SUCCESS;
    for name in &args.names {
        let result = WeightsName::parse(name)
            .map_err(FetchError::from)
            .and_then(|parsed| {
                let mut downloads = Downloads::default();
                fetcher.fetch(&parsed, name, Freshness::Refresh, &mut |progress| {
                    downloads.show(progress.into());
                    match stop.load(std::sync::atomic::Ordering::SeqCst) {
                        true => ControlFlow::Break(()),
                        false => ControlFlow::Continue(()),
                    }
                })
            });
        match result {
            Ok(Some(fetched)) => report(name, &fetched, args.json),
            Ok(None) => {
                eprintln!("error: `{name}` is a file, not a name to fetch");
                code = ExitCode::from(2);
            }
            Err(error) if error.is_cancelled() => {
                eprintln!("kdlab: {error}");
                return Ok(ExitCode::from(130));
            }
            Err(error) => {
                eprintln!("error: {error}");
                // A name that names nothing is the user's to fix (2); the rest failed (1).
                code = ExitCode::from(if error.is_config_mistake() { 2 } else { 1 });
            }
        }
    }
    Ok(code)
}

fn report(name: &str, fetched: &Fetched, json: bool) {
    if json {
        let line = json!({
            "name": name,
            "file": fetched.file,
            "sha256": fetched.sha256,
            "commit": fetched.commit,
            "source": fetched.source,
            "bytes": fetched.bytes,
            "how": fetched.how.to_string(),
        });
        println!("{line}");
    } else {
        println!("{name} → {}", fetched.file.display());
        println!(
            "  {:.1} MB, sha256 {}, {}, from {}",
            fetched.bytes as f64 / 1e6,
            fetched.sha256,
            fetched.how,
            fetched.source
        );
    }
}

fn list(fetcher: &Fetcher, json: bool) {
    for known in CATALOGUE {
        let cached = fetcher.cached(&WeightsName::known(known)).ok().flatten();
        if json {
            let line = json!({
                "name": known.name,
                "what": known.what,
                "approx_bytes": known.approx_bytes,
                "source": known.source(),
                "cached": cached,
            });
            println!("{line}");
        } else {
            let size = format!("≈{:.0} MB", known.approx_bytes as f64 / 1e6);
            println!("{:<44} {:>9}  {}", known.name, size, known.what);
            println!("{:<44} {:>9}  from {}", "", "", known.source());
            if let Some(path) = cached {
                println!("{:<44} {:>9}  cached: {}", "", "", path.display());
            }
        }
    }
    if !json {
        println!(
            "\nAlso any hub file: hf:ORG/REPO[@REVISION][/FILE]. Hub cache: {}; releases: {}.",
            fetcher.hub_cache.root.display(),
            fetcher.release_cache.root.display()
        );
    }
}
