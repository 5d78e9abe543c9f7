//! A table with a header of column names (`data.format = "csv"` whose first line names its
//! columns) as a run's three splits: rows held out for test (`data.test_fraction`, or the rows of
//! `data.test_path`) and validation (`data.valid_fraction`), class by class unless
//! `data.stratify = false`; the columns' meaning ([`TableSchema`]) decided with statistics of
//! the training split only; every split encoded with it.

use std::path::Path;

use anyhow::{anyhow, Result};
use kiln_core::config::{DataSection, MissingValues, RegressionLoss};
use kiln_data::{
    read_any_table, split_indices, stratified_split_indices, Dataset, Missing, Table, TableOptions,
    TableSchema, Task,
};
use kiln_models::Regression;

/// The training, validation and test splits of a table and the schema that encoded them.
pub(super) struct TableSplits {
    pub train: Dataset,
    pub valid: Dataset,
    pub test: Dataset,
    pub schema: TableSchema,
    /// A regression's target statistics (training split) and loss.
    pub regression: Option<Regression>,
}

/// Reads `path` (and `data.test_path`) and splits and encodes them (see the module docs).
pub(super) fn load(
    d: &DataSection,
    loss: Option<RegressionLoss>,
    path: &Path,
    seed: u64,
) -> Result<TableSplits> {
    let delimiter = d.delimiter.as_ref().map(|s| s.as_bytes()[0]);
    let read =
        |key: &str, p: &Path| read_any_table(p, delimiter).map_err(|e| anyhow!("data.{key}: {e}"));
    let table = read("path", path)?;
    let test_table = match &d.test_path {
        Some(p) => Some(read("test_path", p)?),
        None => None,
    };
    let options = TableOptions {
        label: d.label.clone(),
        features: d.features.clone(),
        categorical: d.categorical.clone().unwrap_or_default(),
        missing: match d.missing {
            None | Some(MissingValues::Error) => Missing::Error,
            Some(MissingValues::Drop) => Missing::Drop,
            Some(MissingValues::Mean) => Missing::Mean,
            Some(MissingValues::Median) => Missing::Median,
            Some(MissingValues::Mode) => Missing::Mode,
        },
        task: if d.is_regression() {
            Task::Regression
        } else {
            Task::Classification
        },
    };
    let label = options.label_index(&table)?;
    let keys: Vec<&str> = table.rows.iter().map(|r| r[label].as_str()).collect();
    let stratify = d.stratify.unwrap_or(!d.is_regression());
    // Splits a list of rows; `held` are rows of the table, as `rest`.
    let split_rows = |rows: &[usize], fraction: f64, seed: u64| -> (Vec<usize>, Vec<usize>) {
        let (rest, held) = if stratify {
            let row_keys: Vec<&str> = rows.iter().map(|&r| keys[r]).collect();
            stratified_split_indices(&row_keys, fraction, seed)
        } else {
            split_indices(rows.len(), fraction, seed)
        };
        let rows_of = |ids: Vec<usize>| ids.into_iter().map(|i| rows[i]).collect::<Vec<_>>();
        (rows_of(rest), rows_of(held))
    };
    let all: Vec<usize> = (0..table.rows.len()).collect();
    // The test rows are drawn with their own stream, so that changing valid_fraction never
    // moves a row in or out of the test split (as for the scikit-learn layout).
    let (train_full, test_rows) = match test_table {
        Some(_) => (all, Vec::new()),
        None => split_rows(&all, d.test_fraction, seed ^ 0x7E57),
    };
    let (train_rows, valid_rows) = split_rows(&train_full, d.valid_fraction, seed);

    let tables: Vec<&Table> = std::iter::once(&table).chain(test_table.as_ref()).collect();
    let schema = TableSchema::fit(&tables, &train_rows, &options)?;
    let encode = |t: &Table, rows: &[usize]| -> Result<Dataset> {
        let encoded = schema.encode(t, rows, true)?;
        let classes = schema.classes().unwrap_or_default().to_vec();
        Ok(Dataset {
            features: encoded.features,
            sample_shape: vec![schema.width()],
            labels: encoded.classes,
            num_classes: classes.len(),
            class_names: classes,
            targets: encoded.targets,
        })
    };
    let train = encode(&table, &train_rows)?;
    let valid = encode(&table, &valid_rows)?;
    let test = match &test_table {
        Some(t) => encode(t, &(0..t.rows.len()).collect::<Vec<_>>())?,
        None => encode(&table, &test_rows)?,
    };
    let regression = match options.task {
        Task::Regression => Some(
            Regression::fit(&train.targets, loss.unwrap_or_default())
                .map_err(|e| anyhow!("data.label `{}`: {e}", schema.target.column()))?,
        ),
        Task::Classification => None,
    };
    Ok(TableSplits {
        train,
        valid,
        test,
        schema,
        regression,
    })
}
