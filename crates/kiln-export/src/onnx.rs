//! ONNX export of Kiln's classifiers (MLP and CNN).
//!
//! [`classifier_to_onnx`] encodes a [`ClassifierNet`] as an ONNX model (the protobuf is written
//! by hand, in the `proto` submodule) with one input and two outputs:
//!
//! - `input`: float32 `[batch, features]`, `batch` symbolic;
//! - `logits`: float32 `[batch, classes]`;
//! - `probabilities`: `Softmax(logits)` over the classes.
//!
//! The graph computes what Kiln computes: the standardization `(x - mean) * inv_std` (`Sub`,
//! `Mul`), for a CNN a `Reshape` to `[batch, c, h, w]`, then one group of nodes per layer:
//!
//! | layer | ONNX |
//! |---|---|
//! | `Linear` | `Gemm` (`transB = 1` when the weight is stored channel-major) |
//! | `Conv2d` | `Conv` (stride 1, `pads` all `padding`) |
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

mod proto;

use anyhow::{anyhow, bail, ensure, Context, Result};

use crate::format::{ExportTensor, Quant};
use kiln_data::Standardizer;
use kiln_models::Activation;
use proto::{AttrValue, DataType, Dim, Model, Node, Tensor, ValueInfo};

/// One layer of a classifier in inference form.
#[derive(Clone, Debug)]
pub enum Layer {
    /// `weight`: logical shape `[c_out, c_in, k, k]` (burn's layout), float or quantized along
    /// axis 0. Stride 1, `padding` zeros on every side.
    Conv2d {
        /// The kernel.
        weight: ExportTensor,
        /// One value per output channel, if the layer has a bias.
        bias: Option<Vec<f32>>,
        /// Zeros added on each side of the height and width.
        padding: usize,
    },
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
        /// Added to the variance before its square root.
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
        /// The weight.
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
    /// Outputs of the graph: one logit per class.
    pub classes: usize,
}

/// Name of the graph's input, float32 `[batch, features]`.
pub const INPUT_NAME: &str = "input";
/// Name of the graph's output with the logits, float32 `[batch, classes]`.
pub const LOGITS_NAME: &str = "logits";
/// Name of the graph's output with the softmax of the logits, float32 `[batch, classes]`.
pub const PROBABILITIES_NAME: &str = "probabilities";

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
    g.rename_output(&x, LOGITS_NAME);
    g.node_to(
        "Softmax",
        "softmax",
        &[LOGITS_NAME],
        vec![("axis", AttrValue::Int(-1))],
        PROBABILITIES_NAME,
    );
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
        outputs: vec![
            io(LOGITS_NAME, net.classes),
            io(PROBABILITIES_NAME, net.classes),
        ],
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

/// The shape of one sample between layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// `[n]` values (the graph holds `[batch, n]`).
    Flat(usize),
    /// `[c, h, w]` (the graph holds `[batch, c, h, w]`).
    Image { c: usize, h: usize, w: usize },
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shape::Flat(n) => write!(f, "[{n}]"),
            Shape::Image { c, h, w } => write!(f, "[{c}, {h}, {w}]"),
        }
    }
}

fn layer_kind(layer: &Layer) -> &'static str {
    match layer {
        Layer::Conv2d { .. } => "Conv2d",
        Layer::BatchNorm { .. } => "BatchNorm",
        Layer::Activation(_) => "Activation",
        Layer::MaxPool2 => "MaxPool2",
        Layer::AvgPool2 => "AvgPool2",
        Layer::Flatten => "Flatten",
        Layer::Linear { .. } => "Linear",
    }
}

