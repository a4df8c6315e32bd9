//! kdlab-engine's test suite, one binary: the training step against PyTorch's, mixed precision,
//! the inspection views, image limits, device memory across jobs, TensorBoard files.

mod device_memory;
mod image_limits;
mod inspect_views;
mod precision;
mod tensorboard;
mod training;
