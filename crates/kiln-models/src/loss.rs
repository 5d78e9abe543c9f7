//! Kiln's classification loss: summed cross-entropy with an exact gradient, and the count of
//! correct predictions.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

/// Sum of per-sample losses and number of correct predictions of one batch, left on the device.
pub fn batch_sums<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
) -> (Tensor<B, 1>, Tensor<B, 1, Int>) {
    let n = targets.dims()[0];
    let loss_sum = cross_entropy_sum(logits.clone(), targets.clone());
    let correct = logits.argmax(1).reshape([n]).equal(targets).int().sum();
    (loss_sum, correct)
}

/// Summed cross-entropy of `logits` (`[n, classes]`) against class indices.
///
/// Its value is the usual `logsumexp(z) - z[target]`; its gradient is built to be exactly
/// `softmax(z) - one_hot(target)`, the analytic derivative, instead of being propagated through
/// `log`. On burn 0.21's ndarray backend the derivative of `log` uses the CPU's approximate
/// reciprocal instruction (12 bits) on SIMD-aligned chunks and an exact division elsewhere, so the
/// chained gradient is both inexact and different from run to run (memory alignment varies).
/// This form is exact and reproducible on every backend, and cheaper.
pub fn cross_entropy_sum<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
) -> Tensor<B, 1> {
    let [n, classes] = logits.dims();
    let device = logits.device();
    let class_ids = Tensor::<B, 1, Int>::arange(0..classes as i64, &device)
        .reshape([1, classes])
        .expand([n, classes]);
    let one_hot = targets
        .reshape([n, 1])
        .expand([n, classes])
        .equal(class_ids)
        .float();
    // Shifting by the (detached) row maximum changes neither the value nor the gradient.
    let shifted = logits.clone() - logits.detach().max_dim(1);
    let exp = shifted.clone().detach().exp();
    let sum_exp = exp.clone().sum_dim(1);
    let probs = exp.div(sum_exp.clone());
    let log_sum_exp = sum_exp.log().sum();
    // d/dz of (probs - one_hot) · z, with probs constant, is probs - one_hot; adding the constant
    // logsumexp - probs · z makes the value the cross-entropy.
    let surrogate = (probs.clone() - one_hot.clone()).mul(shifted.clone()).sum();
    let constant = log_sum_exp - probs.mul(shifted.detach()).sum();
    surrogate + constant
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::activation::{log_softmax, softmax};
    use burn::tensor::TensorData;

    type B = Autodiff<Flex>;

    #[test]
    fn cross_entropy_value_and_gradient_are_the_textbook_ones() {
        let device = Default::default();
        let z: Vec<f32> = (0..12)
            .map(|i| ((i * 37) % 11) as f32 * 0.7 - 3.0)
            .collect();
        let logits = Tensor::<B, 2>::from_data(TensorData::new(z, [3, 4]), &device).require_grad();
        let targets =
            Tensor::<B, 1, Int>::from_data(TensorData::new(vec![2i64, 0, 3], [3]), &device);

        let loss = cross_entropy_sum(logits.clone(), targets.clone());
        let reference = log_softmax(logits.clone(), 1)
            .gather(1, targets.clone().reshape([3, 1]))
            .sum()
            .neg();
        let (a, b) = (loss.clone().into_scalar(), reference.into_scalar());
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");

        let grads = loss.backward();
        let got = logits
            .grad(&grads)
            .unwrap()
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let probs = softmax(logits.inner(), 1)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        for (i, (g, p)) in got.iter().zip(&probs).enumerate() {
            let target = [2, 0, 3][i / 4];
            let expected = p - if i % 4 == target { 1.0 } else { 0.0 };
            assert!(
                (g - expected).abs() < 1e-6,
                "element {i}: {g} vs {expected}"
            );
        }
    }
}
