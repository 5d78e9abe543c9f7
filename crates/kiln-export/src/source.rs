//! The checkpoint an export starts from: found from a run directory, a step directory or its
//! `model.safetensors`, and verified against its `state.json` before anything is read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kiln_checkpoint::layout::{MODEL_FILE, STATE_FILE};
use kiln_checkpoint::verify;
use kiln_core::config::FinetuneSection;
use kiln_core::rundir::{find_run_config, resolve_weights};
use kiln_core::Config;
use safetensors::Dtype;

use crate::model::HostWeights;

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
    /// Every model tensor by burn-store name: shape and values. For a LoRA fine-tune, the base
    /// with the adapters merged in (`W + alpha/r A B`): a plain GPT.
    pub weights: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    /// A LoRA fine-tune's adapters and base (its `[finetune]` is then taken out of `config`,
    /// which describes the merged model).
    pub lora: Option<LoraSource>,
}

/// What a LoRA fine-tune's checkpoint adds to its base.
pub struct LoraSource {
    /// The run's `[finetune]` section.
    pub finetune: FinetuneSection,
    /// The adapters (`h.N.<layer>_lora.lora_a`, `lora_b`), as the checkpoint holds them.
    pub adapters: HostWeights,
    /// `model.init_from`: the base's folder.
    pub init_from: String,
    /// sha256 of the base's weights, as the checkpoint recorded it (and checked).
    pub base_sha256: String,
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
        let mut config = config;
        let (weights, lora) = match kiln_infer::base::lora_base(&config, &file)? {
            None => (weights, None),
            Some(base) => {
                let finetune = config.finetune.take().unwrap_or_else(|| unreachable!());
                let scale = (finetune.alpha() / finetune.lora_rank as f64) as f32;
                let merged = merge_lora(base, &weights, scale)
                    .with_context(|| format!("merging the adapters of {}", file.display()))?;
                let lora = LoraSource {
                    finetune,
                    init_from: config.model.0["init_from"]
                        .as_str()
                        .unwrap_or_default()
                        .into(),
                    base_sha256: verified.state["base"]["sha256"]
                        .as_str()
                        .unwrap_or_default()
                        .into(),
                    adapters: weights,
                };
                (merged, Some(lora))
            }
        };
        Ok(Source {
            config,
            run_dir,
            checkpoint,
            step: verified.step,
            sha256,
            bytes,
            weights,
            lora,
        })
    }
}

/// The base's weights with each adapter folded into its layer: `W + scale A B` for `W`
/// `[d_in, d_out]`, `A` `[d_in, r]`, `B` `[r, d_out]`.
fn merge_lora(mut weights: HostWeights, adapters: &HostWeights, scale: f32) -> Result<HostWeights> {
    for (name, (shape, a)) in adapters {
        if name.ends_with("_lora.lora_b") {
            continue;
        }
        let Some(layer) = name.strip_suffix("_lora.lora_a") else {
            bail!("tensor {name} is not a LoRA adapter's");
        };
        let b_name = format!("{layer}_lora.lora_b");
        let (b_shape, b) = adapters
            .get(&b_name)
            .with_context(|| format!("{name} has no {b_name}"))?;
        let (w_shape, w) = weights
            .get_mut(&format!("{layer}.weight"))
            .with_context(|| format!("the base has no {layer}.weight for {name}"))?;
        let (&[d_in, r], &[r_b, d_out]) = (shape.as_slice(), b_shape.as_slice()) else {
            bail!("{name} and {b_name} must be matrices");
        };
        if r != r_b || w_shape.as_slice() != [d_in, d_out] {
            bail!(
                "{name} {shape:?} and {b_name} {b_shape:?} do not fit {layer}.weight {w_shape:?}"
            );
        }
        for i in 0..d_in {
            let row = &mut w[i * d_out..(i + 1) * d_out];
            for k in 0..r {
                let aik = a[i * r + k] * scale;
                for (wj, bj) in row.iter_mut().zip(&b[k * d_out..(k + 1) * d_out]) {
                    *wj += aik * bj;
                }
            }
        }
    }
    Ok(weights)
}
