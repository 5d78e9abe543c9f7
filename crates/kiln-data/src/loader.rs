//! The endless, reproducible training batch stream, assembled on background threads.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::batch::{batch_count, Batch};
use crate::Dataset;

/// Settings of a [`Loader`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoaderConfig {
    /// Samples per batch (the last batch of an epoch may be smaller); at least 1.
    pub batch_size: usize,
    /// Number of background worker threads; at least 1.
    pub threads: usize,
    /// Batches each worker may build ahead of the consumer; at least 1.
    pub prefetch: usize,
    /// Whether each epoch visits the samples in a fresh random order.
    pub shuffle: bool,
    /// Seed of the per-epoch orders.
    pub seed: u64,
    /// Which part of every batch this loader builds, for data-parallel workers.
    pub shard: Shard,
}

/// Worker `rank` of `world` takes the `rank`-th of `world` near-equal contiguous parts of every
/// batch: with `batch_size` = per-worker batch × `world`, the workers together see exactly the
/// batches one worker would see, each sample once per epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub world: usize,
}

impl Shard {
    /// One worker: the whole batch.
    pub const WHOLE: Shard = Shard { rank: 0, world: 1 };

    /// The part of `0..len` this shard takes.
    pub fn range(self, len: usize) -> std::ops::Range<usize> {
        let part = |r: usize| r * len / self.world;
        part(self.rank)..part(self.rank + 1)
    }
}

impl Default for Shard {
    fn default() -> Self {
        Shard::WHOLE
    }
}

/// An endless stream of training batches, epoch after epoch.
///
/// The order of epoch `e` is a pure function of `(seed, e)`: a permutation of
/// `0..len` drawn from a `ChaCha8Rng` seeded with `seed` on stream `e` (or
/// `0..len` itself without shuffling). A run can therefore resume at any
/// epoch and batch without replaying earlier random draws.
///
/// Batches are assembled on `threads` worker threads: worker `w` builds the
/// `w`-th, `(w + threads)`-th, ... batch of the stream and hands them over
/// through its own bounded channel of `prefetch` batches. [`Loader::next_batch`]
/// takes them round-robin, so the stream is the same for any thread count.
/// Dropping the loader stops and joins its workers.
pub struct Loader {
    /// One channel per worker; batch `k` of the stream comes from `receivers[k % threads]`.
    receivers: Vec<Receiver<Batch>>,
    workers: Vec<JoinHandle<()>>,
    /// Number of batches handed out so far.
    delivered: usize,
    batches_per_epoch: usize,
    /// Time `next_batch` spent blocked since the last `take_wait_time`.
    wait: Duration,
}

impl Loader {
    /// Starts the workers; the first batch returned is batch `start_batch` of
    /// epoch `start_epoch` (a `start_batch` past the end of that epoch
    /// continues into the following ones).
    ///
    /// # Panics
    /// If the dataset is empty or `batch_size`, `threads` or `prefetch` is 0.
    pub fn new(
        dataset: Arc<Dataset>,
        cfg: LoaderConfig,
        start_epoch: usize,
        start_batch: usize,
    ) -> Loader {
        assert!(
            !dataset.is_empty(),
            "cannot load batches from an empty dataset"
        );
        assert!(cfg.batch_size > 0, "loader batch_size must be at least 1");
        assert!(cfg.threads > 0, "loader threads must be at least 1");
        assert!(cfg.prefetch > 0, "loader prefetch must be at least 1");

        let batches_per_epoch = batch_count(dataset.len(), cfg.batch_size);
        let first = start_epoch * batches_per_epoch + start_batch;
        let schedule = Arc::new(Schedule {
            dataset,
            batch_size: cfg.batch_size,
            batches_per_epoch,
            shuffle: cfg.shuffle,
            seed: cfg.seed,
            shard: cfg.shard,
        });
        let (receivers, workers) = (0..cfg.threads)
            .map(|w| {
                let (sender, receiver) = sync_channel(cfg.prefetch);
                let schedule = Arc::clone(&schedule);
                let stride = cfg.threads;
                let worker = std::thread::Builder::new()
                    .name(format!("kiln-loader-{w}"))
                    .spawn(move || schedule.produce(first + w, stride, sender))
                    .expect("cannot spawn a data loader thread");
                (receiver, worker)
            })
            .unzip();
        Loader {
            receivers,
            workers,
            delivered: 0,
            batches_per_epoch,
            wait: Duration::ZERO,
        }
    }

