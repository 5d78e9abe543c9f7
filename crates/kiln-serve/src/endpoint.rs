//! What one served model takes and gives, in the protocol's terms: its metadata, how a request's
//! tensors become the samples (or the prompt) the model runs on, and how its outputs become
//! response tensors. Backend-free: the worker ([`crate::worker`]) runs the model.

use std::sync::Arc;

use kiln_data::{Table, TableSchema, Tokenizer};
use kiln_export::predict::{argmax, Loaded, Outputs, SampleOutput, Task};
use kiln_infer::Sampling;
use serde_json::{json, Map, Value};

use crate::drift::Monitor;
use crate::error::ApiError;
use crate::protocol::{Data, Elements, InferRequest, OutputTensor, TensorMeta};

/// The input of an image or feature model.
pub const INPUT: &str = "input";
/// A language model's prompt (input) and its continuation (output), as Triton's generate
/// extension names them.
pub const TEXT_INPUT: &str = "text_input";
/// See [`TEXT_INPUT`].
pub const TEXT_OUTPUT: &str = "text_output";
/// Request parameters that the protocol and its clients (tritonclient, KServe) send and that a
/// generation ignores.
const PROTOCOL_PARAMETERS: &[&str] = &[
    "binary_data_output",
    "priority",
    "timeout",
    "content_type",
    "headers",
    "sequence_id",
    "sequence_start",
    "sequence_end",
];

/// The most tokens one generation request may ask for.
pub const MAX_NEW_TOKENS: usize = 4096;

/// A served model as the HTTP side sees it.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// The name in the URL.
    pub name: String,
    /// What it runs on.
    pub kind: Kind,
    /// The inputs of its metadata.
    pub inputs: Vec<TensorMeta>,
    /// The outputs of its metadata.
    pub outputs: Vec<TensorMeta>,
    /// `cnn`, `mlp`, `gpt`, ...
    pub architecture: String,
    /// `none`, `int8` or `int4`.
    pub quantization: String,
    /// The export's format version.
    pub format_version: u32,
    /// Its drift monitor.
    pub monitor: Arc<Monitor>,
}

/// What a served model runs on.
#[derive(Clone, Debug)]
pub enum Kind {
    /// Samples: images, feature rows or table rows.
    Samples {
        /// One sample's shape: `[features]` or `[c, h, w]`.
        sample_shape: Vec<usize>,
        /// A model trained on a table with column names: one input per column.
        table: Option<TableSchema>,
        /// Class names, or the regression target's name.
        output: SampleOutput,
    },
    /// Text in, text out.
    Language {
        /// The run's tokenizer (a prompt is checked before it is queued).
        tokenizer: Tokenizer,
    },
}

/// What a request asks the worker to do.
#[derive(Debug)]
pub enum Work {
    /// Run `rows` samples (`x`, row after row, as the data loader reads them).
    Samples {
        /// The values.
        x: Vec<f32>,
        /// How many samples.
        rows: usize,
    },
    /// Continue a prompt.
    Generate(Sampling),
}

impl Endpoint {
    /// The endpoint of the export `loaded`, served as `name`.
    pub fn of<B: burn::tensor::backend::Backend>(
        name: &str,
        loaded: &Loaded<B>,
        monitor: Arc<Monitor>,
    ) -> Self {
        let m = &loaded.manifest;
        let architecture = (m.architecture["model"]["kind"].as_str())
            .unwrap_or("unknown")
            .to_string();
        let quantization = (m.quantization["scheme"].as_str())
            .unwrap_or("none")
            .to_string();
        let kind = match &loaded.task {
            Task::Samples {
                output,
                sample_shape,
                table,
                ..
            } => Kind::Samples {
                sample_shape: sample_shape.clone(),
                table: table.clone(),
                output: output.clone(),
            },
            Task::Language { tokenizer } => Kind::Language {
                tokenizer: tokenizer.clone(),
            },
        };
        let (inputs, outputs) = metadata(&kind);
        Self {
            name: name.to_string(),
            kind,
            inputs,
            outputs,
            architecture,
            quantization,
            format_version: m.format_version,
            monitor,
        }
    }

    /// `GET /v2/models/{name}`.
    pub fn metadata(&self) -> Value {
        json!({
            "name": self.name,
            "platform": "kiln",
            "inputs": self.inputs,
            "outputs": self.outputs,
            "parameters": {
                "architecture": self.architecture,
                "quantization": self.quantization,
                "format_version": self.format_version,
            },
        })
    }

