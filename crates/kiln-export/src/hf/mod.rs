//! Hugging Face export of Kiln's GPT: a folder that `transformers` loads as a `GPT2LMHeadModel`
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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::ops::Range;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use kiln_data::Tokenizer;
use kiln_models::GeluForm;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::{json, Value};

/// The weights, with GPT-2's tensor names and layouts.
pub const HF_WEIGHTS_FILE: &str = "model.safetensors";
/// The model's `GPT2Config`.
pub const HF_CONFIG_FILE: &str = "config.json";
/// The tokenizer (the character one as a `tokenizers` WordLevel model).
pub const HF_TOKENIZER_FILE: &str = "tokenizer.json";
/// `AutoTokenizer`'s settings.
pub const HF_TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
/// The special tokens (the unknown token).
pub const HF_SPECIAL_TOKENS_FILE: &str = "special_tokens_map.json";
/// `generate`'s defaults.
pub const HF_GENERATION_CONFIG_FILE: &str = "generation_config.json";

/// The WordLevel model's unknown token: more than one character, so no vocabulary entry.
const UNK_TOKEN: &str = "<unk>";

/// The shape of a Kiln GPT, as the Hugging Face config needs it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gpt2Shape {
    /// Rows of `wte` (the tokenizer's size, or more when the model pads it).
    pub vocab_size: usize,
    /// Rows of `wpe` (Kiln's `block_size`).
    pub n_positions: usize,
    /// The width of the residual stream.
    pub n_embd: usize,
    /// Transformer blocks.
    pub n_layer: usize,
    /// Attention heads per block.
    pub n_head: usize,
    /// Whether the linear layers and LayerNorms have biases.
    pub bias: bool,
    /// Whether the LM head is `wte` (no `lm_head` tensor).
    pub tie_weights: bool,
    /// The MLP's GELU.
    pub gelu: GeluForm,
    /// The LayerNorms' epsilon (`model.norm_epsilon`; GPT-2's is 1e-5).
    pub layer_norm_epsilon: f64,
}

/// Writes a Hugging Face GPT-2 folder to `dir` (created if needed): `config.json`,
/// `model.safetensors` (GPT-2 names), `tokenizer.json`, `tokenizer_config.json`,
/// `special_tokens_map.json` and `generation_config.json`.
///
/// `weights`: Kiln's GPT tensors by checkpoint name, f32 (shape, values), exactly those of
/// `shape`; `tokenizer`: the run's.
pub fn write_gpt2(
    dir: &Path,
    shape: &Gpt2Shape,
    weights: &BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    tokenizer: &Tokenizer,
) -> Result<()> {
    check_shape(shape)?;
    check_vocab(shape.vocab_size, tokenizer)?;
    let tensors = gpt2_tensors(shape, weights)?;
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    write_safetensors(&dir.join(HF_WEIGHTS_FILE), &tensors)?;
    write_json(&dir.join(HF_CONFIG_FILE), &config_json(shape))?;
    write_tokenizer_files(dir, tokenizer, shape.n_positions, shape.vocab_size)
}

/// `tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json` and
/// `generation_config.json` of a model of `vocab_size` rows and `n_positions` of context.
fn write_tokenizer_files(
    dir: &Path,
    tokenizer: &Tokenizer,
    n_positions: usize,
    vocab_size: usize,
) -> Result<()> {
    let tokenizer_json = match tokenizer {
        Tokenizer::Char(chars) => char_tokenizer_json(chars.chars()),
        Tokenizer::Subword(subword) => subword.to_json(),
    };
    write_json(&dir.join(HF_TOKENIZER_FILE), &tokenizer_json)?;
    write_json(
        &dir.join(HF_TOKENIZER_CONFIG_FILE),
        &tokenizer_config_json(n_positions),
    )?;
    write_json(&dir.join(HF_SPECIAL_TOKENS_FILE), &json!({}))?;
    write_json(
        &dir.join(HF_GENERATION_CONFIG_FILE),
        &generation_config_json(vocab_size, tokenizer.vocab_size()),
    )
}

fn check_shape(s: &Gpt2Shape) -> Result<()> {
    for (name, v) in [
        ("vocab_size", s.vocab_size),
        ("n_positions", s.n_positions),
        ("n_embd", s.n_embd),
        ("n_layer", s.n_layer),
        ("n_head", s.n_head),
    ] {
        ensure!(v > 0, "cannot export a GPT with {name} = 0");
    }
    ensure!(
        s.n_embd.is_multiple_of(s.n_head),
        "n_embd = {} is not divisible by n_head = {}",
        s.n_embd,
        s.n_head
    );
    Ok(())
}

