//! Fully connected layer `y = x W + b` on the CPU backends, forward and backward.
//!
//! burn-flex runs a linear layer as a matrix product whose result buffer is allocated zeroed and
//! then copied into an aligned one (`FlexTensor::empty`), with the operands packed on the calling
//! thread, followed by a bias addition on one thread; the backward pass repeats that for each
//! gradient and sums the bias gradient on one thread. All of that is the step's serial part
//! (the training step of a small GPT spends about a seventh of its samples on the main thread).
//!
//! Here every product (`Y = X W`, `dX = dY Wᵀ`, `dW = Xᵀ dY`) is cut into output tiles, each one
//! single-threaded call of the `gemm` crate on strided views (no transposing copies) writing
//! straight into the result, which is never zeroed; the tiles run on rayon's threads, the
//! bias is added to each tile while it is in cache, and the bias gradient is summed per column
//! block in parallel. The tiles depend on the shapes only, and each output element is one
//! tile's dot product, so the result is the same for any number of threads.

use std::any::TypeId;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
use rayon::prelude::*;

use crate::host::HostTensor;
use crate::op::{column_sums, has_kernels, host, matched, product, Shared};

/// A linear layer's input, weight and bias, given back when [`linear`] does not apply.
pub type Inputs<B> = (Tensor<B, 2>, Tensor<B, 2>, Option<Tensor<B, 1>>);

/// Output tiles per product at most (fewer when the product is small): enough for two to
/// sixteen threads to share, few enough that re-packing the operands per tile stays cheap.
const MAX_TILES: usize = 16;

/// The smallest tile side.
const MIN_TILE: usize = 128;

/// Tasks a product is cut into at least, where its sum is long enough (see [`MIN_DEPTH`]).
const MIN_TASKS: usize = 4;

/// The shortest part of a sum cut into parts.
const MIN_DEPTH: usize = 256;

