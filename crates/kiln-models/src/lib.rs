//! Kiln's model zoo and what the training loop needs from any model. Each model is a burn
//! `Module` built from a `[model]` config section, with initial weights drawn on the host from
//! the run's seed (identical on every backend). [`TrainModel`] is the trait a model implements
//! to train through Kiln's loop; [`Model`], the built-in models, implements it like any other.

#![warn(missing_docs)]

pub mod batch;
pub mod cnn;
pub mod config;
pub mod dropout;
pub mod gpt;
pub mod init;
pub mod loss;
pub mod mlp;
pub mod norm;
pub mod plan;
pub mod precision;
pub mod regression;
pub mod resnet;
pub mod train;

use std::collections::HashSet;

use anyhow::{bail, Result};
use burn::module::{Module, ParamId};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use kiln_core::config::Precision;

pub use batch::{HostBatch, HostInput, Labels};
pub use cnn::{Cnn, CnnConfig, Pooling};
pub use config::ModelConfig;
pub use gpt::{GeluForm, Gpt, GptConfig, GptShape, KvCache, MlpKind, NormKind, PositionKind};
pub use init::HostInit;
pub use mlp::{Activation, Mlp, MlpConfig};
pub use plan::Step;
pub use regression::{Regression, RegressionLoss};
pub use resnet::{ResNet, ResNetConfig};
pub use train::{materialize, quant_axis, rank_one_params, LossOutput, Targets, TrainModel};

/// What the data looks like to a model.
#[derive(Clone, Debug, PartialEq)]
pub enum DataShape {
    /// Fixed-size samples (features or images) with one class label each.
    Samples {
        /// The shape of one sample: `[features]` or `[channels, height, width]`.
        sample_shape: Vec<usize>,
        /// Labels are `0..num_classes`.
        num_classes: usize,
    },
    /// Fixed-size samples with one number each to predict (a regression).
    Values {
        /// The shape of one sample: `[features]` or `[channels, height, width]`.
        sample_shape: Vec<usize>,
        /// The target's statistics and the loss.
        regression: Regression,
    },
    /// Token sequences; the targets are the next tokens.
    Tokens {
        /// Token ids are `0..vocab_size`.
        vocab_size: usize,
    },
}

impl DataShape {
    /// The number of values in a sample and the number of classes: what a classifier of
    /// flattened samples is built for; an error naming the model for token data.
    pub fn features_and_classes(&self, model: &str) -> anyhow::Result<(usize, usize)> {
        match self.samples() {
            Some((sample_shape, outputs, _)) => Ok((sample_shape.iter().product(), outputs)),
            None => anyhow::bail!("{model} classifies samples (table or image data), not tokens"),
        }
    }

    /// For sample data: the shape of a sample, the model's number of outputs (the classes, or
    /// one value) and the regression, if it is one; `None` for tokens.
    pub fn samples(&self) -> Option<(&[usize], usize, Option<Regression>)> {
        match self {
            DataShape::Samples {
                sample_shape,
                num_classes,
            } => Some((sample_shape, *num_classes, None)),
            DataShape::Values {
                sample_shape,
                regression,
            } => Some((sample_shape, 1, Some(*regression))),
            DataShape::Tokens { .. } => None,
        }
    }
}

/// A batch of model inputs on the device.
pub enum Input<B: Backend> {
    /// `[batch, features]` (images flattened).
    Features(Tensor<B, 2>),
    /// `[batch, t]` token ids.
    Tokens(Tensor<B, 2, Int>),
}

/// Sees the input of every weight layer during a forward pass, e.g. to calibrate quantization;
/// `()` sees nothing.
pub trait Observer<B: Backend> {
    /// `weight` names the layer's weight tensor as checkpoints do (`layers.0.weight`); `input`
    /// gives the layer's input as rows of its input features: `[rows, d_in]`, or for a
    /// convolution its input patches `[positions, c_in * k * k]` in the weight's `(c_in, kh, kw)`
    /// order. Neither is evaluated unless the observer calls it.
    fn observe(&mut self, weight: &dyn Fn() -> String, input: &dyn Fn() -> Tensor<B, 2>);
}

impl<B: Backend> Observer<B> for () {
    fn observe(&mut self, _: &dyn Fn() -> String, _: &dyn Fn() -> Tensor<B, 2>) {}
}

