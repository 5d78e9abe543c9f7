//! One optimizer step: forward, loss and backward over each micro-batch (gradients summed),
//! optional clipping, update. The training loop and the throughput benchmark both run exactly
//! this.

use anyhow::Result;
use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use kiln_dist::Communicator;
use kiln_models::TrainModel;

use crate::allreduce::all_reduce_grads;
use crate::clip::{clip_grad_norm, grad_squared_norm, scale_grads};
use crate::optim::Optim;
use crate::scaler::LossScale;

/// What a step leaves behind besides the updated model: its statistics, still on the device.
pub struct StepStats<B: AutodiffBackend> {
    /// Sum of the per-target losses of all micro-batches.
    pub loss_sum: Tensor<B::InnerBackend, 1>,
    /// The model's named sums ([`TrainModel::sum_names`]) over all micro-batches.
    pub sums: Vec<Tensor<B::InnerBackend, 1>>,
    /// Global gradient norm before clipping (only computed when clipping).
    pub grad_norm: Option<f64>,
    /// Seconds spent in the gradient all-reduce (data-parallel workers only).
    pub comm_secs: f64,
}

/// Trains `model` on the micro-batches `micro` as one batch of `total` targets: each
/// micro-batch's loss is its summed loss divided by `total`, so the summed gradients are those of
/// the mean loss over the whole batch, as if it were one batch.
///
/// With a `scaler` (f16), the loss is scaled before the backward pass and the gradients unscaled
/// after it; a step whose gradients overflowed leaves the model and optimizer untouched.
///
/// Data-parallel workers pass their `comm`, and as `total` the targets of the whole batch of all
/// workers (`micro` is this worker's shard, possibly empty: leave out empty micro-batches); the
/// gradients are summed over the workers before the overflow check, clipping and the update, so
/// every worker takes the same step.
#[allow(clippy::too_many_arguments)]
pub fn train_step<B: AutodiffBackend, M: TrainModel<B> + AutodiffModule<B>>(
    model: M,
    optim: &mut Optim<B>,
    micro: Vec<M::Batch>,
    total: usize,
    lr: f64,
    clip_norm: Option<f64>,
    scaler: Option<&mut LossScale>,
    comm: Option<&mut dyn Communicator<B::InnerBackend>>,
) -> Result<(M, StepStats<B>)> {
    let loss_factor = scaler.as_ref().map_or(1.0, |s| s.scale);
    let count = micro.len();
    let single = count == 1;
    let mut accumulator = GradientsAccumulator::<M>::new();
    let mut grads = GradientsParams::new();
    let mut loss_total: Option<Tensor<B::InnerBackend, 1>> = None;
    let mut sums_total: Option<Vec<Tensor<B::InnerBackend, 1>>> = None;
    for batch in micro {
        let out = model.loss(batch);
        let loss = out.loss_sum.clone().mul_scalar(loss_factor / total as f64);
        let g = GradientsParams::from_grads(loss.backward(), &model);
        if single {
            grads = g;
        } else {
            accumulator.accumulate(&model, g);
        }
        let l = out.loss_sum.inner();
        loss_total = Some(loss_total.map_or(l.clone(), |t| t + l));
        let sums = out.sums.into_iter().map(|s| s.inner());
        sums_total = Some(match sums_total {
            None => sums.collect(),
            Some(t) => t.into_iter().zip(sums).map(|(t, s)| t + s).collect(),
        });
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
    let names = if sums_total.is_none() {
        model.sum_names().len()
    } else {
        0
    };
    let stats = |grad_norm| StepStats {
        loss_sum: loss_total.unwrap_or_else(|| Tensor::zeros([1], &device)),
        sums: sums_total.unwrap_or_else(|| vec![Tensor::zeros([1], &device); names]),
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
