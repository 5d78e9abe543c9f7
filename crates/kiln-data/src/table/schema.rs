//! What a table's columns mean, decided once from the data the run is given and saved with the
//! run (and in every export), so that prediction reads new rows exactly as training did.
//!
//! - The **label** is the column `data.label` names (default: the last column). For
//!   classification its distinct values are the classes, sorted (as numbers when they all are);
//!   for regression it must be a number.
//! - A **feature** column is *categorical* when `data.categorical` lists it or when most of its
//!   values are not numbers; it becomes one input per category (one-hot), its categories sorted.
//!   Any other column is *numeric*, and a value in it that is not a number is an error naming
//!   the row and column.
//! - A **missing** value is an empty cell, `NA`, `N/A`, `NaN`, `nan`, `null` or `NULL`. What
//!   happens to it is `data.missing`: `error` (the default) names the row and column; `drop`
//!   drops the row; `mean`, `median` and `mode` fill it with that statistic of the column over the
//!   training rows only (categorical columns are filled with their mode under all three). A row
//!   whose label is missing is an error under `error` and dropped otherwise.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};

use super::Table;

/// `data.missing`: what a missing value does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Missing {
    /// An error naming the row and column (the default).
    #[default]
    Error,
    /// The row is left out.
    Drop,
    /// The column's mean over the training rows (categorical columns: the mode).
    Mean,
    /// The column's median over the training rows (categorical columns: the mode).
    Median,
    /// The column's most frequent value over the training rows (the smallest on a tie).
    Mode,
}

/// `data.task`: what the label is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// A class per row (the default).
    #[default]
    Classification,
    /// A number per row.
    Regression,
}

/// How a table is to be read: the `data.*` keys about columns.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TableOptions {
    /// The label column (default: the last one).
    pub label: Option<String>,
    /// The feature columns, in this order (default: every other column, in file order).
    pub features: Option<Vec<String>>,
    /// Feature columns to treat as categories even where their values are numbers.
    pub categorical: Vec<String>,
    /// What a missing value does.
    pub missing: Missing,
    /// Classification or regression.
    pub task: Task,
}

impl TableOptions {
    /// The position of the label column in `table`: the column `label` names, else the last.
    ///
    /// # Errors
    /// The named column does not exist (the error names the table's columns).
    pub fn label_index(&self, table: &Table) -> Result<usize> {
        match &self.label {
            Some(name) => table.column(name).map_err(|e| anyhow!("data.label: {e}")),
            None => Ok(table.columns.len() - 1),
        }
    }
}

/// The cells that count as missing values.
pub const MISSING: &[&str] = &["", "NA", "N/A", "NaN", "nan", "null", "NULL"];

/// Whether a cell is a missing value.
pub fn is_missing(cell: &str) -> bool {
    MISSING.contains(&cell)
}

/// A feature column: its name and how it becomes model inputs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Column {
    /// The column's name in the header.
    pub name: String,
    /// Numbers or categories.
    #[serde(flatten)]
    pub kind: ColumnKind,
}

/// How a feature column becomes model inputs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ColumnKind {
    /// One input, the number; `fill` replaces a missing value.
    Numeric {
        /// The training rows' statistic that replaces a missing value, if the run fills them.
        fill: Option<f32>,
    },
    /// One input per category: 1 for the row's category, 0 for the others.
    Categorical {
        /// The categories, in input order.
        categories: Vec<String>,
        /// The category that replaces a missing value, if the run fills them.
        fill: Option<String>,
    },
}

/// The label column and what its values are.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "task", rename_all = "lowercase")]
pub enum Target {
    /// Classes: a row's class is the position of its label among `classes`.
    Classification {
        /// The label column's name.
        column: String,
        /// The class names, in class-index order.
        classes: Vec<String>,
    },
    /// A number per row.
    Regression {
        /// The label column's name.
        column: String,
    },
}

impl Target {
    /// The label column's name.
    pub fn column(&self) -> &str {
        match self {
            Target::Classification { column, .. } | Target::Regression { column } => column,
        }
    }
}

/// A table's meaning: its feature columns and its label.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TableSchema {
    /// The feature columns, in input order.
    pub features: Vec<Column>,
    /// The label.
    pub target: Target,
    /// What a missing value does.
    pub missing: Missing,
}

/// Rows of a table as model inputs.
#[derive(Clone, Debug, PartialEq)]
pub struct Encoded {
    /// The inputs, row after row, [`TableSchema::width`] values each.
    pub features: Vec<f32>,
    /// Classification: each kept row's class index.
    pub classes: Vec<u32>,
    /// Regression: each kept row's target value.
    pub targets: Vec<f32>,
    /// The rows of the table that were kept, in order (`missing = "drop"` leaves some out).
    pub rows: Vec<usize>,
}

