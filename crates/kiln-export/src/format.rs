//! The Kiln export format: a directory with `model.safetensors` (float, int8 or int4 tensors
//! plus their scales) and `manifest.json` (what the model is, what it takes and gives, how it was
//! quantized, where it came from, how well it does, and the sha256 of the weights file).
//!
//! Tensor layout in `model.safetensors`, for a tensor named `n`:
//! - float: `n` (F32, its own shape);
//! - int8 per output channel: `n` (I8, `[d_in, d_out]`) and `n.scale` (F32, `[d_out]`);
//! - int4 per block: `n` (U8, `[ceil(d_in * d_out / 2)]`, `[d_out, d_in]` order, two values per
//!   byte, low nibble first) and `n.scale` (F32, `[d_out, ceil(d_in / block)]`).
//!
//! The manifest's `tensors` table records each tensor's kind and logical shape.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::quant::{Int4Blocks, Int8Channels};

/// The export's weights (safetensors).
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The export's manifest ([`Manifest`]).
pub const MANIFEST_FILE: &str = "manifest.json";
/// The manifest's `format`.
pub const FORMAT: &str = "kiln-export";
/// The manifest version written. Version 4 adds `drift` (the drift reference's file, checksum
/// and size, [`crate::drift`]); version 3 adds `input.table` (what the columns of a table with
/// column names mean) for a model trained on one; version 2 records the model's own section
/// (`architecture.model` holds only its kind's keys); versions 1 (every kind's keys) and 2 still
/// read.
pub const FORMAT_VERSION: u32 = 4;
/// The oldest manifest version read.
pub const OLDEST_FORMAT_VERSION: u32 = 1;

/// How weights are quantized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// float32 weights.
    None,
    /// int8 with one scale per output channel.
    Int8,
    /// int4 with one scale per block of `block` input values of each output channel.
    Int4 {
        /// Input values per scale (at least 1).
        block: usize,
    },
}

impl Scheme {
    /// The name `--quantize` takes and manifests record.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::None => "none",
            Scheme::Int8 => "int8",
            Scheme::Int4 { .. } => "int4",
        }
    }
}

/// A quantized tensor's integers and scales, over the matrix `[K, C]` that is the tensor with its
/// channel axis moved last (`C` channels, `K` values each).
#[derive(Clone, Debug, PartialEq)]
pub enum Quant {
    /// One scale per channel.
    Int8(Int8Channels),
    /// One scale per block of a channel.
    Int4(Int4Blocks),
}

/// One tensor of an export.
#[derive(Clone, Debug, PartialEq)]
pub enum ExportTensor {
    /// Stored as float32.
    F32 {
        /// The tensor's shape.
        shape: Vec<usize>,
        /// Its values, row-major.
        data: Vec<f32>,
    },
    /// Quantized with one scale per index of `axis` (int8) or per block of each such channel
    /// (int4). `axis` is 0 (convolutions `[c_out, c_in, k, k]`, embeddings `[rows, dim]`) or the
    /// last axis (linear weights `[d_in, d_out]`).
    Quant {
        /// The logical (float) shape.
        shape: Vec<usize>,
        /// The channel axis: 0 or the last axis of `shape`.
        axis: usize,
        /// The integers and scales of the `[K, C]` matrix (the tensor with `axis` moved last).
        q: Quant,
    },
}

impl ExportTensor {
    /// Stores `data` (of `shape`) under `scheme`, per channel of `axis`; `None` keeps floats.
    pub fn quantize(
        shape: &[usize],
        data: &[f32],
        axis: Option<usize>,
        scheme: Scheme,
    ) -> Result<ExportTensor> {
        ExportTensor::quantize_weighted(shape, data, axis, scheme, None)
    }

    /// As [`ExportTensor::quantize`]; with `moments` (the `[K, K]` second moments of the
    /// inputs, from calibration) int4 blocks choose the scale with the least output error.
    pub fn quantize_weighted(
        shape: &[usize],
        data: &[f32],
        axis: Option<usize>,
        scheme: Scheme,
        moments: Option<&[f32]>,
    ) -> Result<ExportTensor> {
        let (Some(axis), false) = (axis, scheme == Scheme::None) else {
            return Ok(ExportTensor::F32 {
                shape: shape.to_vec(),
                data: data.to_vec(),
            });
        };
        let (k, c, m) = to_matrix(shape, axis, data)?;
        let q = match scheme {
            Scheme::Int8 => Quant::Int8(Int8Channels::quantize(&m, k, c)?),
            Scheme::Int4 { block } => {
                Quant::Int4(Int4Blocks::quantize_weighted(&m, k, c, block, moments)?)
            }
            Scheme::None => unreachable!("handled above"),
        };
        Ok(ExportTensor::Quant {
            shape: shape.to_vec(),
            axis,
            q,
        })
    }

