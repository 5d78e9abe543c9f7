//! `kiln export`: a verified checkpoint -> quantized weights -> metrics measured on the exported
//! model -> the Kiln format, ONNX or a Hugging Face GPT-2 folder, written next to the final
//! directory and renamed into place only when complete.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::tensor::backend::Backend;
use kiln_data::Standardizer;
use kiln_infer::{evaluate, RunData, Split};
use kiln_models::{DataShape, GptShape, ModelConfig, Step, TrainModel};
use serde_json::{json, Value};

use crate::calibrate::{calibrate, Calibration};
use crate::drift::{self, DRIFT_FILE};
use crate::format::{sha256_hex, write_export, ExportTensor, FileEntry, Manifest, Scheme};
use crate::format::{FORMAT, FORMAT_VERSION, MANIFEST_FILE};
use crate::model::{build_model, HostWeights};
use crate::onnx::{classifier_to_onnx, ClassifierNet, Layer};
use crate::source::Source;
use kiln_hf::peft::{write_peft, LoraSettings};
use kiln_hf::write_hf;

mod manifest;
pub(crate) use manifest::quantization_spec;
use manifest::{input_spec, output_spec, tokenizer_of};

/// What an export is written as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Kiln's own: `model.safetensors` (integers + scales) and `manifest.json`; `kiln predict`.
    Kiln,
    /// `model.onnx` for onnxruntime / Triton (classifiers).
    Onnx,
    /// A Hugging Face GPT-2 or Llama folder for transformers (GPT; a LoRA fine-tune's adapters
    /// merged in).
    Hf,
    /// A LoRA fine-tune's adapters in PEFT's layout (`adapter_config.json`,
    /// `adapter_model.safetensors`), for `peft` on the Hugging Face base.
    Peft,
}

impl Format {
    /// The name `--format` takes.
    pub fn name(self) -> &'static str {
        match self {
            Format::Kiln => "kiln",
            Format::Onnx => "onnx",
            Format::Hf => "hf",
            Format::Peft => "peft",
        }
    }
}

/// The model/format/quantization combinations Kiln exports.
pub const SUPPORTED: &str = "kiln: mlp, cnn, resnet, gpt with none, int8, int4; onnx: mlp, cnn, resnet with none, int8, int4; hf: gpt with none; peft: gpt fine-tuned with [finetune], none";

/// Refuses a model/format/quantization combination Kiln cannot export, listing those it can.
pub fn check_supported(model: &ModelConfig, format: Format, scheme: Scheme) -> Result<()> {
    let gpt = matches!(model, ModelConfig::Gpt(_));
    let ok = match format {
        Format::Kiln => true,
        Format::Onnx => !gpt,
        Format::Hf | Format::Peft => gpt && scheme == Scheme::None,
    };
    if !ok {
        bail!(
            "--format {} --quantize {} is not supported for a {} model; supported are {SUPPORTED}",
            format.name(),
            scheme.name(),
            model.kind()
        );
    }
    Ok(())
}

/// How to export.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// The format to write.
    pub format: Format,
    /// How to quantize the weights.
    pub scheme: Scheme,
    /// The directory to write (created if needed).
    pub out: PathBuf,
    /// Replace an existing, non-empty `out`.
    pub overwrite: bool,
    /// int4 calibration: training samples (classifiers) or windows (GPT) whose activations
    /// choose each block's scale; 0 uses plain max-abs scales.
    pub calibration_samples: usize,
    /// Backend name, recorded with the metrics.
    pub backend: String,
}

