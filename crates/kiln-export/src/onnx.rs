//! ONNX export of Kiln's classifiers (MLP and CNN).
//!
//! [`classifier_to_onnx`] encodes a [`ClassifierNet`] as an ONNX model (the protobuf is written
//! by hand, in the `proto` submodule) with one input and two outputs:
//!
//! - `input`: float32 `[batch, features]`, `batch` symbolic;
//! - `logits`: float32 `[batch, classes]`;
//! - `probabilities`: `Softmax(logits)` over the classes;
//!
//! or, for a regression, one output `prediction` (float32 `[batch, 1]`): the network's
//! standardized output times the target's standard deviation plus its mean (`Mul`, `Add`).
//!
//! The graph computes what Kiln computes: the standardization `(x - mean) * inv_std` (`Sub`,
//! `Mul`), for a CNN a `Reshape` to `[batch, c, h, w]`, then one group of nodes per layer:
//!
//! | layer | ONNX |
//! |---|---|
//! | `Linear` | `Gemm` (`transB = 1` when the weight is stored channel-major) |
//! | `Conv2d` | `Conv` (`strides` both `stride`, `pads` all `padding`) |
//! | `Residual` | the body's and the shortcut's nodes from the same input, `Add` |
//! | `GlobalAvgPool` | `GlobalAveragePool`, `Flatten` |
//! | `BatchNorm` | `BatchNormalization` (inference) |
//! | `Activation` | `Relu`, `Tanh`, `Sigmoid`; GELU as `Div`, `Erf`, `Add`, `Mul`, `Mul` |
//! | `MaxPool2`, `AvgPool2` | `MaxPool`, `AveragePool` (2x2, stride 2) |
//! | `Flatten` | `Flatten` (`axis = 1`) |
//!
//! Quantized weights stay quantized in the file and a `DequantizeLinear` recovers the floats
//! Kiln computes with (`value * scale`, no zero point):
//!
//! - int8: an INT8 initializer, channel-major (`[d_out, d_in]` for a linear weight quantized
//!   along its last axis, the logical shape for axis 0), one scale per channel (`axis = 0`);
//! - int4: an INT4 initializer `[C, K]` (channels, values per channel; packed two per byte, low
//!   nibble first), scales `[C, ceil(K / block)]`, blocked `DequantizeLinear` (`axis = 1`,
//!   `block_size`); a convolution's weight is then reshaped to `[c_out, c_in, k, k]`. A block
//!   size that does not divide `K` leaves a short last block, which ONNX allows (the scales'
//!   `ceil`) and onnxruntime (checked with 1.32) runs.
//!
//! A model uses opset 17 (IR version 8), or opset 21 (IR version 10) when it holds int4 tensors.

mod graph;
mod proto;

use anyhow::{anyhow, ensure, Result};

use crate::format::ExportTensor;
use graph::{dim, Graph, Shape};
use kiln_data::Standardizer;
use kiln_models::{Activation, Regression};
use proto::{AttrValue, DataType, Dim, Model, ValueInfo};