    /// The logical (float) shape.
    pub fn shape(&self) -> &[usize] {
        match self {
            ExportTensor::F32 { shape, .. } | ExportTensor::Quant { shape, .. } => shape,
        }
    }

    /// The float values it stands for, in the order of its shape.
    pub fn dequantize(&self) -> Vec<f32> {
        match self {
            ExportTensor::F32 { data, .. } => data.clone(),
            ExportTensor::Quant { shape, axis, q } => {
                let m = match q {
                    Quant::Int8(q) => q.dequantize(),
                    Quant::Int4(q) => q.dequantize(),
                };
                from_matrix(shape, *axis, &m)
            }
        }
    }

    /// An int8 tensor's values in channel-major `[C, K]` order (as ONNX's `DequantizeLinear`
    /// with `axis = 0` wants them) and its `[C]` scales.
    pub fn int8_channel_major(&self) -> Option<(Vec<i8>, &[f32])> {
        let ExportTensor::Quant {
            q: Quant::Int8(q), ..
        } = self
        else {
            return None;
        };
        Some((transpose(&q.values, q.d_in, q.d_out), &q.scales))
    }

    /// An int8 tensor's values in the order of its own shape.
    pub fn int8_values(&self) -> Option<Vec<i8>> {
        let ExportTensor::Quant {
            axis,
            q: Quant::Int8(q),
            ..
        } = self
        else {
            return None;
        };
        Some(if *axis == 0 {
            transpose(&q.values, q.d_in, q.d_out)
        } else {
            q.values.clone()
        })
    }
}

/// The matrix `[K, C]` of `data`: the tensor with `axis` moved last.
fn to_matrix(shape: &[usize], axis: usize, data: &[f32]) -> Result<(usize, usize, Vec<f32>)> {
    ensure!(
        shape.len() >= 2 && (axis == 0 || axis + 1 == shape.len()),
        "cannot quantize a tensor of shape {shape:?} along axis {axis}"
    );
    ensure!(
        shape.iter().product::<usize>() == data.len(),
        "shape {shape:?} does not hold {} values",
        data.len()
    );
    let c = shape[axis];
    let k = data.len() / c.max(1);
    Ok(if axis == 0 {
        (k, c, transpose(data, c, k))
    } else {
        (k, c, data.to_vec())
    })
}

/// Inverse of [`to_matrix`].
fn from_matrix(shape: &[usize], axis: usize, m: &[f32]) -> Vec<f32> {
    if axis == 0 {
        let c = shape[0];
        transpose(m, m.len() / c.max(1), c)
    } else {
        m.to_vec()
    }
}

/// `[rows, cols]` row-major to `[cols, rows]`.
fn transpose<T: Copy>(v: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(v.len());
    for j in 0..cols {
        out.extend((0..rows).map(|i| v[i * cols + j]));
    }
    out
}

/// How one tensor is stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorEntry {
    /// "f32", "int8" or "int4".
    pub kind: String,
    /// The logical (float) shape.
    pub shape: Vec<usize>,
    /// The channel axis of a quantized tensor: one scale per index of it (int8), or per block of
    /// `block` consecutive values of each such channel (int4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub axis: Option<usize>,
    /// An int4 tensor's values per scale; `None` for f32 and int8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block: Option<usize>,
}

/// Checksum of the weights file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    /// The file's sha256, 64 lowercase hex digits.
    pub sha256: String,
    /// The file's size in bytes.
    pub bytes: u64,
}

