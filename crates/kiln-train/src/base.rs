//! The pretrained base of a LoRA fine-tune (`[finetune]` with `model.init_from`): its
//! checkpoints hold only the adapters, so each names the base they belong to by the sha256 of
//! its weights, and a resumed run refuses a base that has changed.

use std::path::Path;

use anyhow::{bail, Context, Result};
use kiln_core::Config;
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

/// Refuses to resume adapters on a base other than the one the checkpoint recorded.
pub fn check_resume(recorded: Option<&BaseRef>, now: Option<&BaseRef>) -> Result<()> {
    match (recorded, now) {
        (Some(was), Some(now)) if was.sha256 != now.sha256 => bail!(
            "the base model in {} has changed: its weights have sha256 {}, the checkpoint's adapters were trained on {} (from {}); restore that base, or start a new run",
            now.init_from,
            now.sha256,
            was.sha256,
            was.init_from
        ),
        (None, Some(_)) => bail!(
            "the checkpoint holds no LoRA base, but the config has [finetune]: it was written by a run that trained every weight; remove [finetune] to resume it"
        ),
        _ => Ok(()),
    }
}