/// A dimension as ONNX stores it.
fn dim(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The graph under construction: nodes in topological order and their initializers.
#[derive(Default)]
struct Graph {
    nodes: Vec<Node>,
    initializers: Vec<Tensor>,
    /// Whether an int4 tensor was added (the model then needs opset 21).
    int4: bool,
}

impl Graph {
    /// Adds an initializer and returns its name.
    fn init(&mut self, name: &str, dims: &[usize], data_type: DataType, raw: Vec<u8>) -> String {
        self.initializers.push(Tensor {
            name: name.to_string(),
            dims: dims.iter().map(|&d| dim(d)).collect(),
            data_type,
            raw,
        });
        name.to_string()
    }

    fn floats(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        self.init(name, dims, DataType::Float, f32_bytes(data))
    }

    /// A 1-D int64 initializer (a shape).
    fn int64s(&mut self, name: &str, values: &[i64]) -> String {
        let raw = values.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.init(name, &[values.len()], DataType::Int64, raw)
    }

    /// A float scalar shared by every node that uses it.
    fn constant(&mut self, name: &str, v: f32) -> String {
        if !self.initializers.iter().any(|t| t.name == name) {
            self.floats(name, &[], &[v]);
        }
        name.to_string()
    }

    /// Adds a node with one output named like the node, and returns that name.
    fn node(
        &mut self,
        op_type: &'static str,
        name: &str,
        inputs: &[&str],
        attributes: Vec<(&'static str, AttrValue)>,
    ) -> String {
        self.node_to(op_type, name, inputs, attributes, name);
        name.to_string()
    }

    /// Adds a node whose one output is `output`.
    fn node_to(
        &mut self,
        op_type: &'static str,
        name: &str,
        inputs: &[&str],
        attributes: Vec<(&'static str, AttrValue)>,
        output: &str,
    ) {
        self.nodes.push(Node {
            name: name.to_string(),
            op_type,
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: vec![output.to_string()],
            attributes,
        });
    }

    /// Makes the value `from` available as `to`: renames the last node's output when that node
    /// produced it, otherwise adds an `Identity`.
    fn rename_output(&mut self, from: &str, to: &str) {
        match self.nodes.last_mut() {
            Some(n) if n.outputs[0] == from => n.outputs[0] = to.to_string(),
            _ => self.node_to("Identity", to, &[from], vec![], to),
        }
    }

    /// Adds the nodes of `layer` (its values named under `p`) applied to `x` of `shape`, and
    /// returns its output and shape.
    fn layer(&mut self, p: &str, layer: &Layer, x: &str, shape: Shape) -> Result<(String, Shape)> {
        match layer {
            Layer::Conv2d {
                weight,
                bias,
                padding,
            } => {
                let Shape::Image { c, h, w } = shape else {
                    bail!(
                        "a convolution needs an image input, but it gets {shape} values per sample"
                    );
                };
                let &[c_out, c_in, kh, kw] = weight.shape() else {
                    bail!(
                        "the weight's shape {:?} is not [c_out, c_in, k, k]",
                        weight.shape()
                    );
                };
                ensure!(
                    c_out > 0 && kh > 0 && kw > 0,
                    "the weight's shape {:?} is empty",
                    weight.shape()
                );
                ensure!(
                    c_in == c,
                    "the weight takes {c_in} input channels but the input has {c}"
                );
                let (ph, pw) = (h + 2 * padding, w + 2 * padding);
                ensure!(
                    ph >= kh && pw >= kw,
                    "the {kh}x{kw} kernel does not fit the {h}x{w} input padded by {padding}"
                );
                let (wt, transposed) = self.weight(p, weight)?;
                ensure!(
                    !transposed,
                    "a convolution weight must be quantized along axis 0"
                );
                let mut inputs = vec![x.to_string(), wt];
                if let Some(b) = bias {
                    ensure!(
                        b.len() == c_out,
                        "the bias has {} values for {c_out} output channels",
                        b.len()
                    );
                    inputs.push(self.floats(&format!("{p}.bias"), &[c_out], b));
                }
                let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
                let pad = dim(*padding);
                let y = self.node(
                    "Conv",
                    &format!("{p}.conv"),
                    &inputs,
                    vec![
                        ("kernel_shape", AttrValue::Ints(vec![dim(kh), dim(kw)])),
                        ("pads", AttrValue::Ints(vec![pad; 4])),
                        ("strides", AttrValue::Ints(vec![1, 1])),
                    ],
                );
                let out = Shape::Image {
                    c: c_out,
                    h: ph - kh + 1,
                    w: pw - kw + 1,
                };
                Ok((y, out))
            }
            Layer::BatchNorm {
                gamma,
                beta,
                mean,
                var,
                epsilon,
            } => {
                let channels = match shape {
                    Shape::Flat(n) => n,
                    Shape::Image { c, .. } => c,
                };
                let stats = [
                    ("gamma", gamma),
                    ("beta", beta),
                    ("mean", mean),
                    ("var", var),
                ];
                for (what, v) in stats {
                    ensure!(
                        v.len() == channels,
                        "{what} has {} values but the input has {channels} channels",
                        v.len()
                    );
                }
                ensure!(
                    epsilon.is_finite() && *epsilon >= 0.0,
                    "epsilon {epsilon} is not a finite non-negative number"
                );
                let mut inputs = vec![x.to_string()];
                for (what, v) in stats {
                    inputs.push(self.floats(&format!("{p}.{what}"), &[channels], v));
                }
                let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
                let y = self.node(
                    "BatchNormalization",
                    &format!("{p}.batch_norm"),
                    &inputs,
                    vec![("epsilon", AttrValue::Float(*epsilon as f32))],
                );
                Ok((y, shape))
            }
            Layer::Activation(act) => {
                let y = match act {
                    Activation::Relu => self.node("Relu", &format!("{p}.relu"), &[x], vec![]),
                    Activation::Tanh => self.node("Tanh", &format!("{p}.tanh"), &[x], vec![]),
                    Activation::Sigmoid => {
                        self.node("Sigmoid", &format!("{p}.sigmoid"), &[x], vec![])
                    }
                    Activation::Gelu => self.gelu(p, x),
                };
                Ok((y, shape))
            }
            Layer::MaxPool2 | Layer::AvgPool2 => {
                let Shape::Image { c, h, w } = shape else {
                    bail!("pooling needs an image input, but it gets {shape} values per sample");
                };
                ensure!(
                    h >= 2 && w >= 2,
                    "2x2 pooling needs an input of at least 2x2, got {h}x{w}"
                );
                let (op, name) = match layer {
                    Layer::MaxPool2 => ("MaxPool", "max_pool"),
                    _ => ("AveragePool", "avg_pool"),
                };
                let y = self.node(
                    op,
                    &format!("{p}.{name}"),
                    &[x],
                    vec![
                        ("kernel_shape", AttrValue::Ints(vec![2, 2])),
                        ("strides", AttrValue::Ints(vec![2, 2])),
                    ],
                );
                Ok((
                    y,
                    Shape::Image {
                        c,
                        h: h / 2,
                        w: w / 2,
                    },
                ))
            }
            Layer::Flatten => {
                let n = match shape {
                    Shape::Flat(n) => n,
                    Shape::Image { c, h, w } => c * h * w,
                };
                let y = self.node(
                    "Flatten",
                    &format!("{p}.flatten"),
                    &[x],
                    vec![("axis", AttrValue::Int(1))],
                );
                Ok((y, Shape::Flat(n)))
            }
            Layer::Linear { weight, bias } => {
                let Shape::Flat(n) = shape else {
                    bail!(
                        "a linear layer needs a flat input, but it gets an image {shape}; \
                         add a Flatten layer before it"
                    );
                };
                let &[d_in, d_out] = weight.shape() else {
                    bail!(
                        "the weight's shape {:?} is not [d_in, d_out]",
                        weight.shape()
                    );
                };
                ensure!(d_out > 0, "the weight's shape [{d_in}, {d_out}] is empty");
                ensure!(
                    d_in == n,
                    "the weight takes {d_in} inputs but the input has {n} values per sample"
                );
                let (wt, transposed) = self.weight(p, weight)?;
                let mut inputs = vec![x.to_string(), wt];
                if let Some(b) = bias {
                    ensure!(
                        b.len() == d_out,
                        "the bias has {} values for {d_out} outputs",
                        b.len()
                    );
                    inputs.push(self.floats(&format!("{p}.bias"), &[d_out], b));
                }
                let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
                let attributes = if transposed {
                    vec![("transB", AttrValue::Int(1))]
                } else {
                    vec![]
                };
                let y = self.node("Gemm", &format!("{p}.gemm"), &inputs, attributes);
                Ok((y, Shape::Flat(d_out)))
            }
        }
    }

    /// The exact GELU, `x * (1 + erf(x / sqrt(2))) * 0.5` (the `Gelu` operator needs opset 20).
    fn gelu(&mut self, p: &str, x: &str) -> String {
        let sqrt2 = self.constant("gelu.sqrt2", std::f32::consts::SQRT_2);
        let one = self.constant("gelu.one", 1.0);
        let half = self.constant("gelu.half", 0.5);
        let t = self.node("Div", &format!("{p}.gelu.scaled"), &[x, &sqrt2], vec![]);
        let t = self.node("Erf", &format!("{p}.gelu.erf"), &[&t], vec![]);
        let t = self.node(
            "Add",
            &format!("{p}.gelu.erf_plus_one"),
            &[&t, &one],
            vec![],
        );
        let t = self.node("Mul", &format!("{p}.gelu.times_x"), &[&t, x], vec![]);
        self.node("Mul", &format!("{p}.gelu"), &[&t, &half], vec![])
    }

    /// Adds the weight `t` of the layer `p` as the float tensor its operator takes: a float
    /// initializer, or a quantized initializer and the `DequantizeLinear` (and, for an int4
    /// convolution, `Reshape`) that recovers the floats Kiln computes with. Returns its name and
    /// whether it comes out transposed: a matrix quantized along its last axis is stored
    /// channel-major, `[d_out, d_in]`.
    fn weight(&mut self, p: &str, t: &ExportTensor) -> Result<(String, bool)> {
        let name = format!("{p}.weight");
        let shape = t.shape();
        let size: usize = shape.iter().product();
        let (axis, q) = match t {
            ExportTensor::F32 { data, .. } => {
                ensure!(
                    data.len() == size,
                    "the weight of shape {shape:?} holds {} values instead of {size}",
                    data.len()
                );
                return Ok((self.floats(&name, shape, data), false));
            }
            ExportTensor::Quant { axis, q, .. } => (*axis, q),
        };
        let rank = shape.len();
        ensure!(
            rank >= 2 && (axis == 0 || (rank == 2 && axis == 1)),
            "the weight of shape {shape:?} is quantized along axis {axis}; ONNX export supports \
             axis 0, or axis 1 of a matrix"
        );
        // `C` channels of `K` values each.
        let c = shape[axis];
        let k = size / c.max(1);
        let transposed = axis != 0;
        let scale_name = format!("{p}.weight_scale");
        let dequantized = format!("{p}.weight_dequantized");
        match q {
            Quant::Int8(q) => {
                ensure!(
                    q.d_out == c && q.d_in == k && q.values.len() == c * k && q.scales.len() == c,
                    "the int8 weight of shape {shape:?} holds {} values and {} scales for a \
                     [{}, {}] matrix; expected {} values and {c} scales",
                    q.values.len(),
                    q.scales.len(),
                    q.d_in,
                    q.d_out,
                    c * k
                );
                let (values, scales) = t
                    .int8_channel_major()
                    .context("the int8 weight has no values")?;
                // Channel-major `[C, K]` is the logical layout when the axis is 0.
                let dims = if transposed {
                    vec![c, k]
                } else {
                    shape.to_vec()
                };
                let raw = values.iter().map(|&v| v as u8).collect();
                let qn = self.init(&name, &dims, DataType::Int8, raw);
                let sn = self.floats(&scale_name, &[c], scales);
                let y = self.node(
                    "DequantizeLinear",
                    &dequantized,
                    &[&qn, &sn],
                    vec![("axis", AttrValue::Int(0))],
                );
                Ok((y, transposed))
            }
            Quant::Int4(q) => {
                ensure!(q.block > 0, "the int4 weight has block size 0");
                let blocks = k.div_ceil(q.block);
                ensure!(
                    q.d_out == c
                        && q.d_in == k
                        && q.packed.len() == (c * k).div_ceil(2)
                        && q.scales.len() == c * blocks,
                    "the int4 weight of shape {shape:?} holds {} bytes and {} scales for a \
                     [{}, {}] matrix; expected {} bytes and {} scales",
                    q.packed.len(),
                    q.scales.len(),
                    q.d_in,
                    q.d_out,
                    (c * k).div_ceil(2),
                    c * blocks
                );
                self.int4 = true;
                let qn = self.init(&name, &[c, k], DataType::Int4, q.packed.clone());
                let sn = self.floats(&scale_name, &[c, blocks], &q.scales);
                let mut y = self.node(
                    "DequantizeLinear",
                    &dequantized,
                    &[&qn, &sn],
                    vec![
                        ("axis", AttrValue::Int(1)),
                        ("block_size", AttrValue::Int(dim(q.block))),
                    ],
                );
                if rank > 2 {
                    let dims: Vec<i64> = shape.iter().map(|&d| dim(d)).collect();
                    let s = self.int64s(&format!("{p}.weight_shape"), &dims);
                    y = self.node(
                        "Reshape",
                        &format!("{p}.weight_reshaped"),
                        &[&y, &s],
                        vec![],
                    );
                }
                Ok((y, transposed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Scheme;

    // ---- A minimal protobuf reader, to check what the encoder wrote. ----

    /// One decoded field value.
    #[derive(Clone, Copy, Debug)]
    enum Value<'a> {
        Varint(u64),
        Fixed32(u32),
        Bytes(&'a [u8]),
    }

    fn read_varint(b: &[u8], pos: &mut usize) -> u64 {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = b[*pos];
            *pos += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                break;
            }
        }
        v
    }

    /// The fields of one message, in order.
    fn fields(b: &[u8]) -> Vec<(u32, Value<'_>)> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < b.len() {
            let key = read_varint(b, &mut pos);
            let value = match key & 7 {
                0 => Value::Varint(read_varint(b, &mut pos)),
                2 => {
                    let n = read_varint(b, &mut pos) as usize;
                    pos += n;
                    Value::Bytes(&b[pos - n..pos])
                }
                5 => {
                    pos += 4;
                    Value::Fixed32(u32::from_le_bytes(b[pos - 4..pos].try_into().unwrap()))
                }
                w => panic!("unexpected wire type {w}"),
            };
            out.push(((key >> 3) as u32, value));
        }
        assert_eq!(pos, b.len(), "a field runs past the end of its message");
        out
    }

    fn varints(b: &[u8], field: u32) -> Vec<u64> {
        fields(b)
            .into_iter()
            .filter_map(|(f, v)| match (f == field, v) {
                (true, Value::Varint(x)) => Some(x),
                _ => None,
            })
            .collect()
    }

    fn messages(b: &[u8], field: u32) -> Vec<&[u8]> {
        fields(b)
            .into_iter()
            .filter_map(|(f, v)| match (f == field, v) {
                (true, Value::Bytes(x)) => Some(x),
                _ => None,
            })
            .collect()
    }

    fn string(b: &[u8], field: u32) -> String {
        String::from_utf8(messages(b, field)[0].to_vec()).unwrap()
    }

    /// A model's IR version, opset, and its nodes' op types.
    fn summary(model: &[u8]) -> (u64, u64, Vec<String>) {
        let ir = varints(model, 1)[0];
        let opset = varints(messages(model, 8)[0], 2)[0];
        let graph = messages(model, 7)[0];
        let ops = messages(graph, 1).iter().map(|n| string(n, 4)).collect();
        (ir, opset, ops)
    }

    // ---- Small deterministic networks. ----

    /// Deterministic values in about [-1, 1].
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> f32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }

        fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
            (0..n).map(|_| self.next() * scale).collect()
        }
    }

    fn linear(r: &mut Lcg, d_in: usize, d_out: usize, scheme: Scheme, bias: bool) -> Layer {
        let w = r.vec(d_in * d_out, 1.0 / (d_in as f32).sqrt());
        Layer::Linear {
            weight: ExportTensor::quantize(&[d_in, d_out], &w, Some(1), scheme).unwrap(),
            bias: bias.then(|| r.vec(d_out, 0.3)),
        }
    }

    fn conv(
        r: &mut Lcg,
        c_in: usize,
        c_out: usize,
        k: usize,
        padding: usize,
        scheme: Scheme,
    ) -> Layer {
        let w = r.vec(c_out * c_in * k * k, 1.0 / ((c_in * k * k) as f32).sqrt());
        Layer::Conv2d {
            weight: ExportTensor::quantize(&[c_out, c_in, k, k], &w, Some(0), scheme).unwrap(),
            bias: Some(r.vec(c_out, 0.2)),
            padding,
        }
    }

    fn batch_norm(r: &mut Lcg, n: usize) -> Layer {
        Layer::BatchNorm {
            gamma: r.vec(n, 0.5).iter().map(|g| g + 1.0).collect(),
            beta: r.vec(n, 0.3),
            mean: r.vec(n, 0.3),
            var: r.vec(n, 0.4).iter().map(|v| v + 0.6).collect(),
            epsilon: 1e-5,
        }
    }

    /// An MLP over 6 features with every activation, a batch norm, a bias-free layer and one
    /// weight quantized along axis 0; per-feature standardization.
    fn mlp(scheme: Scheme) -> ClassifierNet {
        let mut r = Lcg(7);
        // Blocks of an axis-0 int4 weight run along d_out = 4.
        let axis0 = {
            let w = r.vec(8 * 4, 0.4);
            Layer::Linear {
                weight: ExportTensor::quantize(&[8, 4], &w, Some(0), scheme).unwrap(),
                bias: Some(r.vec(4, 0.1)),
            }
        };
        ClassifierNet {
            features: 6,
            image: None,
            standardize: Some(Standardizer {
                mean: r.vec(6, 0.5),
                std: r.vec(6, 0.5).iter().map(|s| 1.0 / (s + 1.5)).collect(),
            }),
            layers: vec![
                linear(&mut r, 6, 8, scheme, true),
                Layer::Activation(Activation::Relu),
                linear(&mut r, 8, 8, scheme, false),
                batch_norm(&mut r, 8),
                Layer::Activation(Activation::Gelu),
                linear(&mut r, 8, 8, scheme, true),
                Layer::Activation(Activation::Tanh),
                axis0,
                Layer::Activation(Activation::Sigmoid),
                Layer::Flatten,
                linear(&mut r, 4, 3, scheme, true),
            ],
            classes: 3,
        }
    }

    /// A CNN over 2x7x9 images: conv, batch norm, relu, max pool (odd edges), conv, gelu,
    /// average pool, flatten, linear; one standardization value for all features.
    fn cnn(scheme: Scheme) -> ClassifierNet {
        let mut r = Lcg(11);
        ClassifierNet {
            features: 2 * 7 * 9,
            image: Some([2, 7, 9]),
            standardize: Some(Standardizer {
                mean: vec![0.4],
                std: vec![0.4],
            }),
            layers: vec![
                conv(&mut r, 2, 4, 3, 1, scheme),
                batch_norm(&mut r, 4),
                Layer::Activation(Activation::Relu),
                Layer::MaxPool2,
                conv(&mut r, 4, 6, 3, 1, scheme),
                Layer::Activation(Activation::Gelu),
                Layer::AvgPool2,
                Layer::Flatten,
                linear(&mut r, 12, 5, scheme, true),
            ],
            classes: 5,
        }
    }

    // ---- A direct host forward pass: what Kiln computes with the dequantized weights. ----

    /// `erf` to about 1e-7 (Abramowitz and Stegun 7.1.26 is not enough near 0 in relative
    /// terms, so use the series there).
    fn erf(x: f64) -> f64 {
        if x.abs() < 2.0 {
            // Maclaurin series: 2/sqrt(pi) * sum (-1)^n x^(2n+1) / (n! (2n+1)).
            let (mut term, mut sum) = (x, x);
            for n in 1..60 {
                term *= -x * x / n as f64;
                sum += term / (2 * n + 1) as f64;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            // Continued fraction for erfc, ample at |x| >= 2.
            let z = x.abs();
            let mut f = 0.0;
            for k in (1..80).rev() {
                f = (k as f64 / 2.0) / (z + f);
            }
            let erfc = (-z * z).exp() / std::f64::consts::PI.sqrt() / (z + f);
            (1.0 - erfc).copysign(x)
        }
    }

    /// One sample through `net`, in f64.
    fn forward(net: &ClassifierNet, input: &[f32]) -> Vec<f32> {
        let mut x: Vec<f64> = input.iter().map(|&v| f64::from(v)).collect();
        if let Some(st) = &net.standardize {
            let at = |v: &[f32], i: usize| f64::from(v[if v.len() == 1 { 0 } else { i }]);
            for (i, v) in x.iter_mut().enumerate() {
                *v = (*v - at(&st.mean, i)) / at(&st.std, i);
            }
        }
        let mut chw = net.image.map(|[c, h, w]| (c, h, w));
        for layer in &net.layers {
            match layer {
                Layer::Conv2d {
                    weight,
                    bias,
                    padding,
                } => {
                    let (c, h, w) = chw.unwrap();
                    let wt = weight.dequantize();
                    let &[co, _, k, _] = weight.shape() else {
                        panic!()
                    };
                    let p = *padding as isize;
                    let (oh, ow) = (h + 2 * padding + 1 - k, w + 2 * padding + 1 - k);
                    let mut y = vec![0.0; co * oh * ow];
                    for o in 0..co {
                        for (yy, xx) in (0..oh).flat_map(|a| (0..ow).map(move |b| (a, b))) {
                            let mut s = bias.as_ref().map_or(0.0, |b| f64::from(b[o]));
                            for i in 0..c {
                                for dy in 0..k {
                                    for dx in 0..k {
                                        let (iy, ix) =
                                            ((yy + dy) as isize - p, (xx + dx) as isize - p);
                                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize
                                        {
                                            continue;
                                        }
                                        let wv = wt[((o * c + i) * k + dy) * k + dx];
                                        s += f64::from(wv)
                                            * x[(i * h + iy as usize) * w + ix as usize];
                                    }
                                }
                            }
                            y[(o * oh + yy) * ow + xx] = s;
                        }
                    }
                    x = y;
                    chw = Some((co, oh, ow));
                }
                Layer::BatchNorm {
                    gamma,
                    beta,
                    mean,
                    var,
                    epsilon,
                } => {
                    let per = chw.map_or(1, |(_, h, w)| h * w);
                    for (j, v) in x.iter_mut().enumerate() {
                        let ch = j / per;
                        let norm =
                            (*v - f64::from(mean[ch])) / (f64::from(var[ch]) + epsilon).sqrt();
                        *v = norm * f64::from(gamma[ch]) + f64::from(beta[ch]);
                    }
                }
                Layer::Activation(act) => {
                    for v in &mut x {
                        *v = match act {
                            Activation::Relu => v.max(0.0),
                            Activation::Tanh => v.tanh(),
                            Activation::Sigmoid => 1.0 / (1.0 + (-*v).exp()),
                            Activation::Gelu => {
                                0.5 * *v * (1.0 + erf(*v / std::f64::consts::SQRT_2))
                            }
                        };
                    }
                }
                Layer::MaxPool2 | Layer::AvgPool2 => {
                    let (c, h, w) = chw.unwrap();
                    let (oh, ow) = (h / 2, w / 2);
                    let mut y = Vec::with_capacity(c * oh * ow);
                    for ch in 0..c {
                        for yy in 0..oh {
                            for xx in 0..ow {
                                let win = [(0, 0), (0, 1), (1, 0), (1, 1)]
                                    .map(|(a, b)| x[(ch * h + 2 * yy + a) * w + 2 * xx + b]);
                                y.push(match layer {
                                    Layer::MaxPool2 => win.into_iter().fold(f64::MIN, f64::max),
                                    _ => win.iter().sum::<f64>() / 4.0,
                                });
                            }
                        }
                    }
                    x = y;
                    chw = Some((c, oh, ow));
                }
                Layer::Flatten => chw = None,
                Layer::Linear { weight, bias } => {
                    let wt = weight.dequantize();
                    let &[d_in, d_out] = weight.shape() else {
                        panic!()
                    };
                    x = (0..d_out)
                        .map(|j| {
                            let b = bias.as_ref().map_or(0.0, |b| f64::from(b[j]));
                            b + (0..d_in)
                                .map(|i| x[i] * f64::from(wt[i * d_out + j]))
                                .sum::<f64>()
                        })
                        .collect();
                }
            }
        }
        x.into_iter().map(|v| v as f32).collect()
    }

    // ---- Encoding. ----

    #[test]
    fn an_mlp_encodes_its_layers_in_order() {
        let bytes = classifier_to_onnx(&mlp(Scheme::None)).unwrap();
        let (ir, opset, ops) = summary(&bytes);
        assert_eq!((ir, opset), (8, 17));
        let gelu = ["Div", "Erf", "Add", "Mul", "Mul"];
        let expected: Vec<&str> = [
            &["Sub", "Mul", "Gemm", "Relu", "Gemm", "BatchNormalization"][..],
            &gelu,
            &[
                "Gemm", "Tanh", "Gemm", "Sigmoid", "Flatten", "Gemm", "Softmax",
            ],
        ]
        .concat();
        assert_eq!(ops, expected);
        assert_eq!(string(&bytes, 2), "kiln");
        // The graph's input and outputs by name; the last Gemm writes the logits.
        let graph = messages(&bytes, 7)[0];
        let names = |field| -> Vec<String> {
            messages(graph, field)
                .iter()
                .map(|v| string(v, 1))
                .collect()
        };
        assert_eq!(names(11), ["input"]);
        assert_eq!(names(12), ["logits", "probabilities"]);
        let nodes = messages(graph, 1);
        assert_eq!(string(nodes[nodes.len() - 2], 2), "logits");
        // Float weights only: no quantized initializers.
        let types: Vec<u64> = messages(graph, 5)
            .iter()
            .map(|t| varints(t, 2)[0])
            .collect();
        assert!(types.iter().all(|&t| t == 1), "{types:?}");
    }

    #[test]
    fn quantized_weights_stay_quantized() {
        let bytes = classifier_to_onnx(&cnn(Scheme::Int8)).unwrap();
        let (ir, opset, ops) = summary(&bytes);
        assert_eq!((ir, opset), (8, 17));
        assert_eq!(ops.iter().filter(|o| *o == "DequantizeLinear").count(), 3);
        let graph = messages(&bytes, 7)[0];
        let int8: Vec<Vec<u64>> = messages(graph, 5)
            .iter()
            .filter(|t| varints(t, 2)[0] == 3)
            .map(|t| varints(t, 1))
            .collect();
        // Convolutions in their logical shape, the linear weight channel-major.
        assert_eq!(int8, [vec![4, 2, 3, 3], vec![6, 4, 3, 3], vec![5, 12]]);

        let bytes = classifier_to_onnx(&cnn(Scheme::Int4 { block: 6 })).unwrap();
        let (ir, opset, ops) = summary(&bytes);
        assert_eq!((ir, opset), (10, 21));
        // Each int4 convolution weight is reshaped back to [c_out, c_in, k, k].
        assert_eq!(ops.iter().filter(|o| *o == "Reshape").count(), 3);
        let graph = messages(&bytes, 7)[0];
        let int4: Vec<(Vec<u64>, usize)> = messages(graph, 5)
            .iter()
            .filter(|t| varints(t, 2)[0] == 22)
            .map(|t| (varints(t, 1), messages(t, 9)[0].len()))
            .collect();
        assert_eq!(
            int4,
            [(vec![4, 18], 36), (vec![6, 36], 108), (vec![5, 12], 30)]
        );
        let dq = messages(graph, 1)
            .into_iter()
            .find(|n| string(n, 4) == "DequantizeLinear")
            .unwrap();
        let attrs: Vec<(String, u64)> = messages(dq, 5)
            .iter()
            .map(|a| (string(a, 1), varints(a, 3)[0]))
            .collect();
        assert_eq!(
            attrs,
            [("axis".to_string(), 1), ("block_size".to_string(), 6)]
        );
    }

    #[test]
    fn attributes_carry_their_types() {
        let bytes = classifier_to_onnx(&cnn(Scheme::None)).unwrap();
        let graph = messages(&bytes, 7)[0];
        let conv = messages(graph, 1)
            .into_iter()
            .find(|n| string(n, 4) == "Conv")
            .unwrap();
        let attrs: Vec<(String, Vec<u64>, u64)> = messages(conv, 5)
            .iter()
            .map(|a| (string(a, 1), varints(a, 8), varints(a, 20)[0]))
            .collect();
        assert_eq!(
            attrs,
            [
                ("kernel_shape".to_string(), vec![3, 3], 7),
                ("pads".to_string(), vec![1, 1, 1, 1], 7),
                ("strides".to_string(), vec![1, 1], 7),
            ]
        );
        let bn = messages(graph, 1)
            .into_iter()
            .find(|n| string(n, 4) == "BatchNormalization")
            .unwrap();
        let eps = fields(messages(bn, 5)[0])
            .into_iter()
            .find_map(|(f, v)| match (f, v) {
                (2, Value::Fixed32(bits)) => Some(f32::from_bits(bits)),
                _ => None,
            });
        assert_eq!(eps, Some(1e-5));
        // The batch dimension is symbolic, the features fixed.
        let input = messages(graph, 11)[0];
        let tensor = messages(messages(input, 2)[0], 1)[0];
        let dims = messages(messages(tensor, 2)[0], 1);
        assert_eq!(string(dims[0], 2), "batch");
        assert_eq!(varints(dims[1], 1), [2 * 7 * 9]);
    }

    #[test]
    fn a_net_without_layers_passes_its_input_through() {
        let net = ClassifierNet {
            features: 3,
            image: None,
            standardize: None,
            layers: vec![],
            classes: 3,
        };
        let (_, _, ops) = summary(&classifier_to_onnx(&net).unwrap());
        assert_eq!(ops, ["Identity", "Softmax"]);
    }

    // ---- Refusals. ----

    fn error(net: &ClassifierNet) -> String {
        format!("{:#}", classifier_to_onnx(net).unwrap_err())
    }

    #[test]
    fn inconsistent_nets_are_refused() {
        let mut r = Lcg(3);
        let base = mlp(Scheme::None);

        let mut net = base.clone();
        net.classes = 4;
        let e = error(&net);
        assert!(
            e.contains("end with [3] values") && e.contains("4 classes"),
            "{e}"
        );

        let mut net = base.clone();
        net.layers[2] = linear(&mut r, 7, 8, Scheme::None, true);
        let e = error(&net);
        assert!(
            e.contains("layer 2 (Linear)") && e.contains("takes 7 inputs"),
            "{e}"
        );

        let mut net = base.clone();
        net.standardize = Some(Standardizer {
            mean: vec![0.0; 5],
            std: vec![1.0; 5],
        });
        let e = error(&net);
        assert!(e.contains("standardization has 5 values"), "{e}");

        let mut net = base.clone();
        net.layers[0] = Layer::Linear {
            weight: ExportTensor::F32 {
                shape: vec![6, 8],
                data: vec![0.0; 47],
            },
            bias: None,
        };
        let e = error(&net);
        assert!(e.contains("holds 47 values instead of 48"), "{e}");

        let mut net = base.clone();
        let Layer::Linear { bias, .. } = &mut net.layers[0] else {
            unreachable!()
        };
        *bias = Some(vec![0.0; 3]);
        assert!(error(&net).contains("bias has 3 values for 8 outputs"));

        let mut net = base.clone();
        net.layers[3] = batch_norm(&mut r, 5);
        assert!(error(&net).contains("gamma has 5 values but the input has 8 channels"));

        let mut net = base.clone();
        net.layers.insert(0, Layer::MaxPool2);
        assert!(error(&net).contains("pooling needs an image input"));

        let mut net = cnn(Scheme::None);
        net.image = Some([2, 7, 8]);
        assert!(error(&net).contains("does not hold the 126 input features"));

        let mut net = cnn(Scheme::None);
        net.layers.remove(7);
        let e = error(&net);
        assert!(e.contains("add a Flatten layer"), "{e}");

        let mut net = cnn(Scheme::None);
        net.layers[4] = conv(&mut r, 3, 6, 3, 1, Scheme::None);
        assert!(error(&net).contains("takes 3 input channels but the input has 4"));

        let mut net = cnn(Scheme::None);
        net.layers[4] = conv(&mut r, 4, 6, 5, 0, Scheme::None);
        assert!(error(&net).contains("5x5 kernel does not fit the 3x4 input"));

        // Damaged quantized tensors.
        let mut net = cnn(Scheme::Int8);
        let Layer::Conv2d { weight, .. } = &mut net.layers[0] else {
            unreachable!()
        };
        let ExportTensor::Quant {
            q: Quant::Int8(q), ..
        } = weight
        else {
            unreachable!()
        };
        q.scales.pop();
        assert!(error(&net).contains("expected 72 values and 4 scales"));

        let mut net = cnn(Scheme::Int4 { block: 6 });
        let Layer::Linear { weight, .. } = &mut net.layers[8] else {
            unreachable!()
        };
        let ExportTensor::Quant {
            q: Quant::Int4(q), ..
        } = weight
        else {
            unreachable!()
        };
        q.packed.push(0);
        let e = error(&net);
        assert!(
            e.contains("layer 8 (Linear)") && e.contains("holds 31 bytes"),
            "{e}"
        );
    }

    // ---- onnxruntime agrees with the host forward pass. ----

    /// The Python of the export tests: `$KILN_PYTHON`, or `target/pyenv/bin/python` (made by
    /// `tests/python/setup.sh`).
    fn python() -> std::path::PathBuf {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        std::env::var_os("KILN_PYTHON")
            .map(Into::into)
            .unwrap_or_else(|| root.join("target/pyenv/bin/python"))
    }

    /// Runs `tests/python/check_onnx.py` on a model and its cases; returns whether it passed,
    /// its JSON summary and its stderr.
    fn run_check(
        model: &std::path::Path,
        cases: &std::path::Path,
    ) -> (bool, serde_json::Value, String) {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/python/check_onnx.py");
        let out = std::process::Command::new(python())
            .arg(script)
            .arg(model)
            .arg(cases)
            .args(["--atol", "1e-4"])
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} ({e}); run tests/python/setup.sh or set KILN_PYTHON",
                    python().display()
                )
            });
        let stdout = String::from_utf8_lossy(&out.stdout);
        let summary = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("check_onnx.py printed no JSON ({e}): {stdout}"));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.success(), summary, stderr)
    }

    /// Writes `net`'s model and 16 inputs with their host logits to `dir` as `name.onnx` and
    /// `name.json`, checks them with onnxruntime and returns the summary.
    fn check_with_onnxruntime(
        dir: &std::path::Path,
        name: &str,
        net: &ClassifierNet,
    ) -> serde_json::Value {
        let mut r = Lcg(99);
        let inputs: Vec<Vec<f32>> = (0..16)
            .map(|_| r.vec(net.features, 1.0).iter().map(|v| v.abs()).collect())
            .collect();
        let logits: Vec<Vec<f32>> = inputs.iter().map(|x| forward(net, x)).collect();
        let model = dir.join(format!("{name}.onnx"));
        let cases = dir.join(format!("{name}.json"));
        std::fs::write(&model, classifier_to_onnx(net).unwrap()).unwrap();
        let json = serde_json::json!({ "inputs": inputs, "logits": logits });
        std::fs::write(&cases, json.to_string()).unwrap();
        let (ok, summary, stderr) = run_check(&model, &cases);
        println!("{name}: {summary}");
        assert!(ok, "{name}: check_onnx.py failed: {stderr}");
        summary
    }

    #[test]
    #[ignore = "needs Python with onnxruntime (tests/python/setup.sh)"]
    fn onnxruntime_computes_what_kiln_computes() {
        let dir = tempfile::tempdir().unwrap();
        let schemes = [
            ("f32", Scheme::None, 17),
            ("int8", Scheme::Int8, 17),
            ("int4", Scheme::Int4 { block: 2 }, 21),
        ];
        for (tag, scheme, opset) in schemes {
            let s = check_with_onnxruntime(dir.path(), &format!("mlp_{tag}"), &mlp(scheme));
            assert_eq!(s["opset"], opset);
            assert!(s["max_abs_diff"].as_f64().unwrap() <= 1e-4, "{s}");
            assert_eq!(s["argmax_agree"], 16);
            // The CNN's int4 blocks: 6 divides K = 18, 36 and 12.
            let scheme = if tag == "int4" {
                Scheme::Int4 { block: 6 }
            } else {
                scheme
            };
            let s = check_with_onnxruntime(dir.path(), &format!("cnn_{tag}"), &cnn(scheme));
            assert_eq!(s["opset"], opset);
            assert!(s["max_abs_diff"].as_f64().unwrap() <= 1e-4, "{s}");
            assert_eq!(s["argmax_agree"], 16);
        }
        // A block that does not divide K (4 blocks of 5 over 18 values, the last one short).
        let s = check_with_onnxruntime(dir.path(), "cnn_int4_b5", &cnn(Scheme::Int4 { block: 5 }));
        assert!(s["max_abs_diff"].as_f64().unwrap() <= 1e-4, "{s}");

        // The check notices a wrong model: the int8 CNN against the float CNN's logits.
        let (ok, s, stderr) = run_check(
            &dir.path().join("cnn_int8.onnx"),
            &dir.path().join("cnn_f32.json"),
        );
        println!("int8 model, float logits: {s} {stderr}");
        assert!(
            !ok && s["ok"] == false && stderr.contains("logits differ"),
            "{s}"
        );
    }
}