    /// The next batch of the stream, waiting for its worker if it is not ready yet.
    ///
    /// # Panics
    /// If the worker building this batch has died (it panicked).
    pub fn next_batch(&mut self) -> Batch {
        let receiver = &self.receivers[self.delivered % self.receivers.len()];
        let started = Instant::now();
        let batch = receiver
            .recv()
            .expect("a data loader worker thread stopped unexpectedly");
        self.wait += started.elapsed();
        self.delivered += 1;
        batch
    }

    /// Number of batches in one epoch (the last one may be smaller).
    pub fn batches_per_epoch(&self) -> usize {
        self.batches_per_epoch
    }

    /// Total time [`Loader::next_batch`] spent waiting for batches since the
    /// loader started or since the last [`Loader::take_wait_time`].
    pub fn wait_time(&self) -> Duration {
        self.wait
    }

    /// Returns [`Loader::wait_time`] and resets it to zero.
    pub fn take_wait_time(&mut self) -> Duration {
        std::mem::take(&mut self.wait)
    }
}

impl Drop for Loader {
    /// Closes the channels first, so that workers blocked on a full channel
    /// wake up with an error and return, then joins them.
    fn drop(&mut self) {
        self.receivers.clear();
        for worker in self.workers.drain(..) {
            // A worker that panicked has nothing left to clean up.
            let _ = worker.join();
        }
    }
}

/// Which samples make up each batch of the stream; shared by all workers.
struct Schedule {
    dataset: Arc<Dataset>,
    batch_size: usize,
    batches_per_epoch: usize,
    shuffle: bool,
    seed: u64,
    shard: Shard,
}

impl Schedule {
    /// Builds batches `first`, `first + stride`, ... of the stream and sends
    /// them until the receiving side is dropped.
    fn produce(&self, first: usize, stride: usize, sender: SyncSender<Batch>) {
        let mut cached: Option<(usize, Vec<usize>)> = None;
        for position in (first..).step_by(stride) {
            let epoch = position / self.batches_per_epoch;
            let index = position % self.batches_per_epoch;
            let order = match cached.take() {
                Some((cached_epoch, order)) if cached_epoch == epoch => order,
                _ => self.epoch_order(epoch),
            };
            let start = index * self.batch_size;
            let end = (start + self.batch_size).min(order.len());
            let whole = &order[start..end];
            let mut batch = Batch::gather(
                &self.dataset,
                &whole[self.shard.range(whole.len())],
                epoch,
                index,
                self.batches_per_epoch,
            );
            batch.global_len = whole.len();
            cached = Some((epoch, order));
            if sender.send(batch).is_err() {
                return;
            }
        }
    }

