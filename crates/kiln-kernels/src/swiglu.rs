//! SwiGLU, the gated MLP activation of Llama: from rows `[gate | up]` of `2 h` columns (the
//! gate and up projections computed as one matrix), `y = silu(gate) * up`, `h` columns, with
//! `silu(g) = g σ(g)`. Forward and backward in one pass over the rows each:
//!
//! `d gate = dy · up · σ(g) (1 + g (1 - σ(g)))`, `d up = dy · silu(g)`.
//!
//! `σ` is computed in `f64`, so the result does not depend on how the compiler vectorizes it.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use rayon::prelude::*;

use crate::op::{has_kernels, host, on_cpu_autodiff, zeros, AutodiffNode};

/// Rows per parallel task.
const ROWS: usize = 16;

/// `silu(gate) * up` for `x` `[batch, t, 2 h]` holding `[gate | up]`, giving `[batch, t, h]`: on
/// the CPU backends by the kernel (differentiable under their autodiff), elsewhere by burn's
/// operations.
pub fn swiglu<B: Backend>(x: Tensor<B, 3>) -> Tensor<B, 3> {
    let [batch, t, width] = x.dims();
    assert!(
        width.is_multiple_of(2),
        "SwiGLU needs [gate | up] rows, got {width} columns"
    );
    let glu = Glu { hidden: width / 2 };
    if batch * t * width == 0 || !has_kernels::<B>() {
        return glu.by_tensor_ops(x);
    }
    let x = match on_cpu_autodiff(glu, x) {
        Ok(y) => return y,
        Err(x) => x,
    };
    if B::ad_enabled(&x.device()) {
        return glu.by_tensor_ops(x);
    }
    let device = x.device();
    let out = glu.forward(host(x).as_slice());
    Tensor::from_data(TensorData::new(out, [batch, t, glu.hidden]), &device)
}

/// One SwiGLU: the width of its output.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Glu {
    hidden: usize,
}

fn sigmoid(g: f32) -> f32 {
    (1.0 / (1.0 + (-(g as f64)).exp())) as f32
}

impl Glu {
    fn forward(&self, x: &[f32]) -> Vec<f32> {
        let h = self.hidden;
        let mut y = zeros(x.len() / 2);
        y.par_chunks_mut(ROWS * h)
            .zip(x.par_chunks(ROWS * 2 * h))
            .for_each(|(y, x)| {
                for (y, x) in y.chunks_mut(h).zip(x.chunks(2 * h)) {
                    let (gate, up) = x.split_at(h);
                    for ((y, &g), &u) in y.iter_mut().zip(gate).zip(up) {
                        *y = g * sigmoid(g) * u;
                    }
                }
            });
        y
    }

    /// The gradient of `[gate | up]` from `dy`.
    fn backward(&self, x: &[f32], dy: &[f32]) -> Vec<f32> {
        let h = self.hidden;
        let mut dx = zeros(x.len());
        dx.par_chunks_mut(ROWS * 2 * h)
            .zip(x.par_chunks(ROWS * 2 * h))
            .zip(dy.par_chunks(ROWS * h))
            .for_each(|((dx, x), dy)| {
                for ((dx, x), dy) in dx.chunks_mut(2 * h).zip(x.chunks(2 * h)).zip(dy.chunks(h)) {
                    let (gate, up) = x.split_at(h);
                    let (d_gate, d_up) = dx.split_at_mut(h);
                    for i in 0..h {
                        let (g, u) = (gate[i], up[i]);
                        let s = sigmoid(g);
                        d_gate[i] = dy[i] * u * s * (1.0 + g * (1.0 - s));
                        d_up[i] = dy[i] * g * s;
                    }
                }
            });
        dx
    }

    fn by_tensor_ops<B: Backend>(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, t, _] = x.dims();
        let h = self.hidden;
        let gate = x.clone().slice([0..batch, 0..t, 0..h]);
        let up = x.slice([0..batch, 0..t, h..2 * h]);
        silu(gate) * up
    }
}

impl AutodiffNode<3, 3> for Glu {
    fn record<IB: Backend>(self, x: Tensor<Autodiff<IB>, 3>) -> Tensor<Autodiff<IB>, 3> {
        let x = x.into_primitive().tensor();
        let input = host(Tensor::<IB, 3>::from_primitive(TensorPrimitive::Float(
            x.primitive.clone(),
        )));
        let [batch, t, _] = input.shape()[..] else {
            unreachable!("a rank-3 tensor")
        };
        let device = input.device();
        let y = IB::float_from_data(
            TensorData::new(self.forward(input.as_slice()), [batch, t, self.hidden]),
            &device,
        );
        let out = match GluBackward
            .prepare::<NoCheckpointing>([x.node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                prep.finish((self, input.into_tensor().into_primitive().tensor()), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        Tensor::from_primitive(TensorPrimitive::Float(out))
    }
}

/// The autodiff node; its state is the input.
#[derive(Debug)]
struct GluBackward;

impl<IB: Backend> Backward<IB, 1> for GluBackward {
    type State = (Glu, IB::FloatTensorPrimitive);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (glu, x) = ops.state;
        unary::<IB, _>(ops.parents, ops.node, grads, |grad| {
            let x = host(Tensor::<IB, 3>::from_primitive(TensorPrimitive::Float(x)));
            let dy = host(Tensor::<IB, 3>::from_primitive(TensorPrimitive::Float(
                grad,
            )));
            let dx = glu.backward(x.as_slice(), dy.as_slice());
            IB::float_from_data(TensorData::new(dx, x.shape()), &x.device())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Flex, NdArray};
    use burn::tensor::backend::AutodiffBackend;

    use crate::testing::{assert_close, on_threads, output_and_grad};

    /// Output and input gradient of `sum(r * swiglu(x))` for `x` `[3, 7, 2 * 9]`, by the kernel
    /// or by burn's operations.
    fn run<B: AutodiffBackend>(kiln: bool) -> [Vec<f32>; 2] {
        output_and_grad::<B>([3, 7, 18], 4.0, |x| {
            if kiln {
                swiglu(x)
            } else {
                Glu { hidden: 9 }.by_tensor_ops(x)
            }
        })
    }

    #[test]
    fn swiglu_matches_burns_operations_in_output_and_gradient() {
        let theirs = run::<Autodiff<Flex>>(false);
        for ours in [run::<Autodiff<Flex>>(true), run::<Autodiff<NdArray>>(true)] {
            assert_close("output", &ours[0], &theirs[0], 1e-6);
            assert_close("x grad", &ours[1], &theirs[1], 1e-6);
        }
        assert_eq!(
            on_threads(1, || run::<Autodiff<Flex>>(true)),
            on_threads(3, || run::<Autodiff<Flex>>(true))
        );
    }
}
