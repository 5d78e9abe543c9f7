//! Kiln's data layer: the two kinds of data source a user's data can be ([`RandomAccess`] and
//! [`Stream`]), the background batch [`Loader`] that shuffles, shards and resumes both exactly,
//! in-memory datasets read from IDX files and tables (CSV, Parquet), folders of image files
//! decoded on the loader's threads, deterministic train/validation splits and feature
//! standardization.
//!
//! The [`text`] module adds language-model data: UTF-8 text files and a
//! character-level tokenizer, memory-mapped pre-tokenized token files, and
//! deterministic random and evaluation windows over token streams.
//!
//! Everything here works on host memory (`Vec<f32>`, token ids as `u32` and
//! `i64`) and knows nothing about tensors or backends; a [`Batch`] or
//! [`TokenBatch`] is turned into a tensor by the caller.

#![warn(missing_docs)]

mod batch;
mod dataset;
mod idx;
pub mod images;
mod loader;
mod read;
mod samples;
mod sklearn_csv;
mod source;
mod standardize;
pub mod table;
pub mod text;

pub use batch::{eval_batches, Batch};
pub use dataset::{split, split_indices, stratified_split_indices, Dataset};
pub use idx::{load_idx, load_idx_images};
pub use images::{Augment, ImageFile, ImageFolder, ImageSet, ImageSpec};
pub use loader::{Loaded, Loader, LoaderConfig, Shard, StreamPosition};
pub use samples::SampleSplit;
pub use sklearn_csv::{is_sklearn_layout, load_sklearn_csv};
pub use source::{Collated, Gather, RandomAccess, Stream};
pub use standardize::Standardizer;
pub use table::schema::{Missing, TableOptions, TableSchema, Task};
pub use table::{is_parquet, read_any_table, read_parquet, read_table, Table};
pub use text::{
    check_span, eval_window_count, eval_windows, meta_path, random_windows, random_windows_from,
    read_meta, read_text, tokenize_file, train_bpe, write_token_file, CharTokenizer,
    SubwordTokenizer, TokenBatch, TokenDtype, TokenFile, TokenMeta, TokenSource, TokenSpan,
    TokenizeSummary, Tokenizer, END_OF_TEXT,
};

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A path inside the workspace's `datasets/` folder.
    fn dataset_path(relative: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../datasets")
            .join(relative)
    }

    #[test]
    fn loads_the_shipped_fashion_mnist_test_split() {
        let ds = load_idx(
            &dataset_path("fashion-mnist/t10k-images-idx3-ubyte.gz"),
            &dataset_path("fashion-mnist/t10k-labels-idx1-ubyte.gz"),
            10,
        )
        .unwrap();
        assert_eq!(ds.len(), 10_000);
        assert_eq!(ds.sample_shape, vec![1, 28, 28]);
        assert_eq!(ds.features.len(), 10_000 * 28 * 28);
        assert!(ds.labels.iter().all(|&label| label < 10));
        for class in 0..10 {
            assert_eq!(ds.labels.iter().filter(|&&l| l == class).count(), 1000);
        }
    }

    #[test]
    fn loads_the_shipped_wine_csv() {
        let ds = load_sklearn_csv(&dataset_path("tabular/wine_data.csv")).unwrap();
        assert_eq!(ds.len(), 178);
        assert_eq!(ds.sample_shape, vec![13]);
        assert_eq!(ds.num_classes, 3);
        assert_eq!(ds.class_names, vec!["class_0", "class_1", "class_2"]);
        assert_eq!(&ds.sample(0)[..2], &[14.23, 1.71]);
    }

    #[test]
    fn reads_the_shipped_penguins_table_with_its_missing_values() {
        let t = read_table(&dataset_path("tabular/penguins.csv"), None).unwrap();
        assert_eq!(t.rows.len(), 344);
        assert_eq!(t.columns[0], "species");
        let options = TableOptions {
            label: Some("species".into()),
            missing: Missing::Drop,
            ..TableOptions::default()
        };
        let all: Vec<usize> = (0..344).collect();
        let schema = TableSchema::fit(&[&t], &all, &options).unwrap();
        assert_eq!(schema.classes().unwrap(), ["Adelie", "Chinstrap", "Gentoo"]);
        // island (3) and sex (2) one-hot, four measurements and the year.
        assert_eq!(schema.width(), 3 + 4 + 2 + 1);
        let encoded = schema.encode(&t, &all, true).unwrap();
        assert_eq!(
            encoded.rows.len(),
            344 - 11,
            "the rows without sex are dropped"
        );
    }
}
