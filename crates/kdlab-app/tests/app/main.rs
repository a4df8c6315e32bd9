//! kdlab-app's test suite, one binary: the app's panels driven through egui_kittest, against
//! the PNG snapshots in tests/snapshots/.

mod panels;
mod runs;
mod setup;
