//! The Open Inference Protocol v2 (KServe, Triton, Seldon) as JSON: the infer request and
//! response, tensor metadata, and the tensor data a request carries.
//!
//! A tensor's `data` is its elements in row-major order, flat or nested as the shape nests
//! them; numbers for the numeric datatypes, strings for `BYTES`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::ApiError;

mod leaves;

pub use leaves::Leaves;

/// `POST /v2/models/{name}/infer`.
#[derive(Debug, Deserialize)]
pub struct InferRequest {
    /// Echoed in the response.
    #[serde(default)]
    pub id: Option<String>,
    /// Request parameters (unused by Kiln's models).
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
    /// The input tensors, by name.
    pub inputs: Vec<InputTensor>,
    /// The outputs wanted (default: all of the model's).
    #[serde(default)]
    pub outputs: Option<Vec<RequestedOutput>>,
}

/// One input tensor of a request.
#[derive(Debug, Deserialize)]
pub struct InputTensor {
    /// The input's name in the model's metadata.
    pub name: String,
    /// Its shape, the batch first.
    pub shape: Vec<u64>,
    /// `FP32`, `BYTES`, ...
    pub datatype: String,
    /// Tensor parameters (unused).
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
    /// The elements, flat or nested.
    pub data: Leaves,
}

/// An output a request asks for.
#[derive(Debug, Deserialize)]
pub struct RequestedOutput {
    /// The output's name in the model's metadata.
    pub name: String,
}

/// `POST .../infer`'s answer.
#[derive(Debug, Serialize)]
pub struct InferResponse {
    /// The model that answered.
    pub model_name: String,
    /// The request's id, when it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The output tensors.
    pub outputs: Vec<OutputTensor>,
}

/// One output tensor of a response.
#[derive(Debug, Serialize)]
pub struct OutputTensor {
    /// The output's name.
    pub name: String,
    /// Its datatype.
    pub datatype: &'static str,
    /// Its shape, the batch first.
    pub shape: Vec<usize>,
    /// Its elements, flat in row-major order.
    pub data: Data,
}

/// The elements of an output tensor.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Data {
    /// `FP32`.
    F32(Vec<f32>),
    /// `INT64`.
    I64(Vec<i64>),
    /// `BYTES`, as strings.
    Bytes(Vec<String>),
}

/// An input or output in a model's metadata.
#[derive(Clone, Debug, Serialize)]
pub struct TensorMeta {
    /// The tensor's name.
    pub name: String,
    /// `FP32`, `INT64` or `BYTES`.
    pub datatype: &'static str,
    /// Its shape; -1 for the batch (a dimension of any size).
    pub shape: Vec<i64>,
}

impl TensorMeta {
    /// A tensor of `datatype` whose first dimension is the batch.
    pub fn batched(name: &str, datatype: &'static str, sample: &[usize]) -> Self {
        let mut shape = vec![-1];
        shape.extend(sample.iter().map(|&d| d as i64));
        Self {
            name: name.to_string(),
            datatype,
            shape,
        }
    }
}

/// The datatypes of the protocol, for telling a wrong one from an unknown one.
pub const DATATYPES: &[&str] = &[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16",
    "FP32", "FP64", "BYTES",
];

/// The elements of an input tensor as Kiln reads them.
#[derive(Debug, PartialEq)]
pub enum Elements {
    /// Numbers, as float32 (all finite).
    Numbers(Vec<f32>),
    /// Strings.
    Strings(Vec<String>),
}

impl Elements {
    /// How many elements there are.
    pub fn len(&self) -> usize {
        match self {
            Elements::Numbers(v) => v.len(),
            Elements::Strings(v) => v.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl InputTensor {
    /// The tensor's elements after checking that its datatype is one of `accepted` and that
    /// the data holds as many elements of that type as the shape says, each finite.
    pub fn elements(&self, accepted: &[&str]) -> Result<Elements, ApiError> {
        let name = &self.name;
        if !accepted.contains(&self.datatype.as_str()) {
            let what = if DATATYPES.contains(&self.datatype.as_str()) {
                "is not a datatype this input takes"
            } else {
                "is not a datatype of the protocol"
            };
            return Err(ApiError::bad_request(format!(
                "input `{name}`: datatype {:?} {what}; send {}",
                self.datatype,
                accepted.join(" or ")
            )));
        }
        let expected = (self.shape.iter())
            .try_fold(1u64, |n, &d| n.checked_mul(d))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "input `{name}`: shape {:?} holds more elements than any request can",
                    self.shape
                ))
            })?;
        let data = &self.data;
        if data.len() as u64 != expected {
            return Err(ApiError::bad_request(format!(
                "input `{name}`: shape {:?} holds {expected} elements, the data has {}",
                self.shape,
                data.len()
            )));
        }
        let bytes = self.datatype == "BYTES";
        let wrong = if bytes { data.numbers.first() } else { None }
            .map(|v| (0, v.to_string()))
            .or_else(|| {
                (!bytes && !data.strings.is_empty()).then(|| (0, format!("{:?}", data.strings[0])))
            })
            .or_else(|| data.odd.clone());
        if let Some((i, what)) = wrong {
            let want = if bytes {
                "a BYTES tensor holds strings".to_string()
            } else {
                format!("not a number ({})", self.datatype)
            };
            return Err(ApiError::bad_request(format!(
                "input `{name}`: element {i} is {what}, {want}"
            )));
        }
        if bytes {
            return Ok(Elements::Strings(data.strings.clone()));
        }
        let mut numbers = Vec::with_capacity(data.numbers.len());
        for (i, &v) in data.numbers.iter().enumerate() {
            let x = v as f32;
            if !x.is_finite() {
                return Err(ApiError::bad_request(format!(
                    "input `{name}`: element {i} ({v}) is not a finite {} value",
                    self.datatype
                )));
            }
            numbers.push(x);
        }
        Ok(Elements::Numbers(numbers))
    }
}

