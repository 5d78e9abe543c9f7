//! Loading model weights (a checkpoint's `model.safetensors`) through burn-store, for evaluation.
//! A LoRA fine-tune's checkpoint holds only its adapters: [`load_run`] adds the base they belong
//! to, from `model.init_from`, after checking it is the one they were trained on.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{bail, Context, Result};
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn_store::{ModuleSnapshot, SafetensorsStore};
use kiln_checkpoint::layout::STATE_FILE;
use kiln_core::Config;
use kiln_hf::import::KilnTensors;
use kiln_models::{GptShape, Model, ModelConfig};

/// Loads parameters from `path` into `model`, which must have exactly the same tensors.
pub fn load<B: Backend, M: Module<B>>(model: M, path: &Path) -> Result<M> {
    if !path.is_file() {
        bail!("weights file {} does not exist", path.display());
    }
    let store = SafetensorsStore::from_file(path).skip_enum_variants(true);
    load_from(model, store, &path.display().to_string()).map(Module::no_grad)
}

/// Loads parameters from safetensors bytes in memory (`origin` names them in messages).
pub fn load_bytes<B: Backend, M: Module<B>>(model: M, bytes: Vec<u8>, origin: &str) -> Result<M> {
    let store = SafetensorsStore::from_bytes(Some(bytes)).skip_enum_variants(true);
    load_from(model, store, origin).map(Module::no_grad)
}

/// [`load_bytes`] into a model that is then trained: its parameters keep requiring gradients.
/// LoRA adapters (`..._lora.lora_a`, `..._lora.lora_b`) are not in a base model's weights: they
/// keep their values.
pub fn load_bytes_trainable<B: Backend, M: Module<B>>(
    model: M,
    bytes: Vec<u8>,
    origin: &str,
) -> Result<M> {
    let (model, missing) = load_part(model, bytes, origin)?;
    match missing.iter().find(|n| !is_adapter(n)) {
        Some(_) => Err(not_fitting(origin, &missing, &[])),
        None => Ok(model),
    }
}

/// Loads the weights of a run's checkpoint (`weights_file`, its `model.safetensors`) into
/// `model`, built from the run's config. For a LoRA fine-tune (`[finetune]`) the file holds the
/// adapters, and the base comes from `model.init_from` ([`lora_base`]).
pub fn load_run<B: Backend>(
    model: Model<B>,
    config: &Config,
    weights_file: &Path,
) -> Result<Model<B>> {
    let Some(base) = lora_base(config, weights_file)? else {
        return load(model, weights_file);
    };
    let origin = weights_file.display().to_string();
    let adapters = std::fs::read(weights_file).with_context(|| format!("cannot read {origin}"))?;
    let (model, missing) = load_part(model, adapters, &origin)?;
    let base_origin = format!("of model.init_from (the base of {origin})");
    let (model, missing_too) =
        load_part(model, kiln_hf::import::to_safetensors(&base)?, &base_origin)?;
    let missing: Vec<String> = missing.intersection(&missing_too).cloned().collect();
    if !missing.is_empty() {
        return Err(not_fitting(&origin, &missing.into_iter().collect(), &[]));
    }
    Ok(model.no_grad())
}

/// The base weights of the LoRA fine-tune whose checkpoint holds `weights_file`: the tensors of
/// the run's `model.init_from`, once its sha256 is checked against the one the checkpoint's
/// `state.json` records (`base.sha256`). `None` for a run without `[finetune]`.
pub fn lora_base(config: &Config, weights_file: &Path) -> Result<Option<KilnTensors>> {
    if config.finetune.is_none() {
        return Ok(None);
    }
    let gpt = ModelConfig::of(config)?.gpt("[finetune]")?.clone();
    let dir = Path::new(gpt.init_from.as_deref().unwrap_or_default());
    let state_file = weights_file.with_file_name(STATE_FILE);
    let state: serde_json::Value = std::fs::read_to_string(&state_file)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .with_context(|| {
            format!(
                "{} holds LoRA adapters, and their base is named by the sha256 in the {STATE_FILE} beside it, which cannot be read; use a checkpoint directory of the run",
                weights_file.display()
            )
        })?;
    let recorded = state["base"]["sha256"].as_str().unwrap_or_default();
    let actual = kiln_hf::import::weights_sha256(dir).with_context(|| {
        format!(
            "reading the base model of model.init_from = {:?}",
            dir.display().to_string()
        )
    })?;
    if recorded != actual {
        bail!(
            "the base model in {} has changed: its weights have sha256 {actual}, the adapters of {} were trained on {recorded}; restore that base (or point model.init_from at it)",
            dir.display(),
            weights_file.display()
        );
    }
    let vocab_size = gpt
        .vocab_size
        .context("model.vocab_size: missing in the run's config")?;
    let shape = GptShape::new(&gpt, vocab_size)?;
    Ok(Some(kiln_hf::import::read_weights(dir, &shape)?))
}

/// Whether `name` is a LoRA adapter's matrix.
pub fn is_adapter(name: &str) -> bool {
    name.contains("_lora.lora_")
}

/// Loads the tensors `bytes` holds (each must be one of the model's, of its shape) and returns
/// the model's tensors it did not hold.
fn load_part<B: Backend, M: Module<B>>(
    model: M,
    bytes: Vec<u8>,
    origin: &str,
) -> Result<(M, BTreeSet<String>)> {
    let mut store = SafetensorsStore::from_bytes(Some(bytes))
        .skip_enum_variants(true)
        .allow_partial(true);
    let mut model = model;
    let result = model
        .load_from(&mut store)
        .map_err(|e| damaged(origin, e))?;
    if !result.errors.is_empty() || !result.unused.is_empty() {
        let problems: Vec<String> = [
            (!result.errors.is_empty()).then(|| format!("{:?}", result.errors)),
            (!result.unused.is_empty()).then(|| format!("unexpected tensors {:?}", result.unused)),
        ]
        .into_iter()
        .flatten()
        .collect();
        bail!(
            "weights {origin} do not fit the model of the run's config: {}",
            problems.join("; ")
        );
    }
    Ok((
        model,
        result.missing.into_iter().map(|(path, _)| path).collect(),
    ))
}

fn load_from<B: Backend, M: Module<B>>(
    model: M,
    mut store: SafetensorsStore,
    origin: &str,
) -> Result<M> {
    let mut model = model;
    let result = model
        .load_from(&mut store)
        .map_err(|e| damaged(origin, e))?;
    let mut problems = Vec::new();
    if !result.errors.is_empty() {
        problems.push(format!("{:?}", result.errors));
    }
    if !result.missing.is_empty() || !result.unused.is_empty() {
        return Err(not_fitting(
            origin,
            &result.missing.into_iter().map(|(path, _)| path).collect(),
            &result.unused,
        ));
    }
    if !problems.is_empty() {
        bail!(
            "weights {origin} do not fit the model of the run's config: {}",
            problems.join("; ")
        );
    }
    Ok(model)
}

fn damaged(origin: &str, e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!(
        "cannot load weights {origin}: {e}; the file is damaged or not a safetensors file"
    )
}

fn not_fitting(origin: &str, missing: &BTreeSet<String>, unused: &[String]) -> anyhow::Error {
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!("missing tensors {missing:?}"));
    }
    if !unused.is_empty() {
        problems.push(format!("unexpected tensors {unused:?}"));
    }
    anyhow::anyhow!(
        "weights {origin} do not fit the model of the run's config: {}",
        problems.join("; ")
    )
}