/// `manifest.json`. The sections describing the model are JSON values filled by the exporter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`FORMAT_VERSION`] when written; any from [`OLDEST_FORMAT_VERSION`] reads.
    pub format_version: u32,
    /// The Kiln that wrote the export.
    pub kiln_version: String,
    /// The model section of the run's config.
    pub architecture: serde_json::Value,
    /// Input shape, dtype and normalization.
    pub input: serde_json::Value,
    /// Output labels or vocabulary.
    pub output: serde_json::Value,
    /// Scheme ("none", "int8", "int4") and its parameters.
    pub quantization: serde_json::Value,
    /// The checkpoint it was exported from and the sha256 of its weights.
    pub source: serde_json::Value,
    /// Metrics measured on the exported (quantized) model.
    pub metrics: serde_json::Value,
    /// How each tensor of the weights file is stored, by name.
    pub tensors: BTreeMap<String, TensorEntry>,
    /// The checksum of each file, by name.
    pub files: BTreeMap<String, FileEntry>,
    /// The drift reference (version 4): its file, checksum, size and bound, what it covers;
    /// absent in earlier exports, whose drift is unavailable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<serde_json::Value>,
}

/// The sha256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes `tensors` and `manifest` (its `tensors` and `files` tables are filled here) to `dir`.
pub fn write_export(
    dir: &Path,
    mut manifest: Manifest,
    tensors: &[(String, ExportTensor)],
) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the export directory {}", dir.display()))?;
    let mut stored: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    manifest.tensors.clear();
    for (name, t) in tensors {
        ensure!(
            !name.ends_with(".scale"),
            "tensor name {name} clashes with the scale tensors"
        );
        let entry = match t {
            ExportTensor::F32 { shape, data } => {
                ensure!(
                    shape.iter().product::<usize>() == data.len(),
                    "tensor {name}: shape {shape:?} does not hold {} values",
                    data.len()
                );
                stored.push((name.clone(), Dtype::F32, shape.clone(), f32_bytes(data)));
                TensorEntry {
                    kind: "f32".into(),
                    shape: shape.clone(),
                    axis: None,
                    block: None,
                }
            }
            ExportTensor::Quant {
                shape,
                axis,
                q: Quant::Int8(q),
            } => {
                let values = t.int8_values().expect("an int8 tensor");
                let bytes = values.iter().map(|&v| v as u8).collect();
                stored.push((name.clone(), Dtype::I8, shape.clone(), bytes));
                stored.push((
                    scale_name(name),
                    Dtype::F32,
                    vec![q.d_out],
                    f32_bytes(&q.scales),
                ));
                TensorEntry {
                    kind: "int8".into(),
                    shape: shape.clone(),
                    axis: Some(*axis),
                    block: None,
                }
            }
            ExportTensor::Quant {
                shape,
                axis,
                q: Quant::Int4(q),
            } => {
                let blocks = q.d_in.div_ceil(q.block);
                stored.push((
                    name.clone(),
                    Dtype::U8,
                    vec![q.packed.len()],
                    q.packed.clone(),
                ));
                stored.push((
                    scale_name(name),
                    Dtype::F32,
                    vec![q.d_out, blocks],
                    f32_bytes(&q.scales),
                ));
                TensorEntry {
                    kind: "int4".into(),
                    shape: shape.clone(),
                    axis: Some(*axis),
                    block: Some(q.block),
                }
            }
        };
        manifest.tensors.insert(name.clone(), entry);
    }
    let views: Vec<(String, TensorView)> = stored
        .iter()
        .map(|(n, d, s, b)| Ok((n.clone(), TensorView::new(*d, s.clone(), b)?)))
        .collect::<Result<_, safetensors::SafeTensorError>>()?;
    let bytes = safetensors::serialize(views, None)?;
    manifest.files = BTreeMap::from([(
        WEIGHTS_FILE.to_string(),
        FileEntry {
            sha256: sha256_hex(&bytes),
            bytes: bytes.len() as u64,
        },
    )]);
    std::fs::write(dir.join(WEIGHTS_FILE), &bytes)
        .with_context(|| format!("cannot write {}", dir.join(WEIGHTS_FILE).display()))?;
    let text = serde_json::to_string_pretty(&manifest)?;
    std::fs::write(dir.join(MANIFEST_FILE), text)
        .with_context(|| format!("cannot write {}", dir.join(MANIFEST_FILE).display()))?;
    Ok(())
}