/// Checks `out` before any work: it must not hold the run (`run_dir`), and an existing
/// non-empty directory must be an earlier export, replaced only with `overwrite`.
pub fn check_out(out: &Path, overwrite: bool, run_dir: Option<&Path>) -> Result<()> {
    if out.is_file() {
        bail!("--out {} is a file; give a directory", out.display());
    }
    if let Some(run_dir) = run_dir.filter(|r| absolute(r).starts_with(absolute(out))) {
        bail!(
            "--out {} would hold the run directory {}; write the export elsewhere",
            out.display(),
            run_dir.display()
        );
    }
    let non_empty = out
        .read_dir()
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if non_empty && !overwrite {
        bail!(
            "--out {} already exists and is not empty; choose another directory, or pass --overwrite if it is an earlier export to replace",
            out.display()
        );
    }
    if non_empty && !is_export(out) {
        bail!(
            "--out {} is not a Kiln export (it has no {MANIFEST_FILE} or kiln.json), and --overwrite only replaces exports; choose another directory",
            out.display()
        );
    }
    Ok(())
}

/// `path` made absolute and free of `.`/`..` as far as it exists.
fn absolute(path: &Path) -> PathBuf {
    if let Ok(p) = path.canonicalize() {
        return p;
    }
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            absolute(parent).join(name)
        }
        _ => path.to_path_buf(),
    }
}

/// Whether `dir` holds an export Kiln wrote (any format).
fn is_export(dir: &Path) -> bool {
    [MANIFEST_FILE, "kiln.json"].iter().any(|name| {
        std::fs::read_to_string(dir.join(name))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v["format"].as_str().map(|f| f.starts_with("kiln")))
            .unwrap_or(false)
    })
}

/// Exports `source` as `opts` says and returns a JSON summary.
pub fn export<B: Backend>(
    source: Source,
    opts: &ExportOptions,
    device: &B::Device,
) -> Result<Value> {
    let config = &source.config;
    let section = &ModelConfig::of(config)?;
    check_supported(section, opts.format, opts.scheme)?;
    check_out(&opts.out, opts.overwrite, Some(&source.run_dir))?;
    if opts.format == Format::Peft && source.lora.is_none() {
        bail!("--format peft writes LoRA adapters, and this run trained every weight (its config has no [finetune]); export it with --format hf");
    }

    let data = RunData::load(config).context("loading the run's data for the export's metrics")?;
    let shape = data.shape();
    let (split, split_name) = match &data {
        RunData::Samples(_) => (Split::Test, "test"),
        RunData::Text(_) => (Split::Valid, "valid"),
    };
    if !data.has(split) {
        bail!(
            "the run's data has no {split_name} split to measure the export on; give the run one (data.test_fraction / data.valid_fraction above 0)"
        );
    }
    let float_model = build_model::<B>(
        section,
        &shape,
        &source.weights,
        "of the checkpoint",
        device,
    )?;
    let float = evaluate(&float_model, data.eval_batches(split, config), device)?;

    // int8's per-channel max-abs scales lose little; int4's coarse steps are worth calibrating.
    let calibration = match (opts.scheme, opts.calibration_samples) {
        (Scheme::None | Scheme::Int8, _) | (_, 0) => None,
        (_, n) => Some(calibrate(&float_model, &data, config, n, device)?),
    };
    let tensors = quantize(
        &source.weights,
        opts.scheme,
        calibration.as_ref(),
        |name, shape| float_model.quant_axis(name, shape),
    )?;
    drop(float_model);
    let dequantized: HostWeights = tensors
        .iter()
        .map(|(n, t)| (n.clone(), (t.shape().to_vec(), t.dequantize())))
        .collect();
    // The exported model: measured (float32 weights need no second pass) and the drift
    // reference's predictions.
    let exported_model = build_model::<B>(section, &shape, &dequantized, "of the export", device)?;
    let exported = if opts.scheme == Scheme::None {
        float.clone()
    } else {
        evaluate(&exported_model, data.eval_batches(split, config), device)?
    };
    let metrics = exported.json_with(json!({"split": split_name, "backend": opts.backend}));
    let reference =
        drift::build(&data, &exported_model, config, device).context("the drift reference")?;
    drop(exported_model);
    // A reference over its bound is left out (drift then unavailable), never the export.
    let reference_bytes = match reference.to_bytes() {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            tracing::warn!("the export has no drift reference: {e:#}");
            None
        }
    };

    let manifest = Manifest {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        kiln_version: kiln_core::VERSION.into(),
        architecture: json!({ "model": section }),
        input: input_spec(&data, config.data.kiln_format()?, section)?,
        output: output_spec(&data, &source)?,
        quantization: quantization_spec(opts.scheme, &tensors, calibration.as_ref()),
        source: source_json(&source),
        metrics: metrics.clone(),
        tensors: BTreeMap::new(),
        files: BTreeMap::new(),
        drift: (reference_bytes.as_ref()).map(|bytes| reference.describe(bytes)),
    };

    let partial = partial_dir(&opts.out)?;
    let written = (reference_bytes.as_ref())
        .map_or(Ok(()), |bytes| write(&partial, DRIFT_FILE, bytes))
        .and_then(|()| {
            write_format(
                &partial,
                opts,
                manifest,
                &tensors,
                &dequantized,
                &data,
                &source,
            )
        })
        .and_then(|()| finish(&partial, &opts.out, opts.overwrite, Some(&source.run_dir)));
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(e);
    }

    let files = list_files(&opts.out)?;
    let bytes: u64 = files.values().sum();
    let weights_bytes = files
        .iter()
        .filter(|(n, _)| n.ends_with(".safetensors") || n.ends_with(".onnx"))
        .map(|(_, b)| b)
        .sum::<u64>();
    Ok(json!({
        "out": opts.out, "format": opts.format.name(), "quantize": opts.scheme.name(),
        "files": files, "bytes": bytes, "weights_bytes": weights_bytes,
        "drift_bytes": reference_bytes.as_ref().map(Vec::len),
        "source_bytes": source.bytes,
        "size_ratio": weights_bytes as f64 / source.bytes as f64,
        "metrics": metrics,
        "float_metrics": float.json_with(json!({"split": split_name})),
        "source": {"checkpoint": source.checkpoint, "step": source.step, "sha256": source.sha256},
    }))
}

