//! What the loop consumes ([`TrainData`]): the data of a run as a reproducible stream of
//! training micro-batches plus evaluation splits. Kiln's own data ([`RunData`], kiln-infer)
//! implements it: token windows are a pure function of the seed and the micro-batch index, so a
//! resumed run continues the same stream.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use kiln_core::Config;
use kiln_data::{random_windows_from, Loader, LoaderConfig, Shard, StreamPosition, TokenSpan};
use kiln_models::Targets;

use crate::checkpoint::DataPosition;
pub use kiln_infer::data::{RunData, Split, Splits, TextData};
pub use kiln_models::{HostBatch, HostInput};

/// What Kiln's loop trains and evaluates on: the data of a run as a stream of training
/// micro-batches, sharded across data-parallel workers and resumable, and evaluation splits.
///
/// Kiln's own data ([`RunData`], the `[data]` section) implements it; so does a user's random
/// access or stream source through [`crate::SourceData`]. Implement it directly for data that
/// needs more control (Kiln's token windows are an example).
pub trait TrainData: Send + Sync {
    /// A batch in host memory: the model's [`kiln_models::TrainModel::HostBatch`].
    type Batch: Targets + Send + 'static;

    /// One line for the log, e.g. the split sizes; the data-parallel workers also check that
    /// they agree on it.
    fn describe(&self) -> String;

    /// What the logged throughput counts ("samples" or "tokens").
    fn unit(&self) -> &'static str {
        "samples"
    }

    /// Micro-batches of `batch_size` samples in one pass over the training data, or `None`
    /// when the data does not know its length (a stream: then `train.max_steps` sets the
    /// run's length).
    fn batches_per_epoch(&self, batch_size: usize) -> Option<usize>;

    /// The training stream of worker `shard.rank` of `shard.world`, continuing from `from`
    /// (the start of a fresh run, or a checkpoint's position). Every micro-batch of the stream
    /// is a whole batch of `data.batch_size` x `shard.world` samples of which this worker
    /// takes its shard: together the workers see what one worker with a batch that large
    /// would see.
    fn train_stream(
        &self,
        config: &Config,
        shard: Shard,
        from: &DataPosition,
    ) -> Result<Box<dyn TrainStream<Self::Batch>>>;

    /// Whether `split` holds any data.
    fn has(&self, split: Split) -> bool;

    /// The evaluation batches of `split`, in a fixed order.
    fn eval_batches<'a>(
        &'a self,
        split: Split,
        config: &Config,
    ) -> Box<dyn Iterator<Item = Result<Self::Batch>> + 'a>;

    /// Saves what the run needs besides the weights (Kiln's text data: the tokenizer) into a
    /// new run directory.
    fn save_artifacts(&self, _run_dir: &Path) -> Result<()> {
        Ok(())
    }
}

/// An endless stream of training micro-batches (see [`TrainData::train_stream`]).
pub trait TrainStream<T>: Send {
    /// The next micro-batch; the error of one that could not be read.
    fn next_batch(&mut self) -> Result<Micro<T>>;

    /// Time spent waiting for data since the last call.
    fn take_wait_time(&mut self) -> Duration {
        Duration::ZERO
    }
}

/// One micro-batch of a training stream.
pub struct Micro<T> {
    /// This worker's shard of the batch.
    pub batch: T,
    /// Targets of the whole batch of all workers, when the data knows them (Kiln's data
    /// does); otherwise data-parallel workers add up their shards' targets.
    pub whole_targets: Option<usize>,
    /// For a stream source: where it continues after this batch, saved in checkpoints.
    pub resume: Option<StreamPosition>,
}

/// A [`Loader`] of micro-batches is a training stream.
impl<T: Send + 'static> TrainStream<T> for Loader<T> {
    fn next_batch(&mut self) -> Result<Micro<T>> {
        let loaded = Loader::next_batch(self)?;
        Ok(Micro {
            batch: loaded.batch,
            whole_targets: None,
            resume: loaded.resume,
        })
    }

    fn take_wait_time(&mut self) -> Duration {
        Loader::take_wait_time(self)
    }
}

impl TrainData for RunData {
    type Batch = HostBatch;

    fn describe(&self) -> String {
        RunData::describe(self)
    }

    fn unit(&self) -> &'static str {
        RunData::unit(self)
    }

    fn batches_per_epoch(&self, batch_size: usize) -> Option<usize> {
        Some(RunData::batches_per_epoch(self, batch_size))
    }

    fn train_stream(
        &self,
        config: &Config,
        shard: Shard,
        from: &DataPosition,
    ) -> Result<Box<dyn TrainStream<HostBatch>>> {
        let d = &config.data;
        let whole = d.batch_size * shard.world;
        Ok(match self {
            RunData::Samples(s) => Box::new(Samples(Loader::new(
                s.train.clone(),
                loader_config(config, shard),
                from.epoch,
                from.batch_in_epoch,
            )?)),
            RunData::Text(t) => Box::new(Windows {
                span: t.train.clone(),
                block_size: t.block_size,
                rows: d.batch_size,
                skip: d.batch_size * shard.rank,
                whole: whole * t.block_size,
                seed: config.run.seed,
                next: (from.epoch * from.batches_per_epoch + from.batch_in_epoch) as u64,
            }),
        })
    }

    fn has(&self, split: Split) -> bool {
        RunData::has(self, split)
    }

    fn eval_batches<'a>(
        &'a self,
        split: Split,
        config: &Config,
    ) -> Box<dyn Iterator<Item = Result<HostBatch>> + 'a> {
        RunData::eval_batches(self, split, config)
    }

    fn save_artifacts(&self, run_dir: &Path) -> Result<()> {
        RunData::save_artifacts(self, run_dir)
    }
}

/// The loader settings of worker `shard`: whole batches of `data.batch_size` x the workers.
pub fn loader_config(config: &Config, shard: Shard) -> LoaderConfig {
    let d = &config.data;
    LoaderConfig {
        batch_size: d.batch_size * shard.world,
        threads: d.loader_threads,
        prefetch: d.prefetch,
        shuffle: d.shuffle,
        seed: config.run.seed,
        shard,
    }
}

/// The sample loader of table and image data: every batch knows its whole size.
struct Samples(Loader<kiln_data::Batch>);

impl TrainStream<HostBatch> for Samples {
    fn next_batch(&mut self) -> Result<Micro<HostBatch>> {
        let loaded = self.0.next_batch()?;
        Ok(Micro {
            whole_targets: Some(loaded.whole),
            batch: HostBatch::from_samples(loaded.batch, loaded.whole),
            resume: None,
        })
    }

    fn take_wait_time(&mut self) -> Duration {
        self.0.take_wait_time()
    }
}

/// Random windows of token data; micro-batch `i` is a pure function of (seed, i): rows
/// `skip..skip + rows` of the whole batch's windows.
struct Windows {
    span: TokenSpan,
    block_size: usize,
    rows: usize,
    skip: usize,
    /// Targets of the whole batch.
    whole: usize,
    seed: u64,
    next: u64,
}

impl TrainStream<HostBatch> for Windows {
    fn next_batch(&mut self) -> Result<Micro<HostBatch>> {
        let b = random_windows_from(
            &self.span,
            self.block_size,
            self.rows,
            self.seed,
            self.next,
            self.skip,
        );
        self.next += 1;
        Ok(Micro {
            batch: HostBatch {
                whole: self.whole,
                ..b.into()
            },
            whole_targets: Some(self.whole),
            resume: None,
        })
    }
}
