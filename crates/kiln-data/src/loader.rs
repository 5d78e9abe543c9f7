//! The endless, reproducible training batch stream, assembled on background threads, from a
//! random-access source or a stream.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use serde::{Deserialize, Serialize};

use crate::batch::batch_count;
use crate::source::{Gather, Stream};

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
    /// This worker, `0..world`.
    pub rank: usize,
    /// Number of workers.
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

/// One batch of a [`Loader`]'s stream and where it stands in it.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded<T> {
    /// This worker's part of the batch.
    pub batch: T,
    /// Items in the whole batch, of all workers (the batch's own length without sharding).
    pub whole: usize,
    /// 0-based epoch (for a stream: pass) the batch belongs to.
    pub epoch: usize,
    /// 0-based index of the batch inside its epoch.
    pub index: usize,
    /// Batches in one epoch (the last one may be smaller); unknown for a stream.
    pub batches_in_epoch: Option<usize>,
    /// For a stream: where it continues after this batch, for a checkpoint.
    pub resume: Option<StreamPosition>,
}

/// Where a [`Stream`]'s batches continue: after batch `batch` of pass `pass`, with the
/// stream at its [`Stream::position`] `at` (as JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamPosition {
    /// The pass the next item comes from.
    pub pass: usize,
    /// Batches of that pass delivered so far.
    pub batch: usize,
    /// The stream's own position within the pass.
    pub at: serde_json::Value,
}

/// An endless stream of training batches, epoch after epoch, from a random-access source
/// ([`Loader::new`]) or a stream ([`Loader::stream`]).
///
/// From a random-access source, the order of epoch `e` is a pure function of `(seed, e)`: a
/// permutation of `0..len` drawn from a `ChaCha8Rng` seeded with `seed` on stream `e` (or
/// `0..len` itself without shuffling). A run can therefore resume at any epoch and batch
/// without replaying earlier random draws. Batches are assembled on `threads` worker threads:
/// worker `w` builds the `w`-th, `(w + threads)`-th, ... batch of the stream and hands them
/// over through its own bounded channel of `prefetch` batches. [`Loader::next_batch`] takes
/// them round-robin, so the stream is the same for any thread count.
///
/// From a stream, one thread reads the items in order, `batch_size` to a batch (the last batch
/// of a pass may be smaller), and records after each batch where the stream continues
/// ([`Loaded::resume`]); a loader started from that position continues with the same batches.
///
/// In both, a data-parallel worker keeps its [`Shard`] of every batch. Dropping the loader
/// stops and joins its threads.
pub struct Loader<T> {
    /// One channel per thread; batch `k` of the stream comes from `receivers[k % threads]`.
    receivers: Vec<Receiver<Result<Loaded<T>>>>,
    workers: Vec<JoinHandle<()>>,
    /// Number of batches handed out so far.
    delivered: usize,
    batches_per_epoch: Option<usize>,
    /// Time `next_batch` spent blocked since the last `take_wait_time`.
    wait: Duration,
}