    /// The order in which epoch `epoch` visits the samples.
    fn epoch_order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.dataset.len()).collect();
        if self.shuffle {
            let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
            rng.set_stream(epoch as u64);
            order.shuffle(&mut rng);
        }
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::tests::toy;

    fn config(threads: usize, shuffle: bool) -> LoaderConfig {
        LoaderConfig {
            batch_size: 4,
            threads,
            prefetch: 2,
            shuffle,
            seed: 9,
            shard: Shard::WHOLE,
        }
    }

    /// The first `count` batches of a loader over `toy(len)`.
    fn stream(len: usize, cfg: LoaderConfig, start: (usize, usize), count: usize) -> Vec<Batch> {
        let mut loader = Loader::new(Arc::new(toy(len)), cfg, start.0, start.1);
        (0..count).map(|_| loader.next_batch()).collect()
    }

    /// The original sample indices in `batches` (the first feature of a toy sample).
    fn ids(batches: &[Batch]) -> Vec<usize> {
        batches
            .iter()
            .flat_map(|b| b.x.chunks(2).map(|s| s[0] as usize))
            .collect()
    }

    #[test]
    fn stream_is_identical_for_any_thread_count() {
        let one = stream(23, config(1, true), (0, 0), 20);
        let three = stream(23, config(3, true), (0, 0), 20);
        assert_eq!(one, three);
    }

    #[test]
    fn each_epoch_is_a_fresh_permutation() {
        let batches = stream(23, config(2, true), (0, 0), 18);
        let epochs: Vec<Vec<usize>> = batches.chunks(6).map(ids).collect();
        for (e, order) in epochs.iter().enumerate() {
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..23).collect::<Vec<_>>(), "epoch {e}");
            assert_ne!(*order, sorted, "epoch {e} should be shuffled");
        }
        assert_ne!(epochs[0], epochs[1]);
        assert_ne!(epochs[1], epochs[2]);
    }

    #[test]
    fn batches_carry_their_position_and_the_last_one_is_partial() {
        let batches = stream(23, config(2, true), (0, 0), 12);
        for (k, batch) in batches.iter().enumerate() {
            assert_eq!((batch.epoch, batch.index), (k / 6, k % 6));
            assert_eq!(batch.batches_in_epoch, 6);
            let expected_len = if k % 6 == 5 { 3 } else { 4 };
            assert_eq!(batch.len(), expected_len);
            assert_eq!(batch.x_shape, vec![expected_len, 2]);
            assert_eq!(batch.x.len(), expected_len * 2);
        }
    }

    #[test]
    fn without_shuffle_every_epoch_is_in_order() {
        let batches = stream(10, config(3, false), (0, 0), 9);
        let order: Vec<usize> = (0..3).flat_map(|_| 0..10).collect();
        assert_eq!(ids(&batches), order);
    }

    #[test]
    fn resuming_reproduces_the_tail_of_the_stream() {
        let full = stream(23, config(2, true), (0, 0), 20);
        let resumed = stream(23, config(3, true), (1, 2), 12);
        assert_eq!(resumed, full[8..]);
        let past_end = stream(23, config(1, true), (0, 8), 12);
        assert_eq!(past_end, full[8..]);
    }

    #[test]
    fn wait_time_accumulates_and_resets() {
        let mut loader = Loader::new(Arc::new(toy(100)), config(2, true), 0, 0);
        assert_eq!(loader.batches_per_epoch(), 25);
        for _ in 0..30 {
            loader.next_batch();
        }
        let waited = loader.wait_time();
        assert_eq!(loader.take_wait_time(), waited);
        assert_eq!(loader.wait_time(), Duration::ZERO);
    }

    #[test]
    fn dropping_a_loader_with_full_channels_returns_promptly() {
        let mut loader = Loader::new(Arc::new(toy(1000)), config(4, true), 0, 0);
        loader.next_batch();
        std::thread::sleep(Duration::from_millis(100)); // let every channel fill up
        let started = Instant::now();
        drop(loader);
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn shards_partition_every_batch_of_the_whole_stream() {
        let whole = stream(23, config(2, true), (1, 2), 9);
        for world in [2, 3, 5] {
            let shards: Vec<Vec<Batch>> = (0..world)
                .map(|rank| {
                    let cfg = LoaderConfig {
                        shard: Shard { rank, world },
                        ..config(2, true)
                    };
                    stream(23, cfg, (1, 2), 9)
                })
                .collect();
            for (i, batch) in whole.iter().enumerate() {
                let parts: Vec<Batch> = shards.iter().map(|s| s[i].clone()).collect();
                let joined: Vec<usize> = parts
                    .iter()
                    .flat_map(|b| ids(std::slice::from_ref(b)))
                    .collect();
                assert_eq!(
                    joined,
                    ids(std::slice::from_ref(batch)),
                    "world {world}, batch {i}"
                );
                assert!(parts.iter().all(|p| p.global_len == batch.len()));
            }
        }
    }
}
