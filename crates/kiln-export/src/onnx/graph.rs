//! The ONNX graph of a classifier under construction: one group of nodes per layer, with the
//! shape checks that name a layer whose sizes do not fit, and the initializers (float, int8 and
//! int4 weights with their `DequantizeLinear`).

use anyhow::{bail, ensure, Context, Result};

use super::proto::{AttrValue, DataType, Node, Tensor};
use super::Layer;
use crate::format::{ExportTensor, Quant};
use kiln_models::Activation;

/// The shape of one sample between layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Shape {
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

/// A dimension as ONNX stores it.
pub(super) fn dim(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(super) fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The graph under construction: nodes in topological order and their initializers.
#[derive(Default)]
pub(super) struct Graph {
    pub(super) nodes: Vec<Node>,
    pub(super) initializers: Vec<Tensor>,
    /// Whether an int4 tensor was added (the model then needs opset 21).
    pub(super) int4: bool,
}

impl Graph {
    /// Adds an initializer and returns its name.
    pub(super) fn init(
        &mut self,
        name: &str,
        dims: &[usize],
        data_type: DataType,
        raw: Vec<u8>,
    ) -> String {
        self.initializers.push(Tensor {
            name: name.to_string(),
            dims: dims.iter().map(|&d| dim(d)).collect(),
            data_type,
            raw,
        });
        name.to_string()
    }

    pub(super) fn floats(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        self.init(name, dims, DataType::Float, f32_bytes(data))
    }

    /// A 1-D int64 initializer (a shape).
    pub(super) fn int64s(&mut self, name: &str, values: &[i64]) -> String {
        let raw = values.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.init(name, &[values.len()], DataType::Int64, raw)
    }

    /// A float scalar shared by every node that uses it.
    pub(super) fn constant(&mut self, name: &str, v: f32) -> String {
        if !self.initializers.iter().any(|t| t.name == name) {
            self.floats(name, &[], &[v]);
        }
        name.to_string()
    }

    /// Adds a node with one output named like the node, and returns that name.
    pub(super) fn node(
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
    pub(super) fn node_to(
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
    pub(super) fn rename_output(&mut self, from: &str, to: &str) {
        match self.nodes.last_mut() {
            Some(n) if n.outputs[0] == from => n.outputs[0] = to.to_string(),
            _ => self.node_to("Identity", to, &[from], vec![], to),
        }
    }

    /// Adds the nodes of `layer` (its values named under `p`) applied to `x` of `shape`, and
    /// returns its output and shape.
    pub(super) fn layer(
        &mut self,
        p: &str,
        layer: &Layer,
        x: &str,
        shape: Shape,
    ) -> Result<(String, Shape)> {
        match layer {
            Layer::Conv2d {
                weight,
                bias,
                padding,
                stride,
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
                ensure!(*stride >= 1, "the stride must be at least 1");
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
                        ("strides", AttrValue::Ints(vec![dim(*stride); 2])),
                    ],
                );
                let out = Shape::Image {
                    c: c_out,
                    h: (ph - kh) / stride + 1,
                    w: (pw - kw) / stride + 1,
                };
                Ok((y, out))
            }
            Layer::Residual { body, shortcut } => {
                let run = |g: &mut Self, layers: &[Layer], what: &str| -> Result<(String, Shape)> {
                    let mut out = (x.to_string(), shape);
                    for (i, layer) in layers.iter().enumerate() {
                        out = g.layer(&format!("{p}.{what}.{i}"), layer, &out.0, out.1)?;
                    }
                    Ok(out)
                };
                let (y, y_shape) = run(self, body, "body")?;
                let (s, s_shape) = run(self, shortcut, "shortcut")?;
                ensure!(
                    y_shape == s_shape,
                    "the block gives {y_shape} values per sample, its shortcut {s_shape}"
                );
                Ok((
                    self.node("Add", &format!("{p}.add"), &[&y, &s], vec![]),
                    y_shape,
                ))
            }
            Layer::GlobalAvgPool => {
                let Shape::Image { c, .. } = shape else {
                    bail!("global pooling needs an image input, but it gets {shape} values");
                };
                let pooled = self.node("GlobalAveragePool", &format!("{p}.pool"), &[x], vec![]);
                let y = self.node(
                    "Flatten",
                    &format!("{p}.flatten"),
                    &[&pooled],
                    vec![("axis", AttrValue::Int(1))],
                );
                Ok((y, Shape::Flat(c)))
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
    pub(super) fn gelu(&mut self, p: &str, x: &str) -> String {
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
    pub(super) fn weight(&mut self, p: &str, t: &ExportTensor) -> Result<(String, bool)> {
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
