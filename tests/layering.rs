//! Dependencies point one way. Each top-level module of src/ may import (`crate::…`) only the
//! modules below it in `LAYERS`, so there is no cycle and a reader can start at the bottom.
//! A new module must be placed here; an import upwards fails with the file and the line.

use std::path::Path;

/// Bottom first: what the panic guard and the kernels need is nothing of kdlab; the app and the
/// command line sit on everything.
const LAYERS: [&str; 17] = [
    "guard",
    "kernels",
    "model",
    "target",
    "optim",
    "data",
    "backend",
    "weights",
    "config",
    "overrides",
    "session",
    "inspect",
    "distill",
    "eval",
    "bench",
    "app",
    "cli",
];

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|m| *m == module)
}

fn rust_files(dir: &Path, found: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// The modules a line names as `crate::<module>` (comments left out).
fn imports(line: &str) -> Vec<String> {
    let code = line.split("//").next().unwrap_or("");
    code.match_indices("crate::")
        .filter(|(at, _)| {
            // `$crate::` inside a macro is the crate too; `kdlab::` is not used in src.
            *at == 0 || !code.as_bytes()[at - 1].is_ascii_alphanumeric()
        })
        .map(|(at, _)| {
            code[at + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

#[test]
fn every_import_points_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut upward = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let module = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if module == "lib" || module == "main" {
            continue;
        }
        let own = rank(&module)
            .unwrap_or_else(|| panic!("{module} (src/{}) is in no layer", relative.display()));
        let text = std::fs::read_to_string(file).unwrap();
        for (number, line) in text.lines().enumerate() {
            for target in imports(line) {
                if target == module || target.is_empty() {
                    continue;
                }
                match rank(&target) {
                    Some(r) if r < own => {}
                    _ => upward.push(format!(
                        "src/{}:{}: {module} imports {target}",
                        relative.display(),
                        number + 1
                    )),
                }
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that point up:\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_layer_check_sees_imports_and_not_comments() {
    assert_eq!(
        imports("use crate::session::{RunDir, Session};"),
        ["session"]
    );
    assert_eq!(
        imports("    let x = crate::model::generator::seeded::<B, _>(d, 1, f);"),
        ["model"]
    );
    assert_eq!(
        imports("/// the target, `crate::target`"),
        Vec::<String>::new()
    );
    assert_eq!(imports("match $crate::backend::Selected::Cpu"), ["backend"]);
}
