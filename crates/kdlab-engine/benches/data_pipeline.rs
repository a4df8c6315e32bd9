//! Data-pipeline throughput: decode + RandomResizedCrop(224) + flip + normalise of ImageNet-sized
//! JPEGs on 1 and 2 workers. Run beside `bench/data_reference.py` (PIL + torchvision) on the same
//! folder:
//!
//!     python bench/data_reference.py /tmp/kdlab-data --make --images 256
//!     cargo bench -p kdlab-engine --bench data_pipeline -- /tmp/kdlab-data
//!     python bench/data_reference.py /tmp/kdlab-data
use std::sync::Arc;
use std::time::Instant;

use kdlab_engine::data::loader::{LoaderSettings, Part, Transform, epoch_order, spawn_epoch};
use kdlab_engine::data::{ImageFolder, train_transform};

fn main() {
    let Some(root) = std::env::args().skip(1).find(|a| !a.starts_with('-')) else {
        eprintln!("usage: cargo bench -p kdlab-engine --bench data_pipeline -- FOLDER");
        return;
    };
    let folder = Arc::new(ImageFolder::scan(std::path::Path::new(&root)).expect("an image folder"));
    let transform: Transform =
        Arc::new(|img, rng| train_transform(img, 224, (0.08, 1.0), (0.75, 4.0 / 3.0), 0.5, rng));
    for workers in [1, 2] {
        let settings = LoaderSettings {
            batch_size: 32,
            workers,
            prefetch_batches: 4,
            drop_last: true,
            seed: 0,
            part: Part::WHOLE,
        };
        let mut best = f64::MAX;
        let mut images = 0;
        for epoch in 0..3 {
            let order = epoch_order(folder.entries.len(), 1, 0, epoch, true);
            let start = Instant::now();
            images = spawn_epoch(
                folder.clone(),
                order,
                0,
                epoch,
                &settings,
                transform.clone(),
            )
            .map(|b| b.len)
            .sum::<usize>();
            best = best.min(start.elapsed().as_secs_f64());
        }
        println!(
            "kdlab data pipeline, {workers} worker(s): {:.1} img/s ({images} images, best of 3)",
            images as f64 / best
        );
    }
}
