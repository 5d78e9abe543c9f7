//! One optimizer step: forward, loss and backward over each micro-batch (gradients summed),
//! optional clipping, update. The training loop and the throughput benchmark both run exactly
//! this.

use anyhow::Result;
use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, Tensor};
use kiln_dist::Communicator;
use kiln_models::{Input, Model};

use crate::allreduce::all_reduce_grads;
use crate::clip::{clip_grad_norm, grad_squared_norm, scale_grads};
use crate::eval::batch_sums;
use crate::optim::Optim;
use crate::scaler::LossScale;

/// What a step leaves behind besides the updated model: its statistics, still on the device.
pub struct StepStats<B: AutodiffBackend> {
    /// Sum of the per-target losses of all micro-batches.
    pub loss_sum: Tensor<B::InnerBackend, 1>,
    /// Number of correct predictions.
    pub correct: Tensor<B::InnerBackend, 1, Int>,
    /// Global gradient norm before clipping (only computed when clipping).
    pub grad_norm: Option<f64>,
    /// Seconds spent in the gradient all-reduce (data-parallel workers only).
    pub comm_secs: f64,
}

/// Trains `model` on the micro-batches `micro` (inputs and `[n]` targets) as one batch: each
/// micro-batch's loss is its summed loss divided by the targets of all of them, so the summed
/// gradients are those of the mean loss over the whole batch, as if it were one batch.
///
/// With a `scaler` (f16), the loss is scaled before the backward pass and the gradients unscaled
/// after it; a step whose gradients overflowed leaves the model and optimizer untouched.
///
/// Data-parallel workers pass their `comm`, and as `total` the targets of the whole batch of all
/// workers (`micro` is this worker's shard, possibly empty); the gradients are summed over the
/// workers before the overflow check, clipping and the update, so every worker takes the same
/// step. Alone, `total` is `None` (the targets of `micro`).
#[allow(clippy::too_many_arguments)]
pub fn train_step<B: AutodiffBackend>(
    model: Model<B>,
    optim: &mut Optim<B>,
    micro: Vec<(Input<B>, Tensor<B, 1, Int>)>,
    total: Option<usize>,
    lr: f64,
    clip_norm: Option<f64>,
    scaler: Option<&mut LossScale>,
    comm: Option<&mut dyn Communicator<B::InnerBackend>>,
) -> Result<(Model<B>, StepStats<B>)> {
    let loss_factor = scaler.as_ref().map_or(1.0, |s| s.scale);
    let micro: Vec<_> = micro.into_iter().filter(|(_, y)| y.dims()[0] > 0).collect();
    let total = total.unwrap_or_else(|| micro.iter().map(|(_, y)| y.dims()[0]).sum());
    let count = micro.len();
    let single = count == 1;
    let mut accumulator = GradientsAccumulator::<Model<B>>::new();
    let mut grads = GradientsParams::new();
    let mut loss_total: Option<Tensor<B::InnerBackend, 1>> = None;
    let mut correct_total: Option<Tensor<B::InnerBackend, 1, Int>> = None;
    for (x, y) in micro {
        let (loss_sum, correct) = batch_sums(model.forward(x), y);
        let loss = loss_sum.clone().mul_scalar(loss_factor / total as f64);
        let g = GradientsParams::from_grads(loss.backward(), &model);
        if single {
            grads = g;
        } else {
            accumulator.accumulate(&model, g);
        }
        let (l, c) = (loss_sum.inner(), correct.inner());
        loss_total = Some(loss_total.map_or(l.clone(), |t| t + l));
        correct_total = Some(correct_total.map_or(c.clone(), |t| t + c));
    }
    if count > 1 {
        grads = accumulator.grads();
    }
    let mut comm_secs = 0.0;
    if let Some(comm) = comm {
        let started = std::time::Instant::now();
        grads = all_reduce_grads(&model, grads, comm, "the gradient all-reduce")?;
        comm_secs = started.elapsed().as_secs_f64();
    }
    let device = model
        .devices()
        .into_iter()
        .next()
        .expect("a model lives on a device");
    let stats = |grad_norm| StepStats {
        loss_sum: loss_total.unwrap_or_else(|| Tensor::zeros([1], &device)),
        correct: correct_total.unwrap_or_else(|| Tensor::zeros([1], &device)),
        grad_norm,
        comm_secs,
    };
    if let Some(scaler) = scaler {
        let finite = grad_squared_norm(&model, &grads).is_finite();
        if !scaler.update(finite) {
            return Ok((model, stats(None)));
        }
        scale_grads(&model, &mut grads, 1.0 / loss_factor);
    }
    let grad_norm = clip_norm.map(|max| clip_grad_norm(&model, &mut grads, max));
    let model = optim.step(lr, model, grads);
    Ok((model, stats(grad_norm)))
}
