//! What the loop consumes ([`TrainData`]), and Kiln's own data ([`RunData`]): the `[data]`
//! section turned into a reproducible stream of training micro-batches and the evaluation
//! splits, for sample data (IDX, CSV) and token data (text, token files) alike.
//!
//! The preparation is a pure function of the config (splits and standardization statistics come
//! from the seed and the training split; token windows from the seed and the micro-batch index),
//! so `kiln eval` rebuilds exactly the data a run saw and a resumed run continues the same stream.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use kiln_core::config::{DataFormat, DataSection, TokenDtype};
use kiln_core::Config;
use kiln_data::{
    check_span, eval_batches, eval_windows, load_idx, load_sklearn_csv, random_windows_from,
    read_meta, read_text, split, CharTokenizer, Dataset, Loader, LoaderConfig, Shard, Standardizer,
    StreamPosition, TokenFile, TokenSource, TokenSpan,
};
use kiln_models::{DataShape, Targets};

use crate::checkpoint::DataPosition;
pub use kiln_models::{HostBatch, HostInput};

/// Name of the tokenizer file in a run directory.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// The three splits of a sample-data run, standardized with statistics of the training split.
pub struct Splits {
    pub train: Arc<Dataset>,
    pub valid: Dataset,
    pub test: Dataset,
    /// The standardization applied to all three (`data.standardize`).
    pub standardizer: Option<Standardizer>,
}

/// A token-data run: the training and validation spans (validation = the end of the data).
pub struct TextData {
    pub train: TokenSpan,
    pub valid: TokenSpan,
    pub block_size: usize,
    /// The character tokenizer (for text, or a token file whose sidecar names one).
    pub tokenizer: Option<CharTokenizer>,
    pub vocab_size: usize,
    /// Where the tokens came from, for messages.
    pub origin: PathBuf,
}

/// Everything a run trains and evaluates on.
pub enum RunData {
    Samples(Splits),
    Text(TextData),
}

/// A split to evaluate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Valid,
    Test,
}

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

impl RunData {
    /// Reads the `[data]` section's files and prepares the splits (see the module docs).
    pub fn load(config: &Config) -> Result<RunData> {
        Ok(match config.data.kiln_format()? {
            DataFormat::Idx | DataFormat::Csv => RunData::Samples(Splits::load(config)?),
            DataFormat::Text | DataFormat::Tokens => RunData::Text(TextData::load(config)?),
        })
    }

    /// What the model sees.
    pub fn shape(&self) -> DataShape {
        match self {
            RunData::Samples(s) => DataShape::Samples {
                sample_shape: s.train.sample_shape.clone(),
                num_classes: s.train.num_classes,
            },
            RunData::Text(t) => DataShape::Tokens {
                vocab_size: t.vocab_size,
            },
        }
    }
}

impl TrainData for RunData {
    type Batch = HostBatch;

    /// Split sizes.
    fn describe(&self) -> String {
        match self {
            RunData::Samples(s) => format!(
                "{} train / {} valid / {} test samples",
                s.train.len(),
                s.valid.len(),
                s.test.len()
            ),
            RunData::Text(t) => format!(
                "{}: {} train / {} valid tokens, vocabulary {}",
                t.origin.display(),
                t.train.len(),
                t.valid.len(),
                t.vocab_size
            ),
        }
    }

