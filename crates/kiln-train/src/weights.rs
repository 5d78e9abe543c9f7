//! Loading model weights (a checkpoint's `model.safetensors`) through burn-store, for evaluation.

use std::path::Path;

use anyhow::{bail, Result};
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn_store::{ModuleSnapshot, SafetensorsStore};
use kiln_models::Model;

/// Loads parameters from `path` into `model`, which must have exactly the same tensors.
pub fn load<B: Backend>(model: Model<B>, path: &Path) -> Result<Model<B>> {
    if !path.is_file() {
        bail!("weights file {} does not exist", path.display());
    }
    let mut model = model;
    let mut store = SafetensorsStore::from_file(path).skip_enum_variants(true);
    let result = model.load_from(&mut store).map_err(|e| {
        anyhow::anyhow!(
            "cannot load weights {}: {e}; the file is damaged or not a safetensors file",
            path.display()
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
            "weights {} do not fit the model of the run's config: {}",
            path.display(),
            problems.join("; ")
        );
    }
    Ok(model.no_grad())
}
