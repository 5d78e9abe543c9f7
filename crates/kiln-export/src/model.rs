//! Between host weights and burn models: building a model from (dequantized) host weights to
//! evaluate or run it. (Which tensor is quantized along which axis is each model's own
//! knowledge: `TrainModel::quant_axis`.)

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use kiln_core::config::Precision;
use kiln_models::{DataShape, Model, ModelConfig};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

/// Tensors by burn-store name: shape and values.
pub type HostWeights = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Builds the model of `section` for data of `shape` and loads `weights` into it (every tensor
/// of the model must be there, and nothing else). Runs in float32.
pub fn build_model<B: Backend>(
    section: &ModelConfig,
    shape: &DataShape,
    weights: &HostWeights,
    origin: &str,
    device: &B::Device,
) -> Result<Model<B>> {
    let model = Model::<B>::new(section, shape, Precision::F32, 0, device)?;
    let bytes = to_safetensors(weights)?;
    kiln_infer::weights::load_bytes(model, bytes, origin)
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
    use burn::backend::Flex;
    use kiln_models::TrainModel;

    /// Kiln's models say how each of their weights is quantized: linear weights `[d_in, d_out]`
    /// per output, convolutions per output channel, the GPT's embeddings per row, vectors not.
    #[test]
    fn each_model_gives_its_quantization_axes() {
        let section = |text: &str| {
            ModelConfig::from_section(&kiln_core::config::ModelSection(
                toml::from_str(text).unwrap(),
            ))
            .unwrap()
        };
        let images = DataShape::Samples {
            sample_shape: vec![1, 8, 8],
            num_classes: 3,
        };
        let tokens = DataShape::Tokens { vocab_size: 11 };
        let device = Default::default();
        let build = |text: &str, shape: &DataShape| {
            Model::<Flex>::new(&section(text), shape, Precision::F32, 0, &device).unwrap()
        };
        let cnn = build("kind = \"cnn\"\nchannels = [4]\nhidden = [5]", &images);
        assert_eq!(
            cnn.quant_axis("blocks.0.conv.weight", &[4, 1, 3, 3]),
            Some(0)
        );
        assert_eq!(cnn.quant_axis("head.layers.0.weight", &[36, 5]), Some(1));
        assert_eq!(cnn.quant_axis("head.layers.0.bias", &[5]), None);
        let gpt = build(
            "kind = \"gpt\"\nn_layer = 1\nn_embd = 8\nn_head = 2",
            &tokens,
        );
        assert_eq!(gpt.quant_axis("wte.weight", &[11, 8]), Some(0));
        assert_eq!(gpt.quant_axis("wpe.weight", &[64, 8]), Some(0));
        assert_eq!(gpt.quant_axis("lm_head", &[8, 11]), Some(1));
        assert_eq!(gpt.quant_axis("h.0.ln_1.gamma", &[8]), None);
    }
}
