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
    let dims = x.dims();
    let rows = dims[..D - 1].iter().product::<usize>();
    let x = x.reshape([rows, dims[D - 1]]);
    let bias = layer.bias.as_ref().map(|b| b.val());
    let y = affine(x, layer.weight.val(), bias, precision);
    let mut out = dims;
    out[D - 1] = y.dims()[1];
    y.reshape(out)
}

/// `x · weight + bias` for `x` `[rows, d_in]` and `weight` `[d_in, d_out]` (burn's `Linear`
/// layout, or a transposed view such as a tied output layer's), with the product in `precision`;
/// the result is f32.
///
/// In f32 on the CPU backends this is Kiln's kernel ([`kiln_kernels::linear::linear`]: the
/// products tiled over the threads, results written unzeroed, the bias added in the same pass);
/// elsewhere burn's `linear`.
pub fn affine<B: Backend>(
    x: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
    precision: Precision,
) -> Tensor<B, 2> {
    match compute_dtype(precision) {
        None => match kiln_kernels::linear::linear(x, weight, bias) {
            Ok(y) => y,
            Err((x, weight, bias)) => burn::tensor::module::linear(x, weight, bias),
        },
        Some(dt) => {
            burn::tensor::module::linear(x.cast(dt), weight.cast(dt), bias.map(|b| b.cast(dt)))
                .cast(FloatDType::F32)
        }
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
/// In f32 on the CPU backends, a stride-1, undilated, ungrouped convolution with a bias runs as
/// Kiln's kernel ([`kiln_kernels::conv::conv2d`]: per-image GEMMs forward and backward, images
/// in parallel), about twice as fast as burn-flex's and 15x burn-ndarray's in a CNN's training
/// step (`benches/results/cpu-profile.md`); same weights and checkpoints, the same result to
/// f32 rounding (a test). Everything else is burn's convolution.
pub fn conv2d<B: Backend>(
    layer: &Conv2d<B>,
    x: Tensor<B, 4>,
    padding: usize,
    precision: Precision,
) -> Tensor<B, 4> {
    let plain = layer.stride == [1, 1] && layer.dilation == [1, 1] && layer.groups == 1;
    let x = match (&layer.bias, compute_dtype(precision)) {
        (Some(bias), None) if plain => {
            match kiln_kernels::conv::conv2d(x, layer.weight.val(), bias.val(), padding) {
                Ok(y) => return y,
                Err((x, ..)) => x,
            }
        }
        _ => x,
    };
    let options = ConvOptions::new(
        layer.stride,
        [padding, padding],
        layer.dilation,
        layer.groups,
    );
    match compute_dtype(precision) {
        None => burn::tensor::module::conv2d(
            x,
            layer.weight.val(),
            layer.bias.as_ref().map(|b| b.val()),
            options,
        ),
        Some(dt) => burn::tensor::module::conv2d(
            x.cast(dt),
            layer.weight.val().cast(dt),
            layer.bias.as_ref().map(|b| b.val().cast(dt)),
            options,
        )
        .cast(FloatDType::F32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex, NdArray};
    use burn::tensor::backend::AutodiffBackend;
    use burn::tensor::TensorData;

    use crate::init::HostInit;

    /// Output and gradients (input, weight, bias) of `sum(r * conv(x))`, by Kiln's kernel or by
    /// burn.
    fn conv_and_grads<B: AutodiffBackend>(
        n: usize,
        c_in: usize,
        padding: usize,
        kiln: bool,
    ) -> Vec<Vec<f32>> {
        let device = Default::default();
        let (h, w, c_out, k) = (9, 8, 5, 3);
        let layer = HostInit::new(7).conv2d::<B>(c_in, c_out, k, padding, &device);
        let x: Vec<f32> = (0..n * c_in * h * w)
            .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let x =
            Tensor::<B, 4>::from_data(TensorData::new(x, [n, c_in, h, w]), &device).require_grad();
        let y = if kiln {
            let bias = layer.bias.as_ref().unwrap().val();
            kiln_kernels::conv::conv2d(x.clone(), layer.weight.val(), bias, padding)
                .unwrap_or_else(|_| panic!("a CPU backend"))
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

    fn kilns_matches_burns<B: AutodiffBackend>() {
        // Batches of one image, of an odd number (a group of the weight gradient's partial sums
        // is two images) and of several groups.
        for (n, c_in, padding) in [(1, 1, 0), (3, 1, 1), (3, 4, 1), (7, 3, 2)] {
            let ours = conv_and_grads::<B>(n, c_in, padding, true);
            let burn = conv_and_grads::<B>(n, c_in, padding, false);
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
    fn kilns_convolution_matches_burns_in_output_and_gradients() {
        assert!(kiln_kernels::op::has_kernels::<Autodiff<Flex>>());
        kilns_matches_burns::<Autodiff<Flex>>();
        kilns_matches_burns::<Autodiff<NdArray>>();
    }

    #[test]
    fn kilns_convolution_gives_the_same_bits_on_one_thread_and_on_many() {
        let on = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| conv_and_grads::<Autodiff<Flex>>(9, 3, 1, true))
        };
        assert_eq!(on(1), on(3));
    }

    #[test]
    fn a_frozen_input_gives_the_same_weight_gradient() {
        type A = Autodiff<Flex>;
        let device = Default::default();
        let layer = HostInit::new(5).conv2d::<A>(2, 3, 3, 1, &device);
        let data = TensorData::new(
            (0..3 * 2 * 6 * 5).map(|i| (i % 9) as f32 - 4.0).collect(),
            [3, 2, 6, 5],
        );
        let weight_grad = |x: Tensor<A, 4>| {
            let grads = conv2d(&layer, x, 1, Precision::F32)
                .powi_scalar(2)
                .sum()
                .backward();
            layer.weight.grad(&grads).unwrap().into_data()
        };
        let frozen = weight_grad(Tensor::from_data(data.clone(), &device));
        let tracked = weight_grad(Tensor::from_data(data, &device).require_grad());
        assert_eq!(frozen, tracked);
    }

    #[test]
    fn inference_runs_the_kernel_and_matches_burn() {
        let device = Default::default();
        let layer = HostInit::new(3).conv2d::<Flex>(2, 3, 3, 1, &device);
        let x = Tensor::<Flex, 4>::from_data(
            TensorData::new(
                (0..2 * 2 * 5 * 5).map(|i| i as f32 / 50.0).collect(),
                [2, 2, 5, 5],
            ),
            &device,
        );
        let ours = conv2d(&layer, x.clone(), 1, Precision::F32).into_data();
        let burn = layer.forward(x).into_data();
        ours.assert_approx_eq::<f32>(&burn, burn::tensor::Tolerance::absolute(1e-5));
    }
}
