//! Hugging Face export of a GPT-2-style Kiln GPT: a folder that `transformers` loads as a `GPT2LMHeadModel`
//! with its tokenizer (`AutoTokenizer`), giving the same logits and the same token ids as Kiln.
//!
//! Kiln's GPT is GPT-2's architecture and its linear weights are `[d_in, d_out]`, exactly the
//! layout of GPT-2's `Conv1D`, so the tensors copy as they are under GPT-2's names:
//!
//! - `wte.weight`, `wpe.weight` -> `transformer.wte.weight`, `transformer.wpe.weight`;
//! - `h.N.ln_1.gamma` / `beta` -> `transformer.h.N.ln_1.weight` / `bias` (`ln_2`, `ln_f` alike);
//! - `h.N.attn.c_attn.weight` / `bias` -> `transformer.h.N.attn.c_attn.weight` / `bias`
//!   (`attn.c_proj`, `mlp.c_fc`, `mlp.c_proj` alike);
//! - `lm_head` `[E, V]` (untied head) -> `lm_head.weight` `[V, E]`, transposed.
//!
//! A tied head writes no `lm_head.weight` (`tie_word_embeddings` makes transformers reuse
//! `wte`). GPT-2 always has biases: a Kiln model without them (`bias = false`) gets zero biases,
//! which compute the same. The activation is the model's: `"gelu"`, the exact erf GELU in
//! transformers' `ACT2FN`, or for `model.gelu = "tanh"` GPT-2's own `"gelu_new"`, the tanh
//! approximation.
//!
//! The tokenizer is a `tokenizers` WordLevel model over Kiln's characters: the pre-tokenizer
//! splits the text into single characters (regex `[\s\S]`, so line breaks too), each character
//! maps to its Kiln id and the `Fuse` decoder joins tokens with nothing in between. There are no
//! special tokens. The WordLevel model needs an `unk_token`; it is `<unk>`, a string that is in
//! no vocabulary entry, so no id moves and, as with Kiln's own tokenizer, encoding a character
//! outside the vocabulary is an error. Ids of padded vocabulary rows (`vocab_size` above the
//! tokenizer's size) decode to nothing; `generation_config.json` suppresses them, as Kiln's
//! sampler never draws them.
//!
//! A run trained with a subword tokenizer (`data.tokenizer`, e.g. from `kiln tokenize --bpe`)
//! exports that `tokenizer.json` as it is: transformers' fast tokenizer is the same library.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use kiln_data::Tokenizer;
use kiln_models::{GeluForm, GptShape};
use serde_json::{json, Value};

use crate::{
    check_vocab, hf_tensors, untied_head, write_json, write_safetensors, write_tokenizer_files,
    Architecture, HfTensor, Source, Spec, HF_CONFIG_FILE, HF_WEIGHTS_FILE,
};

/// Writes a Hugging Face GPT-2 folder to `dir` (created if needed): `config.json`,
/// `model.safetensors` (GPT-2 names), `tokenizer.json`, `tokenizer_config.json`,
/// `special_tokens_map.json` and `generation_config.json`.
///
/// `shape` must be GPT-2's architecture ([`Architecture::of`]); `weights`: Kiln's GPT tensors by
/// checkpoint name, f32 (shape, values), exactly those of `shape`; `tokenizer`: the run's.
pub fn write_gpt2(
    dir: &Path,
    shape: &GptShape,
    weights: &BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    tokenizer: &Tokenizer,
) -> Result<()> {
    ensure!(
        Architecture::of(shape)? == Architecture::Gpt2,
        "a GPT-2 export of a Llama-style model: use write_llama"
    );
    check_vocab(shape.vocab_size, tokenizer)?;
    let tensors = gpt2_tensors(shape, weights)?;
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    write_safetensors(&dir.join(HF_WEIGHTS_FILE), &tensors)?;
    write_json(&dir.join(HF_CONFIG_FILE), &config_json(shape))?;
    write_tokenizer_files(dir, tokenizer, shape.block_size, shape.vocab_size)
}