/// The manifest's `source`: the checkpoint, and a LoRA fine-tune's base and adapters (merged
/// into the exported weights, or written alone by `--format peft`).
fn source_json(source: &Source) -> Value {
    let mut json = json!({
        "run": source.config.run.name, "checkpoint": source.checkpoint, "step": source.step,
        "sha256": source.sha256, "bytes": source.bytes,
    });
    if let Some(lora) = &source.lora {
        json["lora"] = json!({
            "base": lora.init_from, "base_sha256": lora.base_sha256,
            "rank": lora.finetune.lora_rank, "alpha": lora.finetune.alpha(),
            "target_modules": lora.finetune.target_modules,
        });
    }
    json
}

/// Quantizes every weight with `scheme` along the axis `axis_of` gives it (the model's
/// [`TrainModel::quant_axis`]; `None` keeps a tensor in float32).
pub fn quantize(
    weights: &HostWeights,
    scheme: Scheme,
    calibration: Option<&Calibration>,
    axis_of: impl Fn(&str, &[usize]) -> Option<usize>,
) -> Result<Vec<(String, ExportTensor)>> {
    weights
        .iter()
        .map(|(name, (shape, data))| {
            let axis = axis_of(name, shape);
            let moments = calibration.and_then(|c| c.get(name)).map(Vec::as_slice);
            let t = ExportTensor::quantize_weighted(shape, data, axis, scheme, moments)
                .with_context(|| format!("quantizing {name}"))?;
            Ok((name.clone(), t))
        })
        .collect()
}

