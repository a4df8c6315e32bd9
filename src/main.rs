//! `kdlab`: the command line (`cli`) and the desktop app (`kdlab_app`) over the engine
//! (`kdlab_engine`); this crate parses arguments, starts logging and maps errors to exit codes.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    // Before any thread exists: it may set CUDA_PATH (see the function).
    kdlab_engine::backend::cuda_toolkit::adopt_pip_toolkit();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli::run() {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            cli::exit_code(&error)
        }
    }
}
