//! Mixed precision: weights (and the optimizer) stay f32, the matrix products of the forward and
//! backward passes run in f16 or bf16, and everything else (norms, softmax, losses, residual
//! sums) in f32 — the policy of `torch.autocast`. burn's `cast` is differentiable, so gradients
//! flow back to the f32 weights in f32.

use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::{FloatDType, Tensor};
use kiln_core::config::Precision;

/// The dtype matrix products run in, or `None` for plain f32.
pub fn compute_dtype(p: Precision) -> Option<FloatDType> {
    match p {
        Precision::F32 => None,
        Precision::F16 => Some(FloatDType::F16),
        Precision::Bf16 => Some(FloatDType::BF16),
    }
}

/// `layer(x)` with the product in `precision`; the result is f32.
pub fn linear<B: Backend, const D: usize>(
    layer: &Linear<B>,
    x: Tensor<B, D>,
    precision: Precision,
) -> Tensor<B, D> {
    match compute_dtype(precision) {
        None => layer.forward(x),
        Some(dt) => burn::tensor::module::linear(
            x.cast(dt),
            layer.weight.val().cast(dt),
            layer.bias.as_ref().map(|b| b.val().cast(dt)),
        )
        .cast(FloatDType::F32),
    }
}

/// `a.matmul(b)` with the product in `precision`; the result is f32.
pub fn matmul<B: Backend, const D: usize>(
    a: Tensor<B, D>,
    b: Tensor<B, D>,
    precision: Precision,
) -> Tensor<B, D> {
    match compute_dtype(precision) {
        None => a.matmul(b),
        Some(dt) => a.cast(dt).matmul(b.cast(dt)).cast(FloatDType::F32),
    }
}
