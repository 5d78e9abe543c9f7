//! Kiln's model zoo. Each model is a burn `Module` built from a `[model]` config section, with
//! initial weights drawn on the host from the run's seed (identical on every backend).

pub mod cnn;
pub mod dropout;
pub mod init;
pub mod mlp;

use anyhow::{bail, Result};
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use kiln_core::config::{ModelKind, ModelSection};

pub use cnn::Cnn;
pub use init::HostInit;
pub use mlp::Mlp;

/// A classifier over fixed-size inputs; the training loop sees only this type, so each backend
/// instantiates the loop once whatever the model.
#[derive(Module, Debug)]
pub enum Classifier<B: Backend> {
    Mlp(Mlp<B>),
    Cnn(Cnn<B>),
}

impl<B: Backend> Classifier<B> {
    /// Builds the model of `spec` for samples of `sample_shape` and `num_classes` classes.
    pub fn new(
        spec: &ModelSection,
        sample_shape: &[usize],
        num_classes: usize,
        seed: u64,
        device: &B::Device,
    ) -> Result<Self> {
        let mut init = HostInit::new(seed);
        Ok(match spec.kind {
            ModelKind::Mlp => Classifier::Mlp(Mlp::new(
                sample_shape.iter().product(),
                &spec.hidden,
                num_classes,
                spec.activation,
                spec.dropout,
                &mut init,
                device,
            )),
            ModelKind::Cnn => {
                let &[c, h, w] = sample_shape else {
                    bail!("model.kind = \"cnn\" needs images of shape [channels, height, width], the data has samples of shape {sample_shape:?}");
                };
                Classifier::Cnn(Cnn::new(spec, [c, h, w], num_classes, &mut init, device)?)
            }
        })
    }

    /// `[batch, features] -> [batch, classes]` logits; images arrive flattened.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        match self {
            Classifier::Mlp(m) => m.forward(x),
            Classifier::Cnn(m) => m.forward(x),
        }
    }
}
