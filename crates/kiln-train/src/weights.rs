//! Model weights as safetensors, under stable dotted names such as `layers.0.weight`.

use std::path::Path;

use anyhow::{bail, Context, Result};
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn_store::{ModuleSnapshot, SafetensorsStore};
use kiln_models::Classifier;

/// Writes the model's parameters to `path` (through a temporary file and a rename).
pub fn save<B: Backend>(model: &Classifier<B>, path: &Path) -> Result<()> {
    let tmp = path.with_extension("safetensors.tmp");
    let mut store = SafetensorsStore::from_file(&tmp)
        .skip_enum_variants(true)
        .metadata("kiln_version", kiln_core::VERSION);
    model
        .save_into(&mut store)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", tmp.display()))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .and_then(|_| std::fs::rename(&tmp, path))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Loads parameters from `path` into `model`, which must have exactly the same tensors.
pub fn load<B: Backend>(model: Classifier<B>, path: &Path) -> Result<Classifier<B>> {
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
