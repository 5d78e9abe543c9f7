//! Element-wise operations with host kernels, differentiable under burn's autodiff.
//!
//! [`apply`] runs a [`HostUnary`] operation on a tensor of any backend:
//! - `Autodiff<Flex>` / `Autodiff<NdArray>` (training): the forward kernel, and a node in the
//!   autodiff graph whose backward pass is the backward kernel over the saved input;
//! - `Flex` / `NdArray` (inference): the forward kernel;
//! - any other backend: the caller's fallback, burn's own tensor operations.
//!
//! Both kernels run over chunks of the buffer on rayon's threads.

use std::any::{Any, TypeId};

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use rayon::prelude::*;

use crate::host::HostTensor;

/// Elements per rayon task.
pub(crate) const CHUNK: usize = 1 << 14;

/// Columns per task of [`column_sums`].
const SUM_COLUMNS: usize = 64;

/// An element-wise function `y = f(x)` with host kernels for it and its derivative.
pub trait HostUnary: Copy + Send + Sync + std::fmt::Debug + 'static {
    /// Writes `f(x)` to `y` (same length).
    fn forward(self, x: &[f32], y: &mut [f32]);
    /// Multiplies the incoming gradient `grad` by `f'(x)`, in place.
    fn backward(self, x: &[f32], grad: &mut [f32]);
}

/// `op(x)` by the host kernels where `x`'s backend has them, otherwise `fallback(x)`.
pub fn apply<B: Backend, const D: usize, O: HostUnary>(
    op: O,
    x: Tensor<B, D>,
    fallback: impl FnOnce(Tensor<B, D>) -> Tensor<B, D>,
) -> Tensor<B, D> {
    let x = match on_cpu_autodiff(Elementwise(op), x) {
        Ok(y) => return y,
        Err(x) => x,
    };
    if B::ad_enabled(&x.device()) {
        // Another autodiff backend: only burn's operations are differentiable there.
        return fallback(x);
    }
    match HostTensor::new(x) {
        Ok(h) => forward(op, &h),
        Err(x) => fallback(x),
    }
}

/// Whether backend `B` is one of the CPU backends (or their autodiff) that the kernels serve.
pub fn has_kernels<B: Backend>() -> bool {
    let id = TypeId::of::<B>();
    #[cfg(feature = "flex")]
    if id == TypeId::of::<burn::backend::Flex>()
        || id == TypeId::of::<Autodiff<burn::backend::Flex>>()
    {
        return true;
    }
    #[cfg(feature = "ndarray")]
    if id == TypeId::of::<burn::backend::NdArray>()
        || id == TypeId::of::<Autodiff<burn::backend::NdArray>>()
    {
        return true;
    }
    let _ = id;
    false
}

/// An operation that records its own node in the autodiff graph of a CPU backend `IB`, from a
/// rank-`D` input to a rank-`E` output.
pub(crate) trait AutodiffNode<const D: usize, const E: usize>: Copy {
    /// The output, as a node of `x`'s graph.
    fn record<IB: Backend>(self, x: Tensor<Autodiff<IB>, D>) -> Tensor<Autodiff<IB>, E>;
}

/// `node`'s output when `B` is `Autodiff<Flex>` or `Autodiff<NdArray>`; otherwise `x` back.
pub(crate) fn on_cpu_autodiff<B: Backend, N: AutodiffNode<D, E>, const D: usize, const E: usize>(
    node: N,
    x: Tensor<B, D>,
) -> Result<Tensor<B, E>, Tensor<B, D>> {
    #[cfg(feature = "flex")]
    let x = match cast::<B, Autodiff<burn::backend::Flex>, D>(x) {
        Ok(x) => return Ok(matched(node.record(x))),
        Err(x) => x,
    };
    #[cfg(feature = "ndarray")]
    let x = match cast::<B, Autodiff<burn::backend::NdArray>, D>(x) {
        Ok(x) => return Ok(matched(node.record(x))),
        Err(x) => x,
    };
    let _ = node;
    Err(x)
}

