//! The `[data]` section: which reader loads the data, where the files are, how the data is split
//! and batched, and how a table's columns are read.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::{
    default_loader_threads, default_num_classes, default_prefetch, default_test_fraction,
    default_true, default_valid_fraction,
};

/// `data.format`: which of Kiln's readers loads the data.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    /// IDX image and label files (MNIST layout), gzip or raw.
    Idx,
    /// A scikit-learn layout CSV table.
    Csv,
    /// A UTF-8 text file, tokenized by characters or by `data.tokenizer` (the tokenizer is saved
    /// in the run directory).
    Text,
    /// A pre-tokenized token file (`kiln tokenize`): little-endian u16 or u32 ids, memory-mapped.
    Tokens,
    /// A folder of class folders of PNG and JPEG images (`ROOT/<class>/*.png`), or of
    /// `train/`, `valid/` and `test/` folders of them.
    #[serde(rename = "image_folder")]
    ImageFolder,
}

impl DataFormat {
    /// The name in config files: `"idx"`, `"csv"`, `"text"` or `"tokens"`.
    pub fn name(self) -> &'static str {
        match self {
            DataFormat::Idx => "idx",
            DataFormat::Csv => "csv",
            DataFormat::Text => "text",
            DataFormat::Tokens => "tokens",
            DataFormat::ImageFolder => "image_folder",
        }
    }
}

/// `data.missing`: what a missing value in a table does.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MissingValues {
    /// `"error"` (the default): an error naming the row and column.
    Error,
    /// `"drop"`: the row is left out.
    Drop,
    /// `"mean"`: the column's mean over the training split (categories: the most frequent).
    Mean,
    /// `"median"`: the column's median over the training split (categories: the most frequent).
    Median,
    /// `"mode"`: the column's most frequent value over the training split.
    Mode,
}

/// `data.task`: what a table's label column is.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DataTask {
    /// `"classification"` (the default): a class per row, the label's distinct values.
    Classification,
    /// `"regression"`: a number per row; the model predicts it in the label's units.
    Regression,
}

/// `data.token_dtype`: the element type of a token file.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TokenDtype {
    /// `"u16"`: little-endian 16-bit ids (vocabularies of up to 65536 tokens).
    U16,
    /// `"u32"`: little-endian 32-bit ids.
    U32,
}

