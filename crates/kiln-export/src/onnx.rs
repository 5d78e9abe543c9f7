//! ONNX export of Kiln's classifiers (MLP and CNN).
//!
//! (Implementation in progress.)

use anyhow::Result;

use crate::format::ExportTensor;

/// An activation function, as Kiln's models apply it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    Relu,
    /// The exact (erf) GELU.
    Gelu,
    Tanh,
    Sigmoid,
}

/// One layer of a classifier in inference form.
#[derive(Clone, Debug)]
pub enum Layer {
    /// `weight`: logical shape `[c_out, c_in, k, k]` (burn's layout), float or quantized along
    /// axis 0. Stride 1, `padding` zeros on every side.
    Conv2d {
        weight: ExportTensor,
        bias: Option<Vec<f32>>,
        padding: usize,
    },
    /// Inference-mode batch normalization over channels.
    BatchNorm {
        gamma: Vec<f32>,
        beta: Vec<f32>,
        mean: Vec<f32>,
        var: Vec<f32>,
        epsilon: f64,
    },
    Activation(Act),
    /// 2x2 max pooling, stride 2 (odd edges dropped).
    MaxPool2,
    /// 2x2 average pooling, stride 2.
    AvgPool2,
    /// `[n, c, h, w] -> [n, c*h*w]`.
    Flatten,
    /// `weight`: logical shape `[d_in, d_out]` (burn's layout), float or quantized along axis 1.
    Linear {
        weight: ExportTensor,
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
    /// Standardization applied to the input first: `(x - mean) * inv_std`, one value for all
    /// features or one per feature.
    pub standardize: Option<(Vec<f32>, Vec<f32>)>,
    pub layers: Vec<Layer>,
    pub classes: usize,
}

/// Encodes `net` as an ONNX model with input `input` (`[batch, features]`) and outputs `logits`
/// and `probabilities` (`[batch, classes]`).
pub fn classifier_to_onnx(net: &ClassifierNet) -> Result<Vec<u8>> {
    let _ = net;
    anyhow::bail!("ONNX export is not implemented yet")
}
