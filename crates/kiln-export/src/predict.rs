//! `kiln predict`: runs a Kiln export on any backend. Classifiers and regressions read PNG
//! images, IDX image files or CSV rows and print one JSON line per input (label and class
//! probabilities, or the predicted value); a GPT continues a prompt (or prints its logits).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use kiln_data::images::is_image_file;
use kiln_data::{read_any_table, ImageSpec, Standardizer, TableSchema, Tokenizer};
use kiln_infer::generate::{generate_with, Sampling};
use kiln_models::{DataShape, Input, Model, ModelConfig, Regression};
use serde_json::{json, Value};

use crate::format::{read_export, Manifest, MANIFEST_FILE};
use crate::model::{build_model, HostWeights};

/// Samples per forward pass.
const BATCH: usize = 256;

/// What an export's model takes.
pub enum Task {
    /// A classifier or a regression of samples.
    Samples {
        /// What the model gives: classes or a value.
        output: SampleOutput,
        /// `[features]` or `[c, h, w]`.
        sample_shape: Vec<usize>,
        /// The training data's standardization, applied to every input first.
        standardize: Option<Standardizer>,
        /// A model trained on a table with column names: how a row of it becomes the features.
        table: Option<TableSchema>,
        /// A model trained on an image folder: how an image file becomes the features.
        image: Option<ImageSpec>,
    },
    /// A language model.
    Language {
        /// The run's tokenizer.
        tokenizer: Tokenizer,
    },
}

/// What a model of samples gives.
#[derive(Clone, Debug)]
pub enum SampleOutput {
    /// Class probabilities; the class names, by class index.
    Classes(Vec<String>),
    /// A number in the target's units.
    Value {
        /// The name of the target (a table's label column).
        target: String,
    },
}

/// An export loaded onto a device.
pub struct Loaded<B: Backend> {
    /// The export's manifest.
    pub manifest: Manifest,
    /// The model on the device, quantized weights dequantized to float32.
    pub model: Model<B>,
    /// What it takes and gives: samples and class labels, or text and its tokenizer.
    pub task: Task,
}

