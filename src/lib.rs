//! kdlab: feature-based knowledge distillation of Vision Transformers on burn — a frozen BEiT v2
//! teacher into a shallow data2vec 2.0 student — with a view of where, per patch, the student
//! matches the teacher.

pub mod app;
pub mod backend;
pub mod bench;
pub mod cli;
pub mod config;
pub mod data;
pub mod distill;
pub mod eval;
pub mod inspect;
pub mod kernels;
pub mod model;
pub mod weights;