/// Writes the export in its format into `dir`.
fn write_format(
    dir: &Path,
    opts: &ExportOptions,
    mut manifest: Manifest,
    tensors: &[(String, ExportTensor)],
    dequantized: &HostWeights,
    data: &RunData,
    source: &Source,
) -> Result<()> {
    let section = &ModelConfig::of(&source.config)?;
    match opts.format {
        Format::Kiln => write_export(dir, manifest, tensors),
        Format::Onnx => {
            let net = classifier_net(section, &manifest, tensors)?;
            let bytes = classifier_to_onnx(&net)?;
            write(dir, "model.onnx", &bytes)?;
            manifest.format = "kiln-onnx".into();
            manifest.files = BTreeMap::from([(
                "model.onnx".to_string(),
                FileEntry {
                    sha256: sha256_hex(&bytes),
                    bytes: bytes.len() as u64,
                },
            )]);
            write(
                dir,
                "kiln.json",
                serde_json::to_string_pretty(&manifest)?.as_bytes(),
            )
        }
        Format::Peft => {
            let lora = source
                .lora
                .as_ref()
                .context("--format peft needs a LoRA fine-tune")?;
            let DataShape::Tokens { vocab_size } = data.shape() else {
                bail!("a PEFT export needs a GPT");
            };
            let gpt = section.gpt("a PEFT export")?;
            let settings = LoraSettings {
                rank: lora.finetune.lora_rank,
                alpha: lora.finetune.alpha(),
                dropout: lora.finetune.lora_dropout,
                base: absolute(Path::new(&lora.init_from)).display().to_string(),
            };
            write_peft(
                dir,
                &GptShape::new(gpt, vocab_size)?,
                &lora.adapters,
                &settings,
            )?;
            manifest.format = "kiln-peft".into();
            write(
                dir,
                "kiln.json",
                serde_json::to_string_pretty(&manifest)?.as_bytes(),
            )
        }
        Format::Hf => {
            let tokenizer = tokenizer_of(data, &source.run_dir)?;
            let DataShape::Tokens { vocab_size } = data.shape() else {
                bail!("a Hugging Face export needs a GPT");
            };
            let gpt = section.gpt("a Hugging Face export")?;
            write_hf(
                dir,
                &GptShape::new(gpt, vocab_size)?,
                dequantized,
                &tokenizer,
            )?;
            manifest.format = "kiln-hf".into();
            write(
                dir,
                "kiln.json",
                serde_json::to_string_pretty(&manifest)?.as_bytes(),
            )
        }
    }
}

/// The classifier of `section` as ONNX layers: the model's own inference plan
/// ([`ModelConfig::plan`]) with the export's tensors.
fn classifier_net(
    section: &ModelConfig,
    manifest: &Manifest,
    tensors: &[(String, ExportTensor)],
) -> Result<ClassifierNet> {
    let by_name: BTreeMap<&str, &ExportTensor> =
        tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let Some(plan) = section.plan() else {
        bail!("ONNX export covers classifiers; {SUPPORTED}");
    };
    let layers = (plan.into_iter())
        .map(|step| layer_of(step, &by_name))
        .collect::<Result<Vec<_>>>()?;
    let input = &manifest.input;
    let features = input["features"].as_u64().context("input features")? as usize;
    let image = match section {
        ModelConfig::Cnn(_) | ModelConfig::ResNet(_) => {
            let dims: Vec<usize> = serde_json::from_value(input["shape"].clone())?;
            let &[c, h, w] = dims.as_slice() else {
                bail!("a CNN's input has shape {dims:?}, not [c, h, w]");
            };
            Some([c, h, w])
        }
        _ => None,
    };
    let standardize = match &input["standardize"] {
        Value::Null => None,
        s => Some(serde_json::from_value::<Standardizer>(s.clone())?),
    };
    let (classes, regression) = match manifest.output["kind"].as_str() {
        Some("value") => (
            1,
            Some(serde_json::from_value(
                manifest.output["regression"].clone(),
            )?),
        ),
        _ => (
            manifest.output["labels"].as_array().map_or(0, |l| l.len()),
            None,
        ),
    };
    Ok(ClassifierNet {
        features,
        image,
        standardize,
        layers,
        classes,
        regression,
    })
}

