//! The gradient exchange of data-parallel training: every gradient is flattened into one fused
//! buffer, summed over the workers by the communicator in a single call, and split back. Each
//! worker's gradients are already divided by the targets of the whole (all-worker) batch, so
//! the sum is the mean gradient over that batch, identical on every worker.

use anyhow::Result;
use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use kiln_dist::Communicator;

/// Collects the flattened gradients in the order the module visits its parameters (a parameter
/// without a gradient, e.g. on a worker whose shard was empty, contributes zeros).
struct Flatten<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    parts: Vec<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Flatten<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let g = self
            .grads
            .get::<B::InnerBackend, D>(param.id)
            .unwrap_or_else(|| param.val().inner().zeros_like());
        let n = g.shape().num_elements();
        self.parts.push(g.reshape([n]));
    }
}

/// Puts the slices of the reduced buffer back, in the same order.
struct Unflatten<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    flat: Tensor<B::InnerBackend, 1>,
    offset: usize,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Unflatten<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let shape = param.val().shape();
        let n = shape.num_elements();
        let g: Tensor<B::InnerBackend, D> =
            self.flat.clone().narrow(0, self.offset, n).reshape(shape);
        self.offset += n;
        self.grads.remove::<B::InnerBackend, D>(param.id);
        self.grads.register(param.id, g);
    }
}

/// Sums `grads` over all workers of `comm` in one fused all-reduce.
pub fn all_reduce_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: GradientsParams,
    comm: &mut dyn Communicator<B::InnerBackend>,
    what: &str,
) -> Result<GradientsParams> {
    let mut flatten = Flatten::<B> {
        grads: &grads,
        parts: Vec::new(),
    };
    model.visit(&mut flatten);
    let flat = Tensor::cat(flatten.parts, 0);
    let flat = comm.all_reduce_sum(flat, what)?;
    let mut grads = grads;
    model.visit(&mut Unflatten::<B> {
        grads: &mut grads,
        flat,
        offset: 0,
    });
    Ok(grads)
}
