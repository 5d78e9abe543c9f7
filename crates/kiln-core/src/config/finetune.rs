//! `[finetune]`: fine-tuning a pretrained GPT (`model.init_from`) with LoRA adapters instead of
//! all of its weights. Absent, every parameter trains (and the section stays out of
//! `config.toml` and the config hash); present, its keys are part of the hash.

use serde::{Deserialize, Serialize};

/// The projections an adapter can sit on, by the names checkpoints give their weights.
pub const LORA_TARGETS: [&str; 4] = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"];

/// `[finetune]`: LoRA (Hu et al., 2021) on a GPT started from `model.init_from`. The base
/// weights stay frozen; only the adapters train, and checkpoints hold only them (with the sha256
/// of the base they belong to).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FinetuneSection {
    /// `finetune.lora_rank` (required, at least 1): the rank `r` of each adapter `A B`.
    pub lora_rank: usize,
    /// `finetune.lora_alpha` (default: the rank): the update is scaled by `alpha / r`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora_alpha: Option<f64>,
    /// `finetune.lora_dropout` (default 0, in [0, 1)): dropout on each adapter's input while
    /// training.
    #[serde(default)]
    pub lora_dropout: f64,
    /// `finetune.target_modules` (default: all four): the projections adapted in every block,
    /// of `"attn.c_attn"` (queries, keys and values), `"attn.c_proj"`, `"mlp.c_fc"` and
    /// `"mlp.c_proj"` ([`LORA_TARGETS`]).
    #[serde(default = "all_targets")]
    pub target_modules: Vec<String>,
}

fn all_targets() -> Vec<String> {
    LORA_TARGETS.iter().map(|s| s.to_string()).collect()
}

impl FinetuneSection {
    /// `lora_alpha`, defaulting to the rank (a scale of 1).
    pub fn alpha(&self) -> f64 {
        self.lora_alpha.unwrap_or(self.lora_rank as f64)
    }

    /// The key and reason of the first invalid value, if any.
    pub(super) fn problem(&self) -> Option<(&'static str, String)> {
        if self.lora_rank == 0 {
            return Some(("finetune.lora_rank", "must be at least 1".into()));
        }
        if !self.alpha().is_finite() || self.alpha() <= 0.0 {
            return Some(("finetune.lora_alpha", "must be a positive number".into()));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Some(("finetune.lora_dropout", "must be in [0, 1)".into()));
        }
        let t = &self.target_modules;
        if t.is_empty() {
            return Some((
                "finetune.target_modules",
                format!("must name at least one of {LORA_TARGETS:?}"),
            ));
        }
        for (i, name) in t.iter().enumerate() {
            if !LORA_TARGETS.contains(&name.as_str()) {
                return Some((
                    "finetune.target_modules",
                    format!("{name:?} is not a projection of Kiln's GPT; use {LORA_TARGETS:?}"),
                ));
            }
            if t[..i].contains(name) {
                return Some((
                    "finetune.target_modules",
                    format!("{name:?} is named twice"),
                ));
            }
        }
        None
    }
}
