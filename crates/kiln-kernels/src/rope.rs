//! Rotary position embeddings (RoPE) on the fused `[q | k | v]` projection, forward and
//! backward.
//!
//! Each query and key head of `head_dim` columns is rotated by its position `p`: the pair of
//! columns `(i, i + head_dim/2)` by the angle `p θ^(-2i / head_dim)` (the "rotate half" layout of
//! Llama in Hugging Face's transformers, so weights move between the two unpermuted):
//!
//! `y_i = x_i cos - x_{i+h/2} sin`, `y_{i+h/2} = x_{i+h/2} cos + x_i sin`.
//!
//! The rotation is linear and orthogonal, so its backward pass is the rotation by the opposite
//! angle. Only the first `rotated` heads of a row turn (the queries and keys); the rest of the
//! row (the values) passes through. The angles' cosines and sines are computed in `f64`.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use rayon::prelude::*;

use crate::op::{has_kernels, host, on_cpu_autodiff, zeros, AutodiffNode};

/// Rows per parallel task.
const ROWS: usize = 16;

/// Where and how far to rotate: `[batch, t, width]` rows whose first `rotated` heads of
/// `head_dim` columns are queries and keys, at positions `offset..offset + t`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rope {
    /// Heads to rotate at the start of each row.
    pub rotated: usize,
    /// Columns per head (even).
    pub head_dim: usize,
    /// The position of the first row of each sequence.
    pub offset: usize,
    /// The base of the angles (10000 in Llama 2, 500000 in Llama 3).
    pub theta: f64,
}

impl Rope {
    /// The cosines and sines `[t, head_dim / 2]` of the angles at positions `offset..offset+t`.
    pub fn tables(&self, t: usize) -> (Vec<f32>, Vec<f32>) {
        let half = self.head_dim / 2;
        let inv_freq: Vec<f64> = (0..half)
            .map(|i| self.theta.powf(-((2 * i) as f64) / self.head_dim as f64))
            .collect();
        let mut cos = Vec::with_capacity(t * half);
        let mut sin = Vec::with_capacity(t * half);
        for p in self.offset..self.offset + t {
            for &inv_freq in &inv_freq {
                let angle = p as f64 * inv_freq;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        (cos, sin)
    }

    /// `x` `[batch, t, width]` with its first `rotated` heads turned; on the CPU backends by the
    /// kernel (differentiable under their autodiff), elsewhere by burn's tensor operations.
    pub fn apply<B: Backend>(self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, t, width] = x.dims();
        assert!(
            self.head_dim.is_multiple_of(2) && self.rotated * self.head_dim <= width,
            "RoPE of {} heads of {} columns on rows of {width}",
            self.rotated,
            self.head_dim
        );
        if batch * t * width == 0 || self.rotated == 0 {
            return x;
        }
        let turn = Turn {
            rope: self,
            t,
            width,
        };
        if !has_kernels::<B>() {
            return turn.by_tensor_ops(x);
        }
        let x = match on_cpu_autodiff(turn, x) {
            Ok(y) => return y,
            Err(x) => x,
        };
        if B::ad_enabled(&x.device()) {
            return turn.by_tensor_ops(x);
        }
        turn.on_host(x, false)
    }
}

/// One application: the rotation, the sequences' length and the rows' width.
#[derive(Clone, Copy, Debug)]
struct Turn {
    rope: Rope,
    t: usize,
    width: usize,
}

impl Turn {
    /// The rotation (`inverse`: by the opposite angles) of a host tensor.
    fn on_host<B: Backend>(&self, x: Tensor<B, 3>, inverse: bool) -> Tensor<B, 3> {
        let device = x.device();
        let dims = x.dims();
        let x = host(x);
        let y = self.rotate(x.as_slice(), inverse);
        Tensor::from_data(TensorData::new(y, dims), &device)
    }

    fn rotate(&self, x: &[f32], inverse: bool) -> Vec<f32> {
        let (w, t, dh) = (self.width, self.t, self.rope.head_dim);
        let half = dh / 2;
        let turned = self.rope.rotated * dh;
        let (cos, sin) = &self.rope.tables(t);
        let sign = if inverse { -1.0f32 } else { 1.0 };
        let mut y = zeros(x.len());
        y.par_chunks_mut(ROWS * w)
            .zip(x.par_chunks(ROWS * w))
            .enumerate()
            .for_each(|(chunk, (y, x))| {
                for (r, (y, x)) in y.chunks_mut(w).zip(x.chunks(w)).enumerate() {
                    let p = (chunk * ROWS + r) % t;
                    let (cos, sin) = (&cos[p * half..][..half], &sin[p * half..][..half]);
                    for (y, x) in y[..turned].chunks_mut(dh).zip(x[..turned].chunks(dh)) {
                        let (y1, y2) = y.split_at_mut(half);
                        let (x1, x2) = x.split_at(half);
                        for i in 0..half {
                            let s = sign * sin[i];
                            y1[i] = x1[i] * cos[i] - x2[i] * s;
                            y2[i] = x2[i] * cos[i] + x1[i] * s;
                        }
                    }
                    y[turned..].copy_from_slice(&x[turned..]);
                }
            });
        y
    }

