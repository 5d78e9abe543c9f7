//! Calibration: the second moments `E[x x^T]` of every weight layer's input features over a
//! sample of the training data. The error a weight error vector `e` adds to the layer's output is
//! `E[(x . e)^2] = e^T E[x x^T] e`, so these matrices weight the choice of each int4 scale (see
//! `quant`): they count both how large each input is and how inputs move together, which is
//! what makes the systematic error of clipping add up.

use std::collections::BTreeMap;

use anyhow::Result;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use kiln_core::Config;
use kiln_data::eval_windows;
use kiln_infer::data::HostBatch;
use kiln_infer::RunData;
use kiln_models::{Model, Observer};
use serde_json::{json, Value};

/// Per weight name, the `[K, K]` second-moment matrix of its `K` inputs (the order of the
/// quantization matrix: the input index of a linear weight, `(c_in, kh, kw)` of a convolution).
pub struct Calibration {
    /// The row-major `[K, K]` matrix of each calibrated weight, by its name.
    pub by_weight: BTreeMap<String, Vec<f32>>,
    /// Samples (or windows) and rows (samples, pixels or token positions) seen.
    pub samples: usize,
    /// Where the samples came from (the training split or text, and how they were picked), as the
    /// manifest records it.
    pub source: String,
}

impl Calibration {
    /// The matrix of the weight `weight`, if it was calibrated.
    pub fn get(&self, weight: &str) -> Option<&Vec<f32>> {
        self.by_weight.get(weight)
    }

    /// What the manifest records.
    pub fn describe(&self) -> Value {
        json!({
            "method": "per-block clip search minimizing e^T E[x x^T] e, the output error of the block's weight error e, with the inputs' second moments measured on training data",
            "samples": self.samples,
            "data": self.source,
            "layers": self.by_weight.len(),
        })
    }
}

/// `X^T X` of each observed layer's inputs, on the device, and the rows summed.
struct SecondMoments<B: Backend> {
    sums: BTreeMap<String, (Tensor<B, 2>, usize)>,
}

impl<B: Backend> Observer<B> for SecondMoments<B> {
    fn observe(&mut self, weight: &dyn Fn() -> String, input: &dyn Fn() -> Tensor<B, 2>) {
        let x = input();
        let rows = x.dims()[0];
        let gram = x.clone().transpose().matmul(x);
        let entry = self.sums.entry(weight());
        let (sum, n) = entry.or_insert_with(|| (gram.zeros_like(), 0));
        *sum = sum.clone() + gram;
        *n += rows;
    }
}

/// Measures the second moments of the inputs of `model`'s weights on up to `samples` training samples (or text
/// windows), taken evenly from the training split.
pub fn calibrate<B: Backend>(
    model: &Model<B>,
    data: &RunData,
    config: &Config,
    samples: usize,
    device: &B::Device,
) -> Result<Calibration> {
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
            (s.train.batches(picked, batch))
                .map(|b| b.map(HostBatch::from))
                .collect::<Result<_>>()?
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
    let mut observer = SecondMoments::<B> {
        sums: BTreeMap::new(),
    };
    for b in batches {
        seen += match &b.input {
            kiln_infer::data::HostInput::Features { rows, .. } => *rows,
            kiln_infer::data::HostInput::Tokens { rows, .. } => *rows,
        };
        let (input, _) = b.to_device::<B>(device);
        let _ = model.forward_observed(input, &mut observer);
    }
    let mut by_weight = BTreeMap::new();
    for (name, (sum, rows)) in observer.sums {
        let moments: Vec<f32> = sum
            .div_scalar(rows.max(1) as f32)
            .into_data()
            .iter::<f32>()
            .collect();
        by_weight.insert(name, moments);
    }
    let source = match data {
        RunData::Samples(_) => "training split, evenly spaced samples",
        RunData::Text(_) => "training text, consecutive windows from its start",
    };
    Ok(Calibration {
        by_weight,
        samples: seen,
        source: source.into(),
    })
}
