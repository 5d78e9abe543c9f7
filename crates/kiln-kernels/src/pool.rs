//! 2-D max pooling with non-overlapping windows (kernel = stride, no padding) on the CPU
//! backends, forward and backward.
//!
//! burn-flex's max-pool backward pass runs on one thread over a zeroed buffer, the largest serial
//! part of a small CNN's step after the convolutions became Kiln's. Here both passes run one
//! plane (image and channel) per task: the forward pass keeps each window's argmax (its first
//! maximum in row-major order, as burn's), and the backward pass writes each gradient onto its
//! argmax, every other input position zero.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
use rayon::prelude::*;

use crate::op::{has_kernels, host, on_cpu_autodiff, par_new, zeros, AutodiffNode};

/// `max_pool2d(x)` over `k x k` windows with stride `k` and no padding (the output `h / k` by
/// `w / k`, a remainder dropped), for an `f32` `x` `[n, c, h, w]`, on the CPU backends
/// (differentiable under their autodiff). `x` comes back as `Err` on other backends and dtypes;
/// the caller then takes burn's max-pool.
pub fn max_pool2d<B: Backend>(x: Tensor<B, 4>, k: usize) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
    let [n, c, h, w] = x.dims();
    let pool = Pool {
        planes: n * c,
        h,
        w,
        k,
    };
    let fits = (1..=16).contains(&k) && h / k * (w / k) * n * c > 0;
    if !fits || x.dtype() != DType::F32 || !has_kernels::<B>() {
        return Err(x);
    }
    let x = match on_cpu_autodiff(pool, x) {
        Ok(y) => return Ok(y),
        Err(x) => x,
    };
    if B::ad_enabled(&x.device()) {
        return Err(x);
    }
    Ok(pool.forward_tensor(x).0)
}

/// One pooling: `planes` planes of `h x w` in windows of `k x k`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pool {
    planes: usize,
    h: usize,
    w: usize,
    k: usize,
}

impl Pool {
    /// The output height and width.
    fn output(&self) -> (usize, usize) {
        (self.h / self.k, self.w / self.k)
    }

    /// The output as a tensor of the CPU backend `B` (its shape is `x`'s with the pooled height
    /// and width), and each output's argmax as its place in the window (`kh * k + kw`).
    fn forward_tensor<B: Backend>(self, x: Tensor<B, 4>) -> (Tensor<B, 4>, Vec<u8>) {
        let [n, c, ..] = x.dims();
        let device = x.device();
        let x = host(x);
        let x = x.as_slice();
        let (ho, wo) = self.output();
        let (k, w, plane) = (self.k, self.w, self.h * self.w);
        let mut y = zeros(self.planes * ho * wo);
        let mut argmax = vec![0u8; y.len()];
        y.par_chunks_mut(ho * wo)
            .zip(argmax.par_chunks_mut(ho * wo))
            .enumerate()
            .for_each(|(p, (y, arg))| {
                let x = &x[p * plane..][..plane];
                for (o, (y, arg)) in y.iter_mut().zip(arg).enumerate() {
                    let corner = (o / wo) * k * w + (o % wo) * k;
                    let (mut best, mut at) = (x[corner], 0);
                    for kh in 0..k {
                        for (kw, &v) in x[corner + kh * w..][..k].iter().enumerate() {
                            if v > best {
                                (best, at) = (v, kh * k + kw);
                            }
                        }
                    }
                    (*y, *arg) = (best, at as u8);
                }
            });
        let y = Tensor::from_data(TensorData::new(y, [n, c, ho, wo]), &device);
        (y, argmax)
    }

    /// The input's gradient from `dy`, the output's: each onto its window's argmax.
    fn backward(&self, argmax: &[u8], dy: &[f32]) -> Vec<f32> {
        let (ho, wo) = self.output();
        let (k, w) = (self.k, self.w);
        par_new(
            self.planes * self.h * w,
            self.h * w,
            || (),
            |_, p, dx| {
                let range = p * ho * wo..(p + 1) * ho * wo;
                for (o, (&g, &at)) in dy[range.clone()].iter().zip(&argmax[range]).enumerate() {
                    let (kh, kw) = (at as usize / k, at as usize % k);
                    dx[((o / wo) * k + kh) * w + (o % wo) * k + kw] = g;
                }
            },
        )
    }
}