/// Reads, verifies and loads the Kiln export in `dir`.
pub fn load<B: Backend>(dir: &Path, device: &B::Device) -> Result<Loaded<B>> {
    if !dir.join(MANIFEST_FILE).is_file() {
        if dir.join("model.onnx").is_file() {
            bail!(
                "{} is an ONNX export; run it with onnxruntime (or Triton). kiln predict runs Kiln exports (kiln export --format kiln)",
                dir.display()
            );
        }
        if dir.join("config.json").is_file() {
            bail!(
                "{} is a Hugging Face export; load it with transformers. kiln predict runs Kiln exports (kiln export --format kiln)",
                dir.display()
            );
        }
    }
    let (manifest, tensors) = read_export(dir)?;
    if manifest.architecture.get("program").is_some() {
        bail!(
            "{} holds a program's own model (written by kiln_export::export_module); the program that trained it loads it with kiln_export::load_module. kiln predict runs Kiln's built-in models",
            dir.display()
        );
    }
    let damaged = |what: &str| format!("{}: the manifest's {what} is damaged", dir.display());
    let section =
        ModelConfig::from_manifest(&manifest.architecture["model"], manifest.format_version)
            .with_context(|| damaged("architecture"))?;
    let (task, shape) = match manifest.input["kind"].as_str() {
        Some("features") => {
            let sample_shape: Vec<usize> = serde_json::from_value(manifest.input["shape"].clone())
                .with_context(|| damaged("input shape"))?;
            let standardize = match &manifest.input["standardize"] {
                Value::Null => None,
                s => {
                    let st: Standardizer = serde_json::from_value(s.clone())
                        .with_context(|| damaged("input.standardize"))?;
                    st.check(sample_shape.iter().product())
                        .map_err(|e| anyhow::anyhow!("{}: {e}", damaged("input.standardize")))?;
                    Some(st)
                }
            };
            let table = match &manifest.input["table"] {
                Value::Null => None,
                t => Some(
                    serde_json::from_value::<TableSchema>(t.clone())
                        .with_context(|| damaged("input.table"))?,
                ),
            };
            let (output, shape) = if manifest.output["kind"] == "value" {
                let regression: Regression =
                    serde_json::from_value(manifest.output["regression"].clone())
                        .with_context(|| damaged("output regression"))?;
                let target = manifest.output["target"].as_str().unwrap_or("value");
                let shape = DataShape::Values {
                    sample_shape: sample_shape.clone(),
                    regression,
                };
                let target = target.to_string();
                (SampleOutput::Value { target }, shape)
            } else {
                let labels: Vec<String> = serde_json::from_value(manifest.output["labels"].clone())
                    .with_context(|| damaged("output labels"))?;
                let shape = DataShape::Samples {
                    sample_shape: sample_shape.clone(),
                    num_classes: labels.len(),
                };
                (SampleOutput::Classes(labels), shape)
            };
            let image = match &manifest.input["image"] {
                Value::Null => None,
                i => Some(
                    serde_json::from_value::<ImageSpec>(i.clone())
                        .with_context(|| damaged("input.image"))?,
                ),
            };
            let task = Task::Samples {
                output,
                sample_shape,
                standardize,
                table,
                image,
            };
            (task, shape)
        }
        Some("tokens") => {
            let tokenizer =
                Tokenizer::from_json(&manifest.output["tokenizer"], &dir.join(MANIFEST_FILE))?;
            let shape = DataShape::Tokens {
                vocab_size: tokenizer.vocab_size(),
            };
            (Task::Language { tokenizer }, shape)
        }
        other => bail!("{}: unknown input kind {other:?}", dir.display()),
    };
    let weights: HostWeights = tensors
        .iter()
        .map(|(n, t)| (n.clone(), (t.shape().to_vec(), t.dequantize())))
        .collect();
    let origin = format!("of the export {}", dir.display());
    let model = build_model::<B>(&section, &shape, &weights, &origin, device)?;
    Ok(Loaded {
        manifest,
        model,
        task,
    })
}

/// One input sample and where it came from.
pub struct Record {
    /// `file.png`, `file.csv:3` (line), `file.gz#12` (record).
    pub origin: String,
    /// The sample's values as the data loader reads them (pixels in [0, 1]).
    pub values: Vec<f32>,
}

/// The samples in `paths` as the export's model of samples (`task`) takes them: folders
/// expanded to their images ([`expand_folders`]), then read by [`read_inputs`].
pub fn read_samples(task: &Task, paths: &[PathBuf]) -> Result<Vec<Record>> {
    let Task::Samples {
        sample_shape,
        table,
        image,
        ..
    } = task
    else {
        bail!("this export is a language model; give it a prompt or text, not input files");
    };
    read_inputs(
        &expand_folders(paths)?,
        sample_shape,
        table.as_ref(),
        image.as_ref(),
    )
}

/// `paths` with every folder replaced by the image files under it (recursively, in name
/// order): how an image folder is given as inputs.
pub fn expand_folders(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for path in paths {
        if !path.is_dir() {
            out.push(path.clone());
            continue;
        }
        let before = out.len();
        let mut stack = vec![path.clone()];
        while let Some(dir) = stack.pop() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
                .with_context(|| format!("cannot list {}", dir.display()))?
                .map(|e| e.map(|e| e.path()))
                .collect::<std::io::Result<_>>()
                .with_context(|| format!("cannot list {}", dir.display()))?;
            entries.sort();
            for entry in entries {
                if entry.is_dir() {
                    stack.push(entry);
                } else if is_image_file(&entry) {
                    out.push(entry);
                }
            }
        }
        out[before..].sort();
        ensure!(
            out.len() > before,
            "{}: a folder with no images (.png, .jpg, .jpeg) in it",
            path.display()
        );
    }
    Ok(out)
}

