//! Hugging Face export of a Llama-style Kiln GPT (`norm = "rmsnorm"`, `position = "rope"`,
//! `mlp = "swiglu"`): a folder that `transformers` loads as a `LlamaForCausalLM`.
//!
//! Kiln's linear weights are `[d_in, d_out]` and its projections fused; PyTorch's `nn.Linear`
//! weights are `[d_out, d_in]`, one per projection. So the fused ones are cut by columns and
//! each part transposed:
//!
//! - `wte.weight` -> `model.embed_tokens.weight`;
//! - `h.N.ln_1.gamma`, `h.N.ln_2.gamma` -> `model.layers.N.input_layernorm.weight`,
//!   `post_attention_layernorm.weight`; `ln_f.gamma` -> `model.norm.weight`;
//! - `h.N.attn.c_attn` `[q | k | v]` -> `self_attn.q_proj`, `k_proj`, `v_proj`
//!   (`n_kv_head` heads each for keys and values); `h.N.attn.c_proj` -> `self_attn.o_proj`;
//! - `h.N.mlp.c_fc` `[gate | up]` -> `mlp.gate_proj`, `mlp.up_proj`; `h.N.mlp.c_proj` ->
//!   `mlp.down_proj`;
//! - biases (`bias = true`) alike, as `attention_bias` and `mlp_bias`;
//! - `lm_head` `[E, V]` (untied head) -> `lm_head.weight` `[V, E]`.
//!
//! Kiln's RoPE rotates the halves of each head (`rotate_half`), as transformers' Llama does, so
//! queries and keys need no permutation.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use kiln_data::Tokenizer;
use kiln_models::GptShape;
use serde_json::{json, Value};

use crate::{
    check_vocab, hf_tensors, untied_head, write_json, write_safetensors, write_tokenizer_files,
    Architecture, Source, Spec, HF_CONFIG_FILE, HF_WEIGHTS_FILE,
};

/// Writes a Hugging Face Llama folder to `dir` (created if needed): `config.json`,
/// `model.safetensors` (Llama's names), and the tokenizer and generation files of the GPT-2
/// export.
///
/// `weights`: Kiln's GPT tensors by checkpoint name, f32 (shape, values), exactly those of `s`.
pub fn write_llama(
    dir: &Path,
    s: &GptShape,
    weights: &BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    tokenizer: &Tokenizer,
) -> Result<()> {
    ensure!(
        Architecture::of(s)? == Architecture::Llama,
        "a Llama export of a GPT-2-style model: use write_gpt2"
    );
    check_vocab(s.vocab_size, tokenizer)?;
    let tensors = hf_tensors(specs(s), weights, || {
        format!(
            "a Llama-style GPT with bias = {}, tie_weights = {}, n_layer = {}: Llama",
            s.bias, s.tie_weights, s.n_layer
        )
    })?;
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    write_safetensors(&dir.join(HF_WEIGHTS_FILE), &tensors)?;
    write_json(&dir.join(HF_CONFIG_FILE), &config_json(s))?;
    write_tokenizer_files(dir, tokenizer, s.block_size, s.vocab_size)
}

