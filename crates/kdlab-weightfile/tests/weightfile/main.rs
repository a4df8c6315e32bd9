//! kdlab-weightfile's test suite, one binary: crafted checkpoints, one per class of hostile or
//! broken file, files torch itself wrote, and a seeded search over mutated real checkpoints
//! (which caps this process's memory: every test here reads small files).

mod common;
mod crafted;
mod fuzz;
