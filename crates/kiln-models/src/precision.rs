//! Mixed precision: weights (and the optimizer) stay f32, the matrix products of the forward and
//! backward passes run in f16 or bf16, and everything else (norms, softmax, losses, residual
//! sums) in f32 — the policy of `torch.autocast`. burn's `cast` is differentiable, so gradients
//! flow back to the f32 weights in f32.

use burn::nn::conv::Conv2d;
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::ops::ConvOptions;
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

/// `layer(x)` for a convolution with symmetric zero `padding`, with the convolution in
/// `precision`; the result is f32.
pub fn conv2d<B: Backend>(
    layer: &Conv2d<B>,
    x: Tensor<B, 4>,
    padding: usize,
    precision: Precision,
) -> Tensor<B, 4> {
    match compute_dtype(precision) {
        None => layer.forward(x),
        Some(dt) => burn::tensor::module::conv2d(
            x.cast(dt),
            layer.weight.val().cast(dt),
            layer.bias.as_ref().map(|b| b.val().cast(dt)),
            ConvOptions::new(
                layer.stride,
                [padding, padding],
                layer.dilation,
                layer.groups,
            ),
        )
        .cast(FloatDType::F32),
    }
}
