//! Kiln's own data ([`RunData`]): the `[data]` section turned into training, validation and test
//! splits, for sample data (IDX, CSV) and token data (text, token files) alike. The training
//! loop streams micro-batches from it (kiln-train); evaluation, export calibration and serving
//! read its splits.
//!
//! The preparation is a pure function of the config (splits and standardization statistics come
//! from the seed and the training split), so `kiln eval` rebuilds exactly the data a run saw.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use kiln_core::config::{DataFormat, DataSection, TokenDtype};
use kiln_core::layout::{TABLE_FILE, TOKENIZER_FILE};
use kiln_core::Config;
use kiln_data::{
    check_span, eval_windows, is_sklearn_layout, load_idx, load_sklearn_csv, read_meta, read_text,
    split, stratified_split_indices, CharTokenizer, Dataset, SampleSplit, Standardizer,
    TableSchema, TokenFile, TokenSource, TokenSpan, Tokenizer,
};
use kiln_models::{DataShape, Regression};
pub use kiln_models::{HostBatch, HostInput};

mod images;
mod table;

/// The three splits of a sample-data run, standardized with statistics of the training split.
pub struct Splits {
    /// The training split (shared with the loader threads).
    pub train: Arc<SampleSplit>,
    /// The validation split (`data.valid_fraction` of the training data, or an image folder's
    /// `valid/`).
    pub valid: SampleSplit,
    /// The test split (IDX: the test files; tables and image folders: `data.test_fraction` of
    /// the data, `data.test_path` or `test/`).
    pub test: SampleSplit,
    /// The standardization applied to all three (`data.standardize`), one value per feature or
    /// one for all (an image folder's per-channel statistics are written out per value).
    pub standardizer: Option<Standardizer>,
    /// A table with a header of column names: what its columns mean (saved with the run).
    pub table: Option<TableSchema>,
    /// A regression (`data.task = "regression"`): the target's training statistics and loss.
    pub regression: Option<Regression>,
}

/// A token-data run: the training and validation spans (validation = the end of the data).
pub struct TextData {
    /// The tokens trained on (the head of the data).
    pub train: TokenSpan,
    /// The validation tokens (the last `data.valid_fraction` of the data).
    pub valid: TokenSpan,
    /// Tokens of context per window (`model.block_size`).
    pub block_size: usize,
    /// The tokenizer (for text, or a token file whose sidecar names one).
    pub tokenizer: Option<Tokenizer>,
    /// Number of token ids the model must embed.
    pub vocab_size: usize,
    /// Where the tokens came from, for messages.
    pub origin: PathBuf,
}

/// Everything a run trains and evaluates on.
// One per run, never moved in a loop: the size of the larger variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum RunData {
    /// Table or image samples with class labels or target values (IDX, CSV, image folders).
    Samples(Splits),
    /// Token sequences (text, token files).
    Text(TextData),
}

/// A split to evaluate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// The validation split, evaluated during training.
    Valid,
    /// The held-out test split.
    Test,
}

impl Split {
    /// `"valid"` or `"test"`, as reports name the split.
    pub fn name(self) -> &'static str {
        match self {
            Split::Valid => "valid",
            Split::Test => "test",
        }
    }
}

impl RunData {
    /// Reads the `[data]` section's files and prepares the splits (see the module docs).
    pub fn load(config: &Config) -> Result<RunData> {
        Ok(match config.data.kiln_format()? {
            DataFormat::Idx | DataFormat::Csv | DataFormat::ImageFolder => {
                RunData::Samples(Splits::load(config)?)
            }
            DataFormat::Text | DataFormat::Tokens => RunData::Text(TextData::load(config)?),
        })
    }

    /// What the model sees.
    pub fn shape(&self) -> DataShape {
        match self {
            RunData::Samples(s) => match s.regression {
                Some(regression) => DataShape::Values {
                    sample_shape: s.train.sample_shape(),
                    regression,
                },
                None => DataShape::Samples {
                    sample_shape: s.train.sample_shape(),
                    num_classes: s.train.class_names().len(),
                },
            },
            RunData::Text(t) => DataShape::Tokens {
                vocab_size: t.vocab_size,
            },
        }
    }

    /// One line for the log: the split sizes.
    pub fn describe(&self) -> String {
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

    /// What throughput counts: `"samples"` or `"tokens"`.
    pub fn unit(&self) -> &'static str {
        match self {
            RunData::Samples(_) => "samples",
            RunData::Text(_) => "tokens",
        }
    }

    /// Micro-batches of `batch_size` in one epoch; for token data, how many micro-batches of
    /// windows hold as many tokens as the training split.
    pub fn batches_per_epoch(&self, batch_size: usize) -> usize {
        match self {
            RunData::Samples(s) => s.train.len().div_ceil(batch_size),
            RunData::Text(t) => (t.train.len() / (batch_size * t.block_size)).max(1),
        }
    }

    /// Whether `split` holds any data (text and token data have no test split).
    pub fn has(&self, split: Split) -> bool {
        match (self, split) {
            (RunData::Samples(s), Split::Valid) => !s.valid.is_empty(),
            (RunData::Samples(s), Split::Test) => !s.test.is_empty(),
            (RunData::Text(t), Split::Valid) => t.valid.len() > t.block_size,
            (RunData::Text(_), Split::Test) => false,
        }
    }

