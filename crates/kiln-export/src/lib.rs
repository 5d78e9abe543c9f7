//! Exports of trained Kiln models for serving: the Kiln format (float32, int8 or int4 weights
//! plus a manifest; `kiln predict` runs it), ONNX for classifiers and Hugging Face GPT-2 and Llama folders ([`kiln_hf`]);
//! and a program's own model in the Kiln format ([`export_module`], [`load_module`]).
//!
//! Quantization happens on the host, so it is the same on every backend; Kiln runs a quantized
//! export as the float model with dequantized weights, and so do the ONNX graphs.

#![warn(missing_docs)]

pub mod calibrate;
pub mod drift;
pub mod export;
pub mod format;
pub mod model;
pub mod module;
pub mod onnx;
pub mod predict;
pub mod quant;
pub mod source;

pub use export::{check_supported, export, ExportOptions, Format, SUPPORTED};
pub use format::{read_export, write_export, ExportTensor, Manifest, Quant, Scheme};
pub use module::{export_module, load_module};
pub use quant::{Int4Blocks, Int8Channels};
pub use source::Source;
