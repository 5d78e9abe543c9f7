//! Between host weights and burn models: which tensors are quantized along which axis, and
//! building a model from (dequantized) host weights to evaluate or run it.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use kiln_core::config::{ModelSection, Precision};
use kiln_models::{DataShape, Model};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

/// Tensors by burn-store name: shape and values.
pub type HostWeights = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// The channel axis a weight is quantized along, or `None` to keep it in float32:
/// - convolution weights `[c_out, c_in, k, k]`: axis 0 (one scale per output channel);
/// - embeddings `[rows, dim]` (a GPT's `wte`, `wpe`): axis 0 (one scale per token or position,
///   which is also the output channel of the tied LM head);
/// - other matrices, linear weights `[d_in, d_out]` and the untied LM head: the last axis
///   (one scale per output);
/// - vectors (biases, normalization parameters and statistics): float32.
pub fn channel_axis(name: &str, shape: &[usize]) -> Option<usize> {
    match shape.len() {
        0 | 1 => None,
        4 => Some(0),
        _ if name == "wte.weight" || name == "wpe.weight" => Some(0),
        n => Some(n - 1),
    }
}

/// Builds the model of `section` for data of `shape` and loads `weights` into it (every tensor
/// of the model must be there, and nothing else). Runs in float32.
pub fn build_model<B: Backend>(
    section: &ModelSection,
    shape: &DataShape,
    weights: &HostWeights,
    origin: &str,
    device: &B::Device,
) -> Result<Model<B>> {
    let model = Model::<B>::new(section, shape, Precision::F32, 0, device)?;
    let bytes = to_safetensors(weights)?;
    kiln_train::weights::load_bytes(model, bytes, origin)
}

/// A safetensors image of float32 host weights.
pub fn to_safetensors(weights: &HostWeights) -> Result<Vec<u8>> {
    let bytes: Vec<(&String, &Vec<usize>, Vec<u8>)> = weights
        .iter()
        .map(|(n, (s, v))| (n, s, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views = bytes
        .iter()
        .map(|(n, s, b)| {
            TensorView::new(Dtype::F32, s.to_vec(), b)
                .map(|v| (n.as_str(), v))
                .with_context(|| format!("tensor {n}: shape {s:?} does not fit its values"))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, None).context("cannot encode the weights")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_follow_the_layer_kind() {
        assert_eq!(channel_axis("layers.0.weight", &[784, 256]), Some(1));
        assert_eq!(channel_axis("layers.0.bias", &[256]), None);
        assert_eq!(
            channel_axis("blocks.0.conv.weight", &[16, 1, 3, 3]),
            Some(0)
        );
        assert_eq!(channel_axis("wte.weight", &[66, 128]), Some(0));
        assert_eq!(channel_axis("lm_head", &[128, 66]), Some(1));
        assert_eq!(channel_axis("h.0.ln_1.gamma", &[128]), None);
    }
}
