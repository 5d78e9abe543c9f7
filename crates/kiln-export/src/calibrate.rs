//! Calibration: the mean square of every weight layer's input features over a sample of the
//! training data. A weight's quantization error matters in proportion to the activation it
//! multiplies, so these weight the choice of each scale (see `quant`).

use std::collections::BTreeMap;

use anyhow::Result;
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor};
use kiln_core::Config;
use kiln_data::{eval_batches, eval_windows};
use kiln_models::{Model, Observer};
use kiln_train::data::HostBatch;
use kiln_train::RunData;
use serde_json::{json, Value};

/// Per weight name, the importance of each of its `K` input positions (the order of the
/// quantization matrix: the input index of a linear weight, `(c_in, kh, kw)` of a convolution).
pub struct Importance {
    pub by_weight: BTreeMap<String, Vec<f32>>,
    /// Samples (or windows) and rows (samples, pixels or token positions) seen.
    pub samples: usize,
    pub source: String,
}

impl Importance {
    pub fn get(&self, weight: &str) -> Option<&Vec<f32>> {
        self.by_weight.get(weight)
    }

    /// What the manifest records.
    pub fn describe(&self) -> Value {
        json!({
            "method": "per-scale clip search minimizing the squared weight error weighted by the mean square of each input (measured on training data)",
            "samples": self.samples,
            "data": self.source,
            "layers": self.by_weight.len(),
        })
    }
}

/// Sums of squares of each observed layer's input features, on the device.
struct MeanSquares<B: Backend> {
    sums: BTreeMap<String, (Tensor<B, 1>, usize)>,
}

impl<B: Backend> Observer<B> for MeanSquares<B> {
    fn observe(&mut self, weight: &dyn Fn() -> String, input: &dyn Fn() -> Tensor<B, 2>) {
        let x = input();
        let [rows, d] = x.dims();
        let squares = x.powi_scalar(2).sum_dim(0).reshape([d]);
        let entry = self.sums.entry(weight());
        let (sum, n) = entry.or_insert_with(|| (squares.zeros_like(), 0));
        *sum = sum.clone() + squares;
        *n += rows;
    }
}

/// Measures the importances of `model`'s weights on up to `samples` training samples (or text
/// windows), taken evenly from the training split.
pub fn calibrate<B: Backend>(
    model: &Model<B>,
    data: &RunData,
    config: &Config,
    samples: usize,
    device: &B::Device,
) -> Result<Importance> {
    let batch = config
        .data
        .eval_batch_size
        .unwrap_or(config.data.batch_size)
        .max(1);
    let batches: Vec<HostBatch> = match data {
        RunData::Samples(s) => {
            let n = s.train.len();
            let take = samples.min(n);
            let picked: Vec<usize> = (0..take).map(|i| i * n / take.max(1)).collect();
            let subset = s.train.subset(&picked);
            eval_batches(&subset, batch).map(HostBatch::from).collect()
        }
        RunData::Text(t) => {
            let windows_per_batch = batch.min(samples).max(1);
            let max_batches = samples.div_ceil(windows_per_batch);
            eval_windows(&t.train, t.block_size, windows_per_batch, Some(max_batches))
                .map(HostBatch::from)
                .collect()
        }
    };
    let mut seen = 0;
    let mut observer = MeanSquares::<B> {
        sums: BTreeMap::new(),
    };
    for b in batches {
        seen += match &b.input {
            kiln_train::data::HostInput::Features { rows, .. } => *rows,
            kiln_train::data::HostInput::Tokens { rows, .. } => *rows,
        };
        let (input, _) = b.to_device::<B>(device);
        let _ = model.forward_observed(input, &mut observer);
    }
    let mut by_weight = BTreeMap::new();
    for (name, (sum, rows)) in observer.sums {
        let ms: Vec<f32> = sum
            .div_scalar(rows.max(1) as f32)
            .into_data()
            .iter::<f32>()
            .map(|v| v.elem::<f32>())
            .collect();
        by_weight.insert(name.clone(), expand(&name, ms, model));
    }
    let source = match data {
        RunData::Samples(_) => "training split, evenly spaced samples",
        RunData::Text(_) => "training text, consecutive windows from its start",
    };
    Ok(Importance {
        by_weight,
        samples: seen,
        source: source.into(),
    })
}

/// A convolution's per-input-channel importance, repeated over its kernel positions (the
/// `(c_in, kh, kw)` order of its quantization matrix).
fn expand<B: Backend>(name: &str, per_input: Vec<f32>, model: &Model<B>) -> Vec<f32> {
    let Model::Cnn(cnn) = model else {
        return per_input;
    };
    let Some(i) = name
        .strip_prefix("blocks.")
        .and_then(|r| r.strip_suffix(".conv.weight"))
        .and_then(|i| i.parse::<usize>().ok())
    else {
        return per_input;
    };
    let [_, _, kh, kw] = cnn.blocks[i].conv.weight.dims();
    per_input
        .iter()
        .flat_map(|&v| std::iter::repeat_n(v, kh * kw))
        .collect()
}
