//! Element-wise addition on the CPU backends: the residual connections of a transformer, and a
//! position embedding added to every sequence of a batch.
//!
//! burn-flex adds tensors on one thread (and a broadcast operand through a strided iterator),
//! which is most of what a small GPT's step still does serially. Here the sum is written in
//! chunks on rayon's threads; the gradient passes to both operands, summed over the batch for a
//! broadcast one.

use std::any::TypeId;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{binary, Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};

use crate::host::HostTensor;
use crate::op::{column_sums, has_kernels, host, matched, par_new, CHUNK};

/// `a + b`, for `b` of `a`'s shape or of `a`'s shape with a leading 1 (one row added to every
/// entry of `a`'s first axis): on the CPU backends in `f32` by the threaded kernel
/// (differentiable under their autodiff), otherwise by burn's addition.
pub fn add<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> Tensor<B, D> {
    let (da, db) = (a.dims(), b.dims());
    let broadcast = db[0] == 1 && da[0] != 1 && da[1..] == db[1..];
    let fits = (da == db || broadcast)
        && a.shape().num_elements() > 0
        && a.dtype() == DType::F32
        && b.dtype() == DType::F32;
    if !fits || !has_kernels::<B>() {
        return a + b;
    }
    let sum = Sum {
        len: a.shape().num_elements(),
        row: b.shape().num_elements(),
    };
    #[cfg(feature = "flex")]
    let (a, b) = match on_autodiff::<B, burn::backend::Flex, D>(sum, a, b) {
        Ok(y) => return y,
        Err(inputs) => inputs,
    };
    #[cfg(feature = "ndarray")]
    let (a, b) = match on_autodiff::<B, burn::backend::NdArray, D>(sum, a, b) {
        Ok(y) => return y,
        Err(inputs) => inputs,
    };
    if B::ad_enabled(&a.device()) {
        return a + b;
    }
    sum.forward_tensor(&host(a), &host(b))
}

/// The sum as a node of `Autodiff<IB>`'s graph when `B` is that backend.
fn on_autodiff<B: Backend, IB: Backend, const D: usize>(
    sum: Sum,
    a: Tensor<B, D>,
    b: Tensor<B, D>,
) -> Result<Tensor<B, D>, (Tensor<B, D>, Tensor<B, D>)> {
    if TypeId::of::<B>() != TypeId::of::<Autodiff<IB>>() {
        return Err((a, b));
    }
    let (a, b): (Tensor<Autodiff<IB>, D>, Tensor<Autodiff<IB>, D>) = (matched(a), matched(b));
    let b_dims = b.dims().to_vec();
    let (a, b) = (a.into_primitive().tensor(), b.into_primitive().tensor());
    let inner = |p| host(Tensor::<IB, D>::from_primitive(TensorPrimitive::Float(p)));
    let y = sum
        .forward_tensor(&inner(a.primitive.clone()), &inner(b.primitive.clone()))
        .into_primitive()
        .tensor();
    let out = match AddBackward
        .prepare::<NoCheckpointing>([a.node.clone(), b.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((sum, b_dims), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Ok(matched(Tensor::<Autodiff<IB>, D>::from_primitive(
        TensorPrimitive::Float(out),
    )))
}

/// One addition: `len` elements of `a`, `b` repeating every `row` of them (`row == len`: the
/// same shape).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Sum {
    len: usize,
    row: usize,
}

impl Sum {
    /// `a + b` as a tensor of the CPU backend `B`, of `a`'s shape.
    fn forward_tensor<B: Backend, const D: usize>(
        self,
        a: &HostTensor<B, D>,
        b: &HostTensor<B, D>,
    ) -> Tensor<B, D> {
        let (a_host, b_host) = (a.as_slice(), b.as_slice());
        let same = self.row == self.len;
        // A broadcast `b` is added to chunks of whole rows, about `CHUNK` elements each.
        let chunk = if same {
            CHUNK
        } else {
            self.row * (CHUNK / self.row).max(1)
        };
        let y = par_new(
            self.len,
            chunk,
            || (),
            |_, i, y| {
                let a = &a_host[i * chunk..][..y.len()];
                if same {
                    let b = &b_host[i * chunk..][..y.len()];
                    for ((y, a), b) in y.iter_mut().zip(a).zip(b) {
                        *y = a + b;
                    }
                    return;
                }
                for (y, a) in y.chunks_mut(self.row).zip(a.chunks(self.row)) {
                    for ((y, a), b) in y.iter_mut().zip(a).zip(b_host) {
                        *y = a + b;
                    }
                }
            },
        );
        Tensor::from_data(TensorData::new(y, a.shape()), &a.device())
    }
}

/// The autodiff node; its state is the addition and `b`'s shape.
#[derive(Debug)]
struct AddBackward;

impl<IB: Backend> Backward<IB, 2> for AddBackward {
    type State = (Sum, Vec<usize>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (sum, b_dims) = ops.state;
        binary::<IB, _, _>(
            ops.parents,
            ops.node,
            grads,
            |grad| grad,
            |grad| {
                if sum.row == sum.len {
                    return grad;
                }
                let g = host(Tensor::<IB, 1>::from_primitive(TensorPrimitive::Float(
                    IB::float_reshape(grad, [sum.len].into()),
                )));
                let device = g.device();
                let db = column_sums(g.as_slice(), sum.row);
                IB::float_from_data(TensorData::new(db, b_dims), &device)
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Flex, NdArray};
    use burn::tensor::backend::AutodiffBackend;

    /// Output and gradients of `sum(r * (a + b))`, Kiln's or burn's.
    fn run<B: AutodiffBackend>(a: [usize; 3], b: [usize; 3], kiln: bool) -> [Vec<f32>; 3] {
        let device = Default::default();
        let values = |dims: [usize; 3], seed: usize| {
            let n = dims.iter().product::<usize>();
            let v = (0..n)
                .map(|i| ((i * 13 + seed) % 29) as f32 / 7.0 - 2.0)
                .collect();
            Tensor::<B, 3>::from_data(TensorData::new(v, dims), &device)
        };
        let (x, y) = (values(a, 0).require_grad(), values(b, 5).require_grad());
        let out = if kiln {
            add(x.clone(), y.clone())
        } else {
            x.clone() + y.clone()
        };
        let grads = (out.clone() * values(a, 9)).sum().backward();
        let flat = |t: Tensor<B::InnerBackend, 3>| t.into_data().to_vec::<f32>().unwrap();
        [
            flat(out.inner()),
            flat(x.grad(&grads).unwrap()),
            flat(y.grad(&grads).unwrap()),
        ]
    }

    fn matches_burn<B: AutodiffBackend>() {
        for (a, b) in [
            ([2, 3, 4], [2, 3, 4]),
            ([32, 64, 128], [32, 64, 128]),
            ([32, 64, 128], [1, 64, 128]),
            ([5, 1, 3], [1, 1, 3]),
        ] {
            let (ours, theirs) = (run::<B>(a, b, true), run::<B>(a, b, false));
            for (what, (x, y)) in ["sum", "a grad", "b grad"]
                .iter()
                .zip(ours.iter().zip(&theirs))
            {
                assert_eq!(x.len(), y.len(), "{what} {a:?} + {b:?}");
                for (x, y) in x.iter().zip(y) {
                    assert!(
                        (x - y).abs() <= 1e-5 * y.abs().max(1.0),
                        "{what}: {x} vs {y}"
                    );
                }
            }
        }
    }

    #[test]
    fn add_matches_burns_in_output_and_gradients() {
        matches_burn::<Autodiff<Flex>>();
        matches_burn::<Autodiff<NdArray>>();
    }
}
