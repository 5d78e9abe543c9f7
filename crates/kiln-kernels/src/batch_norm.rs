//! Batch normalization over the channels of `[n, c, ...]`, forward and backward, a few threaded
//! passes over the planes.
//!
//! burn's `BatchNorm` normalizes by broadcasting `[1, c, 1, 1]` statistics over the input, and
//! burn-flex runs every broadcast operation (subtract, divide, scale, shift, and each one's
//! backward) through its generic strided iterator: in a ResNet on Fashion-MNIST those were 85% of
//! a training step and nearly all of evaluation. Here, with `s` the product of the dimensions
//! after the channel and `M = n s` the values per channel:
//!
//! - training ([`train`]): each channel's mean and (biased) variance over its `M` values,
//!   accumulated in `f64`, then `y = (x - μ) / σ · γ + β` with `σ = √(var + ε)`, plane by plane;
//!   the statistics come back for the caller's running averages;
//! - its backward pass: per channel `dβ = Σ dy`, `dγ = Σ dy x̂`, then
//!   `dx = γ / σ (dy - dβ / M - x̂ dγ / M)` (the gradient through the batch statistics);
//! - inference ([`infer`]): the same normalization with given (running) statistics.
//!
//! Channels (for the sums) and planes (for the element-wise passes) run in parallel; each
//! channel's sums run over its planes in order, so results do not depend on the thread count.

use std::any::TypeId;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
use rayon::prelude::*;

use crate::op::{has_kernels, host, matched, zeros};

/// A channel's batch statistics: its mean and biased variance (what running averages take).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Moments {
    /// Per channel, the mean over the batch and the positions.
    pub mean: Vec<f32>,
    /// Per channel, the mean squared deviation from [`Moments::mean`].
    pub var: Vec<f32>,
}

/// `(x - μ) / √(var + ε) · gamma + beta` with each channel's (dimension 1) mean and variance over
/// the batch and the other dimensions, as burn's `BatchNorm` computes in training, and those
/// statistics; on the CPU backends (differentiable under their autodiff). `x` comes back as
/// `Err` on other backends and for shapes this does not cover; the caller then takes burn's
/// module.
pub fn train<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    epsilon: f64,
) -> Result<(Tensor<B, D>, Moments), Tensor<B, D>> {
    let Some(norm) =
        Norm::of(&x.dims(), &gamma, &beta, epsilon).filter(|_| x.dtype() == DType::F32)
    else {
        return Err(x);
    };
    if !has_kernels::<B>() {
        return Err(x);
    }
    #[cfg(feature = "flex")]
    let x = match on_autodiff::<B, burn::backend::Flex, D>(norm, x, &gamma, &beta) {
        Ok(out) => return Ok(out),
        Err(x) => x,
    };
    #[cfg(feature = "ndarray")]
    let x = match on_autodiff::<B, burn::backend::NdArray, D>(norm, x, &gamma, &beta) {
        Ok(out) => return Ok(out),
        Err(x) => x,
    };
    if B::ad_enabled(&x.device()) {
        return Err(x);
    }
    let (y, moments, _) = norm.forward_tensor(x, gamma, beta, None);
    Ok((y, moments))
}

/// `(x - mean) / √(var + ε) · gamma + beta` per channel (dimension 1) with the given statistics,
/// as burn's `BatchNorm` computes in inference, on the CPU backends without autodiff; `x` comes
/// back as `Err` elsewhere.
pub fn infer<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    moments: &Moments,
    epsilon: f64,
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    let Some(norm) =
        Norm::of(&x.dims(), &gamma, &beta, epsilon).filter(|_| x.dtype() == DType::F32)
    else {
        return Err(x);
    };
    let fits = moments.mean.len() == norm.c && moments.var.len() == norm.c;
    if !fits || !has_kernels::<B>() || B::ad_enabled(&x.device()) {
        return Err(x);
    }
    Ok(norm.forward_tensor(x, gamma, beta, Some(moments)).0)
}

fn on_autodiff<B: Backend, IB: Backend, const D: usize>(
    norm: Norm,
    x: Tensor<B, D>,
    gamma: &Tensor<B, 1>,
    beta: &Tensor<B, 1>,
) -> Result<(Tensor<B, D>, Moments), Tensor<B, D>> {
    if TypeId::of::<B>() != TypeId::of::<Autodiff<IB>>() {
        return Err(x);
    }
    let (y, moments) = autodiff::<IB, D>(
        norm,
        matched(x),
        matched(gamma.clone()),
        matched(beta.clone()),
    );
    Ok((matched(y), moments))
}