/// Reads and verifies an export: the manifest's format, the weights file's sha256 and every
/// tensor's stored shape.
pub fn read_export(dir: &Path) -> Result<(Manifest, Vec<(String, ExportTensor)>)> {
    let mpath = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&mpath).with_context(|| {
        format!(
            "{}: not a Kiln export (no readable {MANIFEST_FILE}); export one with kiln export",
            dir.display()
        )
    })?;
    let manifest: Manifest = serde_json::from_str(&text)
        .with_context(|| format!("{}: the manifest is damaged", mpath.display()))?;
    ensure!(
        manifest.format == FORMAT
            && (OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&manifest.format_version),
        "{}: format {} version {} is not {FORMAT} version {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION}; a newer Kiln wrote it, or it is not a Kiln export",
        mpath.display(),
        manifest.format,
        manifest.format_version
    );
    let wpath = dir.join(WEIGHTS_FILE);
    let bytes =
        std::fs::read(&wpath).with_context(|| format!("cannot read {}", wpath.display()))?;
    let Some(expected) = manifest.files.get(WEIGHTS_FILE) else {
        bail!("{}: lists no checksum for {WEIGHTS_FILE}", mpath.display());
    };
    let got = sha256_hex(&bytes);
    ensure!(
        got == expected.sha256,
        "{}: sha256 {got} does not match the manifest's {}; the export is damaged, export it again",
        wpath.display(),
        expected.sha256
    );
    let st = SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{}: not a safetensors file", wpath.display()))?;
    let mut tensors = Vec::new();
    for (name, entry) in &manifest.tensors {
        let get = |n: &str, dtype: Dtype| -> Result<(Vec<usize>, Vec<u8>)> {
            let v = st
                .tensor(n)
                .with_context(|| format!("{}: tensor {n} is missing", wpath.display()))?;
            ensure!(
                v.dtype() == dtype,
                "{}: tensor {n} is {:?}, expected {dtype:?}",
                wpath.display(),
                v.dtype()
            );
            Ok((v.shape().to_vec(), v.data().to_vec()))
        };
        let bad = |what: &str| format!("{}: tensor {name}: {what}", wpath.display());
        let shape = entry.shape.clone();
        let quantized = || -> Result<(usize, usize, usize)> {
            let axis = entry.axis.with_context(|| bad("no channel axis"))?;
            ensure!(
                shape.len() >= 2 && (axis == 0 || axis + 1 == shape.len()),
                bad(&format!("axis {axis} does not fit shape {shape:?}"))
            );
            let c = shape[axis];
            let k = shape.iter().product::<usize>() / c.max(1);
            Ok((axis, k, c))
        };
        let t = match entry.kind.as_str() {
            "f32" => {
                let (s, b) = get(name, Dtype::F32)?;
                ensure!(s == shape, bad("stored shape differs from the manifest"));
                ExportTensor::F32 {
                    shape,
                    data: from_f32_bytes(&b),
                }
            }
            "int8" => {
                let (s, b) = get(name, Dtype::I8)?;
                let (ss, sb) = get(&scale_name(name), Dtype::F32)?;
                let (axis, k, c) = quantized()?;
                ensure!(
                    s == shape && ss == [c],
                    bad("stored shapes differ from the manifest")
                );
                let logical: Vec<i8> = b.iter().map(|&v| v as i8).collect();
                let values = if axis == 0 {
                    transpose(&logical, c, k)
                } else {
                    logical
                };
                ExportTensor::Quant {
                    shape,
                    axis,
                    q: Quant::Int8(Int8Channels {
                        d_in: k,
                        d_out: c,
                        values,
                        scales: from_f32_bytes(&sb),
                    }),
                }
            }
            "int4" => {
                let block = entry
                    .block
                    .filter(|&b| b > 0)
                    .with_context(|| bad("no block size"))?;
                let (s, b) = get(name, Dtype::U8)?;
                let (ss, sb) = get(&scale_name(name), Dtype::F32)?;
                let (axis, k, c) = quantized()?;
                ensure!(
                    s == [(k * c).div_ceil(2)] && ss == [c, k.div_ceil(block)],
                    bad("stored shapes differ from the manifest")
                );
                ExportTensor::Quant {
                    shape,
                    axis,
                    q: Quant::Int4(Int4Blocks {
                        d_in: k,
                        d_out: c,
                        block,
                        packed: b,
                        scales: from_f32_bytes(&sb),
                    }),
                }
            }
            kind => bail!(bad(&format!("unknown kind {kind}"))),
        };
        tensors.push((name.clone(), t));
    }
    Ok((manifest, tensors))
}

fn scale_name(name: &str) -> String {
    format!("{name}.scale")
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn from_f32_bytes(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[cfg(test)]
mod tests;
