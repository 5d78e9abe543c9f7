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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use kiln_models::GeluForm;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::{json, Value};

/// The weights, with GPT-2's tensor names and layouts.
pub const HF_WEIGHTS_FILE: &str = "model.safetensors";
/// The model's `GPT2Config`.
pub const HF_CONFIG_FILE: &str = "config.json";
/// The character tokenizer as a `tokenizers` WordLevel model.
pub const HF_TOKENIZER_FILE: &str = "tokenizer.json";
/// `AutoTokenizer`'s settings.
pub const HF_TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
/// The special tokens (the unknown token).
pub const HF_SPECIAL_TOKENS_FILE: &str = "special_tokens_map.json";
/// `generate`'s defaults.
pub const HF_GENERATION_CONFIG_FILE: &str = "generation_config.json";

/// The WordLevel model's unknown token: more than one character, so no vocabulary entry.
const UNK_TOKEN: &str = "<unk>";

/// GPT's LayerNorm epsilon (Kiln's and GPT-2's).
const LAYER_NORM_EPSILON: f64 = 1e-5;

/// The shape of a Kiln GPT, as the Hugging Face config needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
}

/// Writes a Hugging Face GPT-2 folder to `dir` (created if needed): `config.json`,
/// `model.safetensors` (GPT-2 names), `tokenizer.json`, `tokenizer_config.json`,
/// `special_tokens_map.json` and `generation_config.json`.
///
/// `weights`: Kiln's GPT tensors by checkpoint name, f32 (shape, values), exactly those of
/// `shape`; `vocab`: the tokenizer's characters by id.
pub fn write_gpt2(
    dir: &Path,
    shape: &Gpt2Shape,
    weights: &BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    vocab: &[char],
) -> Result<()> {
    check_shape(shape)?;
    check_vocab(shape, vocab)?;
    let tensors = gpt2_tensors(shape, weights)?;
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    write_safetensors(&dir.join(HF_WEIGHTS_FILE), &tensors)?;
    write_json(&dir.join(HF_CONFIG_FILE), &config_json(shape))?;
    write_json(&dir.join(HF_TOKENIZER_FILE), &tokenizer_json(vocab))?;
    write_json(
        &dir.join(HF_TOKENIZER_CONFIG_FILE),
        &tokenizer_config_json(shape),
    )?;
    write_json(&dir.join(HF_SPECIAL_TOKENS_FILE), &json!({}))?;
    write_json(
        &dir.join(HF_GENERATION_CONFIG_FILE),
        &generation_config_json(shape, vocab.len()),
    )?;
    Ok(())
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

fn check_vocab(shape: &Gpt2Shape, vocab: &[char]) -> Result<()> {
    ensure!(!vocab.is_empty(), "the tokenizer's vocabulary is empty");
    ensure!(
        vocab.len() <= shape.vocab_size,
        "the tokenizer has {} characters but the model only {} vocabulary rows",
        vocab.len(),
        shape.vocab_size
    );
    let mut seen = HashMap::new();
    for (id, c) in vocab.iter().enumerate() {
        if let Some(first) = seen.insert(*c, id) {
            bail!("the tokenizer's vocabulary has {c:?} twice (ids {first} and {id})");
        }
    }
    Ok(())
}

/// Where a GPT-2 tensor's values come from.
enum Source {
    /// Kiln's tensor of this name, as it is.
    Copy(String),
    /// Kiln's 2-D tensor of this name, transposed.
    Transpose(String),
    /// Zeros (a bias Kiln's model does not have).
    Zeros,
}

/// One tensor of the GPT-2 checkpoint: its name, shape and source.
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

/// A tensor of the GPT-2 checkpoint: name, shape, little-endian f32 bytes.
type HfTensor = (String, Vec<usize>, Vec<u8>);

/// Maps Kiln's tensors to GPT-2's, checking that each expected one is there with its shape and
/// that none is left over.
fn gpt2_tensors(
    s: &Gpt2Shape,
    weights: &BTreeMap<String, (Vec<usize>, Vec<f32>)>,
) -> Result<Vec<HfTensor>> {
    let mut used = BTreeSet::new();
    let mut out = Vec::new();
    for spec in specs(s) {
        let values = match &spec.source {
            Source::Zeros => vec![0.0; spec.shape.iter().product()],
            Source::Copy(kiln) => kiln_tensor(weights, kiln, &spec.shape, &spec.name)?.to_vec(),
            Source::Transpose(kiln) => {
                let [rows, cols] = [spec.shape[0], spec.shape[1]];
                let t = kiln_tensor(weights, kiln, &[cols, rows], &spec.name)?;
                transpose(t, cols, rows)
            }
        };
        if let Source::Copy(kiln) | Source::Transpose(kiln) = spec.source {
            used.insert(kiln);
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
            "unexpected tensor(s) {} in the weights of a GPT with bias = {}, tie_weights = {}, n_layer = {}: GPT-2 has no place for them",
            left.join(", "),
            s.bias,
            s.tie_weights,
            s.n_layer
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
        "layer_norm_epsilon": LAYER_NORM_EPSILON,
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

/// `tokenizer.json`: one token per character, ids as Kiln's, decoded by plain concatenation.
fn tokenizer_json(vocab: &[char]) -> Value {
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
fn tokenizer_config_json(s: &Gpt2Shape) -> Value {
    json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": s.n_positions,
        "clean_up_tokenization_spaces": false,
        "added_tokens_decoder": {},
        "model_input_names": ["input_ids", "attention_mask"],
    })
}

/// `generation_config.json`: no special tokens (GPT-2's defaults name token 50256), and the
/// padded vocabulary rows `tokenizer_size..vocab_size` suppressed, as Kiln's sampler skips them.
fn generation_config_json(s: &Gpt2Shape, tokenizer_size: usize) -> Value {
    let mut config = json!({
        "bos_token_id": null,
        "eos_token_id": null,
        "pad_token_id": null,
    });
    if tokenizer_size < s.vocab_size {
        let padded: Vec<usize> = (tokenizer_size..s.vocab_size).collect();
        config["suppress_tokens"] = json!(padded);
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::SafeTensors;

    fn shape(bias: bool, tie_weights: bool) -> Gpt2Shape {
        Gpt2Shape {
            vocab_size: 7,
            n_positions: 5,
            n_embd: 4,
            n_layer: 2,
            n_head: 2,
            bias,
            tie_weights,
            gelu: GeluForm::Exact,
        }
    }

    /// Kiln's tensors of `s`, each filled with distinct values.
    fn kiln_weights(s: &Gpt2Shape) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
        let (v, t, e) = (s.vocab_size, s.n_positions, s.n_embd);
        let mut names = vec![
            ("wte.weight".to_string(), vec![v, e]),
            ("wpe.weight".to_string(), vec![t, e]),
        ];
        let norm = |names: &mut Vec<(String, Vec<usize>)>, n: &str| {
            names.push((format!("{n}.gamma"), vec![e]));
            if s.bias {
                names.push((format!("{n}.beta"), vec![e]));
            }
        };
        let linear = |names: &mut Vec<(String, Vec<usize>)>, n: &str, d_in, d_out| {
            names.push((format!("{n}.weight"), vec![d_in, d_out]));
            if s.bias {
                names.push((format!("{n}.bias"), vec![d_out]));
            }
        };
        for l in 0..s.n_layer {
            norm(&mut names, &format!("h.{l}.ln_1"));
            linear(&mut names, &format!("h.{l}.attn.c_attn"), e, 3 * e);
            linear(&mut names, &format!("h.{l}.attn.c_proj"), e, e);
            norm(&mut names, &format!("h.{l}.ln_2"));
            linear(&mut names, &format!("h.{l}.mlp.c_fc"), e, 4 * e);
            linear(&mut names, &format!("h.{l}.mlp.c_proj"), 4 * e, e);
        }
        norm(&mut names, "ln_f");
        if !s.tie_weights {
            names.push(("lm_head".to_string(), vec![e, v]));
        }
        names
            .into_iter()
            .enumerate()
            .map(|(i, (name, shape))| {
                let n: usize = shape.iter().product();
                let values = (0..n).map(|j| i as f32 * 1000.0 + j as f32).collect();
                (name, (shape, values))
            })
            .collect()
    }

    const VOCAB: [char; 5] = ['\n', ' ', 'a', 'é', '🙂'];

    fn read_json(path: &Path) -> Value {
        serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
    }

    fn f32s(bytes: &[u8]) -> Vec<f32> {
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    #[test]
    fn writes_gpt2_names_shapes_and_config() {
        for (bias, tie) in [(true, true), (true, false), (false, true), (false, false)] {
            // The tanh GELU with the untied head: each form is seen once with each head.
            let gelu = if tie { GeluForm::Exact } else { GeluForm::Tanh };
            let s = Gpt2Shape {
                gelu,
                ..shape(bias, tie)
            };
            let weights = kiln_weights(&s);
            let dir = tempfile::tempdir().unwrap();
            write_gpt2(dir.path(), &s, &weights, &VOCAB).unwrap();

            let bytes = fs::read(dir.path().join(HF_WEIGHTS_FILE)).unwrap();
            let st = SafeTensors::deserialize(&bytes).unwrap();
            let got: BTreeMap<String, Vec<usize>> = st
                .tensors()
                .into_iter()
                .map(|(n, t)| {
                    assert_eq!(t.dtype(), Dtype::F32, "{n}");
                    (n, t.shape().to_vec())
                })
                .collect();
            let mut want = BTreeMap::new();
            want.insert("transformer.wte.weight".to_string(), vec![7, 4]);
            want.insert("transformer.wpe.weight".to_string(), vec![5, 4]);
            for l in 0..2 {
                let p = format!("transformer.h.{l}");
                for (layer, d_in, d_out) in [
                    ("attn.c_attn", 4, 12),
                    ("attn.c_proj", 4, 4),
                    ("mlp.c_fc", 4, 16),
                    ("mlp.c_proj", 16, 4),
                ] {
                    want.insert(format!("{p}.{layer}.weight"), vec![d_in, d_out]);
                    want.insert(format!("{p}.{layer}.bias"), vec![d_out]);
                }
                for ln in ["ln_1", "ln_2"] {
                    want.insert(format!("{p}.{ln}.weight"), vec![4]);
                    want.insert(format!("{p}.{ln}.bias"), vec![4]);
                }
            }
            want.insert("transformer.ln_f.weight".to_string(), vec![4]);
            want.insert("transformer.ln_f.bias".to_string(), vec![4]);
            if !tie {
                want.insert("lm_head.weight".to_string(), vec![7, 4]);
            }
            assert_eq!(got, want, "bias {bias}, tie {tie}");

            // Values: copied as they are, biases zero without Kiln biases, the head transposed.
            let value = |n: &str| f32s(st.tensor(n).unwrap().data());
            assert_eq!(
                value("transformer.h.1.mlp.c_fc.weight"),
                weights["h.1.mlp.c_fc.weight"].1
            );
            assert_eq!(value("transformer.ln_f.weight"), weights["ln_f.gamma"].1);
            let c_attn_bias = value("transformer.h.0.attn.c_attn.bias");
            let ln_bias = value("transformer.h.0.ln_2.bias");
            if bias {
                assert_eq!(c_attn_bias, weights["h.0.attn.c_attn.bias"].1);
                assert_eq!(ln_bias, weights["h.0.ln_2.beta"].1);
            } else {
                assert_eq!(c_attn_bias, vec![0.0; 12]);
                assert_eq!(ln_bias, vec![0.0; 4]);
            }
            if !tie {
                let kiln = &weights["lm_head"].1; // [E=4, V=7]
                let hf = value("lm_head.weight"); // [V=7, E=4]
                for vi in 0..7 {
                    for ei in 0..4 {
                        assert_eq!(hf[vi * 4 + ei], kiln[ei * 7 + vi], "v {vi}, e {ei}");
                    }
                }
            }
            assert_eq!(st.names().len(), want.len());

            let config = read_json(&dir.path().join(HF_CONFIG_FILE));
            assert_eq!(config["model_type"], "gpt2");
            assert_eq!(config["architectures"], json!(["GPT2LMHeadModel"]));
            assert_eq!(config["vocab_size"], 7);
            assert_eq!(config["n_positions"], 5);
            assert_eq!(config["n_ctx"], 5);
            assert_eq!(config["n_embd"], 4);
            assert_eq!(config["n_layer"], 2);
            assert_eq!(config["n_head"], 2);
            assert_eq!(config["n_inner"], Value::Null);
            let activation = if tie { "gelu" } else { "gelu_new" };
            assert_eq!(config["activation_function"], activation);
            assert_eq!(config["layer_norm_epsilon"], 1e-5);
            assert_eq!(config["tie_word_embeddings"], tie);
            assert_eq!(config["scale_attn_weights"], true);
            assert_eq!(config["bos_token_id"], Value::Null);
            assert_eq!(config["eos_token_id"], Value::Null);
            for p in ["resid_pdrop", "embd_pdrop", "attn_pdrop"] {
                assert_eq!(config[p], 0.0, "{p}");
            }
            let generation = read_json(&dir.path().join(HF_GENERATION_CONFIG_FILE));
            assert_eq!(generation["suppress_tokens"], json!([5, 6]));
        }
    }

    #[test]
    fn tokenizer_maps_each_character_to_its_kiln_id() {
        let s = shape(true, true);
        let dir = tempfile::tempdir().unwrap();
        write_gpt2(dir.path(), &s, &kiln_weights(&s), &VOCAB).unwrap();
        let tok = read_json(&dir.path().join(HF_TOKENIZER_FILE));
        let vocab = tok["model"]["vocab"].as_object().unwrap();
        assert_eq!(vocab.len(), VOCAB.len());
        for (id, c) in VOCAB.iter().enumerate() {
            assert_eq!(vocab[&c.to_string()], id, "{c:?}");
        }
        assert_eq!(tok["model"]["type"], "WordLevel");
        assert!(!vocab.contains_key(tok["model"]["unk_token"].as_str().unwrap()));
        assert_eq!(tok["decoder"]["type"], "Fuse");
        assert_eq!(tok["normalizer"], Value::Null);
        let config = read_json(&dir.path().join(HF_TOKENIZER_CONFIG_FILE));
        assert_eq!(config["tokenizer_class"], "PreTrainedTokenizerFast");
        assert_eq!(config["model_max_length"], 5);
        assert_eq!(config["clean_up_tokenization_spaces"], false);
    }

    #[test]
    fn a_missing_misshapen_or_extra_tensor_is_named() {
        let s = shape(true, false);
        let dir = tempfile::tempdir().unwrap();
        let err = |weights: &BTreeMap<String, (Vec<usize>, Vec<f32>)>| {
            format!(
                "{:#}",
                write_gpt2(dir.path(), &s, weights, &VOCAB).unwrap_err()
            )
        };

        let mut missing = kiln_weights(&s);
        missing.remove("h.1.attn.c_proj.bias");
        let e = err(&missing);
        assert!(e.contains("h.1.attn.c_proj.bias"), "{e}");

        let mut no_head = kiln_weights(&s);
        no_head.remove("lm_head");
        let e = err(&no_head);
        assert!(e.contains("lm_head"), "{e}");

        let mut misshapen = kiln_weights(&s);
        misshapen.get_mut("wpe.weight").unwrap().0 = vec![4, 5];
        let e = err(&misshapen);
        assert!(e.contains("wpe.weight") && e.contains("[4, 5]"), "{e}");

        let mut extra = kiln_weights(&s);
        extra.insert("h.2.ln_1.gamma".into(), (vec![4], vec![1.0; 4]));
        let e = err(&extra);
        assert!(
            e.contains("unexpected") && e.contains("h.2.ln_1.gamma"),
            "{e}"
        );

        // Biases of a model declared without them are extra too.
        let e = format!(
            "{:#}",
            write_gpt2(dir.path(), &shape(false, false), &kiln_weights(&s), &VOCAB).unwrap_err()
        );
        assert!(
            e.contains("unexpected") && e.contains("h.0.attn.c_attn.bias"),
            "{e}"
        );

        let e = format!(
            "{:#}",
            write_gpt2(dir.path(), &s, &kiln_weights(&s), &['a'; 8]).unwrap_err()
        );
        assert!(e.contains("8 characters"), "{e}");
    }
}

/// The end-to-end check against transformers: tiny Kiln GPTs exported, then
/// `tests/python/check_hf.py` compares transformers' logits, tokens and greedy generation with
/// Kiln's. Needs the Python environment of `tests/python/setup.sh` (or `$KILN_PYTHON`):
///
/// `cargo test --release -p kiln-export transformers -- --nocapture`
///
/// The folders stay in `$KILN_HF_CHECK_DIR` when it is set.
#[cfg(test)]
mod transformers_check {
    use std::path::PathBuf;
    use std::process::Command;

    use burn::backend::Flex;
    use burn::module::{Module, ModuleMapper, Param};
    use burn::tensor::{Int, Tensor, TensorData};
    use burn_store::ModuleSnapshot;
    use kiln_core::config::Precision;
    use kiln_models::{Gpt, GptShape, HostInit};

    use super::*;

    type B = Flex;

    /// Adds normal noise to every parameter, so that biases and LayerNorms (zero and one at
    /// initialization) matter and the logits are far from uniform.
    struct Perturb(HostInit);

    impl ModuleMapper<B> for Perturb {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (id, tensor, mapper) = param.consume();
            let noise = self.0.normal_tensor(tensor.dims(), 0.3, &tensor.device());
            Param::from_mapped_value(id, tensor + noise, mapper)
        }
    }

    fn kiln_tensors(model: &Gpt<B>) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
        model
            .collect(None, None, true)
            .into_iter()
            .map(|s| {
                let data = s.to_data().expect("tensor data");
                let shape = data.shape.to_vec();
                (s.full_path(), (shape, data.to_vec::<f32>().expect("f32")))
            })
            .collect()
    }

    /// `[t, vocab]` logits of `ids`.
    fn logits(model: &Gpt<B>, ids: &[i64]) -> Vec<Vec<f32>> {
        let t = ids.len();
        let input = Tensor::<B, 2, Int>::from_data(
            TensorData::new(ids.to_vec(), [1, t]),
            &Default::default(),
        );
        let flat: Vec<f32> = model.forward(input).into_data().to_vec().expect("f32");
        flat.chunks(model.vocab_size).map(<[f32]>::to_vec).collect()
    }

    /// Kiln's greedy generation (`kiln generate --temperature 0`): the last `block_size` tokens
    /// as context, the argmax over the tokenizer's ids only.
    fn greedy(model: &Gpt<B>, prompt: &[i64], n: usize, usable: usize) -> Vec<i64> {
        let mut ids = prompt.to_vec();
        for _ in 0..n {
            let window = &ids[ids.len().saturating_sub(model.block_size)..];
            let last = logits(model, window).pop().expect("a position");
            let next = last[..usable]
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i)
                .expect("a token");
            ids.push(next as i64);
        }
        ids.split_off(prompt.len())
    }

    /// The export tests' Python (tests/python/setup.sh) and check_hf.py; `None` (the test is
    /// skipped) when there is none, unless CI requires it (`KILN_REQUIRE_PYTHON_TESTS`).
    fn python() -> Option<(PathBuf, PathBuf)> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let python = std::env::var_os("KILN_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target/pyenv/bin/python"));
        let ok = Command::new(&python)
            .args(["-c", "import transformers, torch"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            assert!(
                std::env::var_os("KILN_REQUIRE_PYTHON_TESTS").is_none(),
                "{} lacks torch/transformers: run bash tests/python/setup.sh",
                python.display()
            );
            eprintln!("SKIPPED: no Python with transformers (run bash tests/python/setup.sh)");
            return None;
        }
        Some((python, root.join("tests/python/check_hf.py")))
    }

    /// Weights perturbed far from initialization, so that every part (biases, LayerNorms, the
    /// GELU form) shows in the logits.
    #[test]
    fn transformers_gives_kilns_logits_tokens_and_generation() {
        let Some((python, script)) = python() else {
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        let out = std::env::var_os("KILN_HF_CHECK_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| tmp.path().to_path_buf());
        let mut vocab: Vec<char> = "\n !abczßé→中🙂".chars().collect();
        vocab.sort_unstable();
        let prompt = "a b\né→中🙂!ß";
        let ids: Vec<i64> = prompt
            .chars()
            .map(|c| vocab.iter().position(|&v| v == c).unwrap() as i64)
            .collect();
        // (name, bias, tie, padded vocab rows, block size, new tokens): the last two cases
        // generate past the context, as Kiln does on a window of the last block_size tokens.
        let (exact, tanh) = (GeluForm::Exact, GeluForm::Tanh);
        let cases = [
            ("tied_bias_padded", true, true, 4, 24, 10, exact),
            ("untied_nobias_padded", false, false, 3, 24, 12, tanh),
            ("untied_bias_cropped", true, false, 0, 12, 10, exact),
            ("tied_nobias_cropped_padded", false, true, 5, 14, 12, tanh),
        ];
        for (i, (name, bias, tie, pad, block, new, gelu)) in cases.into_iter().enumerate() {
            let shape = GptShape {
                vocab_size: vocab.len() + pad,
                n_layer: 2,
                n_head: 4,
                n_embd: 16,
                block_size: block,
                bias,
                tie_weights: tie,
                gelu,
            };
            let device = Default::default();
            let model = Gpt::<B>::new(
                shape,
                0.0,
                Precision::F32,
                &mut HostInit::new(i as u64),
                &device,
            )
            .map(&mut Perturb(HostInit::new(100 + i as u64)));
            // The other GELU form moves the logits well past check_hf.py's tolerance (1e-4):
            // transformers must apply the one the config names.
            let mut other = model.clone();
            other.gelu = match gelu {
                GeluForm::Exact => GeluForm::Tanh,
                GeluForm::Tanh => GeluForm::Exact,
            };
            let moved = logits(&model, &ids)
                .concat()
                .iter()
                .zip(logits(&other, &ids).concat())
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                moved > 4e-4,
                "{name}: the GELU forms differ by {moved} only"
            );
            let dir = out.join(name);
            let hf = Gpt2Shape {
                vocab_size: shape.vocab_size,
                n_positions: block,
                n_embd: 16,
                n_layer: 2,
                n_head: 4,
                bias,
                tie_weights: tie,
                gelu,
            };
            write_gpt2(&dir.join("hf"), &hf, &kiln_tensors(&model), &vocab).unwrap();
            let completion: String = greedy(&model, &ids, new, vocab.len())
                .into_iter()
                .map(|id| vocab[id as usize])
                .collect();
            let expected = json!({
                "prompt": prompt,
                "tokens": ids,
                "logits": logits(&model, &ids),
                "completion": completion,
            });
            write_json(&dir.join("expected.json"), &expected).unwrap();

            let run = Command::new(&python)
                .arg(&script)
                .arg(dir.join("hf"))
                .arg(dir.join("expected.json"))
                .args(["--atol", "1e-4"])
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&run.stdout);
            println!("{name}: {}", stdout.trim());
            assert!(
                run.status.success(),
                "{name}: check_hf.py failed: {stdout}{}",
                String::from_utf8_lossy(&run.stderr)
            );
        }
    }
}