/// One layer of a classifier in inference form.
#[derive(Clone, Debug)]
pub enum Layer {
    /// `weight`: logical shape `[c_out, c_in, k, k]` (burn's layout), float or quantized along
    /// axis 0. `padding` zeros on every side.
    Conv2d {
        /// The kernel, `[c_out, c_in, k, k]`.
        weight: ExportTensor,
        /// One value per output channel, if the layer has a bias.
        bias: Option<Vec<f32>>,
        /// Zeros added on each side of the height and width.
        padding: usize,
        /// The step between kernel positions, in both directions.
        stride: usize,
    },
    /// `body(x) + shortcut(x)` (`Add`); an empty `shortcut` is `x` itself.
    Residual {
        /// The block's layers.
        body: Vec<Layer>,
        /// The shortcut's layers (a projection), or none.
        shortcut: Vec<Layer>,
    },
    /// `[n, c, h, w] -> [n, c]`: each channel's mean (`GlobalAveragePool`, `Flatten`).
    GlobalAvgPool,
    /// Inference-mode batch normalization over channels.
    BatchNorm {
        /// The scale, per channel.
        gamma: Vec<f32>,
        /// The shift, per channel.
        beta: Vec<f32>,
        /// The running mean, per channel.
        mean: Vec<f32>,
        /// The running variance, per channel.
        var: Vec<f32>,
        /// Added to the variance before its square root (the model's own epsilon).
        epsilon: f64,
    },
    /// The model's activation function, element-wise (GELU: the exact, erf form).
    Activation(Activation),
    /// 2x2 max pooling, stride 2 (odd edges dropped).
    MaxPool2,
    /// 2x2 average pooling, stride 2.
    AvgPool2,
    /// `[n, c, h, w] -> [n, c*h*w]`.
    Flatten,
    /// `weight`: logical shape `[d_in, d_out]` (burn's layout), float or quantized along axis 1.
    Linear {
        /// The weight, `[d_in, d_out]`.
        weight: ExportTensor,
        /// One value per output, if the layer has a bias.
        bias: Option<Vec<f32>>,
    },
}

/// A classifier network in inference form, weights on the host.
#[derive(Clone, Debug)]
pub struct ClassifierNet {
    /// Values per sample of the graph's input `input` (`[batch, features]` float32), as Kiln's
    /// data loader reads them: pixels scaled to [0, 1], CSV features as written.
    pub features: usize,
    /// A CNN's image shape `[c, h, w]` (`c*h*w == features`): the graph reshapes its input to
    /// `[batch, c, h, w]` before the first layer. `None` for an MLP.
    pub image: Option<[usize; 3]>,
    /// The training data's standardization, applied to the input first:
    /// `(x - mean) * scale` ([`Standardizer::scale`]), one value for all features or one per
    /// feature.
    pub standardize: Option<Standardizer>,
    /// The layers, in order.
    pub layers: Vec<Layer>,
    /// Outputs of the graph: one logit per class (1 for a regression).
    pub classes: usize,
    /// A regression: the one output, times the target's standard deviation plus its mean, is
    /// the graph's only output `prediction`, in the target's units.
    pub regression: Option<Regression>,
}

/// Name of the graph's input, float32 `[batch, features]`.
pub const INPUT_NAME: &str = "input";
/// Name of the graph's output with the logits, float32 `[batch, classes]`.
pub const LOGITS_NAME: &str = "logits";
/// Name of the graph's output with the softmax of the logits, float32 `[batch, classes]`.
pub const PROBABILITIES_NAME: &str = "probabilities";
/// Name of a regression graph's output, float32 `[batch, 1]` in the target's units.
pub const PREDICTION_NAME: &str = "prediction";

/// Opset and IR version of a model without int4 tensors.
const OPSET: i64 = 17;
const IR_VERSION: i64 = 8;
/// Opset and IR version of a model with int4 tensors: INT4 and blocked `DequantizeLinear` came
/// with opset 21 (IR version 10).
const OPSET_INT4: i64 = 21;
const IR_VERSION_INT4: i64 = 10;

