//! What Kiln's training loop needs from a model: the [`TrainModel`] trait. Kiln's own MLP, CNN
//! and GPT implement it (through [`crate::Model`]) exactly as a user's burn module does; the loop
//! knows nothing else about a model.
//!
//! A model turns a batch into a summed loss and summed metrics. Sums, not means, because the
//! loop adds them up exactly over gradient-accumulation micro-batches, data-parallel workers, log
//! windows and evaluation splits before it divides by the number of targets once; a checkpoint
//! saves the sums of a half-finished log window, so a resumed run logs the numbers an
//! uninterrupted one does.

use std::collections::HashSet;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// The number of targets in a batch: what its summed loss and metrics are averaged over (one
/// per sample for a classifier, one per position for a language model).
pub trait Targets {
    /// The batch's number of targets (0 for the empty shard of a data-parallel worker).
    fn targets(&self) -> usize;
}

/// A model that Kiln's loop trains, evaluates and checkpoints.
///
/// Implement it generically over the backend (`impl<B: Backend> TrainModel<B> for MyNet<B>`),
/// so that the same model trains on an autodiff backend and evaluates on its inner backend.
pub trait TrainModel<B: Backend>: Module<B> {
    /// A batch as the data loader builds it, in host memory (the same on every backend).
    type HostBatch: Targets + Send + 'static;
    /// A batch on the device: what [`TrainModel::loss`] takes.
    type Batch;

    /// Moves a host batch onto `device`.
    fn device_batch(batch: Self::HostBatch, device: &B::Device) -> Self::Batch;

    /// The forward pass of one batch: the loss summed over its targets (the loop divides by the
    /// targets of the whole step), and the sums named by [`TrainModel::sum_names`], in order.
    fn loss(&self, batch: Self::Batch) -> LossOutput<B>;

    /// Names of the sums that [`TrainModel::loss`] returns besides the loss, e.g.
    /// `["accuracy"]` for a count of correct predictions.
    fn sum_names(&self) -> Vec<String>;

    /// The metrics logged for a window of training steps or an evaluation split, from the
    /// [`TrainModel::sum_names`] sums accumulated over it and its number of targets. The default
    /// logs each sum as a mean per target under its own name (a count of correct predictions
    /// becomes the accuracy). Override it for metrics that are not means, e.g. a regression's
    /// R^2 from sums of the targets, their squares and the squared errors.
    fn metrics(&self, sums: &[f64], targets: f64) -> Vec<(String, f64)> {
        self.sum_names()
            .into_iter()
            .zip(sums)
            .map(|(name, s)| (name, s / targets.max(1.0)))
            .collect()
    }

    /// Parameters that weight decay must not touch. The default: every parameter of rank 1
    /// (biases and normalization parameters).
    fn no_decay(&self) -> HashSet<ParamId> {
        rank_one_params(self)
    }

    /// How an export quantizes the parameter `name` (burn-store's name) of `shape`: the axis
    /// with one scale per index (an output channel), or `None` to keep it in float32. The
    /// default, [`quant_axis`], fits linear and convolution layers; a model whose matrices are
    /// laid out otherwise (a GPT's embeddings) says so here.
    fn quant_axis(&self, name: &str, shape: &[usize]) -> Option<usize> {
        quant_axis(name, shape)
    }
}

/// The default [`TrainModel::quant_axis`]: vectors (biases, normalization parameters and
/// statistics) stay float32; a convolution weight `[c_out, c_in, k, k]` has a scale per output
/// channel (axis 0); any other matrix, a linear weight `[d_in, d_out]` included, one per output
/// (its last axis).
pub fn quant_axis(_name: &str, shape: &[usize]) -> Option<usize> {
    match shape.len() {
        0 | 1 => None,
        4 => Some(0),
        n => Some(n - 1),
    }
}

/// What [`TrainModel::loss`] returns for one batch, on the device.
pub struct LossOutput<B: Backend> {
    /// The loss summed over the batch's targets, `[1]`; the backward pass starts here.
    pub loss_sum: Tensor<B, 1>,
    /// One `[1]` sum per name of [`TrainModel::sum_names`].
    pub sums: Vec<Tensor<B, 1>>,
}

impl<B: Backend> LossOutput<B> {
    /// The summed loss and the sums named by [`TrainModel::sum_names`].
    pub fn new(loss_sum: Tensor<B, 1>, sums: Vec<Tensor<B, 1>>) -> Self {
        LossOutput { loss_sum, sums }
    }
}

/// Draws every parameter of `module` that is still lazily uninitialized (burn's layers draw
/// their initial weights at first use), in the module's order, now.
pub fn materialize<B: Backend, M: Module<B>>(module: &M) {
    struct Touch;
    impl<B: Backend> ModuleVisitor<B> for Touch {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let _ = param.val();
        }
    }
    module.visit(&mut Touch);
}

/// Every parameter of rank 1 of `module`: biases and normalization parameters.
pub fn rank_one_params<B: Backend, M: Module<B>>(module: &M) -> HashSet<ParamId> {
    struct RankOne(HashSet<ParamId>);
    impl<B: Backend> ModuleVisitor<B> for RankOne {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if D == 1 {
                self.0.insert(param.id);
            }
        }
    }
    let mut v = RankOne(HashSet::new());
    module.visit(&mut v);
    v.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::nn::{Linear, LinearConfig};

    type B = Flex;

    /// A user's model as small as it gets: a linear layer whose loss is its output's sum.
    #[derive(Module, Debug)]
    struct Probe<B: Backend> {
        layer: Linear<B>,
    }

    struct Rows(usize);

    impl Targets for Rows {
        fn targets(&self) -> usize {
            self.0
        }
    }

    impl<B: Backend> TrainModel<B> for Probe<B> {
        type HostBatch = Rows;
        type Batch = Tensor<B, 2>;

        fn device_batch(batch: Rows, device: &B::Device) -> Tensor<B, 2> {
            Tensor::ones([batch.0, 3], device)
        }

        fn loss(&self, x: Tensor<B, 2>) -> LossOutput<B> {
            let y = self.layer.forward(x);
            LossOutput {
                loss_sum: y.clone().sum(),
                sums: vec![y.clone().abs().sum(), y.powi_scalar(2).sum()],
            }
        }

        fn sum_names(&self) -> Vec<String> {
            vec!["mae".into(), "mse".into()]
        }
    }

    #[test]
    fn by_default_each_sum_is_logged_as_its_mean_per_target_and_biases_skip_decay() {
        let device = Default::default();
        let probe = Probe::<B> {
            layer: LinearConfig::new(3, 2).init(&device),
        };
        assert_eq!(
            probe.metrics(&[3.0, 12.0], 4.0),
            vec![("mae".to_string(), 0.75), ("mse".to_string(), 3.0)]
        );
        // No targets: zeros, not NaN.
        assert_eq!(probe.metrics(&[0.0, 0.0], 0.0)[0].1, 0.0);
        let bias = probe.layer.bias.as_ref().unwrap().id;
        assert_eq!(probe.no_decay(), HashSet::from([bias]));
        let out = probe.loss(Probe::<B>::device_batch(Rows(5), &device));
        assert_eq!(out.sums.len(), probe.sum_names().len());
    }
}