fn autodiff<IB: Backend, const D: usize>(
    norm: Norm,
    x: Tensor<Autodiff<IB>, D>,
    gamma: Tensor<Autodiff<IB>, 1>,
    beta: Tensor<Autodiff<IB>, 1>,
) -> (Tensor<Autodiff<IB>, D>, Moments) {
    let x = x.into_primitive().tensor();
    let gamma = gamma.into_primitive().tensor();
    let beta = beta.into_primitive().tensor();
    let inner1 = |p| Tensor::<IB, 1>::from_primitive(TensorPrimitive::Float(p));
    let (y, moments, rstd) = norm.forward_tensor(
        Tensor::<IB, D>::from_primitive(TensorPrimitive::Float(x.primitive.clone())),
        inner1(gamma.primitive.clone()),
        inner1(beta.primitive),
        None,
    );
    let y = y.into_primitive().tensor();
    let state = State {
        norm,
        x: x.primitive,
        gamma: gamma.primitive,
        mean: moments.mean.clone(),
        rstd,
    };
    let out = match NormBackward
        .prepare::<NoCheckpointing>([x.node, gamma.node, beta.node])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(state, y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    (Tensor::from_primitive(TensorPrimitive::Float(out)), moments)
}

/// What the backward pass keeps: the input, `γ`, and each channel's mean and `1 / σ`.
#[derive(Clone, Debug)]
struct State<P> {
    norm: Norm,
    x: P,
    gamma: P,
    mean: Vec<f32>,
    rstd: Vec<f32>,
}

/// The autodiff node: parents `x`, `γ`, `β`.
#[derive(Debug)]
struct NormBackward;

impl<IB: Backend> Backward<IB, 3> for NormBackward {
    type State = State<IB::FloatTensorPrimitive>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_node, gamma_node, beta_node] = ops.parents;
        let dy = grads.consume::<IB>(&ops.node);
        let state = ops.state;
        let shape = {
            use burn::tensor::TensorMetadata;
            dy.shape().to_vec()
        };
        let flat = |p| host(Tensor::<IB, 1>::from_primitive(TensorPrimitive::Float(p)));
        let (dy, x, gamma) = (flat(dy), flat(state.x), flat(state.gamma));
        let device = dy.device();
        let (dx, dgamma, dbeta) = state.norm.backward(
            x.as_slice(),
            gamma.as_slice(),
            (&state.mean, &state.rstd),
            dy.as_slice(),
            x_node.is_some(),
        );
        let tensor = |values: Vec<f32>, shape: Vec<usize>| {
            IB::float_from_data(TensorData::new(values, shape), &device)
        };
        let c = state.norm.c;
        if let (Some(node), Some(dx)) = (x_node, dx) {
            grads.register::<IB>(node.id, tensor(dx, shape));
        }
        if let Some(node) = gamma_node {
            grads.register::<IB>(node.id, tensor(dgamma, vec![c]));
        }
        if let Some(node) = beta_node {
            grads.register::<IB>(node.id, tensor(dbeta, vec![c]));
        }
    }
}

/// One batch normalization: `n` images of `c` channels of `s` values each, and its epsilon.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Norm {
    n: usize,
    c: usize,
    s: usize,
    epsilon: f64,
}

impl Norm {
    /// The normalization of an input of shape `dims` with these `gamma` and `beta`, when it is
    /// one this module covers.
    fn of<B: Backend>(
        dims: &[usize],
        gamma: &Tensor<B, 1>,
        beta: &Tensor<B, 1>,
        epsilon: f64,
    ) -> Option<Self> {
        let (n, c) = (*dims.first()?, *dims.get(1)?);
        let s = dims[2..].iter().product::<usize>();
        let f32s = [gamma.dtype(), beta.dtype()] == [DType::F32; 2];
        let fits = n * c * s > 0 && gamma.dims() == [c] && beta.dims() == [c] && f32s;
        fits.then_some(Self { n, c, s, epsilon })
    }