    /// The same rotation by burn's operations (other backends).
    fn by_tensor_ops<B: Backend>(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, t, width] = x.dims();
        let (n, dh) = (self.rope.rotated, self.rope.head_dim);
        let half = dh / 2;
        let device = x.device();
        let (cos, sin) = &self.rope.tables(t);
        let table = |v: &Vec<f32>| {
            Tensor::<B, 4>::from_data(TensorData::new(v.clone(), [1, t, 1, half]), &device)
        };
        let (cos, sin) = (table(cos), table(sin));
        let heads = x
            .clone()
            .slice([0..batch, 0..t, 0..n * dh])
            .reshape([batch, t, n, dh]);
        let x1 = heads.clone().slice([0..batch, 0..t, 0..n, 0..half]);
        let x2 = heads.slice([0..batch, 0..t, 0..n, half..dh]);
        let y1 = x1.clone() * cos.clone() - x2.clone() * sin.clone();
        let y2 = x2 * cos + x1 * sin;
        let turned = Tensor::cat(vec![y1, y2], 3).reshape([batch, t, n * dh]);
        if n * dh == width {
            turned
        } else {
            Tensor::cat(vec![turned, x.slice([0..batch, 0..t, n * dh..width])], 2)
        }
    }
}

impl AutodiffNode<3, 3> for Turn {
    fn record<IB: Backend>(self, x: Tensor<Autodiff<IB>, 3>) -> Tensor<Autodiff<IB>, 3> {
        let x = x.into_primitive().tensor();
        let y = self
            .on_host(
                Tensor::<IB, 3>::from_primitive(TensorPrimitive::Float(x.primitive)),
                false,
            )
            .into_primitive()
            .tensor();
        let out = match TurnBackward
            .prepare::<NoCheckpointing>([x.node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(self, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        Tensor::from_primitive(TensorPrimitive::Float(out))
    }
}

/// The autodiff node; its state is the rotation (the input is not needed).
#[derive(Debug)]
struct TurnBackward;

impl<IB: Backend> Backward<IB, 1> for TurnBackward {
    type State = Turn;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let turn = ops.state;
        unary::<IB, _>(ops.parents, ops.node, grads, |grad| {
            let dy = Tensor::<IB, 3>::from_primitive(TensorPrimitive::Float(grad));
            turn.on_host(dy, true).into_primitive().tensor()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Flex, NdArray};
    use burn::tensor::backend::AutodiffBackend;

    use crate::testing::{assert_close, on_threads, output_and_grad};

    const ROPE: Rope = Rope {
        rotated: 3,
        head_dim: 4,
        offset: 2,
        theta: 10_000.0,
    };

    /// Output and input gradient of `sum(r * rope(x))` for `x` `[2, 5, 16]` (three rotated heads
    /// of 4 and 4 passed-through columns), by the kernel or by burn's operations.
    fn run<B: AutodiffBackend>(kiln: bool) -> [Vec<f32>; 2] {
        output_and_grad::<B>([2, 5, 16], 1.0, |x| {
            if kiln {
                ROPE.apply(x)
            } else {
                let turn = Turn {
                    rope: ROPE,
                    t: 5,
                    width: 16,
                };
                turn.by_tensor_ops(x)
            }
        })
    }

    #[test]
    fn rope_matches_burns_operations_in_output_and_gradient() {
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

    #[test]
    fn rope_rotates_pairs_by_position_and_leaves_the_values() {
        // One head of 4 at positions 0 and 1 with theta 1 (inverse frequencies 1 and 1): the
        // pairs (x0, x2) and (x1, x3) turn by 0 and by 1 radian.
        let rope = Rope {
            rotated: 1,
            head_dim: 4,
            offset: 0,
            theta: 1.0,
        };
        let x = Tensor::<Flex, 3>::from_data(
            TensorData::new(
                vec![1.0f32, 0.0, 0.0, 1.0, 9.0, 1.0, 0.0, 0.0, 1.0, 9.0],
                [1, 2, 5],
            ),
            &Default::default(),
        );
        let y: Vec<f32> = rope.apply(x).into_data().to_vec().unwrap();
        let (c, s) = (1f32.cos(), 1f32.sin());
        let want = [1.0, 0.0, 0.0, 1.0, 9.0, c, -s, s, c, 9.0];
        assert_close("rotated", &y, &want, 1e-6);
    }
}