    /// The work an infer request asks for; a 400 naming the input when it does not fit.
    pub fn decode(&self, request: &InferRequest) -> Result<Work, ApiError> {
        self.check_outputs(request)?;
        match &self.kind {
            Kind::Samples {
                sample_shape,
                table: None,
                ..
            } => decode_samples(request, sample_shape),
            Kind::Samples {
                table: Some(schema),
                ..
            } => decode_table(request, schema),
            Kind::Language { .. } => {
                let [input] = request.inputs.as_slice() else {
                    return Err(ApiError::bad_request(format!(
                        "a language model takes one input, `{TEXT_INPUT}` (BYTES, shape [1]): the prompt; got {}",
                        request.inputs.len()
                    )));
                };
                if input.name != TEXT_INPUT {
                    return Err(unknown_input(&input.name, &[TEXT_INPUT.to_string()]));
                }
                let Elements::Strings(prompts) = input.elements(&["BYTES"])? else {
                    unreachable!("BYTES reads as strings")
                };
                let [prompt] = <[String; 1]>::try_from(prompts).map_err(|p| {
                    ApiError::bad_request(format!(
                        "input `{TEXT_INPUT}`: one prompt per request, got {}",
                        p.len()
                    ))
                })?;
                // Request parameters of the protocol and its clients are not sampling's.
                let mut parameters = request.parameters.clone().unwrap_or_default();
                parameters.retain(|key, _| !PROTOCOL_PARAMETERS.contains(&key.as_str()));
                self.sampling(prompt, &parameters).map(Work::Generate)
            }
        }
    }

    /// A generation of `prompt` with the sampling `parameters` (`max_tokens`, `temperature`,
    /// `top_k`, `seed`; the defaults of `kiln predict` otherwise). The prompt is checked against
    /// the vocabulary here, so that a bad one is a 400 before it waits in the queue.
    pub fn sampling(
        &self,
        prompt: String,
        parameters: &Map<String, Value>,
    ) -> Result<Sampling, ApiError> {
        let Kind::Language { tokenizer } = &self.kind else {
            return Err(ApiError::bad_request(format!(
                "model `{}` is not a language model; send its inputs to /v2/models/{}/infer",
                self.name, self.name
            )));
        };
        let mut s = Sampling {
            prompt,
            max_tokens: 200,
            temperature: 0.8,
            top_k: None,
            seed: 0,
            cache: true,
        };
        let bad = |key: &str, want: &str, v: &Value| {
            ApiError::bad_request(format!("parameter `{key}`: {v} is not {want}"))
        };
        for (key, v) in parameters {
            match key.as_str() {
                "max_tokens" => {
                    s.max_tokens = v
                        .as_u64()
                        .filter(|&n| (1..=MAX_NEW_TOKENS as u64).contains(&n))
                        .ok_or_else(|| bad(key, &format!("an integer in 1..={MAX_NEW_TOKENS}"), v))?
                        as usize
                }
                "temperature" => {
                    s.temperature = v
                        .as_f64()
                        .filter(|t| *t >= 0.0)
                        .ok_or_else(|| bad(key, "a number >= 0 (0: the likeliest token)", v))?
                }
                "top_k" => {
                    s.top_k = match v {
                        Value::Null => None,
                        v => Some(
                            v.as_u64()
                                .filter(|&k| k >= 1)
                                .ok_or_else(|| bad(key, "an integer >= 1", v))?
                                as usize,
                        ),
                    }
                }
                "seed" => s.seed = v.as_u64().ok_or_else(|| bad(key, "an integer >= 0", v))?,
                other => {
                    return Err(ApiError::bad_request(format!(
                        "unknown parameter `{other}`; a generation takes max_tokens, temperature, top_k and seed"
                    )))
                }
            }
        }
        if !s.prompt.is_empty() {
            tokenizer
                .encode(&s.prompt)
                .map_err(|e| ApiError::bad_request(format!("the prompt: {e:#}")))?;
        }
        Ok(s)
    }

