//! LoRA adapters in PEFT's layout: `adapter_config.json` and `adapter_model.safetensors`, which
//! `peft.PeftModel.from_pretrained(base, dir)` puts on the Hugging Face base model.
//!
//! PEFT keeps one adapter per `nn.Linear` (or GPT-2 `Conv1D`): `lora_A.weight` `[r, d_in]` and
//! `lora_B.weight` `[d_out, r]`, named `base_model.model.<module>.lora_A.weight`. Kiln's adapter
//! of a fused projection (`c_attn` `[q | k | v]`, a SwiGLU's `c_fc` `[gate | up]`) becomes one per
//! part that Llama has: the same `A`, and `B` cut by the part's columns, which computes exactly
//! the fused update. Which Kiln tensor each module reads comes from the architecture's table of
//! the base export, so the adapters land where the base weights did.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use kiln_models::GptShape;
use serde_json::json;

use crate::{hf_tensors, write_json, write_safetensors, Architecture, Source, Spec};

/// PEFT's adapter settings.
pub const PEFT_CONFIG_FILE: &str = "adapter_config.json";
/// PEFT's adapter weights.
pub const PEFT_WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// A LoRA fine-tune's settings, as PEFT records them.
#[derive(Clone, Debug)]
pub struct LoraSettings {
    /// The rank `r`.
    pub rank: usize,
    /// `alpha` (the update is scaled by `alpha / r`).
    pub alpha: f64,
    /// Dropout on each adapter's input while training.
    pub dropout: f64,
    /// `base_model_name_or_path`: the base's folder (or hub name).
    pub base: String,
}

/// Writes the adapters of a GPT of shape `s` (`adapters`: Kiln's `h.N.<layer>_lora.lora_a`
/// `[d_in, r]` and `lora_b` `[r, d_out]`, f32) to `dir` in PEFT's layout.
pub fn write_peft(
    dir: &Path,
    s: &GptShape,
    adapters: &BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    lora: &LoraSettings,
) -> Result<()> {
    let architecture = Architecture::of(s)?;
    let base = match architecture {
        Architecture::Gpt2 => crate::gpt2::specs(s),
        Architecture::Llama => crate::llama::specs(s),
    };
    let mut specs = Vec::new();
    let mut targets = Vec::new();
    for spec in base {
        let Some((module, layer, d_in, d_out, cols)) = linear_of(&spec) else {
            continue;
        };
        let a = format!("{layer}_lora.lora_a");
        if !adapters.contains_key(&a) {
            continue;
        }
        let name = format!("base_model.model.{module}");
        specs.push(Spec {
            name: format!("{name}.lora_A.weight"),
            shape: vec![lora.rank, d_in],
            source: Source::Transpose(a),
        });
        specs.push(Spec {
            name: format!("{name}.lora_B.weight"),
            shape: vec![cols.len(), lora.rank],
            source: Source::Columns {
                kiln: format!("{layer}_lora.lora_b"),
                d_out,
                cols,
            },
        });
        // The module's path below its block (`attn.c_proj`, `self_attn.q_proj`): unambiguous,
        // where GPT-2's bare `c_proj` would also name the MLP's.
        let target = module.splitn(4, '.').nth(3).unwrap_or(&module).to_string();
        if !targets.contains(&target) {
            targets.push(target);
        }
    }
    let tensors = hf_tensors(specs, adapters, || {
        format!("{architecture:?}'s LoRA adapters: PEFT")
    })?;
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    write_safetensors(&dir.join(PEFT_WEIGHTS_FILE), &tensors)?;
    let alpha = if lora.alpha.fract() == 0.0 {
        json!(lora.alpha as i64)
    } else {
        json!(lora.alpha)
    };
    let config = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": lora.base,
        "r": lora.rank,
        "lora_alpha": alpha,
        "lora_dropout": lora.dropout,
        "target_modules": targets,
        // GPT-2's Conv1D stores its weight [d_in, d_out].
        "fan_in_fan_out": architecture == Architecture::Gpt2,
        "bias": "none",
        "inference_mode": true,
        "init_lora_weights": true,
        "use_rslora": false,
        "use_dora": false,
        "modules_to_save": null,
        "layers_to_transform": null,
        "rank_pattern": {},
        "alpha_pattern": {},
    });
    write_json(&dir.join(PEFT_CONFIG_FILE), &config)
}

/// For a base tensor that is the weight of a linear module: the module's Hugging Face path,
/// Kiln's layer (`h.N.attn.c_attn`), its input width, Kiln's output width and the columns of
/// Kiln's output that the module computes.
fn linear_of(spec: &Spec) -> Option<(String, String, usize, usize, std::ops::Range<usize>)> {
    let module = spec.name.strip_suffix(".weight")?.to_string();
    let layer = |kiln: &str| Some(kiln.strip_suffix(".weight")?.to_string());
    let &[rows, columns] = spec.shape.as_slice() else {
        return None;
    };
    match &spec.source {
        // GPT-2's Conv1D: Kiln's layout `[d_in, d_out]`.
        Source::Copy(kiln) if kiln.starts_with("h.") => {
            Some((module, layer(kiln)?, rows, columns, 0..columns))
        }
        // An nn.Linear `[d_out, d_in]`.
        Source::Transpose(kiln) if kiln.starts_with("h.") => {
            Some((module, layer(kiln)?, columns, rows, 0..rows))
        }
        Source::Columns { kiln, d_out, cols } => {
            Some((module, layer(kiln)?, columns, *d_out, cols.clone()))
        }
        _ => None,
    }
}
