//! How an input becomes the features drift is measured on: an image its summaries
//! (brightness, contrast, sharpness, channel means), a row of a named table its columns (a
//! number, or the category its one-hot group marks), a row of plain features its first
//! [`MAX_FEATURES`] values, a text its tokens (the [`TOKEN_CATEGORIES`] most frequent tokens of
//! the training text, the others counted together).

use kiln_data::table::schema::ColumnKind;
use kiln_data::TableSchema;
use kiln_drift::image::{summaries, summary_names};
use kiln_drift::Current;
use serde::{Deserialize, Serialize};

/// Plain feature rows: the features monitored (the first ones of wider rows).
pub const MAX_FEATURES: usize = 256;
/// Text: the most frequent training tokens that are their own category.
pub const TOKEN_CATEGORIES: usize = 255;
/// The category of every other token.
pub const OTHER_TOKENS: &str = "other";

/// What the features of an input are.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum View {
    /// Images of `[channels, height, width]` (pixels in [0, 1]): their summaries.
    Image {
        /// `[channels, height, width]`.
        shape: [usize; 3],
    },
    /// Rows of a table with column names: each feature column.
    Table {
        /// The columns, in input order.
        columns: Vec<TableColumn>,
    },
    /// Rows of plain features: the first `names.len()` of them.
    Features {
        /// The monitored features' names (`feature_0`, ...).
        names: Vec<String>,
        /// Values per row.
        width: usize,
    },
    /// Text: its tokens, one categorical feature.
    Tokens {
        /// The token ids that are their own category, ascending.
        kept: Vec<u32>,
    },
}

/// A feature column of a table and where its inputs are in a row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TableColumn {
    /// The column's name.
    pub name: String,
    /// Its first input in the row.
    pub offset: usize,
    /// A categorical column's categories (its one-hot inputs, in order); none for numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub categories: Option<Vec<String>>,
}

impl View {
    /// The view of samples of `sample_shape` (a table's rows through `table`).
    pub fn of_samples(sample_shape: &[usize], table: Option<&TableSchema>) -> View {
        if let Some(schema) = table {
            let mut offset = 0;
            let columns = (schema.features.iter())
                .map(|c| {
                    let categories = match &c.kind {
                        ColumnKind::Numeric { .. } => None,
                        ColumnKind::Categorical { categories, .. } => Some(categories.clone()),
                    };
                    let column = TableColumn {
                        name: c.name.clone(),
                        offset,
                        categories: categories.clone(),
                    };
                    offset += categories.map_or(1, |c| c.len());
                    column
                })
                .collect();
            return View::Table { columns };
        }
        if let &[c, h, w] = sample_shape {
            return View::Image { shape: [c, h, w] };
        }
        let width: usize = sample_shape.iter().product();
        View::Features {
            names: (0..width.min(MAX_FEATURES))
                .map(|i| format!("feature_{i}"))
                .collect(),
            width,
        }
    }

    /// The features' names, in the order [`View::extract`] gives them.
    pub fn names(&self) -> Vec<String> {
        match self {
            View::Image { shape } => summary_names(shape[0]),
            View::Table { columns } => columns.iter().map(|c| c.name.clone()).collect(),
            View::Features { names, .. } => names.clone(),
            View::Tokens { .. } => vec!["token".to_string()],
        }
    }

    /// Values per sample the view reads (0 for text).
    pub fn sample_len(&self) -> usize {
        match self {
            View::Image { shape } => shape.iter().product(),
            View::Table { columns } => columns
                .last()
                .map_or(0, |c| c.offset + c.categories.as_ref().map_or(1, Vec::len)),
            View::Features { width, .. } => *width,
            View::Tokens { .. } => 0,
        }
    }

    /// Appends the features of one sample (its values as the data loader reads them, before
    /// standardization) to `out`: numbers, or a category's index.
    pub fn extract(&self, sample: &[f32], out: &mut Vec<f64>) {
        match self {
            View::Image { shape } => out.extend(summaries(sample, *shape)),
            View::Table { columns } => {
                for c in columns {
                    match &c.categories {
                        None => out.push(f64::from(sample[c.offset])),
                        Some(categories) => {
                            let group = &sample[c.offset..c.offset + categories.len()];
                            out.push(crate::predict::argmax(group) as f64);
                        }
                    }
                }
            }
            View::Features { names, .. } => {
                out.extend(sample[..names.len()].iter().map(|&v| f64::from(v)))
            }
            View::Tokens { .. } => {}
        }
    }

    /// The category index of token `id` (a kept token's position, or the count of kept
    /// tokens for the others).
    pub fn token(&self, id: u32) -> f64 {
        match self {
            View::Tokens { kept } => kept.binary_search(&id).unwrap_or(kept.len()) as f64,
            _ => 0.0,
        }
    }

    /// The name of each category of feature `feature` by index, or none for a numeric one.
    pub fn categories(&self, feature: usize) -> Option<Vec<String>> {
        match self {
            View::Table { columns } => columns[feature].categories.clone(),
            View::Tokens { kept } => Some(
                (kept.iter().map(u32::to_string))
                    .chain([OTHER_TOKENS.to_string()])
                    .collect(),
            ),
            View::Image { .. } | View::Features { .. } => None,
        }
    }

    /// Values of feature `feature` as the comparison takes them (categories by name).
    pub fn current<'a>(&self, feature: usize, values: impl Iterator<Item = &'a f64>) -> Current {
        match self.categories(feature) {
            None => Current::Numbers(values.copied().collect()),
            Some(names) => Current::Categories(
                values
                    .map(|&i| names.get(i as usize).cloned().unwrap_or_default())
                    .collect(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_data::table::schema::{Column, Target};
    use kiln_data::Missing;

    #[test]
    fn a_table_row_gives_each_column_its_number_or_category() {
        let schema = TableSchema {
            features: vec![
                Column {
                    name: "island".into(),
                    kind: ColumnKind::Categorical {
                        categories: vec!["Biscoe".into(), "Dream".into(), "Torgersen".into()],
                        fill: None,
                    },
                },
                Column {
                    name: "mass".into(),
                    kind: ColumnKind::Numeric { fill: None },
                },
            ],
            target: Target::Regression { column: "y".into() },
            missing: Missing::Error,
        };
        let view = View::of_samples(&[4], Some(&schema));
        assert_eq!(view.names(), ["island", "mass"]);
        assert_eq!(view.sample_len(), 4);
        let mut out = Vec::new();
        view.extract(&[0.0, 0.0, 1.0, 3750.0], &mut out);
        assert_eq!(out, [2.0, 3750.0]);
        let Current::Categories(c) = view.current(0, out[..1].iter()) else {
            panic!("categorical")
        };
        assert_eq!(c, ["Torgersen"]);
    }

    #[test]
    fn images_give_summaries_and_wide_rows_their_first_features() {
        let view = View::of_samples(&[1, 2, 2], None);
        let mut out = Vec::new();
        view.extract(&[0.0, 1.0, 0.0, 1.0], &mut out);
        assert_eq!(view.names(), ["mean_intensity", "contrast", "sharpness"]);
        assert_eq!(out, [0.5, 0.5, 1.0]);
        let view = View::of_samples(&[300], None);
        assert_eq!(view.names().len(), MAX_FEATURES);
        assert_eq!(view.sample_len(), 300);
        let tokens = View::Tokens {
            kept: vec![3, 7, 9],
        };
        assert_eq!((tokens.token(7), tokens.token(8)), (1.0, 3.0));
        assert_eq!(tokens.categories(0).unwrap()[3], OTHER_TOKENS);
    }
}