/// `x W + b` for `x` `[m, k]`, `weight` `[k, n]` (burn's `Linear` layout, any strides) and an
/// optional `bias` `[n]`, all `f32`, on the CPU backends (differentiable under their autodiff).
/// The inputs come back as `Err` on other backends and dtypes; the caller then takes burn's
/// `linear`.
pub fn linear<B: Backend>(
    x: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Result<Tensor<B, 2>, Inputs<B>> {
    let [m, k] = x.dims();
    let [k_w, n] = weight.dims();
    let f32s = x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && bias.as_ref().is_none_or(|b| b.dtype() == DType::F32);
    let fits = k == k_w && m * k * n > 0 && bias.as_ref().is_none_or(|b| b.dims() == [n]);
    if !fits || !f32s || !has_kernels::<B>() {
        return Err((x, weight, bias));
    }
    let shape = Shape { m, k, n };
    #[cfg(feature = "flex")]
    let (x, weight, bias) = match on_autodiff::<B, burn::backend::Flex>(shape, x, weight, bias) {
        Ok(y) => return Ok(y),
        Err(inputs) => inputs,
    };
    #[cfg(feature = "ndarray")]
    let (x, weight, bias) = match on_autodiff::<B, burn::backend::NdArray>(shape, x, weight, bias) {
        Ok(y) => return Ok(y),
        Err(inputs) => inputs,
    };
    if B::ad_enabled(&x.device()) {
        return Err((x, weight, bias));
    }
    let (x, weight, bias) = (host(x), host(weight), bias.map(host));
    Ok(shape.forward_tensor(&x, &weight, bias.as_ref()))
}

/// The layer as a node of `Autodiff<IB>`'s graph when `B` is that backend.
fn on_autodiff<B: Backend, IB: Backend>(
    shape: Shape,
    x: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Result<Tensor<B, 2>, Inputs<B>> {
    if TypeId::of::<B>() != TypeId::of::<Autodiff<IB>>() {
        return Err((x, weight, bias));
    }
    let y = autodiff::<IB>(shape, matched(x), matched(weight), bias.map(matched));
    Ok(matched(y))
}

fn autodiff<IB: Backend>(
    shape: Shape,
    x: Tensor<Autodiff<IB>, 2>,
    weight: Tensor<Autodiff<IB>, 2>,
    bias: Option<Tensor<Autodiff<IB>, 1>>,
) -> Tensor<Autodiff<IB>, 2> {
    let x = x.into_primitive().tensor();
    let weight = weight.into_primitive().tensor();
    let bias = bias.map(|b| b.into_primitive().tensor());
    let inner = |p| host(Tensor::<IB, 2>::from_primitive(TensorPrimitive::Float(p)));
    let (x_host, w_host) = (inner(x.primitive.clone()), inner(weight.primitive.clone()));
    let b_host = bias.as_ref().map(|b| {
        host(Tensor::<IB, 1>::from_primitive(TensorPrimitive::Float(
            b.primitive.clone(),
        )))
    });
    let y = shape
        .forward_tensor(&x_host, &w_host, b_host.as_ref())
        .into_primitive()
        .tensor();
    // The state keeps the contiguous host copies (the weight may be a transposed view).
    let state = |x: HostTensor<IB, 2>, w: HostTensor<IB, 2>| {
        let raw = |h: HostTensor<IB, 2>| h.into_tensor().into_primitive().tensor();
        (shape, raw(x), raw(w))
    };
    let out = match bias {
        Some(b) => match LinearBackward
            .prepare::<NoCheckpointing>([x.node.clone(), weight.node.clone(), b.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(state(x_host, w_host), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        },
        None => match LinearBackward
            .prepare::<NoCheckpointing>([x.node.clone(), weight.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(state(x_host, w_host), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        },
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// The autodiff node, with two parents (input, weight) or three (and the bias); its state is the
/// shape, the input and the weight.
#[derive(Debug)]
struct LinearBackward;

impl<IB: Backend, const N: usize> Backward<IB, N> for LinearBackward {
    type State = (Shape, IB::FloatTensorPrimitive, IB::FloatTensorPrimitive);

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<IB>(&ops.node);
        let (shape, x, weight) = ops.state;
        let dy = host(Tensor::<IB, 2>::from_primitive(TensorPrimitive::Float(dy)));
        let x = host(Tensor::<IB, 2>::from_primitive(TensorPrimitive::Float(x)));
        let weight = host(Tensor::<IB, 2>::from_primitive(TensorPrimitive::Float(
            weight,
        )));
        let device = dy.device();
        let (dy, x, weight) = (dy.as_slice(), x.as_slice(), weight.as_slice());
        let Shape { m, k, n } = shape;
        let mut register = |id: NodeId, values: Vec<f32>, dims: Vec<usize>| {
            grads.register::<IB>(
                id,
                IB::float_from_data(TensorData::new(values, dims), &device),
            );
        };
        let parent = |i: usize| ops.parents.get(i).and_then(|p| p.as_ref()).map(|p| p.id);
        if let Some(id) = parent(0) {
            // dX [m, k] = dY [m, n] · Wᵀ [n, k].
            let dx = par_product((m, k, n), (dy, n, 1), (weight, 1, n), None);
            register(id, dx, vec![m, k]);
        }
        if let Some(id) = parent(1) {
            // dW [k, n] = Xᵀ [k, m] · dY [m, n].
            let dw = par_product((k, n, m), (x, 1, k), (dy, n, 1), None);
            register(id, dw, vec![k, n]);
        }
        if let Some(id) = parent(2) {
            register(id, column_sums(dy, n), vec![n]);
        }
    }
}

/// The extents of one layer: `m` rows of `k` inputs to `n` outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Shape {
    m: usize,
    k: usize,
    n: usize,
}

impl Shape {
    /// `x W + b` as a tensor of the CPU backend `B`.
    fn forward_tensor<B: Backend>(
        self,
        x: &HostTensor<B, 2>,
        weight: &HostTensor<B, 2>,
        bias: Option<&HostTensor<B, 1>>,
    ) -> Tensor<B, 2> {
        let Shape { m, k, n } = self;
        let y = par_product(
            (m, n, k),
            (x.as_slice(), k, 1),
            (weight.as_slice(), n, 1),
            bias.map(HostTensor::as_slice),
        );
        Tensor::from_data(TensorData::new(y, [m, n]), &x.device())
    }
}

/// `lhs [m, k] · rhs [k, n]` (plus `bias [n]` on every row), each operand as `(elements, row
/// stride, column stride)`, as a new row-major `[m, n]` buffer computed on rayon's threads.
///
/// The work is cut by [`Split::of`]: into output tiles, and, when there are too few tiles to
/// share (a small output over a long sum such as a weight gradient), the sum over `k` into parts
/// whose partial products are then added in order.
fn par_product(
    (m, n, k): (usize, usize, usize),
    lhs: (&[f32], usize, usize),
    rhs: (&[f32], usize, usize),
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let reach = |(v, rs, cs): (&[f32], usize, usize), rows: usize, cols: usize| {
        (rows - 1) * rs + (cols - 1) * cs < v.len()
    };
    assert!(
        m * n * k > 0 && reach(lhs, m, k) && reach(rhs, k, n),
        "operands cover the product"
    );
    assert!(bias.is_none_or(|b| b.len() == n), "one bias per column");
    let split = Split::of(m, n, k);
    let parts = k.div_ceil(split.bk);
    let mut out: Vec<f32> = Vec::with_capacity(m * n * parts);
    let dst = Shared(out.as_mut_ptr());
    let (row_tiles, col_tiles) = (m.div_ceil(split.bm), n.div_ceil(split.bn));
    let tiles = row_tiles * col_tiles;
    (0..tiles * parts).into_par_iter().for_each(|task| {
        let (part, tile) = (task / tiles, task % tiles);
        let (i, j) = ((tile / col_tiles) * split.bm, (tile % col_tiles) * split.bn);
        let (rows, cols) = (split.bm.min(m - i), split.bn.min(n - j));
        let p = part * split.bk;
        let depth = split.bk.min(k - p);
        // SAFETY: the (part, tile) pairs are disjoint parts of `out`'s `parts * m * n` elements,
        // each written by one task; the operands cover the extents and strides (asserted
        // above); gemm writes every element of the tile without reading it (`accumulate` false).
        unsafe {
            let tile_dst = dst.ptr().add(part * m * n + i * n + j);
            product(
                (rows, cols, depth),
                (tile_dst, n, 1),
                (lhs.0.as_ptr().add(i * lhs.1 + p * lhs.2), lhs.1, lhs.2),
                (rhs.0.as_ptr().add(p * rhs.1 + j * rhs.2), rhs.1, rhs.2),
                1.0,
                false,
            );
            if let (Some(bias), 1) = (bias, parts) {
                for r in 0..rows {
                    let row = std::slice::from_raw_parts_mut(tile_dst.add(r * n), cols);
                    for (y, b) in row.iter_mut().zip(&bias[j..j + cols]) {
                        *y += b;
                    }
                }
            }
        }
    });
    // SAFETY: the tasks covered all `parts * m * n` elements, and each was written above.
    unsafe { out.set_len(m * n * parts) };
    if parts == 1 {
        return out;
    }
    let (first, rest) = out.split_at_mut(m * n);
    first
        .par_chunks_mut(n)
        .enumerate()
        .for_each(|(row, total)| {
            for part in rest.chunks_exact(m * n) {
                for (t, v) in total.iter_mut().zip(&part[row * n..][..n]) {
                    *t += v;
                }
            }
            if let Some(bias) = bias {
                for (t, b) in total.iter_mut().zip(bias) {
                    *t += b;
                }
            }
        });
    out.truncate(m * n);
    out
}

/// How [`par_product`] cuts an `[m, n]` product over `k`: output tiles of `bm x bn` and parts of
/// the sum of `bk`. Depends on the shape only, so the result is the same for any number of
/// threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Split {
    bm: usize,
    bn: usize,
    bk: usize,
}

impl Split {
    /// Tiles at least [`MIN_TILE`] on a side (smaller tiles re-pack the operands for too little
    /// work), the longer side doubled until there are at most [`MAX_TILES`]; when that leaves
    /// fewer than [`MIN_TASKS`] tiles, the sum is cut into parts of at least [`MIN_DEPTH`].
    fn of(m: usize, n: usize, k: usize) -> Self {
        let (mut bm, mut bn) = (MIN_TILE, MIN_TILE);
        while m.div_ceil(bm) * n.div_ceil(bn) > MAX_TILES {
            if m.div_ceil(bm) >= n.div_ceil(bn) {
                bm *= 2;
            } else {
                bn *= 2;
            }
        }
        let tiles = m.div_ceil(bm) * n.div_ceil(bn);
        let parts = MIN_TASKS.div_ceil(tiles).min(k / MIN_DEPTH).max(1);
        Split {
            bm,
            bn,
            bk: k.div_ceil(parts),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex, NdArray};
    use burn::tensor::backend::AutodiffBackend;

    use crate::testing::{assert_close, on_threads};

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 37 + seed * 11) % 101) as f32 / 50.0 - 1.0)
            .collect()
    }

    /// Output and gradients (x, W, b) of `sum(r * (x W + b))`, Kiln's or burn's; `transposed`
    /// passes the weight as the transposed view of an `[n, k]` tensor (a tied output layer).
    fn run<B: AutodiffBackend>(
        (m, k, n): (usize, usize, usize),
        bias: bool,
        transposed: bool,
        kiln: bool,
    ) -> Vec<Vec<f32>> {
        let device = Default::default();
        let x = Tensor::<B, 2>::from_data(TensorData::new(values(m * k, 0), [m, k]), &device)
            .require_grad();
        let w = if transposed {
            Tensor::<B, 2>::from_data(TensorData::new(values(k * n, 1), [n, k]), &device)
        } else {
            Tensor::<B, 2>::from_data(TensorData::new(values(k * n, 1), [k, n]), &device)
        }
        .require_grad();
        let w_used = if transposed {
            w.clone().transpose()
        } else {
            w.clone()
        };
        let b = bias.then(|| {
            Tensor::<B, 1>::from_data(TensorData::new(values(n, 2), [n]), &device).require_grad()
        });
        let y = if kiln {
            linear(x.clone(), w_used, b.clone()).unwrap_or_else(|_| panic!("a CPU backend"))
        } else {
            burn::tensor::module::linear(x.clone(), w_used, b.clone())
        };
        let r = Tensor::<B, 2>::from_data(TensorData::new(values(m * n, 3), [m, n]), &device);
        let grads = (y.clone() * r).sum().backward();
        let flat = |t: Option<Tensor<B::InnerBackend, 2>>| {
            t.map(|t| t.into_data().to_vec::<f32>().unwrap())
                .unwrap_or_default()
        };
        vec![
            y.inner().into_data().to_vec::<f32>().unwrap(),
            flat(x.grad(&grads)),
            flat(w.grad(&grads)),
            b.and_then(|b| b.grad(&grads))
                .map(|t| t.into_data().to_vec::<f32>().unwrap())
                .unwrap_or_default(),
        ]
    }

    fn matches_burn<B: AutodiffBackend>() {
        for (dims, bias, transposed) in [
            ((1, 1, 1), true, false),
            ((64, 784, 256), true, false),
            ((300, 70, 130), true, false),
            ((2048, 128, 65), false, true),
            ((128, 1100, 128), true, false),
            ((5, 3, 200), false, false),
        ] {
            let ours = run::<B>(dims, bias, transposed, true);
            let theirs = run::<B>(dims, bias, transposed, false);
            for (what, (a, b)) in ["output", "x grad", "weight grad", "bias grad"]
                .iter()
                .zip(ours.iter().zip(&theirs))
            {
                assert_close(&format!("{what} of {dims:?} (bias {bias})"), a, b, 1e-5);
            }
        }
    }

    #[test]
    fn linear_matches_burns_in_output_and_gradients() {
        matches_burn::<Autodiff<Flex>>();
        matches_burn::<Autodiff<NdArray>>();
    }

    #[test]
    fn inference_runs_the_kernel_and_other_dtypes_are_declined() {
        let device = Default::default();
        let x = Tensor::<Flex, 2>::from_data(TensorData::new(values(6, 0), [2, 3]), &device);
        let w = Tensor::<Flex, 2>::from_data(TensorData::new(values(12, 1), [3, 4]), &device);
        let ours = linear(x.clone(), w.clone(), None).unwrap_or_else(|_| panic!("flex, f32"));
        let theirs = x.clone().matmul(w.clone());
        let (a, b) = (
            ours.into_data().to_vec::<f32>().unwrap(),
            theirs.into_data().to_vec::<f32>().unwrap(),
        );
        for (a, b) in a.iter().zip(&b) {
            assert!((a - b).abs() <= 1e-6, "{a} vs {b}");
        }
        let half = x.cast(burn::tensor::FloatDType::F16);
        assert!(linear(half, w.cast(burn::tensor::FloatDType::F16), None).is_err());
    }

    #[test]
    fn linear_gives_the_same_bits_on_one_thread_and_on_many() {
        let on = |threads| {
            on_threads(threads, || {
                run::<Autodiff<Flex>>((700, 96, 300), true, false, true)
            })
        };
        assert_eq!(on(1), on(3));
    }

    #[test]
    fn the_split_depends_on_the_shape_and_cuts_long_sums() {
        let split = |m, n, k| {
            let s = Split::of(m, n, k);
            (s.bm, s.bn, s.bk)
        };
        // A GPT's forward product: tiles only.
        assert_eq!(split(2048, 512, 128), (512, 128, 128));
        // Its [128, 128] weight gradient over 2048 rows: one tile, four parts of the sum.
        assert_eq!(split(128, 128, 2048), (128, 128, 512));
        // Too short a sum to cut.
        assert_eq!(split(64, 64, 300), (128, 128, 300));
        for (m, n, k) in [(1, 1, 1), (2048, 65, 128), (9216, 128, 64), (100_000, 3, 9)] {
            let s = Split::of(m, n, k);
            assert!(m.div_ceil(s.bm) * n.div_ceil(s.bn) <= MAX_TILES, "{m}x{n}");
            assert!(s.bk >= 1 && s.bk <= k);
        }
    }
}
