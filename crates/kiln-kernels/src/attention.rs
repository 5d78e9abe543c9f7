//! Causal multi-head self-attention from the fused `[q | k | v]` projection, forward and
//! backward, one `(sequence, head)` pair per task.
//!
//! Written with burn's tensor operations, attention splits the projection into three tensors,
//! reshapes and transposes each into `[batch, heads, t, head_dim]` and the result back, and
//! burn's CPU backends copy each of those layouts before their batched matrix products. Here
//! every product is one call of the `gemm` crate on strided views of the projection itself
//! (row stride `3 * n_embd`), the softmax is [`crate::softmax`]'s row kernel, and the output is
//! written straight into `[batch, t, n_embd]` with the heads side by side:
//!
//! - forward: `S = Q Kᵀ`, `P = softmax(scale * S)` causally, `O = P V`;
//! - backward: `dV = Pᵀ dO`, `dP = dO Vᵀ`, `dS = scale * P (dP - rowsum(dP P))`, `dQ = dS K`,
//!   `dK = dSᵀ Q`, into the gradient of the projection.
//!
//! The attention weights `P` are kept for the backward pass (`batch * heads * t²` floats). Each
//! task writes its own columns of the output, so the result does not depend on the number of
//! threads.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use rayon::prelude::*;

use crate::op::{has_kernels, host, on_cpu_autodiff, product, zeros, AutodiffNode, Shared};
use crate::softmax::Rows;

/// `softmax(q kᵀ / √head_dim) v` per head with a causal mask (query `i` sees keys `0..=i`), for
/// `qkv` `[batch, t, (n_head + 2 n_kv_head) head_dim]` holding the queries (`n_head` heads), keys
/// and values (`n_kv_head` heads each) side by side, as `c_attn` of GPT-2 computes them when
/// `n_kv_head = n_head`. With fewer key/value heads (grouped-query attention), query head `h`
/// attends with key/value head `h / (n_head / n_kv_head)`. The result is
/// `[batch, t, n_head head_dim]`, the heads side by side. On the CPU backends (differentiable
/// under their autodiff); `qkv` comes back as `Err` on other backends and for shapes this does
/// not cover.
pub fn causal_self_attention<B: Backend>(
    qkv: Tensor<B, 3>,
    n_head: usize,
    n_kv_head: usize,
) -> Result<Tensor<B, 3>, Tensor<B, 3>> {
    let [batch, t, width] = qkv.dims();
    let columns = n_head + 2 * n_kv_head;
    let fits = n_kv_head > 0
        && n_head.is_multiple_of(n_kv_head)
        && width.is_multiple_of(columns)
        && batch * t * width > 0;
    if !fits || !has_kernels::<B>() {
        return Err(qkv);
    }
    let attn = Attn {
        batch,
        t,
        heads: n_head,
        kv_heads: n_kv_head,
        head_dim: width / columns,
    };
    let qkv = match on_cpu_autodiff(attn, qkv) {
        Ok(y) => return Ok(y),
        Err(qkv) => qkv,
    };
    if B::ad_enabled(&qkv.device()) {
        return Err(qkv);
    }
    Ok(attn.forward_tensor(qkv).0)
}