/// A [`HostUnary`] operation as an [`AutodiffNode`].
#[derive(Clone, Copy)]
struct Elementwise<O>(O);

impl<O: HostUnary, const D: usize> AutodiffNode<D, D> for Elementwise<O> {
    fn record<IB: Backend>(self, x: Tensor<Autodiff<IB>, D>) -> Tensor<Autodiff<IB>, D> {
        autodiff::<IB, D, O>(self.0, x)
    }
}

/// `x` as a tensor of backend `T`, which the caller has already matched with `A`.
pub(crate) fn matched<A: Backend, T: Backend, const D: usize>(x: Tensor<A, D>) -> Tensor<T, D> {
    cast(x).unwrap_or_else(|_| unreachable!("the backend was just matched"))
}

/// `dst [m, n] = beta * lhs [m, k] · rhs [k, n]` (`accumulate`: plus `dst`) on one thread, each
/// operand as `(pointer, row stride, column stride)`.
///
/// # Safety
/// The operands must cover the extents and strides given, and `dst` must not overlap them.
pub(crate) unsafe fn product(
    (m, n, k): (usize, usize, usize),
    dst: (*mut f32, usize, usize),
    lhs: (*const f32, usize, usize),
    rhs: (*const f32, usize, usize),
    beta: f32,
    accumulate: bool,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst.0,
        dst.2 as isize,
        dst.1 as isize,
        accumulate,
        lhs.0,
        lhs.2 as isize,
        lhs.1 as isize,
        rhs.0,
        rhs.2 as isize,
        rhs.1 as isize,
        1.0,
        beta,
        false,
        false,
        false,
        gemm::Parallelism::None,
    )
}

/// The sum of the `len`-long partial sums laid end to end in `parts`, added in order (so the
/// result does not depend on which thread made which part).
pub(crate) fn sum_parts(parts: &[f32], len: usize) -> Vec<f32> {
    let mut total = zeros(len);
    total
        .par_chunks_mut(CHUNK / 4)
        .enumerate()
        .for_each(|(i, total)| {
            for part in parts.chunks(len) {
                for (t, p) in total.iter_mut().zip(&part[i * (CHUNK / 4)..]) {
                    *t += p;
                }
            }
        });
    total
}

/// The sums over the rows of a row-major `[rows, n]` matrix, column blocks in parallel, each
/// column added in row order (so the result does not depend on the number of threads).
pub(crate) fn column_sums(values: &[f32], n: usize) -> Vec<f32> {
    let mut sums = vec![0.0f32; n];
    sums.par_chunks_mut(SUM_COLUMNS)
        .enumerate()
        .for_each(|(block, sums)| {
            let first = block * SUM_COLUMNS;
            for row in values.chunks_exact(n) {
                for (s, v) in sums.iter_mut().zip(&row[first..]) {
                    *s += v;
                }
            }
        });
    sums
}

/// A buffer that parallel tasks write disjoint parts of.
#[derive(Clone, Copy)]
pub(crate) struct Shared(pub(crate) *mut f32);

// SAFETY: users hand each task its own elements of the buffer, and read it only after the tasks.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// The buffer's start (a method, so that closures capture the whole `Shared`).
    pub(crate) fn ptr(&self) -> *mut f32 {
        self.0
    }
}

/// `x` as a tensor of backend `T`, when `T` is `A`.
pub(crate) fn cast<A: Backend, T: Backend, const D: usize>(
    x: Tensor<A, D>,
) -> Result<Tensor<T, D>, Tensor<A, D>> {
    if TypeId::of::<A>() != TypeId::of::<T>() {
        return Err(x);
    }
    let boxed: Box<dyn Any> = Box::new(x);
    Ok(*boxed
        .downcast::<Tensor<T, D>>()
        .expect("the type ids are equal"))
}

