//! kdlab-model's test suite, one binary: the encoders against the PyTorch fixtures (unilm,
//! timm, fairseq) on the CPU and WGPU, and every checkpoint layout's keys against the real
//! checkpoints' manifests.

mod hostile;
mod manifests;
mod parity;
mod vits;
