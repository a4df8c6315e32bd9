//! The Setup panel's checks, without a window.

use std::path::PathBuf;

use kdlab_app::setup_panel::problems;
use kdlab_engine::config::RunConfig;

#[test]
fn problems_name_their_field() {
    let mut config = RunConfig::default();
    config.data.train = PathBuf::from("/nonexistent/kdlab");
    config.optim.batch_size = 0;
    config.log_every = 0;
    let found = problems(&config);
    let fields: Vec<&str> = found.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, ["optim.batch_size", "log_every", "data.train"]);
}
