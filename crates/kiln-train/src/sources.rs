//! A user's own data for Kiln's loop: a training [`Source`] and optional validation and test
//! sources, each a random-access source or a stream of items (kiln-data's [`RandomAccess`] and
//! [`Stream`]) with the collate function that turns items into the model's host batches.
//!
//! ```ignore
//! let data = SourceData::new("diabetes", Source::indexed(train_rows, collate))
//!     .valid(Source::indexed(valid_rows, collate));
//! kiln_train::train_with::<B, _, _, _>(&config, &data, &build, device, backend, options, comm)?;
//! ```
//!
//! The loader settings come from the run's `[data]` section (`batch_size`, `eval_batch_size`,
//! `shuffle`, `loader_threads`, `prefetch`) and the shuffle from `run.seed`; its file keys are
//! not read.

use std::sync::Arc;

use anyhow::{Context, Result};
use kiln_core::Config;
use kiln_data::{Collated, Loader, LoaderConfig, RandomAccess, Shard, Stream};
use kiln_models::Targets;

use crate::checkpoint::DataPosition;
use crate::data::{Split, TrainData, TrainStream};

/// Opens a training stream of worker `shard` at a position.
type OpenTrain<T> = dyn Fn(LoaderConfig, &DataPosition) -> Result<Loader<T>> + Send + Sync;
/// One ordered pass in batches of the given size.
type OpenEval<T> =
    dyn Fn(usize) -> Result<Box<dyn Iterator<Item = Result<T>> + Send>> + Send + Sync;

/// Items of one split and how they become batches of `T`.
pub struct Source<T> {
    /// Number of items: `None` for a stream.
    len: Option<usize>,
    train: Arc<OpenTrain<T>>,
    eval: Arc<OpenEval<T>>,
}

impl<T: Targets + Send + 'static> Source<T> {
    /// A random-access source: shuffled every epoch (`data.shuffle`), sharded and resumed by
    /// Kiln's loader; `collate` turns the items of a batch into the model's host batch.
    pub fn indexed<S, F>(source: S, collate: F) -> Self
    where
        S: RandomAccess + 'static,
        F: Fn(Vec<S::Item>) -> Result<T> + Send + Sync + 'static,
    {
        let len = source.len();
        let gather = Arc::new(Collated::new(source, collate));
        let train_gather = gather.clone();
        Source {
            len: Some(len),
            train: Arc::new(move |cfg, from: &DataPosition| {
                Loader::new(train_gather.clone(), cfg, from.epoch, from.batch_in_epoch)
            }),
            eval: Arc::new(move |batch: usize| {
                let gather = gather.clone();
                let batches = (0..len.div_ceil(batch)).map(move |k| {
                    let indices: Vec<usize> = (k * batch..((k + 1) * batch).min(len)).collect();
                    kiln_data::Gather::gather(&*gather, &indices)
                        .with_context(|| format!("reading evaluation batch {k}"))
                });
                Ok(Box::new(batches) as Box<dyn Iterator<Item = Result<T>> + Send>)
            }),
        }
    }

    /// A stream, opened by `open` (once per data-parallel worker and once per evaluation
    /// pass): read in order, each worker keeping its shard of every batch, and resumed from the
    /// position saved in the checkpoint. Its items become host batches through `collate`.
    pub fn stream<S, O, F>(open: O, collate: F) -> Self
    where
        S: Stream + 'static,
        O: Fn() -> Result<S> + Send + Sync + 'static,
        F: Fn(Vec<S::Item>) -> Result<T> + Send + Sync + Clone + 'static,
    {
        let open = Arc::new(open);
        let eval_open = open.clone();
        let eval_collate = collate.clone();
        Source {
            len: None,
            train: Arc::new(move |cfg, from: &DataPosition| {
                let stream = open().context("opening the training stream")?;
                Loader::stream(stream, collate.clone(), cfg, from.stream.clone())
            }),
            eval: Arc::new(move |batch: usize| {
                let mut stream = eval_open().context("opening the evaluation stream")?;
                stream.start_pass(0)?;
                let pass = EvalPass {
                    stream,
                    collate: eval_collate.clone(),
                    batch,
                    index: 0,
                    done: false,
                };
                Ok(Box::new(pass) as Box<dyn Iterator<Item = Result<T>> + Send>)
            }),
        }
    }

    /// "178 items" or "a stream".
    fn describe(&self) -> String {
        self.len
            .map_or("a stream".to_string(), |n| format!("{n} items"))
    }
}