/// A tokenizer is never empty and a character one has no repeated character (both checked when
/// it is built); what is left is that the model has a row for every token.
fn check_vocab(vocab_size: usize, tokenizer: &Tokenizer) -> Result<()> {
    ensure!(
        tokenizer.vocab_size() <= vocab_size,
        "the tokenizer has {} tokens but the model only {} vocabulary rows",
        tokenizer.vocab_size(),
        vocab_size
    );
    Ok(())
}

/// Where a Hugging Face tensor's values come from.
enum Source {
    /// Kiln's tensor of this name, as it is.
    Copy(String),
    /// Kiln's 2-D tensor of this name, transposed.
    Transpose(String),
    /// Columns `cols` of Kiln's linear weight `[d_in, d_out]` of this name, transposed to
    /// `[cols.len(), d_in]` (a PyTorch `nn.Linear` weight cut from Kiln's fused projection).
    Columns {
        kiln: String,
        d_out: usize,
        cols: Range<usize>,
    },
    /// Elements `range` of Kiln's 1-D tensor of this name, of `len` elements (a bias cut from a
    /// fused projection's).
    Slice {
        kiln: String,
        len: usize,
        range: Range<usize>,
    },
    /// Zeros (a bias Kiln's model does not have).
    Zeros,
}

impl Source {
    /// The Kiln tensor it reads, if any.
    fn kiln(&self) -> Option<&str> {
        match self {
            Source::Copy(k) | Source::Transpose(k) => Some(k),
            Source::Columns { kiln, .. } | Source::Slice { kiln, .. } => Some(kiln),
            Source::Zeros => None,
        }
    }
}

/// One tensor of the Hugging Face checkpoint: its name, shape and source.
struct Spec {
    name: String,
    shape: Vec<usize>,
    source: Source,
}

/// Every tensor of the GPT-2 checkpoint of `s`, in the order GPT-2 lists them.
fn specs(s: &Gpt2Shape) -> Vec<Spec> {
    let (v, t, e) = (s.vocab_size, s.n_positions, s.n_embd);
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
        linear(&mut out, &h, &k, e, 4 * e);
        let (h, k) = mlp("c_proj");
        linear(&mut out, &h, &k, 4 * e, e);
    }
    norm(&mut out, "transformer.ln_f", "ln_f");
    if !s.tie_weights {
        out.push(Spec {
            name: "lm_head.weight".into(),
            shape: vec![v, e],
            source: Source::Transpose("lm_head".into()),
        });
    }
    out
}

/// A tensor of the Hugging Face checkpoint: name, shape, little-endian f32 bytes.
type HfTensor = (String, Vec<usize>, Vec<u8>);

/// Maps Kiln's tensors to GPT-2's, checking that each expected one is there with its shape and
/// that none is left over.
fn gpt2_tensors(
    s: &Gpt2Shape,
    weights: &BTreeMap<String, (Vec<usize>, Vec<f32>)>,
) -> Result<Vec<HfTensor>> {
    hf_tensors(specs(s), weights, || {
        format!(
            "a GPT with bias = {}, tie_weights = {}, n_layer = {}: GPT-2",
            s.bias, s.tie_weights, s.n_layer
        )
    })
}

/// The tensors of `specs` from Kiln's `weights`, checking that each source is there with its
/// shape and that none is left over (`model` describes the target in that message).
fn hf_tensors(
    specs: Vec<Spec>,
    weights: &BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    model: impl Fn() -> String,
) -> Result<Vec<HfTensor>> {
    let mut used = BTreeSet::new();
    let mut out = Vec::new();
    for spec in specs {
        let values = match &spec.source {
            Source::Zeros => vec![0.0; spec.shape.iter().product()],
            Source::Copy(kiln) => kiln_tensor(weights, kiln, &spec.shape, &spec.name)?.to_vec(),
            Source::Transpose(kiln) => {
                let [rows, cols] = [spec.shape[0], spec.shape[1]];
                let t = kiln_tensor(weights, kiln, &[cols, rows], &spec.name)?;
                transpose(t, cols, rows)
            }
            Source::Columns { kiln, d_out, cols } => {
                let d_in = spec.shape[1];
                let t = kiln_tensor(weights, kiln, &[d_in, *d_out], &spec.name)?;
                let mut values = Vec::with_capacity(cols.len() * d_in);
                for c in cols.clone() {
                    values.extend((0..d_in).map(|r| t[r * d_out + c]));
                }
                values
            }
            Source::Slice { kiln, len, range } => {
                kiln_tensor(weights, kiln, &[*len], &spec.name)?[range.clone()].to_vec()
            }
        };
        if let Some(kiln) = spec.source.kiln() {
            used.insert(kiln.to_string());
        }
        let bytes = values.iter().flat_map(|x| x.to_le_bytes()).collect();
        out.push((spec.name, spec.shape, bytes));
    }
    let left: Vec<&str> = weights
        .keys()
        .filter(|k| !used.contains(*k))
        .map(String::as_str)
        .collect();
    if !left.is_empty() {
        bail!(
            "unexpected tensor(s) {} in the weights of {} has no place for them",
            left.join(", "),
            model()
        );
    }
    Ok(out)
}