impl AutodiffNode<4, 4> for Pool {
    fn record<IB: Backend>(self, x: Tensor<Autodiff<IB>, 4>) -> Tensor<Autodiff<IB>, 4> {
        let x = x.into_primitive().tensor();
        let (y, argmax) = self.forward_tensor(Tensor::<IB, 4>::from_primitive(
            TensorPrimitive::Float(x.primitive.clone()),
        ));
        let y = y.into_primitive().tensor();
        let out = match PoolBackward
            .prepare::<NoCheckpointing>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((self, Arc::new(argmax)), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        Tensor::from_primitive(TensorPrimitive::Float(out))
    }
}

/// The autodiff node; its state is the pooling and the argmaxes.
#[derive(Debug)]
struct PoolBackward;

impl<IB: Backend> Backward<IB, 1> for PoolBackward {
    type State = (Pool, Arc<Vec<u8>>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (pool, argmax) = ops.state;
        unary::<IB, _>(ops.parents, ops.node, grads, |grad| {
            let dy = host(Tensor::<IB, 4>::from_primitive(TensorPrimitive::Float(
                grad,
            )));
            let [n, c, ..] = <[usize; 4]>::try_from(dy.shape()).expect("a rank-4 gradient");
            let device = dy.device();
            let dx = pool.backward(&argmax, dy.as_slice());
            IB::float_from_data(TensorData::new(dx, [n, c, pool.h, pool.w]), &device)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Flex, NdArray};
    use burn::nn::pool::MaxPool2dConfig;
    use burn::tensor::backend::AutodiffBackend;

    /// Output and input gradient of `sum(r * max_pool2d(x))`, Kiln's or burn's.
    fn run<B: AutodiffBackend>(dims: [usize; 4], k: usize, kiln: bool) -> [Vec<f32>; 2] {
        let device = Default::default();
        let len: usize = dims.iter().product();
        // Distinct values in every window (a permutation), so the argmax is unique.
        let x: Vec<f32> = (0..len)
            .map(|i| ((i * 7919) % len) as f32 - len as f32 / 2.0)
            .collect();
        let x = Tensor::<B, 4>::from_data(TensorData::new(x, dims), &device).require_grad();
        let y = if kiln {
            max_pool2d(x.clone(), k).unwrap_or_else(|_| panic!("a CPU backend"))
        } else {
            MaxPool2dConfig::new([k, k])
                .with_strides([k, k])
                .init()
                .forward(x.clone())
        };
        let [.., ho, wo] = y.dims();
        let r: Vec<f32> = (0..dims[0] * dims[1] * ho * wo)
            .map(|i| (i % 13) as f32 - 6.0)
            .collect();
        let r = Tensor::<B, 4>::from_data(TensorData::new(r, [dims[0], dims[1], ho, wo]), &device);
        let grads = (y.clone() * r).sum().backward();
        [
            y.inner().into_data().to_vec::<f32>().unwrap(),
            x.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap(),
        ]
    }

    fn matches_burn<B: AutodiffBackend>() {
        for (dims, k) in [([2, 3, 6, 6], 2), ([1, 2, 7, 5], 2), ([2, 1, 9, 9], 3)] {
            assert_eq!(
                run::<B>(dims, k, true),
                run::<B>(dims, k, false),
                "{dims:?} k {k}"
            );
        }
    }

    #[test]
    fn max_pool_matches_burns_in_output_and_gradient() {
        matches_burn::<Autodiff<Flex>>();
        matches_burn::<Autodiff<NdArray>>();
    }

    #[test]
    fn ties_and_nan_pick_what_burn_picks() {
        // Ties go to the first maximum in row-major order; NaN wins only in the first place.
        let x = [1.0, 3.0, 3.0, 0.0, f32::NAN, 2.0, 5.0, f32::NAN];
        let x = Tensor::<Flex, 4>::from_data(
            TensorData::new(x.to_vec(), [2, 1, 2, 2]),
            &Default::default(),
        );
        let ours = max_pool2d(x.clone(), 2).unwrap_or_else(|_| panic!("flex"));
        let theirs = MaxPool2dConfig::new([2, 2])
            .with_strides([2, 2])
            .init()
            .forward(x);
        let (a, b) = (
            ours.into_data().to_vec::<f32>().unwrap(),
            theirs.into_data().to_vec::<f32>().unwrap(),
        );
        assert_eq!(a[0], b[0]);
        assert!(a[1].is_nan() && b[1].is_nan());
    }
}
