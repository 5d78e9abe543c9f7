//! The reference of a run's data, computed at export time: the training split's features,
//! the exported model's predictions on the test split, and for text the training tokens'
//! frequencies and the model's surprise on the validation windows.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use kiln_core::Config;
use kiln_data::eval_window_count;
use kiln_data::Standardizer;
use kiln_drift::{FeatureKind, FeatureReference};
use kiln_infer::data::{Splits, TextData};
use kiln_infer::RunData;
use kiln_models::{Input, Model};

use super::observe::surprise;
use super::{Reference, View, REFERENCE_ROWS, TOKEN_CATEGORIES};
use crate::predict::argmax;

/// Validation windows the surprise reference is computed from, at most (a forward pass each:
/// what a large model's export can afford on a CPU).
const SURPRISE_WINDOWS: usize = 256;
/// Tokens read at once while counting the training text.
const TOKEN_CHUNK: usize = 1 << 20;

/// The drift reference of `data` for `model` (the exported weights).
pub fn build<B: Backend>(
    data: &RunData,
    model: &Model<B>,
    config: &Config,
    device: &B::Device,
) -> Result<Reference> {
    let batch = config
        .data
        .eval_batch_size
        .unwrap_or(config.data.batch_size)
        .max(1);
    match data {
        RunData::Samples(s) => samples(s, model, batch, device),
        RunData::Text(t) => text(t, model, batch, config.data.eval_max_batches, device),
    }
}

fn samples<B: Backend>(
    s: &Splits,
    model: &Model<B>,
    batch: usize,
    device: &B::Device,
) -> Result<Reference> {
    let view = View::of_samples(&s.train.sample_shape(), s.table.as_ref());
    let names = view.names();
    let width = s.train.sample_len();
    let n = s.train.len();
    let take = n.min(REFERENCE_ROWS);
    let picked: Vec<usize> = (0..take).map(|i| i * n / take.max(1)).collect();
    let mut columns: Vec<Vec<f64>> = vec![Vec::with_capacity(take); names.len()];
    let mut labels: Vec<i64> = Vec::with_capacity(take);
    let mut row = Vec::with_capacity(names.len());
    for b in s.train.batches(picked, batch) {
        let b = b.context("reading the training split for the drift reference")?;
        let mut x = b.x;
        if let Some(st) = &s.standardizer {
            unstandardize(st, &mut x, width);
        }
        for sample in x.chunks_exact(width) {
            row.clear();
            view.extract(sample, &mut row);
            columns.iter_mut().zip(&row).for_each(|(c, &v)| c.push(v));
        }
        labels.extend(b.y);
    }
    let sample = sample_per_feature(names.len());
    let features = (names.iter().enumerate())
        .map(|(f, name)| match view.categories(f) {
            None => FeatureReference::numeric_with_sample(
                name,
                columns[f].iter().copied(),
                f as u64,
                sample,
            ),
            Some(categories) => {
                categorical(name, &categories, columns[f].iter().map(|&i| i as usize))
            }
        })
        .collect();

    let classes = (s.regression.is_none()).then(|| s.train.class_names().to_vec());
    let mut predictions = Vec::new();
    let mut correct = 0usize;
    for b in s.test.eval_batches(batch) {
        let b = b.context("reading the test split for the drift reference")?;
        let rows = b.len();
        let x = Tensor::<B, 2>::from_data(TensorData::new(b.x, [rows, width]), device);
        let out: Vec<f32> = model
            .forward(Input::Features(x))
            .into_data()
            .convert::<f32>()
            .to_vec()
            .map_err(|e| anyhow::anyhow!("cannot read the model's output: {e:?}"))?;
        match &classes {
            Some(_) => {
                for (row, &y) in out.chunks_exact(out.len() / rows.max(1)).zip(&b.y) {
                    let class = argmax(row);
                    correct += usize::from(class as i64 == y);
                    predictions.push(class as f64);
                }
            }
            None => predictions.extend(out.iter().map(|&v| f64::from(v))),
        }
    }
    let prediction_rows = predictions.len() as u64;
    let (prediction, class_priors, accuracy) = match &classes {
        Some(names) => (
            categorical("prediction", names, predictions.iter().map(|&c| c as usize)),
            Some(categorical(
                "label",
                names,
                labels.iter().map(|&c| c as usize),
            )),
            Some(correct as f64 / prediction_rows.max(1) as f64),
        ),
        None => (
            FeatureReference::numeric("prediction", predictions, 7),
            None,
            None,
        ),
    };
    Ok(Reference {
        view,
        features,
        prediction: Some(prediction),
        classes,
        class_priors,
        accuracy,
        reference_rows: take as u64,
        prediction_rows,
    })
}