/// Reads classifier inputs: PNG or JPEG images (read as `image` says, for an export of an
/// image folder), IDX image files (`.idx`, `-ubyte`, `.gz`) or CSV rows,
/// each checked against `sample_shape` (`[features]` or `[c, h, w]`). For a model trained on a
/// table with column names (`table`), every input is such a table: its rows are read by column
/// name through the schema (other columns, the label among them, are ignored).
pub fn read_inputs(
    paths: &[PathBuf],
    sample_shape: &[usize],
    table: Option<&TableSchema>,
    image: Option<&ImageSpec>,
) -> Result<Vec<Record>> {
    if let Some(schema) = table {
        return read_table_rows(paths, schema);
    }
    let mut records = Vec::new();
    for path in paths {
        let name = path.display().to_string();
        let lower = name.to_lowercase();
        if is_image_file(path) {
            records.push(Record {
                origin: name,
                values: read_image(path, sample_shape, image)?,
            });
        } else if lower.ends_with(".csv") {
            records.extend(read_csv(path, sample_shape)?);
        } else if lower.ends_with(".gz") || lower.ends_with(".idx") || lower.contains("ubyte") {
            records.extend(read_idx(path, sample_shape)?);
        } else {
            bail!("{name}: unknown input type; give images (.png, .jpg, .jpeg), IDX image files (.idx, *-ubyte, .gz) or CSV rows (.csv)");
        }
    }
    Ok(records)
}

fn read_image(path: &Path, sample_shape: &[usize], spec: Option<&ImageSpec>) -> Result<Vec<f32>> {
    let &[channels, height, width] = sample_shape else {
        bail!(
            "{}: the model takes {} features per sample, not images; give CSV rows",
            path.display(),
            sample_shape.iter().product::<usize>()
        );
    };
    ensure!(
        channels == 1 || channels == 3,
        "{}: the model takes images of {channels} channels; image inputs work for 1 (gray) or 3 (RGB)",
        path.display()
    );
    // An export of an image folder says how its run read images; an IDX run's images were
    // taken as they are.
    let spec = spec.copied().unwrap_or(ImageSpec {
        channels,
        height,
        width,
        resize: false,
    });
    spec.read(
        path,
        &format!(
            "this export does not resize images (its run did not set data.image_size): resize \
             it to {width}x{height} first"
        ),
    )
}

fn read_idx(path: &Path, sample_shape: &[usize]) -> Result<Vec<Record>> {
    let (pixels, shape) = kiln_data::load_idx_images(path)?;
    ensure!(
        shape.as_slice() == sample_shape,
        "{}: holds images of shape {shape:?} ([channels, height, width]), the model takes {sample_shape:?}",
        path.display()
    );
    let len = shape.iter().product::<usize>();
    ensure!(
        len > 0 && !pixels.is_empty(),
        "{}: holds no images",
        path.display()
    );
    Ok(pixels
        .chunks_exact(len)
        .enumerate()
        .map(|(i, v)| Record {
            origin: format!("{}#{i}", path.display()),
            values: v.to_vec(),
        })
        .collect())
}

/// The rows of tables with column names as a model trained on `schema` takes them.
fn read_table_rows(paths: &[PathBuf], schema: &TableSchema) -> Result<Vec<Record>> {
    let width = schema.width();
    let mut records = Vec::new();
    for path in paths {
        let table = read_any_table(path, None)?;
        let rows: Vec<usize> = (0..table.rows.len()).collect();
        let encoded = schema.encode(&table, &rows, false)?;
        for (i, &row) in encoded.rows.iter().enumerate() {
            records.push(Record {
                origin: format!("{}:{}", path.display(), table.lines[row]),
                values: encoded.features[i * width..(i + 1) * width].to_vec(),
            });
        }
        ensure!(!encoded.rows.is_empty(), "{}: no rows", path.display());
    }
    Ok(records)
}