impl TableSchema {
    /// Decides the columns' meaning. Categories and classes are collected from every table in
    /// `all` (the training table first), fill statistics from the rows `train` of `all[0]` only.
    ///
    /// # Errors
    /// One line naming the file and column: a label or feature column that does not exist, the
    /// label listed as a feature, a `categorical` column that is not a feature, no feature left,
    /// a column with no values, fewer than two classes, or no training value to fill with.
    pub fn fit(all: &[&Table], train: &[usize], options: &TableOptions) -> Result<TableSchema> {
        let table = all[0];
        let label = options.label_index(table)?;
        let label_name = table.columns[label].clone();
        let names: Vec<String> = match &options.features {
            Some(list) => list.clone(),
            None => (table.columns.iter())
                .filter(|c| **c != label_name)
                .cloned()
                .collect(),
        };
        if names.is_empty() {
            bail!(
                "{}: no feature column: the table has only its label `{label_name}`; a table needs \
                 at least one more column",
                table.source
            );
        }
        if names.contains(&label_name) {
            bail!("data.features lists `{label_name}`, the label column; leave it out");
        }
        for name in &options.categorical {
            if !names.contains(name) {
                bail!(
                    "data.categorical lists `{name}`, which is not a feature column; the \
                     features are {}",
                    names.join(", ")
                );
            }
        }
        let mut features = Vec::new();
        for name in &names {
            let values = values_of(all, name).map_err(|e| anyhow!("data.features: {e}"))?;
            if values.is_empty() {
                bail!(
                    "{}: column `{name}` has no values (every cell is missing); leave it out with \
                     data.features",
                    table.source
                );
            }
            let numbers = values.iter().filter(|v| number(v).is_some()).count();
            let categorical = options.categorical.contains(name) || 2 * numbers < values.len();
            let train_values = train_values(table, name, train)?;
            let fills = matches!(
                options.missing,
                Missing::Mean | Missing::Median | Missing::Mode
            );
            if fills && train_values.is_empty() {
                bail!(
                    "{}: column `{name}` has no value in the training rows to fill its missing \
                     values with; leave it out with data.features",
                    table.source
                );
            }
            let kind = if categorical {
                ColumnKind::Categorical {
                    categories: sorted_distinct(&values),
                    fill: fills.then(|| mode(&train_values)),
                }
            } else {
                // (A training value that is not a number leaves no fill: encoding names it.)
                let xs: Option<Vec<f64>> = train_values.iter().map(|v| number(v)).collect();
                let fill = xs.filter(|_| fills).map(|xs| match options.missing {
                    Missing::Mean => xs.iter().sum::<f64>() / xs.len() as f64,
                    Missing::Median => median(xs),
                    _ => number(&mode(&train_values)).unwrap_or(0.0),
                });
                ColumnKind::Numeric {
                    fill: fill.map(|x| x as f32),
                }
            };
            features.push(Column {
                name: name.clone(),
                kind,
            });
        }
        let target = match options.task {
            Task::Regression => Target::Regression { column: label_name },
            Task::Classification => {
                let classes = sorted_distinct(&values_of(all, &label_name)?);
                if classes.len() < 2 {
                    bail!(
                        "{}: the label column `{label_name}` has {} distinct value(s); \
                         classification needs at least two classes (for a number to predict, \
                         set data.task = \"regression\")",
                        table.source,
                        classes.len()
                    );
                }
                Target::Classification {
                    column: label_name,
                    classes,
                }
            }
        };
        Ok(TableSchema {
            features,
            target,
            missing: options.missing,
        })
    }

    /// The number of model inputs per row (a numeric column gives one, a categorical one per
    /// category).
    pub fn width(&self) -> usize {
        self.features
            .iter()
            .map(|c| match &c.kind {
                ColumnKind::Numeric { .. } => 1,
                ColumnKind::Categorical { categories, .. } => categories.len(),
            })
            .sum()
    }