/// Every model Kiln trains. The training loop sees only this type, so each backend instantiates
/// the loop once whatever the model. Each maps its input to `[targets, classes]` logits: one row
/// per sample for classifiers, one per position (next-token prediction) for language models.
// One model per run: moving the larger GPT variant (a few hundred bytes of handles) by value each
// step costs nothing measurable.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Model<B: Backend> {
    /// `model.kind = "mlp"`.
    Mlp(Mlp<B>),
    /// `model.kind = "cnn"`.
    Cnn(Cnn<B>),
    /// `model.kind = "gpt"`.
    Gpt(Gpt<B>),
    /// `model.kind = "resnet"`.
    ResNet(ResNet<B>),
}

impl<B: Backend> Model<B> {
    /// Builds the model of `spec` for data of `shape`.
    pub fn new(
        spec: &ModelConfig,
        shape: &DataShape,
        precision: Precision,
        seed: u64,
        device: &B::Device,
    ) -> Result<Self> {
        check_fits_in_memory(
            spec,
            spec.param_count(shape)?,
            kiln_core::alloc::available_memory(),
        )?;
        // Before the weights are allocated: see kiln_core::alloc.
        kiln_core::alloc::tune();
        let mut init = HostInit::new(seed);
        if let (ModelConfig::Gpt(spec), DataShape::Tokens { vocab_size }) = (spec, shape) {
            let gpt = Gpt::new(
                GptShape::new(spec, *vocab_size)?,
                spec.dropout,
                precision,
                &mut init,
                device,
            );
            return Ok(Model::Gpt(match &spec.lora {
                Some(lora) => gpt.with_lora(lora, &mut init),
                None => gpt,
            }));
        }
        let mismatch = || {
            anyhow::anyhow!(
                "model.kind = \"{}\" cannot train on this data ({shape:?})",
                spec.kind()
            )
        };
        let (sample_shape, outputs, regression) = shape.samples().ok_or_else(mismatch)?;
        Ok(match spec {
            ModelConfig::Mlp(spec) => Model::Mlp(
                Mlp::new(
                    sample_shape.iter().product(),
                    &spec.hidden,
                    outputs,
                    spec.activation,
                    spec.dropout,
                    &mut init,
                    device,
                )
                .with_precision(precision)
                .with_regression(regression),
            ),
            ModelConfig::Cnn(spec) => {
                let &[c, h, w] = sample_shape else {
                    bail!("model.kind = \"cnn\" needs images of shape [channels, height, width], the data has samples of shape {sample_shape:?}");
                };
                let mut cnn = Cnn::new(spec, [c, h, w], outputs, &mut init, device)?
                    .with_precision(precision);
                cnn.head.regression = regression;
                Model::Cnn(cnn)
            }
            ModelConfig::ResNet(spec) => {
                let &[c, h, w] = sample_shape else {
                    bail!("model.kind = \"resnet\" needs images of shape [channels, height, width], the data has samples of shape {sample_shape:?}");
                };
                let mut resnet = ResNet::new(spec, [c, h, w], outputs, &mut init, device)?
                    .with_precision(precision);
                resnet.head.regression = regression;
                Model::ResNet(resnet)
            }
            ModelConfig::Gpt(_) => return Err(mismatch()),
        })
    }

    /// A regression's statistics and loss; `None` for a classifier or a language model.
    pub fn regression(&self) -> Option<&Regression> {
        match self {
            Model::Mlp(m) => m.regression.as_ref(),
            Model::Cnn(c) => c.head.regression.as_ref(),
            Model::ResNet(r) => r.head.regression.as_ref(),
            Model::Gpt(_) => None,
        }
    }

    /// `[targets, classes]` logits; for a regression, `[samples, 1]` predictions in the target's
    /// units.
    ///
    /// # Panics
    /// If the input kind does not match the model (features for a GPT, tokens for a classifier).
    pub fn forward(&self, input: Input<B>) -> Tensor<B, 2> {
        self.forward_observed(input, &mut ())
    }

    /// [`Model::forward`], showing every weight layer's input to `observer`.
    ///
    /// # Panics
    /// As [`Model::forward`].
    pub fn forward_observed(
        &self,
        input: Input<B>,
        observer: &mut dyn Observer<B>,
    ) -> Tensor<B, 2> {
        let outputs = self.outputs(input, observer);
        match self.regression() {
            Some(r) => r.to_units(outputs),
            None => outputs,
        }
    }

