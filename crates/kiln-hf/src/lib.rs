//! Hugging Face model folders both ways.
//!
//! - Export ([`write_gpt2`], [`write_llama`]): a Kiln GPT as a folder that `transformers` loads
//!   as `GPT2LMHeadModel` or `LlamaForCausalLM` with its tokenizer (`AutoTokenizer`), giving
//!   Kiln's logits and token ids.
//! - Import ([`import`]): a GPT-2 or Llama folder (`config.json`, one or several safetensors
//!   files, f32/bf16/f16) as Kiln's `[model]` keys and checkpoint tensors, so that a run starts
//!   from pretrained weights (`model.init_from`).
//!
//! Both directions share one table per architecture ([`Spec`]): each Hugging Face tensor's name,
//! shape and where its values sit in Kiln's tensors.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::ops::Range;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use kiln_data::Tokenizer;
use kiln_models::GptShape;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::{json, Value};

mod gpt2;
pub mod import;
mod llama;
pub mod peft;

pub use gpt2::write_gpt2;
pub use llama::write_llama;

/// The Hugging Face architecture of a Kiln GPT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// `GPT2LMHeadModel`: LayerNorm, learned positions, GELU MLP, multi-head attention.
    Gpt2,
    /// `LlamaForCausalLM`: RMSNorm, RoPE, SwiGLU MLP.
    Llama,
}

impl Architecture {
    /// The architecture `s` is, or an error naming the keys when it is neither.
    pub fn of(s: &GptShape) -> Result<Self> {
        use kiln_models::{MlpKind, NormKind, PositionKind};
        match (s.norm, s.position, s.mlp) {
            (NormKind::RmsNorm, PositionKind::Rope, MlpKind::SwiGlu) => Ok(Self::Llama),
            (NormKind::LayerNorm, PositionKind::Learned, MlpKind::Gelu) => {
                ensure!(
                    s.n_kv_head == s.n_head,
                    "model.n_kv_head = {} of n_head = {}: GPT-2 has no grouped-query attention, so this model has no Hugging Face architecture; export it with --format kiln (or train it in Llama's style)",
                    s.n_kv_head,
                    s.n_head
                );
                Ok(Self::Gpt2)
            }
            (norm, position, mlp) => bail!(
                "model.norm = {norm:?}, position = {position:?}, mlp = {mlp:?} mix GPT-2's parts (layernorm, learned, gelu) and Llama's (rmsnorm, rope, swiglu), so this model has no Hugging Face architecture; export it with --format kiln"
            ),
        }
    }
}

/// Writes `shape`'s Hugging Face folder: `GPT2LMHeadModel` ([`write_gpt2`]) or
/// `LlamaForCausalLM` ([`write_llama`]), as its architecture is.
pub fn write_hf(
    dir: &Path,
    shape: &GptShape,
    weights: &BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    tokenizer: &Tokenizer,
) -> Result<()> {
    match Architecture::of(shape)? {
        Architecture::Gpt2 => write_gpt2(dir, shape, weights, tokenizer),
        Architecture::Llama => write_llama(dir, shape, weights, tokenizer),
    }
}

/// An untied LM head: Kiln's `lm_head` `[E, V]` as `lm_head.weight` `[V, E]`.
fn untied_head(vocab: usize, n_embd: usize) -> Spec {
    Spec {
        name: "lm_head.weight".into(),
        shape: vec![vocab, n_embd],
        source: Source::Transpose("lm_head".into()),
    }
}

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

/// A tensor of the Hugging Face checkpoint: name, shape, little-endian f32 bytes.
type HfTensor = (String, Vec<usize>, Vec<u8>);

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

#[cfg(test)]
mod tests;

/// The end-to-end check against transformers: tiny Kiln GPTs exported, then
/// `tests/python/check_hf.py` compares transformers' logits, tokens and greedy generation with
/// Kiln's. Needs the Python environment of `tests/python/setup.sh` (or `$KILN_PYTHON`):
///
/// `cargo test --release -p kiln-hf transformers -- --nocapture`
///
/// The folders stay in `$KILN_HF_CHECK_DIR` when it is set.
#[cfg(test)]
mod transformers_check;

/// Folders that transformers wrote, read by [`import`] (needs the same Python environment):
/// `cargo test --release -p kiln-hf import_check -- --nocapture`.
#[cfg(test)]
mod import_check;