/// Encodes `net` as an ONNX model with input `input` (`[batch, features]`) and outputs `logits`
/// and `probabilities` (`[batch, classes]`).
///
/// Checks that the layers fit together (channels, features, weight, bias and statistics sizes,
/// kernels that fit their inputs, a final `[classes]`) and returns an error naming the layer
/// when they don't.
pub fn classifier_to_onnx(net: &ClassifierNet) -> Result<Vec<u8>> {
    ensure!(
        net.features > 0,
        "ONNX export: the network takes no input features"
    );
    ensure!(net.classes > 0, "ONNX export: the network has no classes");
    let mut g = Graph::default();
    let mut x = INPUT_NAME.to_string();
    if let Some(st) = &net.standardize {
        st.check(net.features)
            .map_err(|e| anyhow::anyhow!("ONNX export: the standardization has {e}"))?;
        let scale = st.scale();
        let m = g.floats("standardize.mean", &[st.mean.len()], &st.mean);
        let s = g.floats("standardize.inv_std", &[scale.len()], &scale);
        x = g.node("Sub", "standardize.centered", &[&x, &m], vec![]);
        x = g.node("Mul", "standardize.scaled", &[&x, &s], vec![]);
    }
    let mut shape = match net.image {
        None => Shape::Flat(net.features),
        Some([c, h, w]) => {
            ensure!(
                c > 0
                    && h > 0
                    && w > 0
                    && c.checked_mul(h).and_then(|n| n.checked_mul(w)) == Some(net.features),
                "ONNX export: the image shape [{c}, {h}, {w}] does not hold the {} input features",
                net.features
            );
            let s = g.int64s("image.shape", &[-1, dim(c), dim(h), dim(w)]);
            x = g.node("Reshape", "image", &[&x, &s], vec![]);
            Shape::Image { c, h, w }
        }
    };
    for (i, layer) in net.layers.iter().enumerate() {
        (x, shape) = g
            .layer(&format!("layers.{i}"), layer, &x, shape)
            .map_err(|e| anyhow!("ONNX export: layer {i} ({}): {e:#}", layer_kind(layer)))?;
    }
    ensure!(
        shape == Shape::Flat(net.classes),
        "ONNX export: the network's layers end with {shape} values per sample, but it has {} \
         classes",
        net.classes
    );
    let outputs = match &net.regression {
        Some(r) => {
            let std = g.floats("target.std", &[1], &[r.std]);
            let mean = g.floats("target.mean", &[1], &[r.mean]);
            x = g.node("Mul", "target.scaled", &[&x, &std], vec![]);
            g.node_to(
                "Add",
                "target.shifted",
                &[&x, &mean],
                vec![],
                PREDICTION_NAME,
            );
            vec![PREDICTION_NAME]
        }
        None => {
            g.rename_output(&x, LOGITS_NAME);
            g.node_to(
                "Softmax",
                "softmax",
                &[LOGITS_NAME],
                vec![("axis", AttrValue::Int(-1))],
                PROBABILITIES_NAME,
            );
            vec![LOGITS_NAME, PROBABILITIES_NAME]
        }
    };
    let (ir_version, opset) = if g.int4 {
        (IR_VERSION_INT4, OPSET_INT4)
    } else {
        (IR_VERSION, OPSET)
    };
    let batch = || vec![Dim::Param("batch")];
    let io = |name: &str, n: usize| ValueInfo {
        name: name.to_string(),
        elem_type: DataType::Float,
        dims: [batch(), vec![Dim::Value(dim(n))]].concat(),
    };
    let model = Model {
        ir_version,
        opset,
        producer_name: "kiln",
        producer_version: env!("CARGO_PKG_VERSION"),
        graph_name: "kiln_classifier",
        inputs: vec![io(INPUT_NAME, net.features)],
        outputs: outputs.iter().map(|name| io(name, net.classes)).collect(),
        nodes: g.nodes,
        initializers: g.initializers,
    };
    let bytes = model.encode();
    ensure!(
        bytes.len() < i32::MAX as usize,
        "ONNX export: the model takes {} bytes, over protobuf's 2 GiB limit",
        bytes.len()
    );
    Ok(bytes)
}

fn layer_kind(layer: &Layer) -> &'static str {
    match layer {
        Layer::Conv2d { .. } => "Conv2d",
        Layer::Residual { .. } => "Residual",
        Layer::GlobalAvgPool => "GlobalAvgPool",
        Layer::BatchNorm { .. } => "BatchNorm",
        Layer::Activation(_) => "Activation",
        Layer::MaxPool2 => "MaxPool2",
        Layer::AvgPool2 => "AvgPool2",
        Layer::Flatten => "Flatten",
        Layer::Linear { .. } => "Linear",
    }
}

#[cfg(test)]
mod tests;
