//! Loading model weights (a checkpoint's `model.safetensors`) through burn-store, for evaluation.
//! A LoRA fine-tune's checkpoint holds only its adapters: [`load_run`] adds the base they belong
//! to, from `model.init_from`, after checking it is the one they were trained on.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{bail, Result};
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn_store::{ModuleSnapshot, SafetensorsStore};
use kiln_core::Config;
use kiln_models::Model;

use crate::base::lora_base;

/// Loads parameters from `path` into `model`, which must have exactly the same tensors.
pub fn load<B: Backend, M: Module<B>>(model: M, path: &Path) -> Result<M> {
    if !path.is_file() {
        bail!("weights file {} does not exist", path.display());
    }
    let store = SafetensorsStore::from_file(path);
    load_from(model, store, &path.display().to_string()).map(Module::no_grad)
}

/// Loads parameters from safetensors bytes in memory (`origin` names them in messages).
pub fn load_bytes<B: Backend, M: Module<B>>(model: M, bytes: Vec<u8>, origin: &str) -> Result<M> {
    let store = SafetensorsStore::from_bytes(Some(bytes));
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
    let store = SafetensorsStore::from_bytes(Some(bytes));
    let (model, missing) = load_part(model, store, origin)?;
    match missing.iter().find(|n| !is_adapter(n)) {
        Some(_) => Err(not_fitting(origin, &missing, &[])),
        None => Ok(model),
    }
}

/// Loads the weights of a run's checkpoint (`weights_file`, its `model.safetensors`) into
/// `model`, built from the run's config. For a LoRA fine-tune (`[finetune]`) the file holds the
/// adapters, and the base comes from `model.init_from` ([`crate::base::lora_base`]).
pub fn load_run<B: Backend>(
    model: Model<B>,
    config: &Config,
    weights_file: &Path,
) -> Result<Model<B>> {
    if !weights_file.is_file() {
        bail!("weights file {} does not exist", weights_file.display());
    }
    let Some(base) = lora_base(config, weights_file)? else {
        return load(model, weights_file);
    };
    let origin = weights_file.display().to_string();
    let adapters = SafetensorsStore::from_file(weights_file);
    let (model, missing) = load_part(model, adapters, &origin)?;
    let base = SafetensorsStore::from_bytes(Some(kiln_hf::import::to_safetensors(&base)?));
    let base_origin = format!("of model.init_from (the base of {origin})");
    let (model, missing_too) = load_part(model, base, &base_origin)?;
    let missing: BTreeSet<String> = missing.intersection(&missing_too).cloned().collect();
    if !missing.is_empty() {
        return Err(not_fitting(&origin, &missing, &[]));
    }
    Ok(model.no_grad())
}

/// Whether `name` is a LoRA adapter's matrix.
fn is_adapter(name: &str) -> bool {
    name.contains("_lora.lora_")
}

/// Loads the tensors `store` holds (each must be one of the model's, of its shape) and returns
/// the model's tensors it did not hold.
fn load_part<B: Backend, M: Module<B>>(
    model: M,
    store: SafetensorsStore,
    origin: &str,
) -> Result<(M, BTreeSet<String>)> {
    let mut store = store.skip_enum_variants(true).allow_partial(true);
    let mut model = model;
    let result = model
        .load_from(&mut store)
        .map_err(|e| damaged(origin, e))?;
    if !result.errors.is_empty() {
        bail!(
            "weights {origin} do not fit the model of the run's config: {:?}",
            result.errors
        );
    }
    let missing = result.missing.into_iter().map(|(path, _)| path).collect();
    if !result.unused.is_empty() {
        return Err(not_fitting(origin, &missing, &result.unused));
    }
    Ok((model, missing))
}

/// Loads `store` into `model`, which must have exactly its tensors.
fn load_from<B: Backend, M: Module<B>>(
    model: M,
    store: SafetensorsStore,
    origin: &str,
) -> Result<M> {
    let (model, missing) = load_part(model, store, origin)?;
    if !missing.is_empty() {
        return Err(not_fitting(origin, &missing, &[]));
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
