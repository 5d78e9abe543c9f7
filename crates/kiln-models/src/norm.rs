//! Batch normalization as the CNN and the ResNet run it: burn's `BatchNorm` module holds the
//! parameters and running statistics (so checkpoints keep their layout), and on the CPU backends
//! Kiln's kernels compute it ([`kiln_kernels::batch_norm`]); elsewhere the module's own forward.

use burn::nn::BatchNorm;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use kiln_kernels::batch_norm::{self, Moments};

/// `norm(x)` for `x` `[n, channels, ...]`, exactly as burn's module defines it: under autodiff
/// with the batch's statistics (and the running averages updated with them, `momentum` of the
/// batch's), otherwise with the running averages.
pub fn batch_norm<B: Backend, const D: usize>(
    norm: &BatchNorm<B>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    let (gamma, beta) = (norm.gamma.val(), norm.beta.val());
    if B::ad_enabled(&x.device()) {
        return match batch_norm::train(x, gamma, beta, norm.epsilon) {
            Ok((y, moments)) => {
                update_running(norm, &moments, &y.device());
                y
            }
            Err(x) => norm.forward(x),
        };
    }
    if !kiln_kernels::op::has_kernels::<B>() {
        // A GPU backend: no round trip of the running statistics to the host.
        return norm.forward(x);
    }
    let moments = Moments {
        mean: host(norm.running_mean.value()),
        var: host(norm.running_var.value()),
    };
    batch_norm::infer(x, gamma, beta, &moments, norm.epsilon).unwrap_or_else(|x| norm.forward(x))
}

/// `running = (1 - momentum) running + momentum batch`, for the mean and the variance, with
/// burn's module's tensor operations.
fn update_running<B: Backend>(norm: &BatchNorm<B>, moments: &Moments, device: &B::Device) {
    let m = norm.momentum;
    let blend = |running: Tensor<B, 1>, batch: &[f32]| {
        let batch =
            Tensor::<B, 1>::from_data(TensorData::new(batch.to_vec(), [batch.len()]), device);
        running
            .to_device(device)
            .mul_scalar(1.0 - m)
            .add(batch.mul_scalar(m))
            .detach()
    };
    norm.running_mean
        .update(blend(norm.running_mean.value_sync(), &moments.mean));
    norm.running_var
        .update(blend(norm.running_var.value_sync(), &moments.var));
}

fn host<B: Backend>(t: Tensor<B, 1>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .to_vec()
        .unwrap_or_else(|e| unreachable!("a float tensor converts to f32: {e:?}"))
}
