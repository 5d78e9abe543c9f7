//! Attention weights in one pass: `softmax(scale * scores)` over the last axis, optionally with
//! a causal mask (position `i` sees positions `j <= i`), and its backward pass
//! `scale * y * (g - sum(g * y))`, each one threaded loop over the rows.
//!
//! Under burn's autodiff the same computation is seven tensor operations forward (scale, mask,
//! max, subtract, exp, sum, divide) and about as many backward, each a pass over the
//! `[batch, heads, t, t]` scores, most of them on one thread.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use rayon::prelude::*;

use crate::op::{host, on_cpu_autodiff, zeros, AutodiffNode};

/// Rows per rayon task.
const ROWS: usize = 64;

/// Which scores a softmax row sees, and their scale.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Rows {
    /// Row length (the last axis).
    pub(crate) len: usize,
    /// Rows per causal block (the second-to-last axis); row `r` sees columns `0..=r % block`.
    pub(crate) block: usize,
    /// Whether the causal mask applies: row `r` sees only its first `r % block + 1` columns (at
    /// most `len`; the rest get weight 0); otherwise every row sees all `len` columns.
    pub(crate) causal: bool,
    /// Factor the scores are multiplied by before the softmax (for attention, `1/√head_dim`).
    pub(crate) scale: f32,
}

impl Rows {
    /// Columns row `r` sees.
    fn visible(&self, r: usize) -> usize {
        if self.causal {
            (r % self.block + 1).min(self.len)
        } else {
            self.len
        }
    }

    /// Writes the weights of rows `first_row..` of scores `x` to `y`.
    pub(crate) fn forward(&self, first_row: usize, x: &[f32], y: &mut [f32]) {
        for (i, (x, y)) in x.chunks(self.len).zip(y.chunks_mut(self.len)).enumerate() {
            let seen = self.visible(first_row + i);
            let (x, (y, hidden)) = (&x[..seen], y.split_at_mut(seen));
            let max = x
                .iter()
                .fold(f32::NEG_INFINITY, |m, &v| m.max(v * self.scale));
            let mut sum = 0.0f32;
            for (y, &x) in y.iter_mut().zip(x) {
                *y = (x * self.scale - max).exp();
                sum += *y;
            }
            for y in y.iter_mut() {
                *y /= sum;
            }
            hidden.fill(0.0);
        }
    }

    /// `g` (the gradient of the weights) becomes the gradient of the scores, in place.
    pub(crate) fn backward(&self, first_row: usize, y: &[f32], g: &mut [f32]) {
        for (i, (y, g)) in y.chunks(self.len).zip(g.chunks_mut(self.len)).enumerate() {
            let seen = self.visible(first_row + i);
            let dot: f32 = y[..seen].iter().zip(&g[..seen]).map(|(y, g)| y * g).sum();
            for (g, &y) in g[..seen].iter_mut().zip(&y[..seen]) {
                *g = self.scale * (y * (*g - dot));
            }
            g[seen..].fill(0.0);
        }
    }

    /// Runs `f(first_row, a_rows, b_rows)` over blocks of [`ROWS`] rows on rayon's threads.
    fn par(&self, a: &[f32], b: &mut [f32], f: impl Fn(usize, &[f32], &mut [f32]) + Sync) {
        let chunk = ROWS * self.len;
        b.par_chunks_mut(chunk)
            .zip(a.par_chunks(chunk))
            .enumerate()
            .for_each(|(i, (b, a))| f(i * ROWS, a, b));
    }
}

/// `softmax(scale * scores)` over the last axis of `scores` (`[batch, heads, t_q, t_k]`), with
/// scores of later positions masked out when `causal` (query `i` sees keys `0..=i`). On the CPU
/// backends one fused, threaded pass forward and one backward; elsewhere `fallback(scores)`, which
/// must compute the same with burn's operations.
pub fn softmax<B: Backend>(
    scores: Tensor<B, 4>,
    scale: f64,
    causal: bool,
    fallback: impl FnOnce(Tensor<B, 4>) -> Tensor<B, 4>,
) -> Tensor<B, 4> {
    if !crate::op::has_kernels::<B>() {
        return fallback(scores);
    }
    let [_, _, block, len] = scores.dims();
    let rows = Rows {
        len,
        block,
        causal,
        scale: scale as f32,
    };
    let scores = match on_cpu_autodiff(rows, scores) {
        Ok(weights) => return weights,
        Err(scores) => scores,
    };
    forward(rows, scores)
}