fn read_csv(path: &Path, sample_shape: &[usize]) -> Result<Vec<Record>> {
    let features: usize = sample_shape.iter().product();
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut records = Vec::new();
    for (i, line) in text.trim_start_matches('\u{feff}').lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<Result<f32, _>> =
            line.split(',').map(|f| f.trim().parse::<f32>()).collect();
        // A header: a first line without numbers, or with some text and not one value per
        // feature (scikit-learn's "n_samples,n_features,class names" line).
        let text_fields = fields.iter().filter(|f| f.is_err()).count();
        if i == 0 && (text_fields == fields.len() || (text_fields > 0 && fields.len() != features))
        {
            continue;
        }
        let Ok(values) = fields.into_iter().collect::<Result<Vec<f32>, _>>() else {
            bail!(
                "{}:{}: not a row of numbers: {line:?}",
                path.display(),
                i + 1
            );
        };
        ensure!(
            values.iter().all(|v| v.is_finite()),
            "{}:{}: the row holds NaN or infinite values",
            path.display(),
            i + 1
        );
        ensure!(
            values.len() == features,
            "{}:{}: the row has {} values, the model takes {features} features{}",
            path.display(),
            i + 1,
            values.len(),
            if values.len() == features + 1 {
                " (drop the label column)"
            } else {
                ""
            }
        );
        records.push(Record {
            origin: format!("{}:{}", path.display(), i + 1),
            values,
        });
    }
    ensure!(!records.is_empty(), "{}: no rows", path.display());
    Ok(records)
}

/// What a model of samples computed for a batch, row after row.
pub enum Outputs {
    /// A classifier: `[rows, classes]` logits and their softmax.
    Classes {
        /// The logits, row after row.
        logits: Vec<f32>,
        /// The class probabilities, row after row.
        probabilities: Vec<f32>,
    },
    /// A regression: one value per row, in the target's units.
    Values(Vec<f32>),
}

/// Runs `loaded` on `rows` samples of `x` (their values as the data loader reads them, row
/// after row): the export's standardization, the forward pass and, for a classifier, the
/// softmax, in one batch. `kiln predict` and `kiln serve` both run samples through it.
pub fn forward_samples<B: Backend>(
    loaded: &Loaded<B>,
    mut x: Vec<f32>,
    rows: usize,
    device: &B::Device,
) -> Result<Outputs> {
    let Task::Samples {
        output,
        standardize,
        ..
    } = &loaded.task
    else {
        bail!("this export is a language model; give it a prompt");
    };
    ensure!(
        rows > 0 && x.len().is_multiple_of(rows),
        "no samples to run"
    );
    let features = x.len() / rows;
    if let Some(st) = standardize {
        st.apply_rows(&mut x, features);
    }
    let input = Tensor::<B, 2>::from_data(TensorData::new(x, [rows, features]), device);
    let logits = loaded.model.forward(Input::Features(input));
    let read = |t: Tensor<B, 2>| -> Result<Vec<f32>> {
        t.into_data().convert::<f32>().to_vec().map_err(data_err)
    };
    Ok(match output {
        SampleOutput::Value { .. } => Outputs::Values(read(logits)?),
        SampleOutput::Classes(_) => Outputs::Classes {
            probabilities: read(softmax(logits.clone(), 1))?,
            logits: read(logits)?,
        },
    })
}

/// The index of the largest value (the first on a tie).
pub fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (k, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = k;
        }
    }
    best
}

