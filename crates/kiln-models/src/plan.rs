//! A classifier's forward pass in inference form, as the steps an exporter rebuilds in another
//! format (ONNX): each step names its tensors by burn-store name. Each model writes its own plan
//! ([`crate::MlpConfig::plan`], [`crate::CnnConfig::plan`]); the exporters translate steps, and
//! know nothing of a model's layout.

use crate::mlp::Activation;

/// One step of a classifier's inference.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// `x W + b`, `weight` `[d_in, d_out]`; the bias is optional (absent from the weights when
    /// the layer has none).
    Linear {
        /// The weight tensor's name.
        weight: String,
        /// The bias tensor's name.
        bias: String,
    },
    /// A 2-d convolution, `weight` `[c_out, c_in, k, k]`, `padding` zeros on each side; an
    /// optional bias as for [`Step::Linear`].
    Conv2d {
        /// The kernel tensor's name.
        weight: String,
        /// The bias tensor's name.
        bias: String,
        /// Zeros added on each side of the height and width.
        padding: usize,
        /// The step between the kernel's positions (1, or 2 to halve the size).
        stride: usize,
    },
    /// A residual connection: `body` and `shortcut` run on the same input and their outputs
    /// are added (an empty `shortcut` is the input itself).
    Residual {
        /// The steps of the block.
        body: Vec<Step>,
        /// The steps of the shortcut (a projection), or none.
        shortcut: Vec<Step>,
    },
    /// The mean over each channel's feature map: `[n, c, h, w] -> [n, c]`.
    GlobalAvgPool,
    /// Inference-mode batch normalization over channels: `prefix.gamma`, `prefix.beta`,
    /// `prefix.running_mean`, `prefix.running_var`.
    BatchNorm {
        /// The module's name, before `.gamma` etc.
        prefix: String,
        /// Added to the running variance before its square root.
        epsilon: f64,
    },
    /// The activation function, element-wise.
    Activation(Activation),
    /// 2x2 max pooling, stride 2 (odd edges dropped).
    MaxPool2,
    /// 2x2 average pooling, stride 2.
    AvgPool2,
    /// `[n, c, h, w] -> [n, c*h*w]`.
    Flatten,
}

/// The steps of an MLP of `layers` linear layers named `{prefix}layers.{i}`, `activation`
/// between them (dropout is the identity at inference).
pub(crate) fn mlp_steps(prefix: &str, layers: usize, activation: Activation) -> Vec<Step> {
    let mut steps = Vec::new();
    for i in 0..layers {
        steps.push(Step::Linear {
            weight: format!("{prefix}layers.{i}.weight"),
            bias: format!("{prefix}layers.{i}.bias"),
        });
        if i + 1 < layers {
            steps.push(Step::Activation(activation));
        }
    }
    steps
}
