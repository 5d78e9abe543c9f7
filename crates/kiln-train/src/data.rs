//! Turns the `[data]` section into train/validation/test datasets.
//!
//! The preparation is a pure function of the config (splits and standardization statistics come
//! from the seed and the training split), so `kiln eval` rebuilds exactly the data a run saw.

use std::path::Path;

use anyhow::{Context, Result};
use kiln_core::config::{DataFormat, DataSection};
use kiln_core::Config;
use kiln_data::{load_idx, load_sklearn_csv, split, Dataset, Standardizer};

/// The three splits of a run, standardized with statistics of the training split.
pub struct Splits {
    pub train: Dataset,
    pub valid: Dataset,
    pub test: Dataset,
}

impl Splits {
    pub fn load(config: &Config) -> Result<Splits> {
        let d = &config.data;
        let seed = config.run.seed;
        let (train_full, test) = match d.format {
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
        };
        let (mut train, mut valid) = split(&train_full, d.valid_fraction, seed);
        let mut test = test;
        if train.is_empty() {
            anyhow::bail!(
                "data: the training split is empty ({} samples, valid_fraction = {}); use more data or a smaller data.valid_fraction",
                train_full.len(),
                d.valid_fraction
            );
        }
        if d.standardize {
            let stats = match d.format {
                DataFormat::Idx => Standardizer::global(&train),
                DataFormat::Csv => Standardizer::per_feature(&train),
            };
            for ds in [&mut train, &mut valid, &mut test] {
                stats.apply(ds);
            }
        }
        Ok(Splits { train, valid, test })
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
            match d.format {
                DataFormat::Idx => "idx",
                DataFormat::Csv => "csv",
            }
        )
    })?;
    if !path.exists() {
        let base = std::env::current_dir().unwrap_or_default();
        anyhow::bail!(
            "data.{key}: {} does not exist (relative paths are resolved from the current directory, {}); fix the path in the config or with --set data.{key}=...",
            path.display(),
            base.display()
        );
    }
    Ok(path)
}