/// Runs `loaded` on `records` and writes one JSON line each: the origin, and the class index,
/// label and probabilities (and logits when asked) of a classifier, or the predicted value of a
/// regression (`{"input": .., "<target>": value}`).
pub fn predict_samples<B: Backend>(
    loaded: &Loaded<B>,
    records: &[Record],
    with_logits: bool,
    device: &B::Device,
    out: &mut dyn Write,
) -> Result<()> {
    let Task::Samples { output, .. } = &loaded.task else {
        bail!("this export is a language model; give it a prompt");
    };
    for chunk in records.chunks(BATCH) {
        let x: Vec<f32> = chunk
            .iter()
            .flat_map(|r| r.values.iter().copied())
            .collect();
        match (forward_samples(loaded, x, chunk.len(), device)?, output) {
            (Outputs::Values(values), SampleOutput::Value { target }) => {
                for (r, v) in chunk.iter().zip(values) {
                    let mut line = json!({ "input": r.origin });
                    line[target.as_str()] = json!(v);
                    writeln!(out, "{line}")?;
                }
            }
            (
                Outputs::Classes {
                    logits,
                    probabilities,
                },
                SampleOutput::Classes(labels),
            ) => {
                let classes = labels.len();
                for (i, r) in chunk.iter().enumerate() {
                    let p = &probabilities[i * classes..(i + 1) * classes];
                    let best = argmax(p);
                    let mut line = json!({
                        "input": r.origin, "class": best, "label": labels[best], "probabilities": p,
                    });
                    if with_logits {
                        line["logits"] = json!(&logits[i * classes..(i + 1) * classes]);
                    }
                    writeln!(out, "{line}")?;
                }
            }
            _ => bail!("the model's output does not match its manifest"),
        }
    }
    Ok(())
}

/// Continues `sampling.prompt` with the export's GPT and writes one JSON line: prompt,
/// completion and the generated token ids.
pub fn complete<B: Backend>(
    loaded: &Loaded<B>,
    sampling: &Sampling,
    device: &B::Device,
    out: &mut dyn Write,
) -> Result<()> {
    let (Model::Gpt(gpt), Task::Language { tokenizer }) = (&loaded.model, &loaded.task) else {
        bail!("this export is a classifier; give it input files (PNG, IDX or CSV)");
    };
    let generation = generate_with(gpt, tokenizer, sampling, device, &mut std::io::sink())?;
    writeln!(
        out,
        "{}",
        json!({"prompt": sampling.prompt, "completion": generation.text, "tokens": generation.tokens})
    )?;
    Ok(())
}

/// Writes the GPT's next-token logits at every position of `prompt` as one JSON object:
/// prompt, token ids and `logits` (`[positions][vocab]`).
pub fn prompt_logits<B: Backend>(
    loaded: &Loaded<B>,
    prompt: &str,
    device: &B::Device,
    out: &mut dyn Write,
) -> Result<()> {
    let (Model::Gpt(gpt), Task::Language { tokenizer }) = (&loaded.model, &loaded.task) else {
        bail!("this export is a classifier; give it input files (PNG, IDX or CSV)");
    };
    let ids: Vec<u32> = tokenizer.encode(prompt).context("the prompt")?;
    ensure!(
        !ids.is_empty(),
        "the prompt is empty; logits need at least one token"
    );
    ensure!(
        ids.len() <= gpt.shape.block_size,
        "the prompt has {} tokens, the model's context is {} (block_size)",
        ids.len(),
        gpt.shape.block_size
    );
    let t = ids.len();
    let x: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
    let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(x, [1, t]), device);
    let logits: Vec<f32> = gpt
        .forward(tokens)
        .into_data()
        .convert::<f32>()
        .to_vec()
        .map_err(data_err)?;
    let rows: Vec<&[f32]> = logits.chunks_exact(gpt.shape.vocab_size).collect();
    writeln!(
        out,
        "{}",
        json!({"prompt": prompt, "tokens": ids, "logits": rows})
    )?;
    Ok(())
}

fn data_err(e: burn::tensor::DataError) -> anyhow::Error {
    anyhow::anyhow!("cannot read the model's output: {e:?}")
}