    /// The evaluation batches of `split` in a fixed order: `data.eval_batch_size` samples (or
    /// windows) each, at most `data.eval_max_batches` batches of token windows.
    pub fn eval_batches<'a>(
        &'a self,
        split: Split,
        config: &Config,
    ) -> Box<dyn Iterator<Item = Result<HostBatch>> + 'a> {
        let d = &config.data;
        let batch = d.eval_batch_size.unwrap_or(d.batch_size);
        match (self, split) {
            (RunData::Samples(s), Split::Valid) => {
                Box::new(s.valid.eval_batches(batch).map(|b| b.map(HostBatch::from)))
            }
            (RunData::Samples(s), Split::Test) => {
                Box::new(s.test.eval_batches(batch).map(|b| b.map(HostBatch::from)))
            }
            (RunData::Text(t), Split::Valid) => Box::new(
                eval_windows(&t.valid, t.block_size, batch, d.eval_max_batches)
                    .map(|b| Ok(HostBatch::from(b))),
            ),
            (RunData::Text(_), Split::Test) => Box::new(std::iter::empty()),
        }
    }

    /// Saves what a run needs besides the weights into its directory: the character tokenizer
    /// of text data, the column schema of a table.
    pub fn save_artifacts(&self, run_dir: &Path) -> Result<()> {
        if let RunData::Samples(Splits {
            table: Some(schema),
            ..
        }) = self
        {
            let path = run_dir.join(TABLE_FILE);
            let json = serde_json::to_string_pretty(schema)?;
            std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
        }
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

impl Splits {
    /// Reads sample data (IDX or CSV) and splits and standardizes it as the config says.
    pub fn load(config: &Config) -> Result<Splits> {
        let d = &config.data;
        let seed = config.run.seed;
        let format = d.kiln_format()?;
        let (mut train, mut valid, mut test, table, regression) = match format {
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
                let (train, valid) = split(&train, d.valid_fraction, seed);
                (train, valid, test, None, None)
            }
            DataFormat::Csv => {
                let path = required(d, &d.path, "path")?;
                if is_sklearn_layout(path).context("reading data.path")? {
                    if d.is_regression() {
                        bail!(
                            "data.task = \"regression\": {} is in the scikit-learn layout, whose last column is a class; a regression reads a table with a header of column names",
                            path.display()
                        );
                    }
                    let (train, valid, test) = sklearn_splits(d, path, seed)?;
                    (train, valid, test, None, None)
                } else {
                    let t = table::load(d, config.train.loss, path, seed)?;
                    (t.train, t.valid, t.test, Some(t.schema), t.regression)
                }
            }
            DataFormat::ImageFolder => {
                let i = images::load(d, required(d, &d.path, "path")?, seed)?;
                return Ok(Splits {
                    train: Arc::new(SampleSplit::Images(i.train)),
                    valid: SampleSplit::Images(i.valid),
                    test: SampleSplit::Images(i.test),
                    standardizer: i.standardizer,
                    table: None,
                    regression: None,
                });
            }
            DataFormat::Text | DataFormat::Tokens => {
                bail!("data.format: text and token data have no sample splits")
            }
        };
        if train.is_empty() {
            bail!(
                "data: the training split is empty ({} samples, valid_fraction = {}); use more data or a smaller data.valid_fraction",
                train.len() + valid.len(),
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
            train: Arc::new(SampleSplit::Memory(train)),
            valid: SampleSplit::Memory(valid),
            test: SampleSplit::Memory(test),
            standardizer,
            table,
            regression,
        })
    }
}

/// The splits of a scikit-learn layout CSV file: the test split `data.test_fraction` of it (or
/// `data.test_path`), validation `data.valid_fraction` of the rest; class by class only when
/// `data.stratify = true`, so that runs from before the key split as they did.
fn sklearn_splits(d: &DataSection, path: &Path, seed: u64) -> Result<(Dataset, Dataset, Dataset)> {
    let all = load_sklearn_csv(path).context("reading data.path")?;
    let stratify = d.stratify == Some(true);
    let split_set = |ds: &Dataset, fraction: f64, seed: u64| {
        if stratify {
            let (rest, held) = stratified_split_indices(&ds.labels, fraction, seed);
            (ds.subset(&rest), ds.subset(&held))
        } else {
            split(ds, fraction, seed)
        }
    };
    let (train_full, test) = match &d.test_path {
        Some(p) => (all, load_sklearn_csv(p).context("reading data.test_path")?),
        // The test split is drawn with its own stream so that changing valid_fraction never
        // moves a sample in or out of the test split.
        None => split_set(&all, d.test_fraction, seed ^ 0x7E57),
    };
    let (train, valid) = split_set(&train_full, d.valid_fraction, seed);
    Ok((train, valid, test))
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
    /// Reads text or a token file and splits off its tail for validation.
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
                let tok = match &d.tokenizer {
                    Some(file) => Tokenizer::load(file).context("data.tokenizer")?,
                    None => Tokenizer::Char(
                        CharTokenizer::from_text(&text)
                            .with_context(|| format!("data.path {}", path.display()))?,
                    ),
                };
                let ids = tok
                    .encode(&text)
                    .with_context(|| format!("data.path {}", path.display()))?;
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
                    Some(v) => Some(Tokenizer::from_json(v, &kiln_data::meta_path(path))?),
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