/// `[data]`: where the data is and how it is split and batched.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// `data.format`: which of Kiln's readers loads the data (`"idx"`, `"csv"`,
    /// `"image_folder"`, `"text"` or `"tokens"`); a program that brings its own data leaves it
    /// out.
    pub format: Option<DataFormat>,
    /// `data.train_images` (required for idx): the IDX file of the training images.
    pub train_images: Option<PathBuf>,
    /// `data.train_labels` (required for idx): the IDX file of the training labels.
    pub train_labels: Option<PathBuf>,
    /// `data.test_images` (required for idx): the IDX file of the test images.
    pub test_images: Option<PathBuf>,
    /// `data.test_labels` (required for idx): the IDX file of the test labels.
    pub test_labels: Option<PathBuf>,
    /// `data.num_classes` (default 10, at least 2): idx: number of classes; labels must lie in
    /// `0..num_classes`.
    #[serde(default = "default_num_classes")]
    pub num_classes: usize,
    /// `data.path` (required for csv, text and tokens): the one data file. CSV: the test split is
    /// held out from it; text/tokens: the validation split is held out from its end.
    pub path: Option<PathBuf>,
    /// `data.test_path` (csv): a separate test table with the same columns; `data.test_fraction`
    /// is then not used.
    pub test_path: Option<PathBuf>,
    /// `data.delimiter` (csv): the cell delimiter, one character (`","`, `";"`, `"\t"`);
    /// detected from the header when unset.
    pub delimiter: Option<String>,
    /// `data.label` (csv with a header of column names): the label column (default: the last).
    pub label: Option<String>,
    /// `data.features` (csv with a header of column names): the feature columns, in this order
    /// (default: every column but the label).
    pub features: Option<Vec<String>>,
    /// `data.categorical` (csv with a header of column names): feature columns to one-hot
    /// encode even where their values are numbers (a column of mostly non-numbers always is).
    pub categorical: Option<Vec<String>>,
    /// `data.missing` (csv with a header of column names; default `"error"`): what a missing
    /// value (empty, `NA`, `NaN`, `null`) does.
    pub missing: Option<MissingValues>,
    /// `data.task` (csv with a header of column names; default `"classification"`): whether the
    /// label is a class or a number to predict (`"regression"`: trained on the label
    /// standardized with training statistics, `train.loss` choosing the loss).
    pub task: Option<DataTask>,
    /// `data.stratify` (csv): hold out test and validation rows class by class, so each split
    /// has the classes in the data's proportions. Default: true for a classification table with
    /// a header of column names, false for the scikit-learn layout (whose splits stay as they
    /// were) and for regression (which has no classes).
    pub stratify: Option<bool>,
    /// `data.image_size` (image_folder): `[height, width]` every image is resized to (bilinear);
    /// unset, every image must have the size of the first.
    pub image_size: Option<[usize; 2]>,
    /// `data.channels` (image_folder): 1 (luma) or 3 (RGB); default: 1 if the first training
    /// image is grayscale, else 3.
    pub channels: Option<usize>,
    /// `data.crop_padding` (image_folder; default 0 = off): augment training images with a
    /// random crop of the image padded by this many zero pixels on every side.
    pub crop_padding: Option<usize>,
    /// `data.flip` (image_folder; default false): augment training images with a random
    /// horizontal flip.
    pub flip: Option<bool>,
    /// `data.skip_bad_images` (image_folder; default false): leave out (and count) the images
    /// that cannot be decoded, found by decoding every image once at the start; unset, the
    /// first unreadable image stops the run with an error naming it.
    pub skip_bad_images: Option<bool>,
    /// `data.token_dtype`: tokens: the element type of the token file, `"u16"` or `"u32"`
    /// (defaults to its `.json` sidecar, else u16).
    pub token_dtype: Option<TokenDtype>,
    /// `data.tokenizer` (text): a Hugging Face `tokenizer.json` (e.g. one `kiln tokenize --bpe`
    /// trained) that tokenizes the text instead of its characters; saved with the run.
    pub tokenizer: Option<PathBuf>,
    /// `data.eval_max_batches` (at least 1): text/tokens: evaluate on at most this many batches
    /// of the validation split (all if unset).
    pub eval_max_batches: Option<usize>,
    /// `data.test_fraction` (default 0.2, in (0, 1)): csv: the share of the file held out as the
    /// test split.
    #[serde(default = "default_test_fraction")]
    pub test_fraction: f64,
    /// `data.valid_fraction` (default 0.1, in [0, 1)): the share of the training data held out
    /// for validation (text/tokens: the end of the file); 0 means no validation split.
    #[serde(default = "default_valid_fraction")]
    pub valid_fraction: f64,
    /// `data.batch_size` (required, at least 1): the training batch size in samples
    /// (text/tokens: windows per micro-batch).
    pub batch_size: usize,
    /// `data.eval_batch_size` (at least 1): batch size for validation and test passes (defaults
    /// to `batch_size`).
    pub eval_batch_size: Option<usize>,
    /// `data.loader_threads` (default 1, at least 1): background threads that assemble batches.
    #[serde(default = "default_loader_threads")]
    pub loader_threads: usize,
    /// `data.prefetch` (default 4, at least 1): batches each loader thread may build ahead.
    #[serde(default = "default_prefetch")]
    pub prefetch: usize,
    /// `data.shuffle` (default true): reshuffle the training split every epoch (from
    /// `run.seed`).
    #[serde(default = "default_true")]
    pub shuffle: bool,
    /// `data.standardize` (default true): standardize inputs with statistics of the training
    /// split (per feature for CSV, one scalar for images).
    #[serde(default = "default_true")]
    pub standardize: bool,
}

impl DataSection {
    /// Whether the label is a number to predict (`data.task = "regression"`).
    pub fn is_regression(&self) -> bool {
        self.task == Some(DataTask::Regression)
    }

    /// `data.format`, which Kiln's own data needs (a program's own data leaves it out).
    pub fn kiln_format(&self) -> Result<DataFormat> {
        self.format.with_context(|| {
            "data.format: missing; Kiln reads \"idx\", \"csv\", \"image_folder\", \"text\" or \"tokens\" data (a program brings its own data through the library: see the README)"
        })
    }
}
