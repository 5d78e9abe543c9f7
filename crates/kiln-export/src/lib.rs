//! Exports of trained Kiln models for serving. This first part is the weight quantization the
//! export formats share, done on the host so that it is the same on every backend.

pub mod format;
pub mod onnx;
pub mod quant;

pub use format::{read_export, write_export, ExportTensor, Manifest, Quant, Scheme};
pub use quant::{Int4Blocks, Int8Channels};