impl<T: Send + 'static> Loader<T> {
    /// Starts the workers over a random-access `source`; the first batch returned is batch
    /// `start_batch` of epoch `start_epoch` (a `start_batch` past the end of that epoch
    /// continues into the following ones).
    pub fn new<G: Gather<Batch = T> + 'static>(
        source: Arc<G>,
        cfg: LoaderConfig,
        start_epoch: usize,
        start_batch: usize,
    ) -> Result<Loader<T>> {
        cfg.check()?;
        if source.is_empty() {
            bail!("cannot load batches from an empty data source");
        }
        let batches_per_epoch = batch_count(source.len(), cfg.batch_size);
        let first = start_epoch * batches_per_epoch + start_batch;
        let schedule = Arc::new(Schedule {
            source,
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
                let worker = spawn(w, move || schedule.produce(first + w, stride, sender))?;
                Ok((receiver, worker))
            })
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .unzip();
        Ok(Loader {
            receivers,
            workers,
            delivered: 0,
            batches_per_epoch: Some(batches_per_epoch),
            wait: Duration::ZERO,
        })
    }

    /// Starts reading `source` on a background thread, its items turned into batches by
    /// `collate`: from the start of pass 0, or from where a checkpoint's [`Loaded::resume`]
    /// says. `cfg.shuffle` and `cfg.threads` do not apply (a stream has its own order).
    pub fn stream<S, F>(
        source: S,
        collate: F,
        cfg: LoaderConfig,
        from: Option<StreamPosition>,
    ) -> Result<Loader<T>>
    where
        S: Stream + 'static,
        F: Fn(Vec<S::Item>) -> Result<T> + Send + 'static,
    {
        cfg.check()?;
        let (sender, receiver) = sync_channel(cfg.prefetch);
        let reader = StreamReader {
            source,
            collate,
            batch_size: cfg.batch_size,
            shard: cfg.shard,
        };
        let worker = spawn(0, move || reader.produce(from, sender))?;
        Ok(Loader {
            receivers: vec![receiver],
            workers: vec![worker],
            delivered: 0,
            batches_per_epoch: None,
            wait: Duration::ZERO,
        })
    }

    /// The next batch of the stream, waiting for its worker if it is not ready yet; the error
    /// of a batch that could not be read.
    pub fn next_batch(&mut self) -> Result<Loaded<T>> {
        let receiver = &self.receivers[self.delivered % self.receivers.len()];
        let started = Instant::now();
        let batch = receiver.recv().map_err(|_| {
            anyhow!(
                "a data loader thread stopped unexpectedly (after an error or a panic; see above)"
            )
        })?;
        self.wait += started.elapsed();
        self.delivered += 1;
        batch
    }

    /// Number of batches in one epoch (the last one may be smaller); `None` for a stream.
    pub fn batches_per_epoch(&self) -> Option<usize> {
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

impl<T> Drop for Loader<T> {
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

impl LoaderConfig {
    fn check(&self) -> Result<()> {
        for (value, what) in [
            (self.batch_size, "batch_size"),
            (self.threads, "threads"),
            (self.prefetch, "prefetch"),
        ] {
            if value == 0 {
                bail!("the data loader's {what} must be at least 1");
            }
        }
        Ok(())
    }
}

fn spawn(w: usize, work: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("kiln-loader-{w}"))
        .spawn(work)
        .context("cannot spawn a data loader thread")
}

/// Which samples make up each batch of a random-access stream; shared by all workers.
struct Schedule<G> {
    source: Arc<G>,
    batch_size: usize,
    batches_per_epoch: usize,
    shuffle: bool,
    seed: u64,
    shard: Shard,
}

impl<G: Gather> Schedule<G> {
    /// Builds batches `first`, `first + stride`, ... of the stream and sends them until the
    /// receiving side is dropped or a batch cannot be read (its error is the last thing sent).
    fn produce(&self, first: usize, stride: usize, sender: SyncSender<Result<Loaded<G::Batch>>>) {
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
            let batch = self
                .source
                .gather(&whole[self.shard.range(whole.len())])
                .with_context(|| format!("reading batch {index} of epoch {epoch}"));
            let failed = batch.is_err();
            let loaded = batch.map(|batch| Loaded {
                batch,
                whole: whole.len(),
                epoch,
                index,
                batches_in_epoch: Some(self.batches_per_epoch),
                resume: None,
            });
            cached = Some((epoch, order));
            if sender.send(loaded).is_err() || failed {
                return;
            }
        }
    }

    /// The order in which epoch `epoch` visits the samples.
    fn epoch_order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.source.len()).collect();
        if self.shuffle {
            let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
            rng.set_stream(epoch as u64);
            order.shuffle(&mut rng);
        }
        order
    }
}

/// The thread that reads a stream source in batches.
struct StreamReader<S, F> {
    source: S,
    collate: F,
    batch_size: usize,
    shard: Shard,
}