    /// The inputs' names: a numeric column's name, `column=category` for each category.
    pub fn input_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for c in &self.features {
            match &c.kind {
                ColumnKind::Numeric { .. } => names.push(c.name.clone()),
                ColumnKind::Categorical { categories, .. } => {
                    names.extend(categories.iter().map(|k| format!("{}={k}", c.name)))
                }
            }
        }
        names
    }

    /// The class names (classification) or `None` (regression).
    pub fn classes(&self) -> Option<&[String]> {
        match &self.target {
            Target::Classification { classes, .. } => Some(classes),
            Target::Regression { .. } => None,
        }
    }

    /// Encodes `rows` of `table` (which must have the feature columns, and the label column if
    /// `with_label`). Rows with a missing value are left out under `missing = "drop"`.
    ///
    /// # Errors
    /// One line naming the file, line and column: a missing column, a value that is not a
    /// number in a numeric column or the label of a regression, a category or class the schema
    /// does not know, a missing value under `missing = "error"`.
    pub fn encode(&self, table: &Table, rows: &[usize], with_label: bool) -> Result<Encoded> {
        let feature_cols: Vec<usize> = (self.features.iter())
            .map(|c| {
                table
                    .column(&c.name)
                    .map_err(|e| anyhow!("{e}; the model was trained with column `{}`", c.name))
            })
            .collect::<Result<_>>()?;
        let label_col = if with_label {
            Some(table.column(self.target.column())?)
        } else {
            None
        };
        let mut out = Encoded {
            features: Vec::with_capacity(rows.len() * self.width()),
            classes: Vec::new(),
            targets: Vec::new(),
            rows: Vec::with_capacity(rows.len()),
        };
        let mut inputs = Vec::with_capacity(self.width());
        'rows: for &row in rows {
            let cells = &table.rows[row];
            let at = || table.at(row);
            inputs.clear();
            for (column, &i) in self.features.iter().zip(&feature_cols) {
                if !self.input(column, &cells[i], &at, &mut inputs)? {
                    continue 'rows;
                }
            }
            if let Some(l) = label_col {
                let cell = cells[l].as_str();
                let name = self.target.column();
                if is_missing(cell) {
                    if self.missing == Missing::Error {
                        bail!(
                            "{} column `{name}`: the label is missing; fill it, remove the row, \
                             or set data.missing (rows without a label are then dropped)",
                            at()
                        );
                    }
                    continue 'rows;
                }
                match &self.target {
                    Target::Classification { classes, .. } => {
                        let class = classes.iter().position(|c| c == cell).ok_or_else(|| {
                            anyhow!(
                                "{} column `{name}`: `{cell}` is not one of the classes the \
                                 model knows ({})",
                                at(),
                                classes.join(", ")
                            )
                        })?;
                        out.classes.push(class as u32);
                    }
                    Target::Regression { .. } => {
                        let value = number(cell).ok_or_else(|| {
                            anyhow!(
                                "{} column `{name}`: `{cell}` is not a number; a regression's \
                                 label must be one",
                                at()
                            )
                        })?;
                        out.targets.push(value as f32);
                    }
                }
            }
            out.features.extend_from_slice(&inputs);
            out.rows.push(row);
        }
        Ok(out)
    }

    /// Appends `column`'s inputs for `cell`; `false` when the row is to be dropped.
    fn input(
        &self,
        column: &Column,
        cell: &str,
        at: &dyn Fn() -> String,
        inputs: &mut Vec<f32>,
    ) -> Result<bool> {
        let name = &column.name;
        let missing = is_missing(cell);
        if missing && self.missing == Missing::Drop {
            return Ok(false);
        }
        let missing_error = || {
            anyhow!(
                "{} column `{name}`: missing value; fill it in, or set data.missing to \"drop\", \
                 \"mean\", \"median\" or \"mode\"",
                at()
            )
        };
        match &column.kind {
            ColumnKind::Numeric { fill } => {
                let value = if missing {
                    fill.ok_or_else(missing_error)?
                } else {
                    number(cell).ok_or_else(|| {
                        anyhow!(
                            "{} column `{name}`: `{cell}` is not a number, and the column's \
                             other values are; fix the value, write NA for a missing one, or \
                             list the column in data.categorical",
                            at()
                        )
                    })? as f32
                };
                inputs.push(value);
            }
            ColumnKind::Categorical { categories, fill } => {
                let value = if missing {
                    fill.as_deref().ok_or_else(missing_error)?
                } else {
                    cell
                };
                let k = categories.iter().position(|c| c == value).ok_or_else(|| {
                    anyhow!(
                        "{} column `{name}`: unknown category `{value}`; the model knows {}",
                        at(),
                        categories.join(", ")
                    )
                })?;
                inputs.extend((0..categories.len()).map(|j| if j == k { 1.0 } else { 0.0 }));
            }
        }
        Ok(true)
    }
}

/// A cell as a finite number, if it is one.
fn number(cell: &str) -> Option<f64> {
    cell.parse::<f64>().ok().filter(|x| x.is_finite())
}

/// The non-missing values of column `name` in every table.
fn values_of<'t>(all: &[&'t Table], name: &str) -> Result<Vec<&'t str>> {
    let mut values = Vec::new();
    for table in all {
        let i = table.column(name)?;
        values.extend(
            (table.rows.iter())
                .map(|r| r[i].as_str())
                .filter(|v| !is_missing(v)),
        );
    }
    Ok(values)
}

/// The non-missing values of column `name` in the rows `train` of `table`.
fn train_values<'t>(table: &'t Table, name: &str, train: &[usize]) -> Result<Vec<&'t str>> {
    let i = table.column(name)?;
    Ok(train
        .iter()
        .map(|&r| table.rows[r][i].as_str())
        .filter(|v| !is_missing(v))
        .collect())
}

/// The distinct values, sorted as numbers when they all are, else as text.
fn sorted_distinct(values: &[&str]) -> Vec<String> {
    let mut distinct: Vec<String> = values.iter().map(|v| v.to_string()).collect();
    distinct.sort();
    distinct.dedup();
    if distinct.iter().all(|v| number(v).is_some()) {
        distinct.sort_by(|a, b| number(a).partial_cmp(&number(b)).unwrap());
    }
    distinct
}

/// The most frequent value (the first in [`sorted_distinct`] order on a tie).
fn mode(values: &[&str]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for v in values {
        *counts.entry(v).or_default() += 1;
    }
    let most = counts.values().copied().max().unwrap_or(0);
    sorted_distinct(values)
        .into_iter()
        .find(|v| counts.get(v.as_str()) == Some(&most))
        .unwrap_or_default()
}

/// The median (the mean of the two middle values of an even count).
fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests;
