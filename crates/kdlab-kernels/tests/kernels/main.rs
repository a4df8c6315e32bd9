//! kdlab-kernels' test suite, one binary (one link, one monomorphisation of burn's backends):
//! the CubeCL attention kernels on WGPU against burn's operations and the CPU kernel.

mod attention;
mod cpu;
