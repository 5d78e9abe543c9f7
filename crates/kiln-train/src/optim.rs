//! The optimizer of a run, built from the `[optimizer]` section on burn's optimizers.

use burn::module::AutodiffModule;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{
    adaptor::OptimizerAdaptor, AdamW, AdamWConfig, GradientsParams, Optimizer, Sgd, SgdConfig,
};
use burn::tensor::backend::AutodiffBackend;
use kiln_core::config::{OptimizerKind, OptimizerSection};

/// AdamW or SGD (with optional momentum / Nesterov), behind one type.
pub enum Optim<M: AutodiffModule<B>, B: AutodiffBackend> {
    AdamW(OptimizerAdaptor<AdamW, M, B>),
    Sgd(OptimizerAdaptor<Sgd<B::InnerBackend>, M, B>),
}

impl<M: AutodiffModule<B>, B: AutodiffBackend> Optim<M, B> {
    pub fn new(s: &OptimizerSection) -> Self {
        match s.kind {
            OptimizerKind::Adamw => Optim::AdamW(
                AdamWConfig::new()
                    .with_beta_1(s.betas[0] as f32)
                    .with_beta_2(s.betas[1] as f32)
                    .with_epsilon(s.eps as f32)
                    .with_weight_decay(s.weight_decay as f32)
                    .init(),
            ),
            OptimizerKind::Sgd => Optim::Sgd(
                SgdConfig::new()
                    .with_momentum((s.momentum > 0.0).then_some(MomentumConfig {
                        momentum: s.momentum,
                        // PyTorch's default: no dampening.
                        dampening: 0.0,
                        nesterov: s.nesterov,
                    }))
                    .with_weight_decay(
                        (s.weight_decay > 0.0)
                            .then(|| WeightDecayConfig::new(s.weight_decay as f32)),
                    )
                    .init(),
            ),
        }
    }

    pub fn step(&mut self, lr: f64, model: M, grads: GradientsParams) -> M {
        match self {
            Optim::AdamW(o) => o.step(lr, model, grads),
            Optim::Sgd(o) => o.step(lr, model, grads),
        }
    }
}