/// Every tensor of the GPT-2 checkpoint of `s`, in the order GPT-2 lists them.
pub(crate) fn specs(s: &GptShape) -> Vec<Spec> {
    let (v, t, e, hidden) = (s.vocab_size, s.block_size, s.n_embd, s.mlp_hidden);
    let mut out = Vec::new();
    let mut copy = |name: String, kiln: String, shape: Vec<usize>| {
        out.push(Spec {
            name,
            shape,
            source: Source::Copy(kiln),
        })
    };
    copy(
        "transformer.wte.weight".into(),
        "wte.weight".into(),
        vec![v, e],
    );
    copy(
        "transformer.wpe.weight".into(),
        "wpe.weight".into(),
        vec![t, e],
    );
    let bias_source = |kiln: String| {
        if s.bias {
            Source::Copy(kiln)
        } else {
            Source::Zeros
        }
    };
    // A LayerNorm `kiln` of Kiln (gamma, beta) as GPT-2's `hf` (weight, bias).
    let norm = |out: &mut Vec<Spec>, hf: &str, kiln: &str| {
        out.push(Spec {
            name: format!("{hf}.weight"),
            shape: vec![e],
            source: Source::Copy(format!("{kiln}.gamma")),
        });
        out.push(Spec {
            name: format!("{hf}.bias"),
            shape: vec![e],
            source: bias_source(format!("{kiln}.beta")),
        });
    };
    // A linear layer `kiln` (`[d_in, d_out]`, the layout of GPT-2's Conv1D) as `hf`.
    let linear = |out: &mut Vec<Spec>, hf: &str, kiln: &str, d_in: usize, d_out: usize| {
        out.push(Spec {
            name: format!("{hf}.weight"),
            shape: vec![d_in, d_out],
            source: Source::Copy(format!("{kiln}.weight")),
        });
        out.push(Spec {
            name: format!("{hf}.bias"),
            shape: vec![d_out],
            source: bias_source(format!("{kiln}.bias")),
        });
    };
    for n in 0..s.n_layer {
        let (hf, kiln) = (format!("transformer.h.{n}"), format!("h.{n}"));
        norm(&mut out, &format!("{hf}.ln_1"), &format!("{kiln}.ln_1"));
        let attn = |l: &str| (format!("{hf}.attn.{l}"), format!("{kiln}.attn.{l}"));
        let (h, k) = attn("c_attn");
        linear(&mut out, &h, &k, e, 3 * e);
        let (h, k) = attn("c_proj");
        linear(&mut out, &h, &k, e, e);
        norm(&mut out, &format!("{hf}.ln_2"), &format!("{kiln}.ln_2"));
        let mlp = |l: &str| (format!("{hf}.mlp.{l}"), format!("{kiln}.mlp.{l}"));
        let (h, k) = mlp("c_fc");
        linear(&mut out, &h, &k, e, hidden);
        let (h, k) = mlp("c_proj");
        linear(&mut out, &h, &k, hidden, e);
    }
    norm(&mut out, "transformer.ln_f", "ln_f");
    if !s.tie_weights {
        out.push(untied_head(v, e));
    }
    out
}

/// Maps Kiln's tensors to GPT-2's, checking that each expected one is there with its shape and
/// that none is left over.
fn gpt2_tensors(
    s: &GptShape,
    weights: &BTreeMap<String, (Vec<usize>, Vec<f32>)>,
) -> Result<Vec<HfTensor>> {
    hf_tensors(specs(s), weights, || {
        format!(
            "a GPT with bias = {}, tie_weights = {}, n_layer = {}: GPT-2",
            s.bias, s.tie_weights, s.n_layer
        )
    })
}

/// `config.json`: a `GPT2Config` of the model, without dropout and without special tokens.
fn config_json(s: &GptShape) -> Value {
    json!({
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": s.vocab_size,
        "n_positions": s.block_size,
        "n_ctx": s.block_size,
        "n_embd": s.n_embd,
        "n_layer": s.n_layer,
        "n_head": s.n_head,
        "n_inner": (s.mlp_hidden != 4 * s.n_embd).then_some(s.mlp_hidden),
        "activation_function": match s.gelu {
            GeluForm::Exact => "gelu",
            GeluForm::Tanh => "gelu_new",
        },
        "layer_norm_epsilon": s.norm_epsilon,
        "initializer_range": 0.02,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "summary_first_dropout": 0.0,
        "scale_attn_weights": true,
        "scale_attn_by_inverse_layer_idx": false,
        "reorder_and_upcast_attn": false,
        "tie_word_embeddings": s.tie_weights,
        "use_cache": true,
        "bos_token_id": null,
        "eos_token_id": null,
        "pad_token_id": null,
        "torch_dtype": "float32",
    })
}
