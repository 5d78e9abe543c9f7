//! Evaluation of a classifier on a dataset split: mean cross-entropy and accuracy.

use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use kiln_data::{eval_batches, Batch, Dataset};
use kiln_models::Classifier;
use serde::Serialize;

/// Loss and accuracy over a whole split.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct EvalResult {
    pub loss: f64,
    pub accuracy: f64,
    pub samples: usize,
}

/// Moves a host batch onto `device` as `([batch, features], [batch])` tensors.
pub fn batch_tensors<B: Backend>(
    batch: Batch,
    device: &B::Device,
) -> (Tensor<B, 2>, Tensor<B, 1, Int>) {
    let n = batch.y.len();
    let features = batch.x.len() / n.max(1);
    let x = Tensor::from_data(TensorData::new(batch.x, [n, features]), device);
    let y = Tensor::from_data(TensorData::new(batch.y, [n]), device);
    (x, y)
}

/// Sum of per-sample losses and number of correct predictions of one batch, left on the device.
pub fn batch_sums<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
) -> (Tensor<B, 1>, Tensor<B, 1, Int>) {
    let n = targets.dims()[0];
    let loss = CrossEntropyLossConfig::new()
        .init(&logits.device())
        .forward(logits.clone(), targets.clone());
    let correct = logits.argmax(1).reshape([n]).equal(targets).int().sum();
    (loss.mul_scalar(n as f64), correct)
}

/// Evaluates `model` on every sample of `data`.
pub fn evaluate<B: Backend>(
    model: &Classifier<B>,
    data: &Dataset,
    batch_size: usize,
    device: &B::Device,
) -> EvalResult {
    let mut loss_sum = Tensor::<B, 1>::zeros([1], device);
    let mut correct = Tensor::<B, 1, Int>::zeros([1], device);
    for batch in eval_batches(data, batch_size) {
        let (x, y) = batch_tensors::<B>(batch, device);
        let (l, c) = batch_sums(model.forward(x), y);
        loss_sum = loss_sum + l;
        correct = correct + c;
    }
    let samples = data.len();
    let denom = samples.max(1) as f64;
    EvalResult {
        loss: loss_sum.into_scalar().elem::<f64>() / denom,
        accuracy: correct.into_scalar().elem::<f64>() / denom,
        samples,
    }
}
