//! What can go wrong in the engine, by whose it is to fix: the user's config or files, a missing
//! backend, the device running out of memory, the backend failing, or the user stopping.

use crate::backend::BackendError;
use crate::config::ConfigError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A mistake in the config (every broken rule, with its field): nothing was started.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The chosen backend is not available here.
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(
        "the device ran out of memory{}; try half the batch{} ({detail})",
        batch_size.map_or_else(String::new, |b| format!(" with batch size {b}")),
        batch_size.map_or_else(String::new, |b| format!(
            " (optim.batch_size {}, with optim.grad_accum_steps doubled for the same global batch)",
            (b / 2).max(1)
        ))
    )]
    OutOfMemory {
        batch_size: Option<usize>,
        detail: String,
    },
    /// The backend panicked: a failure of kdlab or its backend, not of the input.
    #[error("the compute backend failed: {0}")]
    BackendFailed(String),
    /// Stopped by the user (Ctrl-C, the app's Stop) before anything was written.
    #[error("stopped before the end; nothing was written")]
    Interrupted,
    /// Anything else: a file that cannot be read or written, a data set that does not fit.
    #[error("{0:#}")]
    Failed(anyhow::Error),
}

/// Returned (inside an `anyhow::Error`) by work that stops early on request.
#[derive(Debug, thiserror::Error)]
#[error("stopped on request")]
pub struct Interrupted;

impl From<anyhow::Error> for EngineError {
    fn from(error: anyhow::Error) -> Self {
        if error.is::<Interrupted>() {
            return Self::Interrupted;
        }
        match error.downcast::<ConfigError>() {
            Ok(config) => Self::Config(config),
            Err(error) => match error.downcast::<BackendError>() {
                Ok(backend) => Self::Backend(backend),
                Err(error) => Self::Failed(error),
            },
        }
    }
}

impl EngineError {
    /// What a panic inside device work means. burn reports failures of the device by
    /// panicking; the allocators' own words say when it is memory.
    pub fn from_panic(message: String, batch_size: Option<usize>) -> Self {
        if is_out_of_memory(&message) {
            Self::OutOfMemory {
                batch_size,
                detail: message,
            }
        } else {
            Self::BackendFailed(message)
        }
    }
}

/// The phrases cubecl (CUDA, WGPU) and wgpu use for a failed device allocation.
fn is_out_of_memory(message: &str) -> bool {
    let lower = message.to_lowercase();
    [
        "out of memory",
        "out-of-memory",
        "outofmemory",
        "cuda_error_out_of_memory",
        "can't allocate buffer",
    ]
    .iter()
    .any(|phrase| lower.contains(phrase))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_allocators_words_mean_out_of_memory() {
        for oom in [
            "An out-of-memory error happened during launch",
            "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")",
            "can't allocate buffer of size: 81604378624",
        ] {
            let e = EngineError::from_panic(oom.into(), Some(256));
            assert!(matches!(e, EngineError::OutOfMemory { .. }), "{oom}");
            let text = e.to_string();
            assert!(
                text.contains("batch size 256") && text.contains("128"),
                "{text}"
            );
        }
        for other in [
            "allocated tensor has wrong shape",
            "index out of bounds: the len is 3 but the index is 7",
            "Shape [1, 64, 62] is invalid for input of size 3840 (reallocation)",
        ] {
            let e = EngineError::from_panic(other.into(), Some(256));
            assert!(matches!(e, EngineError::BackendFailed(_)), "{other}");
        }
    }

    #[test]
    fn a_config_error_inside_anyhow_stays_a_config_error() {
        let config = ConfigError::Invalid {
            path: None,
            problems: vec![crate::config::ConfigProblem::new("optim.batch_size", "x")],
        };
        let e = EngineError::from(anyhow::Error::new(config));
        assert!(
            matches!(&e, EngineError::Config(c) if c.problems().len() == 1),
            "{e}"
        );
        assert!(matches!(
            EngineError::from(anyhow::Error::new(Interrupted)),
            EngineError::Interrupted
        ));
    }
}
