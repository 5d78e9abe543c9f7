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
///
/// Inputs of rank 3 and more (`[batch, t, d]`) are multiplied as one `[batch * t, d]` matrix:
/// burn's `linear` broadcasts the weight and runs one small product per batch entry (and sums
/// `batch` weight gradients), where one large product uses the CPU's threads and blocking.
pub fn linear<B: Backend, const D: usize>(
    layer: &Linear<B>,
    x: Tensor<B, D>,
    precision: Precision,
) -> Tensor<B, D> {
    if D > 2 {
        let dims = x.dims();
        let rows = dims[..D - 1].iter().product::<usize>();
        let y = linear(layer, x.reshape([rows, dims[D - 1]]), precision);
        let mut out = dims;
        out[D - 1] = y.dims()[1];
        return y.reshape(out);
    }
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
///
/// On ndarray, whose own convolution is about 15x slower, the convolution is lowered to matrix
/// products ([`conv2d_lowered`]); flex keeps burn's convolution, which is faster there than the
/// lowering (`benches/results/cpu-profile.md`).
pub fn conv2d<B: Backend>(
    layer: &Conv2d<B>,
    x: Tensor<B, 4>,
    padding: usize,
    precision: Precision,
) -> Tensor<B, 4> {
    if compute_dtype(precision).is_none() && kiln_kernels::im2col::lowering_pays::<B>() {
        if let Some(y) = conv2d_lowered(layer, x.clone(), padding) {
            return y;
        }
    }
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

/// A stride-1, undilated, ungrouped f32 convolution as one matrix product of the input's patches
/// ([`kiln_kernels::im2col`]) with the weight as `[c_out, c_in * k * k]`: one large
/// multi-threaded GEMM forward and two backward. Same weights and checkpoints as
/// `layer.forward`, the same result to f32 rounding (a test). `None` on backends without the
/// patch kernel (the GPUs) and for other convolutions.
pub fn conv2d_lowered<B: Backend>(
    layer: &Conv2d<B>,
    x: Tensor<B, 4>,
    padding: usize,
) -> Option<Tensor<B, 4>> {
    let [c_out, c_in, kh, kw] = layer.weight.dims();
    if kh != kw || layer.stride != [1, 1] || layer.dilation != [1, 1] || layer.groups != 1 {
        return None;
    }
    let [n, _, h, w] = x.dims();
    let patches = kiln_kernels::im2col::im2col(x, kh, padding)?;
    let (ho, wo) = (h + 2 * padding + 1 - kh, w + 2 * padding + 1 - kw);
    let weight = layer.weight.val().reshape([c_out, c_in * kh * kw]);
    let mut y = patches.matmul(weight.transpose());
    if let Some(bias) = &layer.bias {
        y = y + bias.val().reshape([1, c_out]);
    }
    Some(y.reshape([n, ho, wo, c_out]).permute([0, 3, 1, 2]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex, NdArray};
    use burn::tensor::backend::AutodiffBackend;
    use burn::tensor::TensorData;

    use crate::init::HostInit;

    /// Output and gradients (input, weight, bias) of `sum(r * conv(x))`, lowered or by burn.
    fn conv_and_grads<B: AutodiffBackend>(
        c_in: usize,
        padding: usize,
        lowered: bool,
    ) -> Vec<Vec<f32>> {
        let device = Default::default();
        let (n, h, w, c_out, k) = (3, 9, 8, 5, 3);
        let layer = HostInit::new(7).conv2d::<B>(c_in, c_out, k, padding, &device);
        let x: Vec<f32> = (0..n * c_in * h * w)
            .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let x =
            Tensor::<B, 4>::from_data(TensorData::new(x, [n, c_in, h, w]), &device).require_grad();
        let y = if lowered {
            conv2d_lowered(&layer, x.clone(), padding).expect("a CPU backend")
        } else {
            layer.forward(x.clone())
        };
        let dims = y.dims();
        let r: Vec<f32> = (0..dims.iter().product())
            .map(|i| ((i * 13) % 17) as f32 - 8.0)
            .collect();
        let r = Tensor::<B, 4>::from_data(TensorData::new(r, dims), &device);
        let grads = (y.clone() * r).sum().backward();
        let flat = |t: Tensor<B::InnerBackend, 4>| t.into_data().to_vec::<f32>().unwrap();
        vec![
            flat(y.inner()),
            flat(x.grad(&grads).unwrap()),
            flat(layer.weight.grad(&grads).unwrap()),
            layer
                .bias
                .as_ref()
                .unwrap()
                .grad(&grads)
                .unwrap()
                .into_data()
                .to_vec::<f32>()
                .unwrap(),
        ]
    }

    fn lowered_matches_burn<B: AutodiffBackend>() {
        for (c_in, padding) in [(1, 0), (1, 1), (4, 1), (3, 2)] {
            let ours = conv_and_grads::<B>(c_in, padding, true);
            let burn = conv_and_grads::<B>(c_in, padding, false);
            for (what, (a, b)) in ["output", "input grad", "weight grad", "bias grad"]
                .iter()
                .zip(ours.iter().zip(&burn))
            {
                assert_eq!(a.len(), b.len(), "{what}");
                let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                for (x, y) in a.iter().zip(b) {
                    assert!(
                        (x - y).abs() <= 1e-5 * scale.max(y.abs()),
                        "{what} (c_in {c_in}, padding {padding}): {x} vs {y}"
                    );
                }
            }
        }
    }

    #[test]
    fn lowered_convolution_matches_burns_in_output_and_gradients() {
        assert!(kiln_kernels::op::has_kernels::<Autodiff<Flex>>());
        lowered_matches_burn::<Autodiff<Flex>>();
        lowered_matches_burn::<Autodiff<NdArray>>();
    }
}
