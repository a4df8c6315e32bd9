//! The engine's front door, shared by the CLI and the app: the backend work runs on, the models
//! a run config describes (their weights fetched by name first: `fetch`), the run directory, and the guard that turns a backend failure (burn
//! panics) into a typed error. Commands and panels call the same entries on top of this
//! (`distill::train`, `eval::evaluate`, `inspect::inspect`, `bench::bench`), so a behaviour is
//! written once.

pub mod device_threads;
pub mod error;
pub mod fetch;
pub mod models;
pub mod run_dir;
pub mod run_status;
pub mod runs;
pub mod tensorboard;

pub use error::{EngineError, Interrupted};
pub use models::{ModelPlan, Models, TeacherSource, View, Views};
pub use run_dir::{MetricsLine, RunDir, RunRecorder, utc_timestamp};

use crate::backend::{BackendChoice, Selected};
use crate::config::Precision;
use kdlab_model::guard::quietly_catch;

/// The backend and device a process (or an app job) computes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    backend: Selected,
    /// Why `auto` did not take a GPU that is there (CUDA without NVRTC or headers).
    fallback: Option<String>,
}

impl Session {
    /// Resolves `--backend` (or the app's picker); an unavailable backend is an error naming it.
    pub fn open(choice: BackendChoice) -> Result<Self, EngineError> {
        let (backend, fallback) = choice.select_explained()?;
        Ok(Self { backend, fallback })
    }

    pub fn on(backend: Selected) -> Self {
        Self {
            backend,
            fallback: None,
        }
    }

    /// The backend, and why `auto` passed over a GPU if it did (the app's one line).
    pub fn describe(&self) -> String {
        match &self.fallback {
            Some(why) => format!("{} ({why})", self.backend),
            None => self.backend.to_string(),
        }
    }

    /// One line for the user when `auto` passed over a GPU, saying why.
    pub fn fallback(&self) -> Option<&str> {
        self.fallback.as_deref()
    }

    pub fn backend(&self) -> &Selected {
        &self.backend
    }

    /// Runs device work. A panic inside it is burn's way of reporting a failure of the device:
    /// it becomes `OutOfMemory` (suggesting half of `batch_size`) or `BackendFailed`; errors the
    /// work returns keep their kind (a config error stays one).
    pub fn guard<T>(
        &self,
        batch_size: Option<usize>,
        work: impl FnOnce() -> anyhow::Result<T>,
    ) -> Result<T, EngineError> {
        match quietly_catch(work) {
            Ok(result) => result.map_err(EngineError::from),
            Err(panic) => Err(EngineError::from_panic(panic, batch_size)),
        }
    }

    /// bf16/f16 on the CPU backend are computed in software and skip the fused CPU kernels
    /// (`kdlab_kernels`, f32 only): the demo's training steps measured 2.4–2.7× slower than f32.
    pub fn precision_warning(&self, precision: Precision) -> Option<String> {
        (precision != Precision::F32 && self.backend == Selected::Cpu).then(|| {
            format!(
                "precision {} on the CPU is slower than f32 (no bf16/f16 arithmetic there); set \
                 precision: f32 for CPU runs",
                precision.name()
            )
        })
    }

    /// Device memory burn's pools hold (their peak); None on the CPU.
    pub fn reserved_memory_bytes(&self) -> Option<u64> {
        crate::backend::reserved_memory_bytes(&self.backend)
    }
}

/// Runs `$body` guarded (`Session::guard`) on the session's backend, with `$B` the autodiff
/// backend type (inference uses `$B::InnerBackend`) and `$device` its device. The body is
/// compiled once per backend kdlab carries; this is the one place that lists them.
///
/// ```ignore
/// on_backend!(&session, Some(batch_size), |B, device| train::<B>(&plan, &device))
/// ```
macro_rules! on_backend {
    ($session:expr, $batch_size:expr, |$B:ident, $device:ident| $body:expr) => {{
        let session: &$crate::session::Session = $session;
        session.guard($batch_size, || match session.backend() {
            $crate::backend::Selected::Cuda { ordinal, .. } => {
                type $B = burn::backend::Autodiff<burn::backend::Cuda>;
                let $device = burn::backend::cuda::CudaDevice::new(*ordinal);
                $body
            }
            $crate::backend::Selected::Wgpu { .. } => {
                type $B = burn::backend::Autodiff<burn::backend::Wgpu>;
                let $device = burn::backend::wgpu::WgpuDevice::DefaultDevice;
                $body
            }
            $crate::backend::Selected::Cpu => {
                type $B = burn::backend::Autodiff<burn::backend::Flex>;
                let $device = burn::backend::flex::FlexDevice;
                $body
            }
        })
    }};
}
pub(crate) use on_backend;
