//! The readers against mutated checkpoints: real files (the fixtures of every format) with bytes
//! set, inserted, deleted or cut — in the whole file, or in the pickle of a zip rebuilt around
//! it so that the mutations reach the pickle reader rather than the zip's checksums. Whatever
//! the file, opening it and reading every tensor and the config must return (a value or an
//! error), never panic, and stay under the memory cap this test sets on the test process (an
//! allocation past it aborts the test binary, which fails the run; the other tests of this
//! binary read small files).
//!
//! Each case is drawn from its own seed, so a failure names the seed that reproduces it:
//! `KDLAB_FUZZ_FIRST=<seed> KDLAB_FUZZ_CASES=1`. `KDLAB_FUZZ_CASES` sets how many files are
//! tried (default 5,000, about 6 s in release; 100,000 took 112 s on a 2-core AMD EPYC).

use std::io::Read;
use std::path::Path;

use kdlab_weightfile::WeightFile;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Address space for the whole test process: the test binary, the fixtures and any one file's
/// honest reading fit many times over; a reader that believes a size in a crafted header does
/// not.
const MEMORY_CAP: u64 = 3 << 30;

#[derive(Debug, Clone)]
enum Mutation {
    Set { at: Position, byte: u8 },
    Insert { at: Position, bytes: Vec<u8> },
    Delete { at: Position, len: usize },
    Truncate { at: Position },
}

/// Headers and indexes sit at the ends of a file, data in the middle: positions are drawn near
/// either end as often as anywhere.
#[derive(Debug, Clone, Copy)]
enum Position {
    Start(usize),
    End(usize),
    Anywhere(f64),
}

impl Position {
    fn resolve(self, len: usize) -> usize {
        if len == 0 {
            return 0;
        }
        match self {
            Self::Start(i) => i.min(len - 1),
            Self::End(i) => len - 1 - i.min(len - 1),
            Self::Anywhere(f) => ((len as f64 * f) as usize).min(len - 1),
        }
    }

    fn draw(rng: &mut ChaCha8Rng) -> Self {
        match rng.random_range(0..3) {
            0 => Self::Start(rng.random_range(0..4096)),
            1 => Self::End(rng.random_range(0..4096)),
            _ => Self::Anywhere(rng.random()),
        }
    }
}

/// Bytes an attacker would write: opcodes, lengths near the limits, 0xff runs.
fn interesting_bytes(rng: &mut ChaCha8Rng) -> Vec<u8> {
    match rng.random_range(0..6) {
        0 => (0..rng.random_range(1..16)).map(|_| rng.random()).collect(),
        1 => vec![0xff; 8],
        2 => vec![b'('],
        3 => vec![b'h', 0],
        4 => vec![0x8d, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
        _ => vec![b']', b'q', 0, b'h', 0, b'h', 0, 0x86],
    }
}

impl Mutation {
    fn draw(rng: &mut ChaCha8Rng) -> Self {
        let at = Position::draw(rng);
        match rng.random_range(0..9) {
            0..4 => Self::Set {
                at,
                byte: rng.random(),
            },
            4..6 => Self::Insert {
                at,
                bytes: interesting_bytes(rng),
            },
            6..8 => Self::Delete {
                at,
                len: rng.random_range(1..64),
            },
            _ => Self::Truncate { at },
        }
    }
}

fn apply(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        match m {
            Mutation::Set { at, byte } => {
                let i = at.resolve(bytes.len());
                if let Some(b) = bytes.get_mut(i) {
                    *b = *byte;
                }
            }
            Mutation::Insert { at, bytes: new } => {
                let i = at.resolve(bytes.len());
                bytes.splice(i..i, new.iter().copied());
            }
            Mutation::Delete { at, len } => {
                let i = at.resolve(bytes.len());
                let end = (i + len).min(bytes.len());
                bytes.drain(i..end);
            }
            Mutation::Truncate { at } => {
                let i = at.resolve(bytes.len());
                bytes.truncate(i);
            }
        }
    }
    bytes
}

/// A torch zip taken apart: its pickle and its storages, to be zipped again around a mutated
/// pickle.
struct ZipParts {
    pickle: Vec<u8>,
    storages: Vec<(String, Vec<u8>)>,
}

fn zip_parts(path: &Path) -> ZipParts {
    let mut archive = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
    let mut pickle = Vec::new();
    let mut storages = Vec::new();
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).unwrap();
        let name = entry.name().to_string();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        if name.ends_with("data.pkl") {
            pickle = bytes;
        } else if let Some((_, key)) = name.split_once("/data/") {
            storages.push((key.to_string(), bytes));
        }
    }
    ZipParts { pickle, storages }
}

/// Everything a command could ask of the file.
fn exercise(path: &Path) {
    let Ok(file) = WeightFile::open(path) else {
        return;
    };
    let keys: Vec<String> = file.tensors().map(|(k, _)| k.to_string()).collect();
    for key in keys {
        let _ = file.read_f32(&key);
    }
    for key in ["cfg", "model", "args"] {
        let _ = file.pickle_value(key);
    }
}

#[cfg(unix)]
fn cap_memory() {
    let limit = libc::rlimit {
        rlim_cur: MEMORY_CAP as libc::rlim_t,
        rlim_max: MEMORY_CAP as libc::rlim_t,
    };
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) }, 0);
}

#[test]
fn mutated_checkpoints_never_crash_the_readers() {
    #[cfg(unix)]
    cap_memory();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let whole: Vec<Vec<u8>> = [
        crate::common::fixture("beitv2_tiny_unilm.pth"),
        crate::common::fixture("d2v2_tiny_fairseq.pt"),
        crate::common::fixture("beitv2_tiny_timm.safetensors"),
        fixtures.join("views.pth"),
        fixtures.join("views_legacy.pt"),
    ]
    .iter()
    .map(|p| std::fs::read(p).unwrap())
    .collect();
    let zips: Vec<ZipParts> = [
        crate::common::fixture("d2v2_tiny_fairseq.pt"),
        fixtures.join("views.pth"),
    ]
    .iter()
    .map(|p| zip_parts(p))
    .collect();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mutated");
    let setting = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let first = setting("KDLAB_FUZZ_FIRST", 0);
    let cases = setting("KDLAB_FUZZ_CASES", 5000);
    for seed in first..first + cases {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let base = rng.random_range(0..whole.len() + zips.len());
        let mutations: Vec<Mutation> = (0..rng.random_range(1..8))
            .map(|_| Mutation::draw(&mut rng))
            .collect();
        if base < whole.len() {
            std::fs::write(&path, apply(whole[base].clone(), &mutations)).unwrap();
        } else {
            let parts = &zips[base - whole.len()];
            let pickle = apply(parts.pickle.clone(), &mutations);
            let storages: Vec<(&str, Vec<u8>)> = parts
                .storages
                .iter()
                .map(|(k, b)| (k.as_str(), b.clone()))
                .collect();
            crate::common::torch_zip(&path, &pickle, &storages);
        }
        let outcome = std::panic::catch_unwind(|| exercise(&path));
        assert!(
            outcome.is_ok(),
            "seed {seed} (base {base}, {mutations:?}) panicked; the file is {}",
            path.display()
        );
    }
}
