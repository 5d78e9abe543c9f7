//! Multi-layer perceptron: `Linear -> activation -> dropout` per hidden layer, then a linear
//! classifier. No hidden layers is logistic regression.

use anyhow::{bail, Result};
use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use kiln_core::config::Precision;
use serde::{Deserialize, Serialize};

use crate::dropout::dropout;
use crate::init::HostInit;
use crate::plan::{mlp_steps, Step};
use crate::precision::linear;
use crate::regression::Regression;
use crate::Observer;

/// The activation function of hidden layers (`model.activation`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// `max(x, 0)`.
    Relu,
    /// The exact GELU, `x Φ(x)`.
    Gelu,
    /// `tanh(x)`.
    Tanh,
    /// `1 / (1 + e^-x)`.
    Sigmoid,
}

/// `[model]` with `kind = "mlp"`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MlpConfig {
    /// Hidden layer widths; none is logistic regression.
    #[serde(default)]
    pub hidden: Vec<usize>,
    /// The activation after each hidden layer (default ReLU).
    #[serde(default = "relu")]
    pub activation: Activation,
    /// Dropout after each hidden layer, while training.
    #[serde(default)]
    pub dropout: f64,
}

pub(crate) fn relu() -> Activation {
    Activation::Relu
}

impl MlpConfig {
    /// The keys of the section (besides `kind`).
    pub const KEYS: &'static [&'static str] = &["hidden", "activation", "dropout"];

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<()> {
        check_head(&self.hidden, self.dropout)
    }

    /// The network's inference steps (linear layers `layers.{i}`), for exporters.
    pub fn plan(&self) -> Vec<Step> {
        mlp_steps("", self.hidden.len() + 1, self.activation)
    }
}

/// Parameters of an MLP (or a CNN's head) of `d_in` inputs, `hidden` widths and `d_out`
/// outputs: each linear layer's weights and bias. Counted in `u128`: a width typed by mistake
/// must not overflow before it can be refused.
pub(crate) fn head_params(d_in: usize, hidden: &[usize], d_out: usize) -> u128 {
    let widths: Vec<u128> = std::iter::once(d_in)
        .chain(hidden.iter().copied())
        .chain(std::iter::once(d_out))
        .map(|w| w as u128)
        .collect();
    widths.windows(2).map(|w| w[0] * w[1] + w[1]).sum()
}

/// Checks the widths and dropout of an MLP, or of a CNN's head.
pub(crate) fn check_head(hidden: &[usize], dropout: f64) -> Result<()> {
    if hidden.contains(&0) {
        bail!("model.hidden: layer widths must be at least 1");
    }
    if !(0.0..1.0).contains(&dropout) {
        bail!("model.dropout: must be in [0, 1)");
    }
    Ok(())
}

/// A multilayer perceptron: linear layers with an activation (and dropout while training)
/// between them. Also the head of [`crate::Cnn`].
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// Hidden layers followed by the output layer.
    pub layers: Vec<Linear<B>>,
    /// Applied after every layer but the last.
    #[module(skip)]
    pub activation: Activation,
    /// The probability of zeroing a hidden value while training.
    #[module(skip)]
    pub dropout: f64,
    /// The precision the layers compute in.
    #[module(skip)]
    pub precision: Precision,
    /// A regression head: what its one output is standardized by, and its loss (`None`: the
    /// outputs are class logits).
    #[module(skip)]
    pub regression: Option<Regression>,
}

impl<B: Backend> Mlp<B> {
    /// An MLP of `d_in` inputs, `hidden` widths and `d_out` outputs with initial weights from
    /// `init`, on `device`.
    pub fn new(
        d_in: usize,
        hidden: &[usize],
        d_out: usize,
        activation: Activation,
        dropout: f64,
        init: &mut HostInit,
        device: &B::Device,
    ) -> Self {
        let widths: Vec<usize> = std::iter::once(d_in)
            .chain(hidden.iter().copied())
            .chain(std::iter::once(d_out))
            .collect();
        let layers = widths
            .windows(2)
            .map(|w| init.linear(w[0], w[1], device))
            .collect();
        Self {
            layers,
            activation,
            dropout,
            precision: Precision::F32,
            regression: None,
        }
    }

    /// Makes the network a regression head (its one output predicts `regression`'s target).
    pub fn with_regression(mut self, regression: Option<Regression>) -> Self {
        self.regression = regression;
        self
    }

    /// Runs the linear layers in `precision` (see [`crate::precision`]).
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// `[batch, d_in] -> [batch, d_out]` logits.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.forward_observed(x, "", &mut ())
    }

    /// [`Mlp::forward`], showing each layer's input to `observer` (weights named
    /// `{prefix}layers.{i}.weight`).
    pub fn forward_observed(
        &self,
        x: Tensor<B, 2>,
        prefix: &str,
        observer: &mut dyn Observer<B>,
    ) -> Tensor<B, 2> {
        let last = self.layers.len() - 1;
        self.layers.iter().enumerate().fold(x, |x, (i, layer)| {
            observer.observe(&|| format!("{prefix}layers.{i}.weight"), &|| x.clone());
            let y = linear(layer, x, self.precision);
            if i == last {
                y
            } else {
                dropout(activate(y, self.activation), self.dropout)
            }
        })
    }
}

/// Applies an activation function.
pub fn activate<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    activation: Activation,
) -> Tensor<B, D> {
    use burn::tensor::activation as act;
    match activation {
        Activation::Relu => kiln_kernels::relu(x),
        Activation::Gelu => kiln_kernels::gelu(x),
        Activation::Tanh => act::tanh(x),
        Activation::Sigmoid => act::sigmoid(x),
    }
}