    /// The response tensors of `rows` samples' `outputs`: those the request asked for, or all.
    pub fn encode(
        &self,
        outputs: Outputs,
        rows: usize,
        request: &InferRequest,
    ) -> Vec<OutputTensor> {
        let mut tensors = match (outputs, &self.kind) {
            (
                Outputs::Values(values),
                Kind::Samples {
                    output: SampleOutput::Value { target },
                    ..
                },
            ) => vec![OutputTensor {
                name: target.clone(),
                datatype: "FP32",
                shape: vec![rows],
                data: Data::F32(values),
            }],
            (
                Outputs::Classes {
                    logits,
                    probabilities,
                },
                Kind::Samples {
                    output: SampleOutput::Classes(labels),
                    ..
                },
            ) => {
                let classes = labels.len();
                let best: Vec<usize> = probabilities.chunks_exact(classes).map(argmax).collect();
                vec![
                    OutputTensor {
                        name: "label".into(),
                        datatype: "BYTES",
                        shape: vec![rows],
                        data: Data::Bytes(best.iter().map(|&k| labels[k].clone()).collect()),
                    },
                    OutputTensor {
                        name: "class".into(),
                        datatype: "INT64",
                        shape: vec![rows],
                        data: Data::I64(best.iter().map(|&k| k as i64).collect()),
                    },
                    OutputTensor {
                        name: "probabilities".into(),
                        datatype: "FP32",
                        shape: vec![rows, classes],
                        data: Data::F32(probabilities),
                    },
                    OutputTensor {
                        name: "logits".into(),
                        datatype: "FP32",
                        shape: vec![rows, classes],
                        data: Data::F32(logits),
                    },
                ]
            }
            _ => unreachable!("the worker runs the endpoint's own model"),
        };
        if let Some(wanted) = &request.outputs {
            tensors.retain(|t| wanted.iter().any(|w| w.name == t.name));
        }
        tensors
    }

    /// A request that asks for an output the model does not have is a 400.
    fn check_outputs(&self, request: &InferRequest) -> Result<(), ApiError> {
        for wanted in request.outputs.iter().flatten() {
            if !self.outputs.iter().any(|o| o.name == wanted.name) {
                return Err(ApiError::bad_request(format!(
                    "model `{}` has no output `{}`; its outputs are {}",
                    self.name,
                    wanted.name,
                    names(&self.outputs)
                )));
            }
        }
        Ok(())
    }
}

/// The metadata's inputs and outputs of a model of `kind`.
fn metadata(kind: &Kind) -> (Vec<TensorMeta>, Vec<TensorMeta>) {
    match kind {
        Kind::Samples {
            sample_shape,
            table,
            output,
        } => {
            let inputs = match table {
                None => vec![TensorMeta::batched(INPUT, "FP32", sample_shape)],
                Some(schema) => (schema.features.iter())
                    .map(|c| {
                        let datatype = match c.kind {
                            kiln_data::table::schema::ColumnKind::Numeric { .. } => "FP32",
                            kiln_data::table::schema::ColumnKind::Categorical { .. } => "BYTES",
                        };
                        TensorMeta::batched(&c.name, datatype, &[])
                    })
                    .collect(),
            };
            let outputs = match output {
                SampleOutput::Value { target } => vec![TensorMeta::batched(target, "FP32", &[])],
                SampleOutput::Classes(labels) => vec![
                    TensorMeta::batched("label", "BYTES", &[]),
                    TensorMeta::batched("class", "INT64", &[]),
                    TensorMeta::batched("probabilities", "FP32", &[labels.len()]),
                    TensorMeta::batched("logits", "FP32", &[labels.len()]),
                ],
            };
            (inputs, outputs)
        }
        Kind::Language { .. } => (
            vec![TensorMeta {
                name: TEXT_INPUT.into(),
                datatype: "BYTES",
                shape: vec![1],
            }],
            vec![TensorMeta {
                name: TEXT_OUTPUT.into(),
                datatype: "BYTES",
                shape: vec![1],
            }],
        ),
    }
}