/// Every tensor of the Llama checkpoint of `s`.
pub(crate) fn specs(s: &GptShape) -> Vec<Spec> {
    let (v, e, hidden) = (s.vocab_size, s.n_embd, s.mlp_hidden);
    let kv = s.n_kv_head * s.head_dim();
    let mut out = Vec::new();
    let copy = |out: &mut Vec<Spec>, name: String, kiln: String, shape: Vec<usize>| {
        out.push(Spec {
            name,
            shape,
            source: Source::Copy(kiln),
        })
    };
    // Columns `from..to` of Kiln's linear layer `kiln` (`[d_in, d_out]`) as `hf`.
    let part = |out: &mut Vec<Spec>,
                hf: String,
                kiln: &str,
                d_in: usize,
                d_out: usize,
                from: usize,
                to: usize| {
        out.push(Spec {
            name: format!("{hf}.weight"),
            shape: vec![to - from, d_in],
            source: Source::Columns {
                kiln: format!("{kiln}.weight"),
                d_out,
                cols: from..to,
            },
        });
        if s.bias {
            out.push(Spec {
                name: format!("{hf}.bias"),
                shape: vec![to - from],
                source: Source::Slice {
                    kiln: format!("{kiln}.bias"),
                    len: d_out,
                    range: from..to,
                },
            });
        }
    };
    copy(
        &mut out,
        "model.embed_tokens.weight".into(),
        "wte.weight".into(),
        vec![v, e],
    );
    for n in 0..s.n_layer {
        let (hf, kiln) = (format!("model.layers.{n}"), format!("h.{n}"));
        copy(
            &mut out,
            format!("{hf}.input_layernorm.weight"),
            format!("{kiln}.ln_1.gamma"),
            vec![e],
        );
        let attn = format!("{kiln}.attn.c_attn");
        let width = s.qkv_width();
        part(
            &mut out,
            format!("{hf}.self_attn.q_proj"),
            &attn,
            e,
            width,
            0,
            e,
        );
        part(
            &mut out,
            format!("{hf}.self_attn.k_proj"),
            &attn,
            e,
            width,
            e,
            e + kv,
        );
        part(
            &mut out,
            format!("{hf}.self_attn.v_proj"),
            &attn,
            e,
            width,
            e + kv,
            width,
        );
        part(
            &mut out,
            format!("{hf}.self_attn.o_proj"),
            &format!("{kiln}.attn.c_proj"),
            e,
            e,
            0,
            e,
        );
        copy(
            &mut out,
            format!("{hf}.post_attention_layernorm.weight"),
            format!("{kiln}.ln_2.gamma"),
            vec![e],
        );
        let fc = format!("{kiln}.mlp.c_fc");
        part(
            &mut out,
            format!("{hf}.mlp.gate_proj"),
            &fc,
            e,
            2 * hidden,
            0,
            hidden,
        );
        part(
            &mut out,
            format!("{hf}.mlp.up_proj"),
            &fc,
            e,
            2 * hidden,
            hidden,
            2 * hidden,
        );
        part(
            &mut out,
            format!("{hf}.mlp.down_proj"),
            &format!("{kiln}.mlp.c_proj"),
            hidden,
            e,
            0,
            e,
        );
    }
    copy(
        &mut out,
        "model.norm.weight".into(),
        "ln_f.gamma".into(),
        vec![e],
    );
    if !s.tie_weights {
        out.push(untied_head(v, e));
    }
    out
}

/// `config.json`: a `LlamaConfig` of the model, without dropout and without special tokens.
/// RoPE's base is written both as transformers 5 reads it (`rope_parameters`) and as earlier
/// versions did (`rope_theta`).
fn config_json(s: &GptShape) -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": s.vocab_size,
        "hidden_size": s.n_embd,
        "intermediate_size": s.mlp_hidden,
        "num_hidden_layers": s.n_layer,
        "num_attention_heads": s.n_head,
        "num_key_value_heads": s.n_kv_head,
        "head_dim": s.head_dim(),
        "max_position_embeddings": s.block_size,
        "rms_norm_eps": s.norm_epsilon,
        "rope_theta": s.rope_theta,
        "rope_parameters": { "rope_type": "default", "rope_theta": s.rope_theta },
        "rope_scaling": null,
        "hidden_act": "silu",
        "attention_bias": s.bias,
        "mlp_bias": s.bias,
        "attention_dropout": 0.0,
        "pretraining_tp": 1,
        "tie_word_embeddings": s.tie_weights,
        "initializer_range": 0.02,
        "use_cache": true,
        "bos_token_id": null,
        "eos_token_id": null,
        "pad_token_id": null,
        "torch_dtype": "float32",
    })
}
