//! The pretrained base of a LoRA fine-tune (`[finetune]` with `model.init_from`). Its checkpoints
//! hold only the adapters, so each names the base they belong to by the sha256 of its weights
//! (`base` in `state.json`); resuming, evaluating or exporting refuses a base that has changed.

use std::path::Path;

use anyhow::{bail, Context, Result};
use kiln_checkpoint::layout::STATE_FILE;
use kiln_core::Config;
use kiln_hf::import::KilnTensors;
use kiln_models::{GptShape, ModelConfig};
use serde::{Deserialize, Serialize};

/// The base a LoRA checkpoint's adapters were trained on (`base` in its `state.json`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BaseRef {
    /// `model.init_from` as the run's config gives it.
    pub init_from: String,
    /// sha256 of its weights files ([`kiln_hf::import::weights_sha256`]).
    pub sha256: String,
}

/// The base of a run with `[finetune]`, hashed now; `None` for other runs.
pub fn base_of(config: &Config) -> Result<Option<BaseRef>> {
    if config.finetune.is_none() {
        return Ok(None);
    }
    let init_from = config
        .model
        .0
        .get("init_from")
        .and_then(toml::Value::as_str)
        .context("finetune: LoRA needs model.init_from (the base model's folder)")?
        .to_string();
    let sha256 = kiln_hf::import::weights_sha256(Path::new(&init_from))
        .with_context(|| format!("reading the base model of model.init_from = {init_from:?}"))?;
    Ok(Some(BaseRef { init_from, sha256 }))
}

/// Refuses adapters (of `whose`: a checkpoint) on a base other than the one `recorded` names.
pub fn check_base(recorded: Option<&BaseRef>, now: Option<&BaseRef>, whose: &str) -> Result<()> {
    match (recorded, now) {
        (Some(was), Some(now)) if was.sha256 != now.sha256 => bail!(
            "the base model in {} has changed: its weights have sha256 {}, the adapters of {whose} were trained on {} (from {}); restore that base (or point model.init_from at it), or start a new run",
            now.init_from,
            now.sha256,
            was.sha256,
            was.init_from
        ),
        (None, Some(_)) => bail!(
            "{whose} holds no LoRA base, but the config has [finetune]: it was written by a run that trained every weight; remove [finetune] to use it"
        ),
        _ => Ok(()),
    }
}

/// The base weights of the LoRA fine-tune whose checkpoint holds `weights_file`: the tensors of
/// the run's `model.init_from`, once its sha256 is checked against the one the checkpoint's
/// `state.json` records. `None` for a run without `[finetune]`.
pub fn lora_base(config: &Config, weights_file: &Path) -> Result<Option<KilnTensors>> {
    let Some(now) = base_of(config)? else {
        return Ok(None);
    };
    let state_file = weights_file.with_file_name(STATE_FILE);
    let recorded: Option<BaseRef> = std::fs::read_to_string(&state_file)
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|state| serde_json::from_value(state.get("base")?.clone()).ok());
    let whose = weights_file.display().to_string();
    if recorded.is_none() && !state_file.is_file() {
        bail!(
            "{whose} holds LoRA adapters, and their base is named by the sha256 in the {STATE_FILE} beside it, which does not exist; use a checkpoint directory of the run"
        );
    }
    check_base(recorded.as_ref(), Some(&now), &whose)?;
    let gpt = ModelConfig::of(config)?.gpt("[finetune]")?.clone();
    let vocab_size = gpt
        .vocab_size
        .context("model.vocab_size: missing in the run's config")?;
    let shape = GptShape::new(&gpt, vocab_size)?;
    Ok(Some(kiln_hf::import::read_weights(
        Path::new(&now.init_from),
        &shape,
    )?))
}