/// The ONNX layer of the plan's `step`, with its tensors from `by_name`.
fn layer_of(step: Step, by_name: &BTreeMap<&str, &ExportTensor>) -> Result<Layer> {
    let get = |name: &str| -> Result<ExportTensor> {
        by_name
            .get(name)
            .map(|t| (*t).clone())
            .with_context(|| format!("the checkpoint has no tensor {name}"))
    };
    let vector = |name: &str| by_name.get(name).map(|t| t.dequantize());
    let layers = |steps: Vec<Step>| -> Result<Vec<Layer>> {
        steps.into_iter().map(|s| layer_of(s, by_name)).collect()
    };
    Ok(match step {
        Step::Linear { weight, bias } => Layer::Linear {
            weight: get(&weight)?,
            bias: vector(&bias),
        },
        Step::Conv2d {
            weight,
            bias,
            padding,
            stride,
        } => Layer::Conv2d {
            weight: get(&weight)?,
            bias: vector(&bias),
            padding,
            stride,
        },
        Step::BatchNorm { prefix, epsilon } => {
            let v = |p: &str| -> Result<Vec<f32>> {
                vector(&format!("{prefix}.{p}"))
                    .with_context(|| format!("the checkpoint has no {prefix}.{p}"))
            };
            Layer::BatchNorm {
                gamma: v("gamma")?,
                beta: v("beta")?,
                mean: v("running_mean")?,
                var: v("running_var")?,
                epsilon,
            }
        }
        Step::Residual { body, shortcut } => Layer::Residual {
            body: layers(body)?,
            shortcut: layers(shortcut)?,
        },
        Step::Activation(a) => Layer::Activation(a),
        Step::MaxPool2 => Layer::MaxPool2,
        Step::AvgPool2 => Layer::AvgPool2,
        Step::GlobalAvgPool => Layer::GlobalAvgPool,
        Step::Flatten => Layer::Flatten,
    })
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(name);
    std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// A fresh directory beside `out` to write the export into.
pub(crate) fn partial_dir(out: &Path) -> Result<PathBuf> {
    let name = out
        .file_name()
        .with_context(|| format!("--out {}: give a directory name", out.display()))?;
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let partial = parent.join(format!(
        ".{}.partial-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&partial);
    Ok(partial)
}

/// Moves the complete export into place. An earlier export is first moved aside and removed
/// only once the new one is in place; if that fails, it is moved back.
pub(crate) fn finish(
    partial: &Path,
    out: &Path,
    overwrite: bool,
    run_dir: Option<&Path>,
) -> Result<()> {
    let place = || {
        std::fs::rename(partial, out)
            .with_context(|| format!("cannot move the export into {}", out.display()))
    };
    if !out.exists() {
        return place();
    }
    check_out(out, overwrite, run_dir)?;
    let empty = out
        .read_dir()
        .map(|mut d| d.next().is_none())
        .unwrap_or(false);
    if empty {
        // An empty directory (perhaps a mount point): fill it instead of replacing it.
        if std::fs::remove_dir(out).is_ok() {
            return place();
        }
        for entry in std::fs::read_dir(partial)? {
            let entry = entry?;
            std::fs::rename(entry.path(), out.join(entry.file_name()))
                .with_context(|| format!("cannot move the export into {}", out.display()))?;
        }
        return Ok(());
    }
    let old = partial.with_file_name(format!(
        "{}.old",
        partial.file_name().unwrap_or_default().to_string_lossy()
    ));
    std::fs::rename(out, &old)
        .with_context(|| format!("cannot move the earlier export {} aside", out.display()))?;
    if let Err(e) = place() {
        let _ = std::fs::rename(&old, out);
        return Err(e);
    }
    std::fs::remove_dir_all(&old).with_context(|| {
        format!(
            "the export is in place, but {} could not be removed",
            old.display()
        )
    })
}

fn list_files(dir: &Path) -> Result<BTreeMap<String, u64>> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            files.insert(
                entry.file_name().to_string_lossy().into_owned(),
                entry.metadata()?.len(),
            );
        }
    }
    Ok(files)
}