fn forward<B: Backend>(rows: Rows, scores: Tensor<B, 4>) -> Tensor<B, 4> {
    let dims = scores.dims();
    let device = scores.device();
    let x = host(scores);
    let mut y = zeros(x.len());
    rows.par(x.as_slice(), &mut y, |r, x, y| rows.forward(r, x, y));
    Tensor::from_data(TensorData::new(y, dims), &device)
}

fn autodiff<IB: Backend>(rows: Rows, scores: Tensor<Autodiff<IB>, 4>) -> Tensor<Autodiff<IB>, 4> {
    let x = scores.into_primitive().tensor();
    let y = forward(
        rows,
        Tensor::<IB, 4>::from_primitive(TensorPrimitive::Float(x.primitive)),
    )
    .into_primitive()
    .tensor();
    let out = match Softmax
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((rows, y.clone()), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

impl AutodiffNode<4, 4> for Rows {
    fn record<IB: Backend>(self, x: Tensor<Autodiff<IB>, 4>) -> Tensor<Autodiff<IB>, 4> {
        autodiff::<IB>(self, x)
    }
}

/// The autodiff node of [`softmax`]; its state is the output (the weights).
#[derive(Debug)]
struct Softmax;

impl<IB: Backend> Backward<IB, 1> for Softmax {
    type State = (Rows, IB::FloatTensorPrimitive);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (rows, y) = ops.state;
        unary::<IB, _>(ops.parents, ops.node, grads, |grad| {
            let y = host(Tensor::<IB, 4>::from_primitive(TensorPrimitive::Float(y)));
            let mut g = host(Tensor::<IB, 4>::from_primitive(TensorPrimitive::Float(
                grad,
            )));
            rows.par(y.as_slice(), g.as_mut_slice(), |r, y, g| {
                rows.backward(r, y, g)
            });
            g.into_tensor().into_primitive().tensor()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Flex, NdArray};
    use burn::tensor::backend::AutodiffBackend;
    use burn::tensor::{Bool, TensorData};

    /// burn's form: scale, causal mask, softmax.
    fn reference<B: Backend>(scores: Tensor<B, 4>, scale: f64, causal: bool) -> Tensor<B, 4> {
        let [b, h, t, s] = scores.dims();
        let scores = scores.mul_scalar(scale);
        let scores = if causal {
            let later: Vec<bool> = (0..t * s).map(|i| i % s > i / s).collect();
            let mask = Tensor::<B, 4, Bool>::from_data(
                TensorData::new(later, [1, 1, t, s]),
                &scores.device(),
            );
            scores.mask_fill(mask.expand([b, h, t, s]), f32::NEG_INFINITY)
        } else {
            scores
        };
        burn::tensor::activation::softmax(scores, 3)
    }

    /// Kiln's weights and score gradients, after checking them against burn's on flex.
    fn check<B: AutodiffBackend>(causal: bool, against_burn: bool) -> (Vec<f32>, Vec<f32>) {
        let device = Default::default();
        let dims = [3, 2, 70, 70]; // several row blocks, a partial last one
        let n: usize = dims.iter().product();
        let host: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 2003) as f32 / 200.0 - 5.0)
            .collect();
        let r: Vec<f32> = (0..n).map(|i| ((i * 31) % 11) as f32 - 5.0).collect();
        let run = |ours: bool| {
            let x = Tensor::<B, 4>::from_data(TensorData::new(host.clone(), dims), &device)
                .require_grad();
            let w = Tensor::<B, 4>::from_data(TensorData::new(r.clone(), dims), &device);
            let y = if ours {
                softmax(x.clone(), 0.125, causal, |_| unreachable!("a CPU backend"))
            } else {
                reference(x.clone(), 0.125, causal)
            };
            let grads = (y.clone() * w).sum().backward();
            (
                y.inner().into_data().to_vec::<f32>().unwrap(),
                x.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap(),
            )
        };
        let (y, g) = run(true);
        if !against_burn {
            return (y, g);
        }
        let (y_ref, g_ref) = run(false);
        for (a, b) in y.iter().zip(&y_ref) {
            assert!((a - b).abs() <= 1e-6, "weights {a} vs {b}");
        }
        let scale = g_ref.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (a, b) in g.iter().zip(&g_ref) {
            assert!((a - b).abs() <= 1e-5 * scale, "gradient {a} vs {b}");
        }
        (y, g)
    }

    #[test]
    fn fused_softmax_matches_burns_in_value_and_gradient() {
        // burn-ndarray's own division backward uses the CPU's approximate reciprocal (about
        // 1e-4 relative), so on ndarray Kiln's kernels are held to flex's bits instead.
        for causal in [true, false] {
            let flex = check::<Autodiff<Flex>>(causal, true);
            assert_eq!(check::<Autodiff<NdArray>>(causal, false), flex);
        }
    }
}
