use std::process::ExitCode;

fn main() -> ExitCode {
    // Before any thread exists: it may set CUDA_PATH (see the function).
    kdlab::backend::cuda_toolkit::adopt_pip_toolkit();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match kdlab::cli::run() {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
