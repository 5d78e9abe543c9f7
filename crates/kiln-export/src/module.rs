//! Exports of a program's own model, a [`TrainModel`] trained through Kiln's library: its weights
//! in Kiln's format, quantized along the axes the model gives ([`TrainModel::quant_axis`]), with
//! the program's description of its model kept in the manifest (`architecture.program`), and
//! loaded back into the program's model by [`load_module`].
//!
//! The `kiln` CLI knows only Kiln's built-in models: `kiln predict` refuses such an export and
//! says that the program that wrote it loads it.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn_store::ModuleSnapshot;
use kiln_models::TrainModel;
use serde_json::{json, Value};

use crate::export::{check_out, finish, partial_dir, quantization_spec, quantize};
use crate::format::{read_export, write_export, Manifest, Scheme};
use crate::format::{FORMAT, FORMAT_VERSION};
use crate::model::{to_safetensors, HostWeights};

/// Writes `model`'s weights to the directory `out` in Kiln's format, quantized with `scheme`
/// (vectors stay float32). `about` is the program's description of its model (its `[model]`
/// section, its inputs and outputs: any JSON), kept as the manifest's `architecture.program`.
/// An earlier export in `out` is replaced only with `overwrite`; the new one is written beside
/// it and moved into place when complete. Returns the manifest written.
pub fn export_module<B: Backend, M: TrainModel<B> + Module<B>>(
    model: &M,
    scheme: Scheme,
    about: Value,
    out: &Path,
    overwrite: bool,
) -> Result<Manifest> {
    check_out(out, overwrite, None)?;
    let weights = host_weights(model)?;
    let tensors = quantize(&weights, scheme, None, |name, shape| {
        model.quant_axis(name, shape)
    })?;
    let manifest = Manifest {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        kiln_version: kiln_core::VERSION.into(),
        architecture: json!({ "program": about }),
        input: Value::Null,
        output: Value::Null,
        quantization: quantization_spec(scheme, &tensors, None),
        source: json!({ "module": std::any::type_name::<M>() }),
        metrics: Value::Null,
        tensors: BTreeMap::new(),
        files: BTreeMap::new(),
        drift: None,
    };
    let partial = partial_dir(out)?;
    let written = write_export(&partial, manifest, &tensors)
        .and_then(|()| finish(&partial, out, overwrite, None));
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(e);
    }
    Ok(read_export(out)?.0)
}

/// Loads the export in `dir` (written by [`export_module`]) into `model`, which the program builds
/// as it did for training (the same tensors and shapes): quantized weights are dequantized to
/// float32. Returns the model and the export's manifest.
pub fn load_module<B: Backend, M: Module<B>>(model: M, dir: &Path) -> Result<(M, Manifest)> {
    let (manifest, tensors) = read_export(dir)?;
    if manifest.architecture.get("program").is_none() {
        bail!(
            "{} holds one of Kiln's own models, not a program's; run it with `kiln predict` (or kiln_export::predict::load)",
            dir.display()
        );
    }
    let weights: HostWeights = tensors
        .iter()
        .map(|(n, t)| (n.clone(), (t.shape().to_vec(), t.dequantize())))
        .collect();
    let origin = format!("of the export {}", dir.display());
    let model = kiln_infer::weights::load_bytes(model, to_safetensors(&weights)?, &origin)?;
    Ok((model, manifest))
}

/// Every float parameter of `model` in host memory, by burn-store name.
fn host_weights<B: Backend, M: Module<B>>(model: &M) -> Result<HostWeights> {
    model
        .collect(None, None, true)
        .into_iter()
        .map(|s| {
            let name = s.full_path();
            let data = s
                .to_data()
                .map_err(|e| anyhow!("cannot read parameter {name}: {e:?}"))?;
            let shape = data.shape.to_vec();
            let values = data
                .convert::<f32>()
                .to_vec::<f32>()
                .map_err(|e| anyhow!("parameter {name}: {e:?}"))
                .with_context(|| format!("exporting {name}"))?;
            Ok((name, (shape, values)))
        })
        .collect()
}
