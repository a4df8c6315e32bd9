//! What burn's CUDA backend needs at run time besides the driver, checked before a CUDA device is
//! used: burn-cuda compiles every kernel with NVRTC when it first runs, so it needs the NVRTC
//! library (cudarc opens `libnvrtc.so[.major]`), the CUDA headers (`$CUDA_PATH/include`, else
//! `/usr/local/cuda`, `/opt/cuda` or `/usr` when `/usr/bin/nvcc` exists, as cubecl-cuda's
//! `install::cuda_path` looks) and an NVRTC no newer than the driver (PTX of a newer CUDA does
//! not load). Without them burn panics at the first kernel ("CUDA installation not found").
//!
//! PyTorch's CUDA 13 pip wheels (`nvidia-cuda-runtime`, `nvidia-cuda-nvrtc`, both installed with
//! `torch`) put exactly this in one tree, `site-packages/nvidia/cu13/{include,lib}`; when no
//! toolkit is installed, kdlab uses such a tree as `CUDA_PATH`. Measured with torch 2.11's wheels:
//! NVRTC 13.0 compiles a kernel including `cuda_runtime.h`, `cuda_fp16.h` and `cuda_bf16.h` from
//! that tree once `libnvrtc-builtins.so.13.0` is loaded, which NVRTC opens by name and which is on
//! no library path in a wheel — hence `preload_nvrtc`. (`nvidia-cuda-cccl` adds `include/cccl`,
//! which the pipelined kernels include.)

use std::path::{Path, PathBuf};

use kdlab_model::guard::quietly_catch;

/// The folders under a CUDA root that hold `libnvrtc` (toolkit, distribution, pip wheel).
const LIBRARY_DIRS: [&str; 3] = ["lib64", "lib", "lib/x86_64-linux-gnu"];

/// A CUDA tree burn-cuda can compile with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toolkit {
    /// What `CUDA_PATH` is (or is to be set to).
    pub root: PathBuf,
    /// The NVRTC and the driver's CUDA version, `(major, minor)`.
    pub nvrtc: (i32, i32),
    pub driver: (i32, i32),
}

/// Points `CUDA_PATH` at the CUDA tree of PyTorch's pip wheels when it is unset and cubecl would
/// find no toolkit of its own. Call first thing in `main`, before any other thread exists (the
/// environment is process-wide).
pub fn adopt_pip_toolkit() {
    if std::env::var_os("CUDA_PATH").is_some() || cubecl_cuda_path().is_some() {
        return;
    }
    if let Some(root) = pip_wheel_roots().into_iter().find(|r| has_headers(r)) {
        // SAFETY: called from `main` before any thread is spawned, so no one reads the
        // environment concurrently.
        unsafe { std::env::set_var("CUDA_PATH", &root) };
    }
}

/// The toolkit burn-cuda will use, or what is missing and how to get it.
pub fn check() -> Result<Toolkit, String> {
    let root = cubecl_cuda_path().ok_or_else(|| {
        "no CUDA toolkit was found for NVRTC, which compiles burn's CUDA kernels: set CUDA_PATH to \
         a CUDA install (its include/cuda_runtime.h), install the CUDA toolkit at /usr/local/cuda, \
         or `pip install nvidia-cuda-runtime nvidia-cuda-nvrtc nvidia-cuda-cccl` (PyTorch's CUDA 13 \
         wheels) into the active Python environment"
            .to_string()
    })?;
    if !has_headers(&root) {
        return Err(format!(
            "{} has no include/cuda_runtime.h, which NVRTC needs to compile burn's CUDA kernels: \
             point CUDA_PATH at a CUDA install with its headers",
            root.display()
        ));
    }
    preload_nvrtc(&root);
    // SAFETY: only asks the dynamic loader whether libnvrtc can be opened.
    if !quietly_catch(|| unsafe { cudarc::nvrtc::sys::is_culib_present() }).unwrap_or(false) {
        return Err(format!(
            "libnvrtc (NVRTC, which compiles burn's CUDA kernels) was found neither under {} nor on \
             the library path: add its folder to LD_LIBRARY_PATH or install NVRTC \
             (`pip install nvidia-cuda-nvrtc`)",
            root.display()
        ));
    }
    let nvrtc = nvrtc_version()?;
    let driver = driver_version()?;
    if nvrtc > driver {
        return Err(format!(
            "NVRTC {}.{} is newer than the driver's CUDA {}.{}: the kernels it compiles would not \
             load; use an NVRTC of CUDA {}.{} or older (e.g. `pip install \"nvidia-cuda-nvrtc=={}.{}.*\"` \
             with CUDA_PATH at it) or update the NVIDIA driver",
            nvrtc.0, nvrtc.1, driver.0, driver.1, driver.0, driver.1, driver.0, driver.1
        ));
    }
    Ok(Toolkit {
        root,
        nvrtc,
        driver,
    })
}

/// cubecl-cuda's own choice, so that the check sees what the kernels will be compiled with.
fn cubecl_cuda_path() -> Option<PathBuf> {
    burn::cubecl::cuda::install::cuda_path()
}

