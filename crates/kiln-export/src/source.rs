//! The checkpoint an export starts from: found from a run directory, a step directory or its
//! `model.safetensors`, and verified against its `state.json` before anything is read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kiln_checkpoint::layout::{MODEL_FILE, STATE_FILE};
use kiln_checkpoint::verify;
use kiln_core::rundir::{find_run_config, resolve_weights};
use kiln_core::Config;
use safetensors::Dtype;

/// A verified checkpoint's model weights, the run's config and where they came from.
pub struct Source {
    /// The run's resolved config.
    pub config: Config,
    /// The run directory.
    pub run_dir: PathBuf,
    /// The checkpoint directory (`step-<N>`).
    pub checkpoint: PathBuf,
    /// The training step at which the checkpoint was saved.
    pub step: usize,
    /// sha256 of the checkpoint's `model.safetensors`, lowercase hex.
    pub sha256: String,
    /// Size of the checkpoint's `model.safetensors` in bytes.
    pub bytes: u64,
    /// Every model tensor by burn-store name: shape and values.
    pub weights: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

impl Source {
    /// Opens the checkpoint that `path` names and verifies every file of it.
    pub fn open(path: &Path) -> Result<Source> {
        let file = resolve_weights(path)?;
        let checkpoint = file
            .parent()
            .context("the weights file has no directory")?
            .to_path_buf();
        if !checkpoint.join(STATE_FILE).is_file() {
            bail!(
                "{} is not inside a Kiln checkpoint (no state.json next to it), so it cannot be verified; export a run directory or one of its step-<N> directories",
                file.display()
            );
        }
        let verified = verify(&checkpoint, None).with_context(|| {
            format!(
                "checkpoint {} failed verification; export another checkpoint of the run (its step-<N> directories) or retrain",
                checkpoint.display()
            )
        })?;
        let config_path = find_run_config(&file)?;
        let config = Config::load(&config_path, &[])
            .with_context(|| format!("reading the run config {}", config_path.display()))?;
        let run_dir = config_path.parent().unwrap_or(Path::new(".")).to_path_buf();
        // verify() has checked the file against these.
        let recorded = &verified.state["files"][MODEL_FILE];
        let sha256 = recorded["sha256"].as_str().unwrap_or_default().to_string();
        let bytes = recorded["bytes"].as_u64().unwrap_or_default();
        let tensors = verified
            .files
            .get(MODEL_FILE)
            .with_context(|| format!("{} holds no {MODEL_FILE}", checkpoint.display()))?;
        let mut weights = BTreeMap::new();
        for t in tensors {
            if t.dtype != Dtype::F32 {
                bail!(
                    "{}: tensor {} is {:?}; Kiln exports float32 checkpoints",
                    file.display(),
                    t.name,
                    t.dtype
                );
            }
            let values = t
                .data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            weights.insert(t.name.clone(), (t.shape.clone(), values));
        }
        Ok(Source {
            config,
            run_dir,
            checkpoint,
            step: verified.step,
            sha256,
            bytes,
            weights,
        })
    }
}