/// The shape of one attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Attn {
    batch: usize,
    t: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Attn {
    /// Columns of the output (the queries' width).
    fn n_embd(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Columns of a row of `qkv`.
    fn width(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }

    /// Offsets in a row of `qkv` of query head `h`'s columns and of its key and value head's.
    fn columns(&self, h: usize) -> (usize, usize, usize) {
        let dh = self.head_dim;
        let kv = h / (self.heads / self.kv_heads);
        let k = self.n_embd() + kv * dh;
        (h * dh, k, k + self.kv_heads * dh)
    }

    fn scale(&self) -> f32 {
        (1.0 / (self.head_dim as f64).sqrt()) as f32
    }

    /// The causal softmax over rows of `t` scores.
    fn rows(&self) -> Rows {
        Rows {
            len: self.t,
            block: self.t,
            causal: true,
            scale: self.scale(),
        }
    }

    /// The output as a tensor of the CPU backend `B`, and the attention weights.
    fn forward_tensor<B: Backend>(self, qkv: Tensor<B, 3>) -> (Tensor<B, 3>, Vec<f32>) {
        let device = qkv.device();
        let qkv = host(qkv);
        let (y, weights) = self.forward(qkv.as_slice());
        let y = Tensor::from_data(
            TensorData::new(y, [self.batch, self.t, self.n_embd()]),
            &device,
        );
        (y, weights)
    }

    fn forward(&self, qkv: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let (t, dh, d, w) = (self.t, self.head_dim, self.n_embd(), self.width());
        let mut y = zeros(self.batch * t * d);
        let mut weights = zeros(self.batch * self.heads * t * t);
        let out = Shared(y.as_mut_ptr());
        let rows = self.rows();
        weights.par_chunks_mut(t * t).enumerate().for_each_init(
            || vec![0.0f32; t * t],
            |scores, (task, p)| {
                let (b, h) = (task / self.heads, task % self.heads);
                let row = qkv[b * t * w..].as_ptr();
                let (q, k, v) = self.columns(h);
                let (q, k, v) = (
                    row.wrapping_add(q),
                    row.wrapping_add(k),
                    row.wrapping_add(v),
                );
                // SAFETY: the views stay inside `qkv`, `scores`, `p` and this task's
                // columns of `y`, which no other task writes.
                unsafe {
                    product(
                        (t, t, dh),
                        (scores.as_mut_ptr(), t, 1),
                        (q, w, 1),
                        (k, 1, w),
                        1.0,
                        false,
                    );
                    rows.forward(0, scores, p);
                    let o = out.ptr().add(b * t * d + h * dh);
                    product(
                        (t, dh, t),
                        (o, d, 1),
                        (p.as_ptr(), t, 1),
                        (v, w, 1),
                        1.0,
                        false,
                    );
                }
            },
        );
        (y, weights)
    }

    /// The gradient of `qkv` from `dy`, the gradient of the output. One task per sequence and
    /// key/value head, which runs the query heads that share it and sums their key and value
    /// gradients in head order.
    fn backward(&self, qkv: &[f32], weights: &[f32], dy: &[f32]) -> Vec<f32> {
        let (t, dh, d, w) = (self.t, self.head_dim, self.n_embd(), self.width());
        let group = self.heads / self.kv_heads;
        let mut dqkv = zeros(qkv.len());
        let grad = Shared(dqkv.as_mut_ptr());
        let rows = self.rows();
        (0..self.batch * self.kv_heads)
            .into_par_iter()
            .for_each_init(
                || vec![0.0f32; t * t],
                |d_scores, task| {
                    let (b, kv) = (task / self.kv_heads, task % self.kv_heads);
                    for h in kv * group..(kv + 1) * group {
                        let (q, k, v) = self.columns(h);
                        let row = qkv[b * t * w..].as_ptr();
                        let (q_at, k_at, v_at) = (q, k, v);
                        let (q, k, v) = (
                            row.wrapping_add(q),
                            row.wrapping_add(k),
                            row.wrapping_add(v),
                        );
                        let p = &weights[(b * self.heads + h) * t * t..][..t * t];
                        let d_out = dy[b * t * d + h * dh..].as_ptr();
                        let accumulate = h > kv * group;
                        // SAFETY: the views stay inside the buffers; this task writes only the
                        // columns of its key/value head and of its query heads in `dqkv`, and its
                        // own `d_scores`.
                        unsafe {
                            let d_row = grad.ptr().add(b * t * w);
                            let (dq, dk, dv) = (d_row.add(q_at), d_row.add(k_at), d_row.add(v_at));
                            // dV += Pᵀ dO; dP = dO Vᵀ.
                            product(
                                (t, dh, t),
                                (dv, w, 1),
                                (p.as_ptr(), 1, t),
                                (d_out, d, 1),
                                1.0,
                                accumulate,
                            );
                            product(
                                (t, t, dh),
                                (d_scores.as_mut_ptr(), t, 1),
                                (d_out, d, 1),
                                (v, 1, w),
                                1.0,
                                false,
                            );
                            // dS = scale * P (dP - rowsum(dP P)), in place.
                            rows.backward(0, p, d_scores);
                            // dQ = dS K; dK += dSᵀ Q.
                            product(
                                (t, dh, t),
                                (dq, w, 1),
                                (d_scores.as_ptr(), t, 1),
                                (k, w, 1),
                                1.0,
                                false,
                            );
                            product(
                                (t, dh, t),
                                (dk, w, 1),
                                (d_scores.as_ptr(), 1, t),
                                (q, w, 1),
                                1.0,
                                accumulate,
                            );
                        }
                    }
                },
            );
        dqkv
    }
}

fn autodiff<IB: Backend>(attn: Attn, qkv: Tensor<Autodiff<IB>, 3>) -> Tensor<Autodiff<IB>, 3> {
    let x = qkv.into_primitive().tensor();
    let (y, weights) = attn.forward_tensor(Tensor::<IB, 3>::from_primitive(
        TensorPrimitive::Float(x.primitive.clone()),
    ));
    let y = y.into_primitive().tensor();
    let out = match AttnBackward
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((attn, x.primitive, Arc::new(weights)), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

impl AutodiffNode<3, 3> for Attn {
    fn record<IB: Backend>(self, x: Tensor<Autodiff<IB>, 3>) -> Tensor<Autodiff<IB>, 3> {
        autodiff::<IB>(self, x)
    }
}

/// The autodiff node; its state is the projection and the attention weights.
#[derive(Debug)]
struct AttnBackward;

impl<IB: Backend> Backward<IB, 1> for AttnBackward {
    type State = (Attn, IB::FloatTensorPrimitive, Arc<Vec<f32>>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (attn, qkv, weights) = ops.state;
        unary::<IB, _>(ops.parents, ops.node, grads, |grad| {
            let qkv = host(Tensor::<IB, 3>::from_primitive(TensorPrimitive::Float(qkv)));
            let dy = host(Tensor::<IB, 3>::from_primitive(TensorPrimitive::Float(
                grad,
            )));
            let device = dy.device();
            let dqkv = attn.backward(qkv.as_slice(), &weights, dy.as_slice());
            IB::float_from_data(TensorData::new(dqkv, qkv.shape()), &device)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Flex, NdArray};
    use burn::tensor::activation::softmax;
    use burn::tensor::backend::AutodiffBackend;
    use burn::tensor::Bool;

    use crate::testing::{assert_close, on_threads};

    /// Output and gradient of `sum(r * attention(qkv))`, Kiln's or by burn's operations.
    fn run<B: AutodiffBackend>(
        batch: usize,
        t: usize,
        (heads, kv_heads): (usize, usize),
        dh: usize,
        kiln: bool,
    ) -> [Vec<f32>; 2] {
        let device = Default::default();
        let d = heads * dh;
        let w = (heads + 2 * kv_heads) * dh;
        let values = |n: usize, seed: usize| -> Vec<f32> {
            (0..n)
                .map(|i| ((i * 31 + seed * 7) % 97) as f32 / 48.0 - 1.0)
                .collect()
        };
        let qkv = Tensor::<B, 3>::from_data(
            TensorData::new(values(batch * t * w, 0), [batch, t, w]),
            &device,
        )
        .require_grad();
        let y = if kiln {
            causal_self_attention(qkv.clone(), heads, kv_heads)
                .unwrap_or_else(|_| panic!("a CPU backend"))
        } else {
            let part = |from: usize, n: usize| {
                qkv.clone()
                    .slice([0..batch, 0..t, from * dh..(from + n) * dh])
                    .reshape([batch, t, n, dh])
                    .swap_dims(1, 2)
            };
            // Each key/value head repeated for the query heads of its group.
            let shared = |x: Tensor<B, 4>| {
                x.unsqueeze_dim::<5>(2)
                    .repeat_dim(2, heads / kv_heads)
                    .reshape([batch, heads, t, dh])
            };
            let q = part(0, heads);
            let k = shared(part(heads, kv_heads));
            let v = shared(part(heads + kv_heads, kv_heads));
            let later: Vec<bool> = (0..t * t).map(|i| i % t > i / t).collect();
            let mask =
                Tensor::<B, 4, Bool>::from_data(TensorData::new(later, [1, 1, t, t]), &device);
            let scores = q
                .matmul(k.swap_dims(2, 3))
                .mul_scalar(1.0 / (dh as f64).sqrt())
                .mask_fill(mask.expand([batch, heads, t, t]), f32::NEG_INFINITY);
            softmax(scores, 3)
                .matmul(v)
                .swap_dims(1, 2)
                .reshape([batch, t, d])
        };
        let r = Tensor::<B, 3>::from_data(
            TensorData::new(values(batch * t * d, 1), [batch, t, d]),
            &device,
        );
        let grads = (y.clone() * r).sum().backward();
        [
            y.inner().into_data().to_vec::<f32>().unwrap(),
            qkv.grad(&grads)
                .unwrap()
                .into_data()
                .to_vec::<f32>()
                .unwrap(),
        ]
    }

    /// Kiln's kernel on `B` against burn's operations on flex (burn-ndarray's own chain is off
    /// by up to 2e-5 in a few gradient elements where flex's agrees with the kernel to 1e-7).
    fn matches_burn<B: AutodiffBackend>() {
        for (batch, t, heads, dh) in [
            (1, 1, (1, 1), 4),
            (2, 5, (3, 3), 4),
            (3, 17, (2, 2), 8),
            (2, 7, (4, 2), 4),
            (1, 9, (6, 1), 8),
        ] {
            let ours = run::<B>(batch, t, heads, dh, true);
            let theirs = run::<Autodiff<Flex>>(batch, t, heads, dh, false);
            for (what, (a, b)) in ["output", "qkv grad"].iter().zip(ours.iter().zip(&theirs)) {
                let (heads, kv) = heads;
                let what = format!("{what} ({batch}, {t}, {heads}/{kv} heads, {dh})");
                assert_close(&what, a, b, 2e-6);
            }
        }
    }

    #[test]
    fn attention_matches_burns_operations_in_output_and_gradient() {
        matches_burn::<Autodiff<Flex>>();
        matches_burn::<Autodiff<NdArray>>();
    }

    #[test]
    fn attention_gives_the_same_bits_on_one_thread_and_on_many() {
        let on = |threads| on_threads(threads, || run::<Autodiff<Flex>>(3, 9, (4, 2), 4, true));
        assert_eq!(on(1), on(3));
    }
}
