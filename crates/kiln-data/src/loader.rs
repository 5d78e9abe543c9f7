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
                .gather_in_epoch(&whole[self.shard.range(whole.len())], epoch)
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
mod tests;
