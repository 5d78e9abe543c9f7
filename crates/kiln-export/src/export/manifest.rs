//! What an export's manifest says beside its tensors: the model's input (features or tokens,
//! scaling, standardization, a table's schema), its output (class labels or the character
//! vocabulary) and the quantization.

use std::path::Path;

use anyhow::{bail, Context, Result};
use kiln_core::config::DataFormat;
use kiln_core::layout::TOKENIZER_FILE;
use kiln_data::{SampleSplit, Tokenizer};
use kiln_infer::RunData;
use kiln_models::ModelConfig;
use serde_json::{json, Value};

use crate::calibrate::Calibration;
use crate::format::{ExportTensor, Scheme};
use crate::source::Source;

/// What the model takes, as the manifest's `input` says it.
pub(super) fn input_spec(
    data: &RunData,
    format: DataFormat,
    section: &ModelConfig,
) -> Result<Value> {
    Ok(match data {
        RunData::Samples(s) => {
            let (scaling, source) = match (format, &s.table) {
                (DataFormat::Idx, _) => ("pixel / 255", "idx"),
                (DataFormat::ImageFolder, _) => ("pixel / 255", "image_folder"),
                (_, Some(_)) => ("one-hot categories, missing values filled", "table"),
                _ => ("none", "csv"),
            };
            let mut spec = json!({
                "kind": "features",
                "dtype": "float32",
                "shape": s.test.sample_shape(),
                "features": s.test.sample_len(),
                "scaling": scaling,
                "source_format": source,
                "standardize": s.standardizer,
            });
            if let Some(table) = &s.table {
                // A table's rows become the features through its schema: the input names, then
                // the schema itself (kiln predict reads rows of the table's columns with it).
                spec["names"] = json!(table.input_names());
                spec["table"] = serde_json::to_value(table)?;
            }
            if let SampleSplit::Images(images) = &s.test {
                // How kiln predict turns an image file into the features: channels, size and
                // whether other sizes are resized.
                spec["image"] = serde_json::to_value(images.spec)?;
            }
            spec
        }
        RunData::Text(t) => {
            let gpt = section.gpt("an export of text data")?;
            json!({
                "kind": "tokens",
                "dtype": "int64",
                "block_size": gpt.block_size,
                "vocab_size": gpt.vocab_size.unwrap_or(t.vocab_size),
            })
        }
    })
}

pub(super) fn output_spec(data: &RunData, source: &Source) -> Result<Value> {
    Ok(match data {
        RunData::Samples(s) => match (&s.regression, &s.table) {
            (Some(regression), table) => json!({
                "kind": "value",
                "target": table.as_ref().map(|t| t.target.column()),
                "units": "the target's own (the network's standardized output times std plus mean)",
                "regression": regression,
            }),
            (None, _) => json!({
                "kind": "classes",
                "labels": s.test.class_names(),
            }),
        },
        RunData::Text(_) => {
            let tokenizer = tokenizer_of(data, &source.run_dir)?;
            json!({"kind": "next-token logits", "tokenizer": tokenizer.to_json()})
        }
    })
}

/// The run's tokenizer (saved in the run directory by training).
pub(super) fn tokenizer_of(data: &RunData, run_dir: &Path) -> Result<Tokenizer> {
    let path = run_dir.join(TOKENIZER_FILE);
    if path.is_file() {
        return Tokenizer::load(&path);
    }
    match data {
        RunData::Text(t) => t.tokenizer.clone().with_context(|| {
            format!(
                "{} has no {TOKENIZER_FILE} and the run's token data names no tokenizer; an export of a GPT needs the tokenizer",
                run_dir.display()
            )
        }),
        RunData::Samples(_) => bail!("a classifier has no tokenizer"),
    }
}

/// What the manifest says about the quantization: scheme, granularity, how to dequantize.
pub(crate) fn quantization_spec(
    scheme: Scheme,
    tensors: &[(String, ExportTensor)],
    calibration: Option<&Calibration>,
) -> Value {
    let quantized = tensors
        .iter()
        .filter(|(_, t)| matches!(t, ExportTensor::Quant { .. }))
        .count();
    let granularity = match scheme {
        Scheme::None => "none".to_string(),
        Scheme::Int8 => "one float32 scale per output channel".to_string(),
        Scheme::Int4 { block } => {
            format!(
                "one float32 scale per block of {block} consecutive values of each output channel"
            )
        }
    };
    json!({
        "scheme": scheme.name(),
        "symmetric": true,
        "block": match scheme { Scheme::Int4 { block } => Some(block), _ => None },
        "granularity": granularity,
        "dequantize": "value * scale",
        "quantized_tensors": quantized,
        "float_tensors": tensors.len() - quantized,
        "calibration": calibration.map(Calibration::describe),
    })
}