    /// The network's own outputs: logits, or a regression's standardized prediction.
    fn outputs(&self, input: Input<B>, observer: &mut dyn Observer<B>) -> Tensor<B, 2> {
        match (self, input) {
            (Model::Mlp(m), Input::Features(x)) => m.forward_observed(x, "", observer),
            (Model::Cnn(m), Input::Features(x)) => m.forward_observed(x, observer),
            (Model::ResNet(m), Input::Features(x)) => m.forward_observed(x, observer),
            (Model::Gpt(m), Input::Tokens(x)) => {
                let logits = m.forward_observed(x, observer);
                let [batch, t, vocab] = logits.dims();
                logits.reshape([batch * t, vocab])
            }
            _ => panic!("the input kind does not match the model"),
        }
    }
}

/// Refuses a model whose `params` float32 weights alone exceed `available` bytes of memory
/// (training needs about four times as much: gradients and two AdamW moments), before anything
/// is allocated: allocating them would abort the process.
pub fn check_fits_in_memory(
    spec: &ModelConfig,
    params: u128,
    available: Option<u64>,
) -> Result<()> {
    let bytes = params.saturating_mul(4);
    let keys = match spec {
        ModelConfig::Mlp(_) => "model.hidden",
        ModelConfig::Cnn(_) => "model.channels, model.hidden",
        ModelConfig::ResNet(_) => "model.widths, model.stages",
        ModelConfig::Gpt(_) => "model.n_layer, model.n_embd, model.vocab_size, model.block_size",
    };
    match available {
        Some(available) if bytes > u128::from(available) => bail!(
            "model: this model (model.kind = \"{}\") has {} parameters, {} as float32 weights alone (about 4x that to train), more than the {} of memory available; make it smaller ({keys})",
            spec.kind(),
            with_commas(params),
            human_bytes(bytes),
            human_bytes(u128::from(available)),
        ),
        _ => Ok(()),
    }
}

/// `1234567` as `1,234,567`.
fn with_commas(n: u128) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Bytes in binary units, e.g. `12.5 TiB`.
fn human_bytes(bytes: u128) -> String {
    let units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

/// Kiln's models as the loop sees them: cross-entropy over `[targets, classes]` logits, and the
/// accuracy (the count of correct predictions, a mean per target once logged); for a
/// regression, its loss and RMSE, MAE and R^2 ([`regression`]).
impl<B: Backend> TrainModel<B> for Model<B> {
    type HostBatch = HostBatch;
    type Batch = (Input<B>, Labels<B>);

    fn device_batch(batch: HostBatch, device: &B::Device) -> Self::Batch {
        batch.to_device_labels(device)
    }

    /// # Panics
    /// If the batch's labels do not fit the model (values for a classifier, or classes for a
    /// regression): Kiln's data builds the model for its labels.
    fn loss(&self, (input, labels): Self::Batch) -> LossOutput<B> {
        let outputs = self.outputs(input, &mut ());
        match (labels, self.regression()) {
            (Labels::Classes(targets), None) => {
                let (loss_sum, correct) = loss::batch_sums(outputs, targets);
                LossOutput::new(loss_sum, vec![correct.float()])
            }
            (Labels::Values(values), Some(r)) => r.sums(outputs, values),
            _ => panic!("the batch's labels do not fit the model (classes or values)"),
        }
    }

    fn sum_names(&self) -> Vec<String> {
        match self.regression() {
            Some(_) => regression::SUM_NAMES.map(String::from).to_vec(),
            None => vec!["accuracy".to_string()],
        }
    }

    fn metrics(&self, sums: &[f64], targets: f64) -> Vec<(String, f64)> {
        match self.regression() {
            Some(r) => r.metrics(sums, targets),
            None => vec![("accuracy".to_string(), sums[0] / targets.max(1.0))],
        }
    }

    /// Biases and normalization parameters (every parameter of rank 1), and what each model
    /// adds (the GPT's embeddings).
    fn no_decay(&self) -> HashSet<ParamId> {
        match self {
            Model::Gpt(g) => g.no_decay(),
            _ => rank_one_params(self),
        }
    }

    fn quant_axis(&self, name: &str, shape: &[usize]) -> Option<usize> {
        match self {
            Model::Gpt(_) => Gpt::<B>::quant_axis(name, shape),
            _ => train::quant_axis(name, shape),
        }
    }
}
