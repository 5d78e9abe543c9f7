//! Tensors in host memory and their safetensors encoding.

use std::collections::HashMap;
use std::fmt;
use std::ops::Deref;

use anyhow::{bail, Result};
use safetensors::{Dtype, SafeTensors};

/// A tensor copied to host memory: little-endian bytes of `dtype` in row-major `shape`.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    /// Dotted parameter name, e.g. `layers.0.weight`.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Dimensions, outermost first (empty for a scalar).
    pub shape: Vec<usize>,
    /// The elements' little-endian bytes.
    pub data: Payload,
}

/// The bytes of a host tensor: owned, or a buffer that another library allocated (a backend's
/// tensor data), kept as it is so that copying a tensor to host memory copies it only once.
pub enum Payload {
    /// Bytes this tensor owns.
    Owned(Vec<u8>),
    /// A buffer owned by another library, borrowed as bytes.
    Shared(Box<dyn AsRef<[u8]> + Send>),
}

impl Deref for Payload {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Payload::Owned(v) => v,
            Payload::Shared(b) => (**b).as_ref(),
        }
    }
}

impl From<Vec<u8>> for Payload {
    fn from(v: Vec<u8>) -> Self {
        Payload::Owned(v)
    }
}

impl Clone for Payload {
    fn clone(&self) -> Self {
        Payload::Owned(self.to_vec())
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.len())
    }
}

impl HostTensor {
    /// A float32 tensor of `values` in row-major `shape`.
    pub fn f32(name: impl Into<String>, shape: Vec<usize>, values: &[f32]) -> Self {
        Self {
            name: name.into(),
            dtype: Dtype::F32,
            shape,
            data: Payload::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        }
    }

    /// A scalar int64 tensor (e.g. an optimizer's step count).
    pub fn i64_scalar(name: impl Into<String>, value: i64) -> Self {
        Self {
            name: name.into(),
            dtype: Dtype::I64,
            shape: vec![],
            data: value.to_le_bytes().to_vec().into(),
        }
    }

    /// The value of a scalar I64 tensor.
    pub fn as_i64(&self) -> Option<i64> {
        (self.dtype == Dtype::I64 && self.data.len() == 8)
            .then(|| i64::from_le_bytes(self.data[..8].try_into().expect("8 bytes")))
    }
}

/// Encodes tensors as a safetensors file image (tensors sorted by name).
pub(crate) fn encode(tensors: &[HostTensor], metadata: HashMap<String, String>) -> Result<Vec<u8>> {
    let mut views = Vec::with_capacity(tensors.len());
    for t in tensors {
        let view = safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.data)
            .map_err(|e| anyhow::anyhow!("tensor {}: {e}", t.name))?;
        views.push((t.name.as_str(), view));
    }
    safetensors::serialize(views, Some(metadata))
        .map_err(|e| anyhow::anyhow!("cannot encode safetensors: {e}"))
}

/// Decodes a safetensors file image; `what` names it in errors.
pub(crate) fn decode(bytes: &[u8], what: &str) -> Result<Vec<HostTensor>> {
    let st = match SafeTensors::deserialize(bytes) {
        Ok(st) => st,
        Err(e) => bail!("{what} is not a valid safetensors file ({e})"),
    };
    let mut out: Vec<HostTensor> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| HostTensor {
            name,
            dtype: view.dtype(),
            shape: view.shape().to_vec(),
            data: view.data().to_vec().into(),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip() {
        let tensors = vec![
            HostTensor::f32(
                "a.weight",
                vec![2, 3],
                &[1.0, -2.0, 3.5, 0.0, 1e-30, f32::MAX],
            ),
            HostTensor::i64_scalar("a.weight.step", 17),
        ];
        let bytes = encode(&tensors, HashMap::new()).unwrap();
        let back = decode(&bytes, "x").unwrap();
        assert_eq!(back, tensors);
        assert_eq!(back[1].as_i64(), Some(17));
    }

    #[test]
    fn garbage_is_an_error() {
        let err = decode(b"not a safetensors file", "f.safetensors").unwrap_err();
        assert!(err
            .to_string()
            .contains("f.safetensors is not a valid safetensors file"));
    }
}
