//! New data observed the way the reference was made: samples through the view and the
//! exported model, text through its tokens and the language model's surprise.

use anyhow::{ensure, Context, Result};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use kiln_models::{Gpt, Model};

use super::{Observations, Reference, View};
use crate::predict::{argmax, forward_samples, Loaded, Outputs, Record, Task};

/// Samples per forward pass.
const BATCH: usize = 256;

/// Each window's surprise: the mean next-token loss (nats per token) of `gpt` on `rows`
/// windows of `x` (inputs) and `y` (the next tokens), both `[rows, block]` row-major.
pub fn surprise<B: Backend>(
    gpt: &Gpt<B>,
    x: &[i64],
    y: &[i64],
    rows: usize,
    device: &B::Device,
) -> Result<Vec<f64>> {
    ensure!(
        rows > 0 && x.len() == y.len() && x.len().is_multiple_of(rows),
        "no windows"
    );
    let block = x.len() / rows;
    let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(x.to_vec(), [rows, block]), device);
    let next = Tensor::<B, 2, Int>::from_data(TensorData::new(y.to_vec(), [rows, block]), device);
    let log_p = log_softmax(gpt.forward(tokens), 2);
    let nll = log_p
        .gather(2, next.unsqueeze_dim(2))
        .neg()
        .mean_dim(1)
        .reshape([rows]);
    let values: Vec<f32> = nll
        .into_data()
        .convert::<f32>()
        .to_vec()
        .map_err(|e| anyhow::anyhow!("cannot read the model's output: {e:?}"))?;
    Ok(values.into_iter().map(f64::from).collect())
}

/// Runs `loaded` on `records` and adds each one's features and prediction to `observed`.
pub fn observe_records<B: Backend>(
    loaded: &Loaded<B>,
    reference: &Reference,
    records: &[Record],
    observed: &mut Observations,
    device: &B::Device,
) -> Result<()> {
    let mut row = Vec::new();
    for chunk in records.chunks(BATCH) {
        let x: Vec<f32> = chunk
            .iter()
            .flat_map(|r| r.values.iter().copied())
            .collect();
        for r in chunk {
            ensure!(
                r.values.len() == reference.view.sample_len(),
                "{}: {} values, the drift reference's samples have {}",
                r.origin,
                r.values.len(),
                reference.view.sample_len()
            );
            row.clear();
            reference.view.extract(&r.values, &mut row);
            observed.push(&row);
        }
        match forward_samples(loaded, x, chunk.len(), device)? {
            Outputs::Classes { probabilities, .. } => {
                let classes = probabilities.len() / chunk.len();
                for p in probabilities.chunks_exact(classes) {
                    observed.push_prediction(argmax(p) as f64);
                }
            }
            Outputs::Values(values) => {
                values
                    .iter()
                    .for_each(|&v| observed.push_prediction(f64::from(v)));
            }
        }
    }
    Ok(())
}

/// Adds the tokens of `text` and the language model's surprise on its windows (consecutive,
/// `block_size` tokens each, as the reference's validation windows) to `observed`.
pub fn observe_text<B: Backend>(
    loaded: &Loaded<B>,
    reference: &Reference,
    text: &str,
    observed: &mut Observations,
    device: &B::Device,
) -> Result<()> {
    let (Model::Gpt(gpt), Task::Language { tokenizer }) = (&loaded.model, &loaded.task) else {
        anyhow::bail!("this export is not a language model; give it samples");
    };
    ensure!(
        matches!(reference.view, View::Tokens { .. }),
        "the drift reference is not of text"
    );
    let ids = tokenizer.encode(text).context("the text")?;
    for &id in &ids {
        observed.push(&[reference.view.token(id)]);
    }
    let block = gpt.shape.block_size;
    let windows = ids.len().saturating_sub(1) / block;
    for start in (0..windows).step_by(BATCH) {
        let rows = BATCH.min(windows - start);
        let span = |offset: usize| -> Vec<i64> {
            ids[start * block + offset..(start + rows) * block + offset]
                .iter()
                .map(|&t| i64::from(t))
                .collect()
        };
        for s in surprise(gpt, &span(0), &span(1), rows, device)? {
            observed.push_prediction(s);
        }
    }
    Ok(())
}