/// The values of Kiln's tensor `name`, which must have `shape` (for GPT-2's tensor `hf`).
fn kiln_tensor<'a>(
    weights: &'a BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    name: &str,
    shape: &[usize],
    hf: &str,
) -> Result<&'a [f32]> {
    let Some((have, values)) = weights.get(name) else {
        bail!("the GPT's weights have no tensor {name} (shape {shape:?}, exported as {hf})");
    };
    ensure!(
        have == shape,
        "tensor {name} has shape {have:?}, expected {shape:?} (exported as {hf})"
    );
    ensure!(
        values.len() == shape.iter().product::<usize>(),
        "tensor {name} holds {} values but its shape {shape:?} has {}",
        values.len(),
        shape.iter().product::<usize>()
    );
    Ok(values)
}

/// `[rows, cols]` row-major -> `[cols, rows]` row-major.
fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = x[r * cols + c];
        }
    }
    out
}

fn write_safetensors(path: &Path, tensors: &[HfTensor]) -> Result<()> {
    let views = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            Ok((
                name.as_str(),
                TensorView::new(Dtype::F32, shape.clone(), bytes)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    // transformers refuses safetensors files whose metadata names no known format.
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(metadata), path)
        .with_context(|| format!("cannot write {}", path.display()))
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// `config.json`: a `GPT2Config` of the model, without dropout and without special tokens.
fn config_json(s: &Gpt2Shape) -> Value {
    json!({
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": s.vocab_size,
        "n_positions": s.n_positions,
        "n_ctx": s.n_positions,
        "n_embd": s.n_embd,
        "n_layer": s.n_layer,
        "n_head": s.n_head,
        "n_inner": null,
        "activation_function": match s.gelu {
            GeluForm::Exact => "gelu",
            GeluForm::Tanh => "gelu_new",
        },
        "layer_norm_epsilon": s.layer_norm_epsilon,
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

/// `tokenizer.json` of a character tokenizer: one token per character, ids as Kiln's, decoded by
/// plain concatenation.
fn char_tokenizer_json(vocab: &[char]) -> Value {
    let ids: serde_json::Map<String, Value> = vocab
        .iter()
        .enumerate()
        .map(|(id, c)| (c.to_string(), json!(id)))
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {
            "type": "Split",
            "pattern": { "Regex": "[\\s\\S]" },
            "behavior": "Isolated",
            "invert": false,
        },
        "post_processor": null,
        "decoder": { "type": "Fuse" },
        "model": { "type": "WordLevel", "vocab": ids, "unk_token": UNK_TOKEN },
    })
}

/// `tokenizer_config.json`: the fast tokenizer of `tokenizer.json`, no special tokens, no
/// cleanup of spaces when decoding.
fn tokenizer_config_json(n_positions: usize) -> Value {
    json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": n_positions,
        "clean_up_tokenization_spaces": false,
        "added_tokens_decoder": {},
        "model_input_names": ["input_ids", "attention_mask"],
    })
}

/// `generation_config.json`: no special tokens (GPT-2's defaults name token 50256), and the
/// padded vocabulary rows `tokenizer_size..vocab_size` suppressed, as Kiln's sampler skips them.
fn generation_config_json(vocab_size: usize, tokenizer_size: usize) -> Value {
    let mut config = json!({
        "bos_token_id": null,
        "eos_token_id": null,
        "pad_token_id": null,
    });
    if tokenizer_size < vocab_size {
        let padded: Vec<usize> = (tokenizer_size..vocab_size).collect();
        config["suppress_tokens"] = json!(padded);
    }
    config
}

mod llama;
#[cfg(test)]
mod tests;

pub use llama::{is_llama, write_llama};

/// The end-to-end check against transformers: tiny Kiln GPTs exported, then
/// `tests/python/check_hf.py` compares transformers' logits, tokens and greedy generation with
/// Kiln's. Needs the Python environment of `tests/python/setup.sh` (or `$KILN_PYTHON`):
///
/// `cargo test --release -p kiln-export transformers -- --nocapture`
///
/// The folders stay in `$KILN_HF_CHECK_DIR` when it is set.
#[cfg(test)]
mod transformers_check;