fn has_headers(root: &Path) -> bool {
    ["cuda_runtime.h", "cuda_fp16.h", "cuda_bf16.h"]
        .iter()
        .all(|h| root.join("include").join(h).is_file())
}

/// `nvidia/cu13`-style trees of the Python environments kdlab can see: the active virtualenv or
/// conda environment, the user's and the system's site-packages.
pub fn pip_wheel_roots() -> Vec<PathBuf> {
    let mut prefixes: Vec<PathBuf> = ["VIRTUAL_ENV", "CONDA_PREFIX"]
        .iter()
        .filter_map(|v| std::env::var_os(v).map(PathBuf::from))
        .collect();
    if let Some(home) = std::env::var_os("HOME") {
        prefixes.push(PathBuf::from(home).join(".local"));
    }
    prefixes.extend(["/usr/local", "/usr"].map(PathBuf::from));
    prefixes
        .iter()
        .flat_map(|prefix| site_packages(prefix))
        .flat_map(|site| cuda_trees(&site.join("nvidia")))
        .collect()
}

/// `prefix/lib/python3.*/{site,dist}-packages` and Debian's `prefix/lib/python3/dist-packages`.
fn site_packages(prefix: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(prefix.join("lib")) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .flat_map(|e| ["site-packages", "dist-packages"].map(|s| e.path().join(s)))
        .filter(|p| p.is_dir())
        .collect();
    found.sort();
    found
}

/// `nvidia/cu13`, `nvidia/cu14`, … newest first.
fn cuda_trees(nvidia: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(nvidia) else {
        return Vec::new();
    };
    let mut trees: Vec<(u32, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let major = name.strip_prefix("cu")?.parse().ok()?;
            Some((major, e.path()))
        })
        .collect();
    trees.sort_by_key(|(major, _)| std::cmp::Reverse(*major));
    trees.into_iter().map(|(_, p)| p).collect()
}

/// Opens the tree's own `libnvrtc-builtins.so.N.M` and `libnvrtc.so.N` by their paths, so that
/// the later opens by name (cudarc's of NVRTC, NVRTC's of its builtins) find them loaded — the
/// loader matches loaded libraries by soname — even when their folder is not on the library
/// path, as a pip wheel's never is.
fn preload_nvrtc(root: &Path) {
    for prefix in ["libnvrtc-builtins.so.", "libnvrtc.so."] {
        for path in libraries(root, prefix) {
            // SAFETY: NVRTC's initialisers have no preconditions; the library stays loaded for
            // the life of the process (cudarc and NVRTC use it from here on).
            if let Ok(lib) = unsafe { libloading::Library::new(&path) } {
                std::mem::forget(lib);
                break;
            }
        }
    }
}

/// Files under the root's library folders whose names start with `prefix`.
fn libraries(root: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = LIBRARY_DIRS
        .iter()
        .filter_map(|dir| std::fs::read_dir(root.join(dir)).ok())
        .flat_map(|entries| entries.flatten().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect();
    found.sort();
    found
}

fn nvrtc_version() -> Result<(i32, i32), String> {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: libnvrtc is present (checked above); both pointers are valid for the call.
    let status =
        quietly_catch(|| unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) })?;
    if status != cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(format!("libnvrtc does not report its version ({status:?})"));
    }
    Ok((major, minor))
}

fn driver_version() -> Result<(i32, i32), String> {
    let mut version = 0;
    // SAFETY: libcuda is present (the caller found a device); the pointer is valid for the call.
    let status =
        quietly_catch(|| unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) })?;
    if status != cudarc::driver::sys::CUresult::CUDA_SUCCESS {
        return Err(format!(
            "the NVIDIA driver does not report its CUDA version ({status:?})"
        ));
    }
    Ok((version / 1000, (version % 1000) / 10))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"").unwrap();
    }

    /// The tree PyTorch's CUDA 13 wheels install, found in a virtualenv's site-packages.
    #[test]
    fn finds_the_cuda_tree_of_pip_wheels() {
        let env = tempfile::tempdir().unwrap();
        let site = env.path().join("lib/python3.11/site-packages");
        let tree = site.join("nvidia/cu13");
        for header in ["cuda_runtime.h", "cuda_fp16.h", "cuda_bf16.h"] {
            touch(&tree.join("include").join(header));
        }
        touch(&tree.join("lib/libnvrtc.so.13"));
        touch(&tree.join("lib/libnvrtc-builtins.so.13.0"));
        touch(&site.join("nvidia/cublas/lib/libcublas.so.13"));
        assert_eq!(site_packages(env.path()), vec![site.clone()]);
        assert_eq!(cuda_trees(&site.join("nvidia")), vec![tree.clone()]);
        assert!(has_headers(&tree));
        assert_eq!(
            libraries(&tree, "libnvrtc-builtins.so."),
            vec![tree.join("lib/libnvrtc-builtins.so.13.0")]
        );
        assert_eq!(
            libraries(&tree, "libnvrtc.so."),
            vec![tree.join("lib/libnvrtc.so.13")]
        );
        std::fs::remove_file(tree.join("include/cuda_bf16.h")).unwrap();
        assert!(
            !has_headers(&tree),
            "a tree without cuda_bf16.h is not enough"
        );
    }
}
