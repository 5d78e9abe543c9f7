//! Loading model weights (a checkpoint's `model.safetensors`) through burn-store, for evaluation.

use std::path::Path;

use anyhow::{bail, Result};
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn_store::{ModuleSnapshot, SafetensorsStore};

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
pub fn load_bytes_trainable<B: Backend, M: Module<B>>(
    model: M,
    bytes: Vec<u8>,
    origin: &str,
) -> Result<M> {
    let store = SafetensorsStore::from_bytes(Some(bytes)).skip_enum_variants(true);
    load_from(model, store, origin)
}

fn load_from<B: Backend, M: Module<B>>(
    model: M,
    mut store: SafetensorsStore,
    origin: &str,
) -> Result<M> {
    let mut model = model;
    let result = model.load_from(&mut store).map_err(|e| {
        anyhow::anyhow!(
            "cannot load weights {origin}: {e}; the file is damaged or not a safetensors file"
        )
    })?;
    let mut problems = Vec::new();
    if !result.errors.is_empty() {
        problems.push(format!("{:?}", result.errors));
    }
    if !result.missing.is_empty() {
        problems.push(format!("missing tensors {:?}", result.missing));
    }
    if !result.unused.is_empty() {
        problems.push(format!("unexpected tensors {:?}", result.unused));
    }
    if !problems.is_empty() {
        bail!(
            "weights {origin} do not fit the model of the run's config: {}",
            problems.join("; ")
        );
    }
    Ok(model)
}
