//! One optimizer step: forward, loss, backward, optional clipping, update. The training loop and
//! the throughput benchmark both run exactly this.

use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, Tensor};
use kiln_models::Classifier;

use crate::clip::clip_grad_norm;
use crate::eval::batch_sums;
use crate::optim::Optim;

/// What a step leaves behind besides the updated model: its statistics, still on the device.
pub struct StepStats<B: AutodiffBackend> {
    /// Sum of the per-sample losses of the batch.
    pub loss_sum: Tensor<B::InnerBackend, 1>,
    /// Number of correct predictions in the batch.
    pub correct: Tensor<B::InnerBackend, 1, Int>,
    /// Global gradient norm before clipping (only computed when clipping).
    pub grad_norm: Option<f64>,
}

/// Trains `model` on one batch (`x`: `[n, features]`, `y`: `[n]`) with learning rate `lr`.
pub fn train_step<B: AutodiffBackend>(
    model: Classifier<B>,
    optim: &mut Optim<B>,
    x: Tensor<B, 2>,
    y: Tensor<B, 1, Int>,
    lr: f64,
    clip_norm: Option<f64>,
) -> (Classifier<B>, StepStats<B>) {
    let n = y.dims()[0];
    let (loss_sum, correct) = batch_sums(model.forward(x), y);
    let loss = loss_sum.clone().div_scalar(n as f64);
    let mut grads = GradientsParams::from_grads(loss.backward(), &model);
    let grad_norm = clip_norm.map(|max| clip_grad_norm(&model, &mut grads, max));
    let model = optim.step(lr, model, grads);
    let stats = StepStats {
        loss_sum: loss_sum.inner(),
        correct: correct.inner(),
        grad_norm,
    };
    (model, stats)
}
