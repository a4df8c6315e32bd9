//! Device discovery and the backend choice: CUDA when an NVIDIA driver is usable, else a WGPU
//! GPU adapter, else the CPU (burn's `flex`).
//!
//! Probing never creates a burn device first: burn's CUDA backend panics on first use without a
//! driver, or without NVRTC and the CUDA headers it compiles its kernels with, so the driver is
//! asked for its device name and the toolkit is checked (`cuda_toolkit`) beforehand.
//! Running work on the selected backend is the session's (`session::on_backend!`).

use std::fmt;

use burn::backend::cuda::CudaDevice;
use burn::backend::wgpu::WgpuDevice;
use serde::{Deserialize, Serialize};

use kdlab_model::guard::quietly_catch;

pub mod cuda_toolkit;

/// What the user asked for (`--backend`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// CUDA if an NVIDIA driver works, else a WGPU GPU adapter, else the CPU.
    #[default]
    Auto,
    Cuda,
    /// Vulkan, Metal or DX12 through wgpu; software adapters (lavapipe) only when asked for.
    Wgpu,
    Cpu,
}

/// The backend and device a command runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selected {
    Cuda { ordinal: usize, name: String },
    Wgpu { name: String, software: bool },
    Cpu,
}

impl fmt::Display for Selected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cuda { ordinal, name } => write!(f, "cuda (device {ordinal}: {name})"),
            Self::Wgpu {
                name,
                software: true,
            } => write!(f, "wgpu ({name}, software renderer)"),
            Self::Wgpu { name, .. } => write!(f, "wgpu ({name})"),
            Self::Cpu => write!(
                f,
                "cpu (flex, {} threads)",
                std::thread::available_parallelism().map_or(1, |n| n.get())
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("--backend cuda: no usable NVIDIA driver/GPU ({0}); try --backend wgpu or cpu")]
    CudaUnavailable(String),
    #[error("--backend cuda: {gpu} is there, but {reason}")]
    CudaNotReady { gpu: String, reason: String },
    #[error("--backend wgpu: no WGPU adapter (Vulkan, Metal or DX12) was found; try --backend cpu")]
    WgpuUnavailable,
}

impl BackendChoice {
    pub fn select(self) -> Result<Selected, BackendError> {
        self.select_explained().map(|(selected, _)| selected)
    }

    /// The selection and, for `auto`, why a GPU that is there was not taken (one line).
    pub fn select_explained(self) -> Result<(Selected, Option<String>), BackendError> {
        match self {
            Self::Cuda => match probe_cuda() {
                Ok(cuda) => Ok((cuda, None)),
                Err(CudaProbe::NoDevice(reason)) => Err(BackendError::CudaUnavailable(reason)),
                Err(CudaProbe::NotReady { gpu, reason }) => {
                    Err(BackendError::CudaNotReady { gpu, reason })
                }
            },
            Self::Wgpu => Ok((probe_wgpu().ok_or(BackendError::WgpuUnavailable)?, None)),
            Self::Cpu => Ok((Selected::Cpu, None)),
            Self::Auto => {
                let (cuda, why_not) = match probe_cuda() {
                    Ok(cuda) => (Some(cuda), None),
                    Err(CudaProbe::NoDevice(_)) => (None, None),
                    Err(CudaProbe::NotReady { gpu, reason }) => (
                        None,
                        Some(format!("CUDA not used: {gpu} is there, but {reason}")),
                    ),
                };
                let selected = cuda
                    .or_else(|| {
                        probe_wgpu().filter(|w| !matches!(w, Selected::Wgpu { software: true, .. }))
                    })
                    .unwrap_or(Selected::Cpu);
                Ok((selected, why_not))
            }
        }
    }
}

/// Why CUDA cannot be used: no GPU at all, or a GPU without what burn-cuda needs.
enum CudaProbe {
    NoDevice(String),
    NotReady { gpu: String, reason: String },
}

fn probe_cuda() -> Result<Selected, CudaProbe> {
    // SAFETY: only asks the dynamic loader whether libcuda can be opened.
    if !quietly_catch(|| unsafe { cudarc::driver::sys::is_culib_present() }).unwrap_or(false) {
        return Err(CudaProbe::NoDevice("libcuda was not found".into()));
    }
    let name = quietly_catch(|| {
        cudarc::driver::CudaContext::new(0)
            .and_then(|ctx| ctx.name())
            .map_err(|e| e.to_string())
    })
    .and_then(|r| r)
    .map_err(CudaProbe::NoDevice)?;
    cuda_toolkit::check().map_err(|reason| CudaProbe::NotReady {
        gpu: format!("CUDA device 0 ({name})"),
        reason,
    })?;
    Ok(Selected::Cuda { ordinal: 0, name })
}

fn probe_wgpu() -> Option<Selected> {
    let adapters = quietly_catch(|| {
        let instance = wgpu::Instance::default();
        futures_lite::future::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
            .into_iter()
            .map(|a| a.get_info())
            .collect::<Vec<_>>()
    })
    .ok()?;
    // Prefer real GPUs; cubecl's default device makes the same ranking.
    let rank = |t: wgpu::DeviceType| match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu | wgpu::DeviceType::Other => 2,
        wgpu::DeviceType::Cpu => 3,
    };
    let best = adapters
        .into_iter()
        .min_by_key(|info| rank(info.device_type))?;
    Some(Selected::Wgpu {
        name: best.name,
        software: best.device_type == wgpu::DeviceType::Cpu,
    })
}

/// Device memory held by burn's memory pools on `selected` (what it reserved; pools keep it, so
/// after a workload this is its peak). None for the CPU backend.
pub fn reserved_memory_bytes(selected: &Selected) -> Option<u64> {
    use burn::cubecl::Runtime;
    let usage = match selected {
        Selected::Cuda { ordinal, .. } => {
            burn::cubecl::cuda::CudaRuntime::client(&CudaDevice::new(*ordinal)).memory_usage()
        }
        Selected::Wgpu { .. } => {
            burn::cubecl::wgpu::WgpuRuntime::client(&WgpuDevice::DefaultDevice).memory_usage()
        }
        Selected::Cpu => return None,
    };
    usage.ok().map(|u| u.bytes_reserved)
}

/// Every device kdlab could use here, one line each, for the app's backend picker.
pub fn detect_devices() -> Vec<String> {
    let mut found = Vec::new();
    match probe_cuda() {
        Ok(cuda) => found.push(cuda.to_string()),
        Err(CudaProbe::NoDevice(reason)) => found.push(format!("cuda: none ({reason})")),
        Err(CudaProbe::NotReady { gpu, reason }) => {
            found.push(format!("cuda: {gpu}, not usable: {reason}"))
        }
    }
    match probe_wgpu() {
        Some(wgpu) => found.push(wgpu.to_string()),
        None => found.push("wgpu: no adapter".into()),
    }
    found.push(Selected::Cpu.to_string());
    found
}