/// Images or feature rows: one FP32 input, `[N, features]` or `[N, c, h, w]`.
fn decode_samples(request: &InferRequest, sample_shape: &[usize]) -> Result<Work, ApiError> {
    let [input] = request.inputs.as_slice() else {
        return Err(ApiError::bad_request(format!(
            "the model takes one input, `{INPUT}`; got {}",
            request.inputs.len()
        )));
    };
    if input.name != INPUT {
        return Err(unknown_input(&input.name, &[INPUT.to_string()]));
    }
    let features: usize = sample_shape.iter().product();
    let shape: Vec<usize> = input.shape.iter().map(|&d| d as usize).collect();
    let fits = match shape.split_first() {
        Some((&n, rest)) => n > 0 && (rest == sample_shape || rest == [features]),
        None => false,
    };
    if !fits {
        let mut want = vec!["N".to_string()];
        want.extend(sample_shape.iter().map(usize::to_string));
        let alternative = if sample_shape.len() > 1 {
            format!(" or [N, {features}]")
        } else {
            String::new()
        };
        return Err(ApiError::bad_request(format!(
            "input `{INPUT}`: shape {:?} does not fit the model, which takes [{}]{alternative} with N >= 1",
            input.shape,
            want.join(", ")
        )));
    }
    let Elements::Numbers(x) = input.elements(&["FP32"])? else {
        unreachable!("FP32 reads as numbers")
    };
    Ok(Work::Samples { rows: shape[0], x })
}

/// Rows of a named table: one input per feature column, `[N]` (or `[N, 1]`), FP32 numbers or
/// BYTES strings as a CSV cell would hold them; read through the export's table schema, exactly
/// as `kiln predict` reads a table file.
fn decode_table(request: &InferRequest, schema: &TableSchema) -> Result<Work, ApiError> {
    let wanted: Vec<String> = schema.features.iter().map(|c| c.name.clone()).collect();
    let mut columns: Vec<Option<Vec<String>>> = vec![None; wanted.len()];
    let mut rows = None;
    for input in &request.inputs {
        let i = (wanted.iter().position(|w| *w == input.name))
            .ok_or_else(|| unknown_input(&input.name, &wanted))?;
        if columns[i].is_some() {
            return Err(ApiError::bad_request(format!(
                "input `{}` is given twice",
                input.name
            )));
        }
        let n = match input.shape.as_slice() {
            [n] | [n, 1] => *n as usize,
            other => {
                return Err(ApiError::bad_request(format!(
                    "input `{}`: shape {other:?}; a column of a table is [N] (or [N, 1])",
                    input.name
                )))
            }
        };
        if *rows.get_or_insert(n) != n {
            return Err(ApiError::bad_request(format!(
                "input `{}` has {n} rows, the inputs before it {}; every column needs one value per row",
                input.name,
                rows.unwrap_or(0)
            )));
        }
        columns[i] = Some(match input.elements(&["FP32", "BYTES"])? {
            Elements::Strings(cells) => cells,
            Elements::Numbers(values) => values.iter().map(f32::to_string).collect(),
        });
    }
    let missing: Vec<&str> = (wanted.iter().zip(&columns))
        .filter(|(_, c)| c.is_none())
        .map(|(w, _)| w.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(ApiError::bad_request(format!(
            "missing input(s) {}: the model takes one input per column ({})",
            missing.join(", "),
            wanted.join(", ")
        )));
    }
    let n = rows.unwrap_or(0);
    if n == 0 {
        return Err(ApiError::bad_request("the request holds no rows"));
    }
    let columns: Vec<Vec<String>> = columns.into_iter().flatten().collect();
    let table = Table {
        source: "request".into(),
        columns: wanted,
        rows: (0..n)
            .map(|r| columns.iter().map(|c| c[r].clone()).collect())
            .collect(),
        lines: (0..n as u64).collect(),
        line_word: "row",
    };
    let all: Vec<usize> = (0..n).collect();
    let encoded = schema
        .encode(&table, &all, false)
        .map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
    if encoded.rows.len() != n {
        let kept: std::collections::HashSet<usize> = encoded.rows.iter().copied().collect();
        let dropped: Vec<String> = (0..n)
            .filter(|r| !kept.contains(r))
            .map(|r| r.to_string())
            .collect();
        return Err(ApiError::bad_request(format!(
            "request row(s) {} have missing values, and the model was trained with data.missing = \"drop\", which has no prediction for them; send complete rows",
            dropped.join(", ")
        )));
    }
    Ok(Work::Samples {
        x: encoded.features,
        rows: n,
    })
}

fn unknown_input(name: &str, wanted: &[String]) -> ApiError {
    ApiError::bad_request(format!(
        "the model has no input `{name}`; its inputs are {}",
        wanted.join(", ")
    ))
}

fn names(tensors: &[TensorMeta]) -> String {
    tensors
        .iter()
        .map(|t| t.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
