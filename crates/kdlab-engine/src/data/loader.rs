//! Batches on worker threads, ahead of the device, in a reproducible order.
//!
//! The order of an epoch and the augmentation of each sample depend only on (seed, epoch,
//! position), never on thread timing or worker count — which is what makes `--resume` exact.

use std::path::PathBuf;
use std::sync::Arc;

use crossbeam_channel::{Receiver, bounded};
use image::RgbImage;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::source::ImageSource;

/// Turns a decoded image into `[3, S, S]` normalised pixels.
pub type Transform = Arc<dyn Fn(&RgbImage, &mut ChaCha8Rng) -> Vec<f32> + Send + Sync>;

/// One batch, `[len, 3, S, S]` flattened, the class of each image in it, plus the files that
/// could not be used.
#[derive(Debug)]
pub struct Batch {
    pub index: usize,
    pub pixels: Vec<f32>,
    pub labels: Vec<usize>,
    pub len: usize,
    pub skipped: Vec<(PathBuf, String)>,
}

/// Mixes numbers into one seed (splitmix64), so nearby inputs give unrelated streams.
pub fn mix_seed(parts: &[u64]) -> u64 {
    parts.iter().fold(0x9E37_79B9_7F4A_7C15, |acc, &p| {
        let mut z = acc ^ p.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

/// Sample indices of an epoch: every image `repeats` times, shuffled from (seed, epoch).
pub fn epoch_order(
    images: usize,
    repeats: usize,
    seed: u64,
    epoch: usize,
    shuffle: bool,
) -> Vec<usize> {
    let mut order: Vec<usize> = (0..images * repeats).map(|i| i % images).collect();
    if shuffle {
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix_seed(&[
            seed,
            epoch as u64,
            1,
        ])));
    }
    order
}

pub struct LoaderSettings {
    pub batch_size: usize,
    pub workers: usize,
    pub prefetch_batches: usize,
    pub drop_last: bool,
    pub seed: u64,
    /// The part of every batch this loader makes (a node's share of a data-parallel batch).
    pub part: Part,
}

/// Part `index` of `count` equal, contiguous parts of a range: a node's or a device's shard of
/// a batch. Parts of parts nest: part k of node r's part is part r·L + k of the whole when
/// each node has L devices and the length divides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    pub index: usize,
    pub count: usize,
}

impl Part {
    pub const WHOLE: Self = Self { index: 0, count: 1 };

    pub fn of(self, range: std::ops::Range<usize>) -> std::ops::Range<usize> {
        let len = range.end - range.start;
        let count = self.count.max(1);
        range.start + len * self.index / count..range.start + len * (self.index + 1) / count
    }
}

impl LoaderSettings {
    /// Every image once, in the order given, the last batch kept (features, benchmarks).
    pub fn in_order(batch_size: usize, workers: usize) -> Self {
        Self {
            batch_size,
            workers,
            prefetch_batches: 2 * workers,
            drop_last: false,
            seed: 0,
            part: Part::WHOLE,
        }
    }
}

/// Streams the batches `first_batch..` of one epoch; dropping the receiver stops the workers.
pub fn spawn_epoch(
    source: Arc<dyn ImageSource>,
    order: Vec<usize>,
    first_batch: usize,
    epoch: usize,
    settings: &LoaderSettings,
    transform: Transform,
) -> BatchStream {
    let full = order.len() / settings.batch_size;
    let batches = if settings.drop_last {
        full
    } else {
        order.len().div_ceil(settings.batch_size)
    };
    let order = Arc::new(order);
    let workers = settings.workers.max(1);
    let capacity = settings.prefetch_batches.div_ceil(workers).max(1);
    let receivers = (0..workers)
        .map(|w| {
            let (tx, rx) = bounded::<Batch>(capacity);
            let (source, order, transform) = (source.clone(), order.clone(), transform.clone());
            let (batch_size, seed, part) = (settings.batch_size, settings.seed, settings.part);
            std::thread::spawn(move || {
                for index in (first_batch..batches).skip(w).step_by(workers) {
                    let start = index * batch_size;
                    let end = (start + batch_size).min(order.len());
                    // Positions stay global: a part's images are augmented as in the whole.
                    let positions = part.of(start..end);
                    let batch =
                        make_batch(&*source, &order, positions, index, epoch, seed, &transform);
                    if tx.send(batch).is_err() {
                        return;
                    }
                }
            });
            rx
        })
        .collect();
    BatchStream {
        receivers,
        first: first_batch,
        next: first_batch,
        end: batches,
    }
}

fn make_batch(
    source: &dyn ImageSource,
    order: &[usize],
    positions: std::ops::Range<usize>,
    index: usize,
    epoch: usize,
    seed: u64,
    transform: &Transform,
) -> Batch {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    let mut skipped = Vec::new();
    for position in positions {
        let sample = order[position];
        match source.load(sample) {
            Ok(img) => {
                let mut rng =
                    ChaCha8Rng::seed_from_u64(mix_seed(&[seed, epoch as u64, position as u64, 2]));
                pixels.extend(transform(&img, &mut rng));
                labels.push(source.label(sample));
            }
            Err(e) => skipped.push((e.path, e.message)),
        }
    }
    Batch {
        index,
        pixels,
        len: labels.len(),
        labels,
        skipped,
    }
}

/// Batches in order, taken round-robin from the workers (worker w makes batches
/// `first + w`, `first + w + workers`, …).
pub struct BatchStream {
    receivers: Vec<Receiver<Batch>>,
    first: usize,
    next: usize,
    end: usize,
}

impl BatchStream {
    pub fn batches_left(&self) -> usize {
        self.end - self.next
    }
}

impl Iterator for BatchStream {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        if self.next >= self.end {
            return None;
        }
        let worker = (self.next - self.first) % self.receivers.len();
        let batch = self.receivers[worker].recv().ok()?;
        self.next += 1;
        Some(batch)
    }
}