/// `x`'s elements as a host buffer, copied into a contiguous one if its layout needs it.
pub(crate) fn host<B: Backend, const D: usize>(x: Tensor<B, D>) -> HostTensor<B, D> {
    match HostTensor::new(x) {
        Ok(h) => h,
        Err(x) => {
            let device = x.device();
            HostTensor::new(Tensor::from_data(x.into_data(), &device))
                .unwrap_or_else(|_| unreachable!("a host backend's fresh tensor is contiguous"))
        }
    }
}

/// A new tensor holding `op(x)`.
fn forward<B: Backend, const D: usize, O: HostUnary>(op: O, x: &HostTensor<B, D>) -> Tensor<B, D> {
    let x_host = x.as_slice();
    let chunk = if x_host.len() < 2 * CHUNK {
        x_host.len().max(1)
    } else {
        CHUNK
    };
    let y = par_new(
        x_host.len(),
        chunk,
        || (),
        |_, i, y| op.forward(&x_host[i * chunk..][..y.len()], y),
    );
    let like = x.shape();
    Tensor::from_data(TensorData::new(y, like), &x.device())
}

/// `len` zeros, written by rayon's threads when the buffer is large (a result buffer: burn's CPU
/// backends zero theirs on the calling thread, the serial part of a step).
pub(crate) fn zeros(len: usize) -> Vec<f32> {
    if len < 2 * CHUNK {
        return vec![0.0; len];
    }
    par_new(len, CHUNK, || (), |_, _, _| ())
}

/// A new buffer of `len` elements written by `fill(state, i, chunk)` for its `i`-th
/// `chunk`-long chunk (the last one shorter), the chunks in parallel on rayon's threads, `state`
/// made by `init` once per rayon job (scratch space, as in `for_each_init`). Each task zeroes
/// its own chunk just before `fill` runs, in cache: the buffer is never zeroed in one serial
/// pass.
pub(crate) fn par_new<S>(
    len: usize,
    chunk: usize,
    init: impl Fn() -> S + Sync + Send,
    fill: impl Fn(&mut S, usize, &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    let mut out: Vec<f32> = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each_init(init, |state, (i, part)| {
            for v in part.iter_mut() {
                v.write(0.0);
            }
            // SAFETY: every element of `part` was initialized just above.
            let part = unsafe { &mut *(part as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) };
            fill(state, i, part);
        });
    // SAFETY: the chunks cover the first `len` elements, each initialized above.
    unsafe { out.set_len(len) };
    out
}

/// `op(x)` as a node of the autodiff graph over the host backend `IB`.
fn autodiff<IB: Backend, const D: usize, O: HostUnary>(
    op: O,
    x: Tensor<Autodiff<IB>, D>,
) -> Tensor<Autodiff<IB>, D> {
    // Autodiff's tensor type is not nameable, but its fields are public.
    let x = x.into_primitive().tensor();
    let input = host(Tensor::<IB, D>::from_primitive(TensorPrimitive::Float(
        x.primitive.clone(),
    )));
    let y = forward(op, &input).into_primitive().tensor();
    let out = match Node::<O, D>(op)
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(input.into_tensor().into_primitive().tensor(), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// The autodiff node of a [`HostUnary`] operation; its state is the operation's input.
#[derive(Debug)]
struct Node<O, const D: usize>(O);

impl<IB: Backend, O: HostUnary, const D: usize> Backward<IB, 1> for Node<O, D> {
    type State = IB::FloatTensorPrimitive;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let op = self.0;
        let x = ops.state;
        unary::<IB, _>(ops.parents, ops.node, grads, |grad| {
            let x = host(Tensor::<IB, D>::from_primitive(TensorPrimitive::Float(x)));
            let mut g = host(Tensor::<IB, D>::from_primitive(TensorPrimitive::Float(
                grad,
            )));
            let (x_host, g_host) = (x.as_slice(), g.as_mut_slice());
            if g_host.len() < 2 * CHUNK {
                op.backward(x_host, g_host);
            } else {
                g_host
                    .par_chunks_mut(CHUNK)
                    .zip(x_host.par_chunks(CHUNK))
                    .for_each(|(g, x)| op.backward(x, g));
            }
            g.into_tensor().into_primitive().tensor()
        });
    }
}