fn text<B: Backend>(
    t: &TextData,
    model: &Model<B>,
    batch: usize,
    eval_max_batches: Option<usize>,
    device: &B::Device,
) -> Result<Reference> {
    let mut counts: BTreeMap<u32, u64> = BTreeMap::new();
    let mut chunk = vec![0u32; TOKEN_CHUNK];
    let mut at = 0;
    while at < t.train.len() {
        let len = TOKEN_CHUNK.min(t.train.len() - at);
        t.train.read_into(at, &mut chunk[..len]);
        for &id in &chunk[..len] {
            *counts.entry(id).or_default() += 1;
        }
        at += len;
    }
    let mut by_count: Vec<(u32, u64)> = counts.iter().map(|(&id, &c)| (id, c)).collect();
    by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept: Vec<u32> = (by_count.iter().take(TOKEN_CATEGORIES))
        .map(|&(id, _)| id)
        .collect();
    kept.sort_unstable();
    let view = View::Tokens { kept };
    let categories = view.categories(0).unwrap_or_default();
    let mut category_counts = vec![0u64; categories.len()];
    for (&id, &c) in &counts {
        category_counts[view.token(id) as usize] += c;
    }
    let token = from_counts("token", &categories, &category_counts);

    let Model::Gpt(gpt) = model else {
        anyhow::bail!("text data needs a language model");
    };
    // Windows spread evenly over the validation span (no more than the export's own evaluation
    // reads, `data.eval_max_batches` batches), as many as fit.
    let rows = batch.clamp(1, SURPRISE_WINDOWS);
    let cap = eval_max_batches.map_or(usize::MAX, |b| b.saturating_mul(rows));
    let count = eval_window_count(&t.valid, t.block_size);
    let take = count.min(SURPRISE_WINDOWS).min(cap);
    let block = t.block_size;
    let starts: Vec<usize> = (0..take).map(|i| i * count / take.max(1) * block).collect();
    let mut surprises = Vec::new();
    let mut window = vec![0u32; block + 1];
    for chunk in starts.chunks(rows) {
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for &start in chunk {
            t.valid.read_into(start, &mut window);
            x.extend(window[..block].iter().map(|&v| i64::from(v)));
            y.extend(window[1..].iter().map(|&v| i64::from(v)));
        }
        surprises.extend(surprise(gpt, &x, &y, chunk.len(), device)?);
    }
    let prediction_rows = surprises.len() as u64;
    Ok(Reference {
        view,
        features: vec![token],
        prediction: (!surprises.is_empty())
            .then(|| FeatureReference::numeric("surprise", surprises, 7)),
        classes: None,
        class_priors: None,
        accuracy: None,
        reference_rows: t.train.len() as u64,
        prediction_rows,
    })
}

/// The values kept per numeric feature for the two-sample test: 1,000, fewer for many features
/// so that the reference stays within [`super::SIZE_BOUND`] (about 21 bytes per value in JSON,
/// three quarters of the bound for the samples), and at least 100.
fn sample_per_feature(features: usize) -> usize {
    let budget = (super::SIZE_BOUND as usize * 3 / 4) / (features.max(1) * 21);
    budget
        .saturating_sub(20)
        .clamp(100, kiln_drift::reference::SAMPLE)
}

/// Undoes `st` on rows of `width` values: the values as the data loader read them.
fn unstandardize(st: &Standardizer, x: &mut [f32], width: usize) {
    let scale = st.scale();
    for sample in x.chunks_exact_mut(width) {
        for (i, v) in sample.iter_mut().enumerate() {
            let k = if st.mean.len() == 1 { 0 } else { i };
            *v = *v / scale[k] + st.mean[k];
        }
    }
}

/// A categorical reference of category indices into `names`.
fn categorical(
    name: &str,
    names: &[String],
    indices: impl Iterator<Item = usize>,
) -> FeatureReference {
    let mut counts = vec![0u64; names.len()];
    for i in indices.filter(|&i| i < names.len()) {
        counts[i] += 1;
    }
    from_counts(name, names, &counts)
}

/// A categorical reference of each category's count (categories in name order, as
/// [`FeatureReference`] keeps them; every category listed, seen or not).
fn from_counts(name: &str, names: &[String], counts: &[u64]) -> FeatureReference {
    let mut pairs: Vec<(&String, u64)> = names.iter().zip(counts.iter().copied()).collect();
    pairs.sort_by(|a, b| a.0.cmp(b.0));
    pairs.dedup_by(|b, a| {
        let same = a.0 == b.0;
        if same {
            a.1 += b.1;
        }
        same
    });
    let total: u64 = pairs.iter().map(|p| p.1).sum();
    FeatureReference {
        name: name.to_string(),
        kind: FeatureKind::Categorical {
            count: total,
            categories: pairs.iter().map(|p| p.0.clone()).collect(),
            proportions: pairs
                .iter()
                .map(|p| p.1 as f64 / total.max(1) as f64)
                .collect(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_features_keep_smaller_samples_within_the_bound() {
        assert_eq!(sample_per_feature(7), 1000);
        let wide = sample_per_feature(256);
        assert!((100..1000).contains(&wide), "{wide}");
        // 256 features of `wide` values and 10 bins, at 21 bytes a number, fit the bound.
        assert!(256 * (wide + 20) * 21 < super::super::SIZE_BOUND as usize);
        assert_eq!(sample_per_feature(100_000), 100);
    }

    #[test]
    fn unstandardizing_gives_the_loaded_values_back() {
        let st = Standardizer {
            mean: vec![1.0, -2.0],
            std: vec![2.0, 0.0],
        };
        let original = [3.0f32, 5.0, -1.0, 5.0];
        let mut x = original;
        st.apply_rows(&mut x, 2);
        unstandardize(&st, &mut x, 2);
        assert_eq!(x, original);
    }

    #[test]
    fn categories_are_kept_in_name_order_with_unseen_ones() {
        let names = ["b".to_string(), "a".to_string(), "c".to_string()];
        let r = categorical("c", &names, [0, 0, 1, 0].into_iter());
        let FeatureKind::Categorical {
            categories,
            proportions,
            ..
        } = r.kind
        else {
            panic!("categorical")
        };
        assert_eq!(categories, ["a", "b", "c"]);
        assert_eq!(proportions, [0.25, 0.75, 0.0]);
    }
}