/// Reads a request body as JSON of type `T`: a body that is not JSON, or not of that shape, is
/// a 400 naming what serde found. JSON has no NaN or Infinity; a body that holds them gets a
/// message that says so.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        // The error's position (line, column) is where a NaN or Infinity literal would start.
        let text = String::from_utf8_lossy(body);
        let at = (text.lines().nth(e.line().saturating_sub(1)))
            .and_then(|line| line.get(e.column().saturating_sub(1)..))
            .unwrap_or("");
        let literal = ["NaN", "Infinity", "-Infinity"]
            .iter()
            .any(|t| at.starts_with(t));
        let hint = if e.is_syntax() && literal {
            " (JSON has no NaN or Infinity, and the model takes finite values only)"
        } else {
            ""
        };
        ApiError::bad_request(format!("malformed request body: {e}{hint}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tensor(v: Value) -> InputTensor {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn nested_and_flat_data_read_the_same() {
        let flat = tensor(
            json!({"name": "input", "shape": [2, 2], "datatype": "FP32", "data": [1, 2.5, 3, 4]}),
        );
        let nested = tensor(
            json!({"name": "input", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2.5], [3, 4]]}),
        );
        let want = Elements::Numbers(vec![1.0, 2.5, 3.0, 4.0]);
        assert_eq!(flat.elements(&["FP32"]).unwrap(), want);
        assert_eq!(nested.elements(&["FP32"]).unwrap(), want);
    }

    #[test]
    fn wrong_datatype_count_and_values_are_400s_that_say_why() {
        let t = tensor(json!({"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2]}));
        let e = t.elements(&["FP32"]).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(
            e.message.contains("holds 3 elements, the data has 2"),
            "{}",
            e.message
        );
        let t = tensor(json!({"name": "x", "shape": [1], "datatype": "INT64", "data": [1]}));
        let e = t.elements(&["FP32"]).unwrap_err();
        assert!(
            e.message
                .contains("not a datatype this input takes; send FP32"),
            "{}",
            e.message
        );
        let t = tensor(json!({"name": "x", "shape": [1], "datatype": "FLOAT", "data": [1]}));
        assert!(t
            .elements(&["FP32"])
            .unwrap_err()
            .message
            .contains("not a datatype of the protocol"));
        let t = tensor(json!({"name": "x", "shape": [2], "datatype": "FP32", "data": [1, "a"]}));
        assert!(t
            .elements(&["FP32"])
            .unwrap_err()
            .message
            .contains("element 1 is \"a\", not a number"));
        let t = tensor(json!({"name": "x", "shape": [1], "datatype": "FP32", "data": [1e39]}));
        assert!(t
            .elements(&["FP32"])
            .unwrap_err()
            .message
            .contains("not a finite FP32 value"));
        let t = tensor(
            json!({"name": "x", "shape": [1152921504606846976u64, 1, 28, 28], "datatype": "FP32", "data": []}),
        );
        assert!(t
            .elements(&["FP32"])
            .unwrap_err()
            .message
            .contains("more elements than any request can"));
        let t = tensor(json!({"name": "x", "shape": [1], "datatype": "BYTES", "data": [1]}));
        assert!(t
            .elements(&["BYTES"])
            .unwrap_err()
            .message
            .contains("holds strings"));
    }

    #[test]
    fn nan_in_the_body_is_named() {
        let e = parse_json::<InferRequest>(
            br#"{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [NaN]}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.contains("JSON has no NaN"), "{}", e.message);
        let e = parse_json::<InferRequest>(br#"{"id": "NaN" "inputs": []}"#).unwrap_err();
        assert!(!e.message.contains("NaN"), "{}", e.message);
        let e = parse_json::<InferRequest>(b"{\"inputs\": 3}").unwrap_err();
        assert!(
            e.message
                .starts_with("malformed request body: invalid type"),
            "{}",
            e.message
        );
    }
}