    /// The output as a tensor of the CPU backend `B`, the statistics it used (the batch's unless
    /// `given`), and each channel's `1 / σ`.
    fn forward_tensor<B: Backend, const D: usize>(
        self,
        x: Tensor<B, D>,
        gamma: Tensor<B, 1>,
        beta: Tensor<B, 1>,
        given: Option<&Moments>,
    ) -> (Tensor<B, D>, Moments, Vec<f32>) {
        let device = x.device();
        let dims = x.dims();
        let (x, gamma, beta) = (host(x), host(gamma), host(beta));
        let moments = match given {
            Some(m) => m.clone(),
            None => self.moments(x.as_slice()),
        };
        let rstd: Vec<f32> = moments
            .var
            .iter()
            .map(|&v| (1.0 / (v as f64 + self.epsilon).sqrt()) as f32)
            .collect();
        let (mean, gamma, beta) = (&moments.mean, gamma.as_slice(), beta.as_slice());
        let x = x.as_slice();
        let mut y = zeros(x.len());
        y.par_chunks_mut(self.s)
            .zip(x.par_chunks(self.s))
            .enumerate()
            .for_each(|(plane, (y, x))| {
                let ch = plane % self.c;
                let (m, r, g, b) = (mean[ch], rstd[ch], gamma[ch], beta[ch]);
                for (y, &x) in y.iter_mut().zip(x) {
                    *y = (x - m) * r * g + b;
                }
            });
        let y = Tensor::from_data(TensorData::new(y, dims), &device);
        (y, moments, rstd)
    }

    /// Each channel's mean and biased variance over the batch, accumulated in `f64`.
    fn moments(&self, x: &[f32]) -> Moments {
        let m = (self.n * self.s) as f64;
        let (mean, var): (Vec<f32>, Vec<f32>) = (0..self.c)
            .into_par_iter()
            .map(|ch| {
                let mean = self.planes(x, ch).flatten().map(|&v| v as f64).sum::<f64>() / m;
                let var = self
                    .planes(x, ch)
                    .flatten()
                    .map(|&v| (v as f64 - mean).powi(2))
                    .sum::<f64>()
                    / m;
                (mean as f32, var as f32)
            })
            .unzip();
        Moments { mean, var }
    }

    /// Channel `ch`'s planes of `values`, image by image.
    fn planes<'a>(&self, values: &'a [f32], ch: usize) -> impl Iterator<Item = &'a [f32]> {
        values.chunks(self.s).skip(ch).step_by(self.c)
    }

    /// The gradients of `x` (when `need_dx`), `γ` and `β` from `dy`.
    fn backward(
        &self,
        x: &[f32],
        gamma: &[f32],
        (mean, rstd): (&[f32], &[f32]),
        dy: &[f32],
        need_dx: bool,
    ) -> (Option<Vec<f32>>, Vec<f32>, Vec<f32>) {
        let (dgamma, dbeta): (Vec<f32>, Vec<f32>) = (0..self.c)
            .into_par_iter()
            .map(|ch| {
                let (m, r) = (mean[ch], rstd[ch]);
                let (mut sum_dy, mut sum_dy_xhat) = (0.0f64, 0.0f64);
                for (x, dy) in self.planes(x, ch).zip(self.planes(dy, ch)) {
                    for (&x, &dy) in x.iter().zip(dy) {
                        sum_dy += dy as f64;
                        sum_dy_xhat += (dy * ((x - m) * r)) as f64;
                    }
                }
                (sum_dy_xhat as f32, sum_dy as f32)
            })
            .unzip();
        if !need_dx {
            return (None, dgamma, dbeta);
        }
        let count = (self.n * self.s) as f32;
        let mut dx = zeros(x.len());
        dx.par_chunks_mut(self.s)
            .zip(x.par_chunks(self.s).zip(dy.par_chunks(self.s)))
            .enumerate()
            .for_each(|(plane, (dx, (x, dy)))| {
                let ch = plane % self.c;
                let (m, r) = (mean[ch], rstd[ch]);
                let (a, b) = (dbeta[ch] / count, dgamma[ch] / count);
                let scale = gamma[ch] * r;
                for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
                    *dx = scale * (dy - a - (x - m) * r * b);
                }
            });
        (Some(dx), dgamma, dbeta)
    }
}

#[cfg(test)]
mod tests;