/// A user's data as Kiln's loop takes it ([`TrainData`]): a training source, and optionally
/// validation (evaluated every `train.eval_every` steps, and what `checkpoint.best_metric`
/// watches) and test sources (evaluated when the run completes).
pub struct SourceData<T> {
    name: String,
    train: Source<T>,
    valid: Option<Source<T>>,
    test: Option<Source<T>>,
}

impl<T: Targets + Send + 'static> SourceData<T> {
    /// Data named `name` (for the log) that trains on `train`.
    pub fn new(name: &str, train: Source<T>) -> Self {
        SourceData {
            name: name.to_string(),
            train,
            valid: None,
            test: None,
        }
    }

    /// With a validation split.
    pub fn valid(mut self, source: Source<T>) -> Self {
        self.valid = Some(source);
        self
    }

    /// With a test split.
    pub fn test(mut self, source: Source<T>) -> Self {
        self.test = Some(source);
        self
    }

    fn split(&self, split: Split) -> Option<&Source<T>> {
        match split {
            Split::Valid => self.valid.as_ref(),
            Split::Test => self.test.as_ref(),
        }
    }
}

impl<T: Targets + Send + 'static> TrainData for SourceData<T> {
    type Batch = T;

    fn describe(&self) -> String {
        let part = |s: &Option<Source<T>>| s.as_ref().map_or("none".into(), Source::describe);
        format!(
            "{}: {} train / {} valid / {} test",
            self.name,
            self.train.describe(),
            part(&self.valid),
            part(&self.test)
        )
    }

    fn batches_per_epoch(&self, batch_size: usize) -> Option<usize> {
        self.train.len.map(|n| n.div_ceil(batch_size))
    }

    fn train_stream(
        &self,
        config: &Config,
        shard: Shard,
        from: &DataPosition,
    ) -> Result<Box<dyn TrainStream<T>>> {
        let cfg = crate::data::loader_config(config, shard);
        Ok(Box::new((self.train.train)(cfg, from)?))
    }

    fn has(&self, split: Split) -> bool {
        self.split(split).is_some_and(|s| s.len != Some(0))
    }

    fn eval_batches<'a>(
        &'a self,
        split: Split,
        config: &Config,
    ) -> Box<dyn Iterator<Item = Result<T>> + 'a> {
        let d = &config.data;
        let batch = d.eval_batch_size.unwrap_or(d.batch_size).max(1);
        match self.split(split).map(|s| (s.eval)(batch)) {
            None => Box::new(std::iter::empty()),
            Some(Ok(batches)) => batches,
            Some(Err(e)) => Box::new(std::iter::once(Err(e))),
        }
    }
}

/// One pass over a stream in batches, for evaluation.
struct EvalPass<S, F> {
    stream: S,
    collate: F,
    batch: usize,
    index: usize,
    done: bool,
}

impl<S, F, T> Iterator for EvalPass<S, F>
where
    S: Stream,
    F: Fn(Vec<S::Item>) -> Result<T>,
{
    type Item = Result<T>;

    fn next(&mut self) -> Option<Result<T>> {
        if self.done {
            return None;
        }
        let mut items = Vec::with_capacity(self.batch);
        while items.len() < self.batch {
            match self.stream.next() {
                Ok(Some(item)) => items.push(item),
                Ok(None) => break,
                Err(e) => {
                    self.done = true;
                    return Some(Err(
                        e.context(format!("reading evaluation batch {}", self.index))
                    ));
                }
            }
        }
        self.done = items.len() < self.batch;
        if items.is_empty() {
            return None;
        }
        self.index += 1;
        Some((self.collate)(items))
    }
}
