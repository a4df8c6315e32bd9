//! How good is a distilled student, and how close to its teacher? Frozen features judged by
//! k-nearest neighbours and by a linear probe on labelled images (folders or CIFAR), the
//! thesis' evaluation protocol.

pub mod dataset;
pub mod evaluate;
pub mod features;
pub mod knn;
pub mod linear;
pub mod metrics;
pub mod model;
pub mod report;
pub mod settings;

pub use evaluate::{EvalEvent, EvalRequest, evaluate, results_dir};
pub use model::{ModelSpec, Role};
pub use report::{EvalResult, SavedResults, read_saved};
pub use settings::{DatasetKind, EvalConfig, Method, Pooling};