impl<S, F, T> StreamReader<S, F>
where
    S: Stream,
    F: Fn(Vec<S::Item>) -> Result<T>,
{
    /// Sends batches until the receiving side is dropped or the stream fails (its error is the
    /// last thing sent).
    fn produce(mut self, from: Option<StreamPosition>, sender: SyncSender<Result<Loaded<T>>>) {
        let result = self.read(from, &sender);
        if let Err(e) = result {
            let _ = sender.send(Err(e));
        }
    }

    fn read(
        &mut self,
        from: Option<StreamPosition>,
        sender: &SyncSender<Result<Loaded<T>>>,
    ) -> Result<()> {
        let (mut pass, mut batch) = from.as_ref().map_or((0, 0), |p| (p.pass, p.batch));
        self.source
            .start_pass(pass)
            .with_context(|| format!("starting pass {pass} of the stream"))?;
        if let Some(p) = from {
            let at = serde_json::from_value(p.at.clone()).with_context(|| {
                format!(
                    "the checkpoint's stream position {} does not fit this stream",
                    p.at
                )
            })?;
            self.source
                .seek(at)
                .with_context(|| format!("seeking the stream to {} of pass {pass}", p.at))?;
        }
        loop {
            let mut items = Vec::with_capacity(self.batch_size);
            while items.len() < self.batch_size {
                let item = self.source.next().with_context(|| {
                    format!(
                        "reading item {} of batch {batch} of pass {pass}",
                        items.len()
                    )
                })?;
                match item {
                    Some(item) => items.push(item),
                    None => break,
                }
            }
            let pass_over = items.len() < self.batch_size;
            if !items.is_empty() {
                let whole = items.len();
                let range = self.shard.range(whole);
                let mine = items
                    .into_iter()
                    .skip(range.start)
                    .take(range.len())
                    .collect();
                let loaded = Loaded {
                    batch: (self.collate)(mine)
                        .with_context(|| format!("collating batch {batch} of pass {pass}"))?,
                    whole,
                    epoch: pass,
                    index: batch,
                    batches_in_epoch: None,
                    resume: Some(StreamPosition {
                        pass,
                        batch: batch + 1,
                        at: serde_json::to_value(self.source.position())
                            .context("the stream's position cannot be written as JSON")?,
                    }),
                };
                if sender.send(Ok(loaded)).is_err() {
                    return Ok(());
                }
                batch += 1;
            } else if batch == 0 {
                bail!("the stream gave no items in pass {pass}: a stream to train on must not be empty");
            }
            if pass_over {
                (pass, batch) = (pass + 1, 0);
                self.source
                    .start_pass(pass)
                    .with_context(|| format!("starting pass {pass} of the stream"))?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::tests::toy;
    use crate::source::tests::{Counter, Numbers};
    use crate::source::Collated;
    use crate::Batch;

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
    fn stream(
        len: usize,
        cfg: LoaderConfig,
        start: (usize, usize),
        count: usize,
    ) -> Vec<Loaded<Batch>> {
        let mut loader = Loader::new(Arc::new(toy(len)), cfg, start.0, start.1).unwrap();
        (0..count).map(|_| loader.next_batch().unwrap()).collect()
    }

    /// The original sample indices in `batches` (the first feature of a toy sample).
    fn ids(batches: &[Loaded<Batch>]) -> Vec<usize> {
        batches
            .iter()
            .flat_map(|b| b.batch.x.chunks(2).map(|s| s[0] as usize))
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
        for (k, loaded) in batches.iter().enumerate() {
            assert_eq!((loaded.epoch, loaded.index), (k / 6, k % 6));
            assert_eq!(loaded.batches_in_epoch, Some(6));
            let expected_len = if k % 6 == 5 { 3 } else { 4 };
            let batch = &loaded.batch;
            assert_eq!((batch.len(), loaded.whole), (expected_len, expected_len));
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
        let mut loader = Loader::new(Arc::new(toy(100)), config(2, true), 0, 0).unwrap();
        assert_eq!(loader.batches_per_epoch(), Some(25));
        for _ in 0..30 {
            loader.next_batch().unwrap();
        }
        let waited = loader.wait_time();
        assert_eq!(loader.take_wait_time(), waited);
        assert_eq!(loader.wait_time(), Duration::ZERO);
    }

    #[test]
    fn dropping_a_loader_with_full_channels_returns_promptly() {
        let mut loader = Loader::new(Arc::new(toy(1000)), config(4, true), 0, 0).unwrap();
        loader.next_batch().unwrap();
        std::thread::sleep(Duration::from_millis(100)); // let every channel fill up
        let started = Instant::now();
        drop(loader);
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn shards_partition_every_batch_of_the_whole_stream() {
        let whole = stream(23, config(2, true), (1, 2), 9);
        for world in [2, 3, 5] {
            let shards: Vec<Vec<Loaded<Batch>>> = (0..world)
                .map(|rank| {
                    let cfg = LoaderConfig {
                        shard: Shard { rank, world },
                        ..config(2, true)
                    };
                    stream(23, cfg, (1, 2), 9)
                })
                .collect();
            for (i, batch) in whole.iter().enumerate() {
                let parts: Vec<Loaded<Batch>> = shards.iter().map(|s| s[i].clone()).collect();
                assert_eq!(
                    ids(&parts),
                    ids(std::slice::from_ref(batch)),
                    "world {world}, batch {i}"
                );
                assert!(parts.iter().all(|p| p.whole == batch.batch.len()));
            }
        }
    }

    #[test]
    fn bad_settings_and_empty_sources_are_errors() {
        let cfg = LoaderConfig {
            prefetch: 0,
            ..config(1, true)
        };
        let err = Loader::new(Arc::new(toy(5)), cfg, 0, 0).err().unwrap();
        assert!(
            err.to_string().contains("prefetch must be at least 1"),
            "{err}"
        );
        let err = Loader::new(Arc::new(toy(0)), config(1, true), 0, 0)
            .err()
            .unwrap();
        assert!(err.to_string().contains("empty"), "{err}");
    }

    #[test]
    fn an_unreadable_item_stops_the_stream_with_its_error() {
        let source = Collated::new(
            Numbers {
                len: 40,
                fail: Some(13),
            },
            Ok,
        );
        let mut loader = Loader::new(Arc::new(source), config(2, false), 0, 0).unwrap();
        for k in 0..3 {
            assert_eq!(
                loader.next_batch().unwrap().batch,
                (4 * k..4 * k + 4).collect::<Vec<_>>()
            );
        }
        let err = format!("{:#}", loader.next_batch().unwrap_err());
        assert!(
            err.contains("batch 3 of epoch 0") && err.contains("item 13"),
            "{err}"
        );
    }

    /// The first `count` batches of a stream loader over a [`Counter`] of `len` items.
    fn counted(
        len: usize,
        cfg: LoaderConfig,
        from: Option<StreamPosition>,
        count: usize,
    ) -> Vec<Loaded<Vec<usize>>> {
        let mut loader = Loader::stream(Counter::new(len), Ok, cfg, from).unwrap();
        (0..count).map(|_| loader.next_batch().unwrap()).collect()
    }

    #[test]
    fn a_stream_is_read_in_batches_pass_after_pass() {
        let batches = counted(10, config(1, true), None, 7);
        let items: Vec<Vec<usize>> = batches.iter().map(|b| b.batch.clone()).collect();
        assert_eq!(
            items,
            vec![
                vec![0, 1, 2, 3],
                vec![4, 5, 6, 7],
                vec![8, 9],
                vec![10, 11, 12, 13],
                vec![14, 15, 16, 17],
                vec![18, 19],
                vec![20, 21, 22, 23],
            ]
        );
        let at: Vec<(usize, usize)> = batches.iter().map(|b| (b.epoch, b.index)).collect();
        assert_eq!(
            at,
            vec![(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0)]
        );
        assert!(batches.iter().all(|b| b.batches_in_epoch.is_none()));
        // A pass that ends on a batch boundary gives no empty batch.
        let even = counted(8, config(1, true), None, 3);
        assert_eq!(even[2].batch, vec![8, 9, 10, 11]);
    }

    #[test]
    fn a_stream_resumed_from_any_batch_continues_with_the_same_batches() {
        for len in [8, 10] {
            let full = counted(len, config(1, true), None, 12);
            for k in 0..8 {
                let from = full[k].resume.clone();
                let resumed = counted(len, config(1, true), from, 12 - k - 1);
                assert_eq!(resumed, full[k + 1..], "len {len}, resumed after batch {k}");
            }
        }
    }

    #[test]
    fn stream_shards_partition_every_batch() {
        let whole = counted(10, config(1, true), None, 6);
        for world in [2, 3, 5] {
            let parts: Vec<Vec<Loaded<Vec<usize>>>> = (0..world)
                .map(|rank| {
                    let cfg = LoaderConfig {
                        shard: Shard { rank, world },
                        ..config(1, true)
                    };
                    counted(10, cfg, None, 6)
                })
                .collect();
            for (i, batch) in whole.iter().enumerate() {
                let joined: Vec<usize> = parts.iter().flat_map(|p| p[i].batch.clone()).collect();
                assert_eq!(joined, batch.batch, "world {world}, batch {i}");
                assert!(parts.iter().all(|p| p[i].whole == batch.whole));
                assert!(parts.iter().all(|p| p[i].resume == batch.resume));
            }
        }
    }

    #[test]
    fn stream_errors_reach_the_consumer() {
        let mut failing = Counter::new(10);
        failing.fail = Some(6);
        let mut loader = Loader::stream(failing, Ok, config(1, true), None).unwrap();
        assert_eq!(loader.next_batch().unwrap().batch, vec![0, 1, 2, 3]);
        let err = format!("{:#}", loader.next_batch().unwrap_err());
        assert!(
            err.contains("item 2 of batch 1 of pass 0") && err.contains("unreadable"),
            "{err}"
        );
        let mut empty = Loader::stream(Counter::new(0), Ok, config(1, true), None).unwrap();
        let err = empty.next_batch().unwrap_err().to_string();
        assert!(err.contains("no items in pass 0"), "{err}");
        let bad = StreamPosition {
            pass: 0,
            batch: 1,
            at: serde_json::json!("not a number"),
        };
        let mut loader = Loader::stream(Counter::new(10), Ok, config(1, true), Some(bad)).unwrap();
        let err = loader.next_batch().unwrap_err().to_string();
        assert!(err.contains("does not fit this stream"), "{err}");
    }
}