    fn unit(&self) -> &'static str {
        match self {
            RunData::Samples(_) => "samples",
            RunData::Text(_) => "tokens",
        }
    }

    /// For token data: how many micro-batches of windows hold as many tokens as the training
    /// split.
    fn batches_per_epoch(&self, batch_size: usize) -> Option<usize> {
        Some(match self {
            RunData::Samples(s) => s.train.len().div_ceil(batch_size),
            RunData::Text(t) => (t.train.len() / (batch_size * t.block_size)).max(1),
        })
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
        match (self, split) {
            (RunData::Samples(s), Split::Valid) => !s.valid.is_empty(),
            (RunData::Samples(s), Split::Test) => !s.test.is_empty(),
            (RunData::Text(t), Split::Valid) => t.valid.len() > t.block_size,
            (RunData::Text(_), Split::Test) => false,
        }
    }

    fn eval_batches<'a>(
        &'a self,
        split: Split,
        config: &Config,
    ) -> Box<dyn Iterator<Item = Result<HostBatch>> + 'a> {
        let d = &config.data;
        let batch = d.eval_batch_size.unwrap_or(d.batch_size);
        match (self, split) {
            (RunData::Samples(s), Split::Valid) => {
                Box::new(eval_batches(&s.valid, batch).map(|b| Ok(HostBatch::from(b))))
            }
            (RunData::Samples(s), Split::Test) => {
                Box::new(eval_batches(&s.test, batch).map(|b| Ok(HostBatch::from(b))))
            }
            (RunData::Text(t), Split::Valid) => Box::new(
                eval_windows(&t.valid, t.block_size, batch, d.eval_max_batches)
                    .map(|b| Ok(HostBatch::from(b))),
            ),
            (RunData::Text(_), Split::Test) => Box::new(std::iter::empty()),
        }
    }

    /// The character tokenizer of text data.
    fn save_artifacts(&self, run_dir: &Path) -> Result<()> {
        if let RunData::Text(TextData {
            tokenizer: Some(tok),
            ..
        }) = self
        {
            tok.save(&run_dir.join(TOKENIZER_FILE))?;
        }
        Ok(())
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

impl Splits {
    pub fn load(config: &Config) -> Result<Splits> {
        let d = &config.data;
        let seed = config.run.seed;
        let format = d.kiln_format()?;
        let (train_full, test) = match format {
            DataFormat::Idx => {
                let train = load_idx(
                    required(d, &d.train_images, "train_images")?,
                    required(d, &d.train_labels, "train_labels")?,
                    d.num_classes,
                )
                .context("reading data.train_images / data.train_labels")?;
                let test = load_idx(
                    required(d, &d.test_images, "test_images")?,
                    required(d, &d.test_labels, "test_labels")?,
                    d.num_classes,
                )
                .context("reading data.test_images / data.test_labels")?;
                (train, test)
            }
            DataFormat::Csv => {
                let all =
                    load_sklearn_csv(required(d, &d.path, "path")?).context("reading data.path")?;
                // The test split is drawn with its own stream so that changing
                // valid_fraction never moves a sample in or out of the test split.
                split(&all, d.test_fraction, seed ^ 0x7E57)
            }
            DataFormat::Text | DataFormat::Tokens => {
                bail!("data.format: text and token data have no sample splits")
            }
        };
        let (mut train, mut valid) = split(&train_full, d.valid_fraction, seed);
        let mut test = test;
        if train.is_empty() {
            bail!(
                "data: the training split is empty ({} samples, valid_fraction = {}); use more data or a smaller data.valid_fraction",
                train_full.len(),
                d.valid_fraction
            );
        }
        let standardizer = d.standardize.then(|| match format {
            DataFormat::Csv => Standardizer::per_feature(&train),
            _ => Standardizer::global(&train),
        });
        if let Some(stats) = &standardizer {
            for ds in [&mut train, &mut valid, &mut test] {
                stats.apply(ds);
            }
        }
        Ok(Splits {
            train: Arc::new(train),
            valid,
            test,
            standardizer,
        })
    }
}

/// The keys of the `[model]` section that shape Kiln's text data: the window of
/// `block_size + 1` tokens, and the vocabulary of a token file without a sidecar. Any model
/// trained on Kiln's text data reads them (the GPT's defaults when unset).
#[derive(serde::Deserialize)]
struct TextKeys {
    #[serde(default = "kiln_models::gpt::default_block_size")]
    block_size: usize,
    vocab_size: Option<usize>,
}

impl TextData {
    pub fn load(config: &Config) -> Result<TextData> {
        let d = &config.data;
        let path = required(d, &d.path, "path")?;
        let TextKeys {
            block_size,
            vocab_size,
        } = config.model.parse()?;
        let (source, tokenizer, vocab) = match d.kiln_format()? {
            DataFormat::Text => {
                let text = read_text(path).context("data.path")?;
                let tok = CharTokenizer::from_text(&text)
                    .with_context(|| format!("data.path {}", path.display()))?;
                let ids = tok.encode(&text)?;
                let vocab = tok.vocab_size();
                (TokenSource::Memory(Arc::new(ids)), Some(tok), vocab)
            }
            _ => {
                let meta = read_meta(path)?;
                let dtype = match (d.token_dtype, &meta) {
                    (Some(TokenDtype::U16), _) => kiln_data::TokenDtype::U16,
                    (Some(TokenDtype::U32), _) => kiln_data::TokenDtype::U32,
                    (None, Some(m)) => m.dtype,
                    (None, None) => kiln_data::TokenDtype::U16,
                };
                let file = TokenFile::open(path, dtype)?;
                let tokenizer = match meta.as_ref().and_then(|m| m.tokenizer.as_ref()) {
                    Some(v) => Some(CharTokenizer::from_json(v, &kiln_data::meta_path(path))?),
                    None => None,
                };
                let vocab = match (&meta, vocab_size) {
                    (Some(m), _) => m.vocab_size,
                    (None, Some(v)) => v,
                    (None, None) => bail!(
                        "data.path {}: no {} sidecar says how large the vocabulary is; set model.vocab_size (or write the file with `kiln tokenize`)",
                        path.display(),
                        kiln_data::meta_path(path).display()
                    ),
                };
                file.check_vocab(vocab, 1 << 20)?;
                (TokenSource::File(Arc::new(file)), tokenizer, vocab)
            }
        };
        let (train, valid) = TokenSpan::whole(source).split_tail(d.valid_fraction);
        check_span(
            &train,
            block_size,
            &format!("the training split of {}", path.display()),
        )?;
        if d.valid_fraction > 0.0 {
            check_span(
                &valid,
                block_size,
                &format!(
                    "the validation split (the last {} of {})",
                    d.valid_fraction,
                    path.display()
                ),
            )?;
        }
        Ok(TextData {
            train,
            valid,
            block_size,
            tokenizer,
            vocab_size: vocab,
            origin: path.to_path_buf(),
        })
    }
}

/// The path of `data.<key>`, which must be set and exist.
fn required<'a>(
    d: &DataSection,
    value: &'a Option<std::path::PathBuf>,
    key: &str,
) -> Result<&'a Path> {
    let path = value.as_deref().with_context(|| {
        format!(
            "data.{key} is required when data.format = \"{}\"",
            d.format.map_or("?", DataFormat::name)
        )
    })?;
    if !path.exists() {
        let base = std::env::current_dir().unwrap_or_default();
        bail!(
            "data.{key}: {} does not exist (relative paths are resolved from the current directory, {}); fix the path in the config or with --set data.{key}=...",
            path.display(),
            base.display()
        );
    }
    Ok(path)
}
