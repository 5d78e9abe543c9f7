//! Reading a Hugging Face GPT-2 or Llama folder into Kiln's GPT (`model.init_from`).
//!
//! [`read_config`] turns `config.json` into Kiln's `[model]` keys (the fields below; any other
//! field that changes what the model computes is refused by name). [`read_weights`] reads the
//! weights (`model.safetensors`, or the files that `model.safetensors.index.json` lists; f32,
//! bf16 or f16, converted to f32) and maps them to Kiln's tensor names and layouts with the same
//! tables the export writes ([`crate::gpt2`], [`crate::llama`]), inverted.
//!
//! `config.json` fields read:
//! - GPT-2 (`model_type = "gpt2"`): `vocab_size`, `n_positions`, `n_embd`, `n_layer`, `n_head`,
//!   `n_inner`, `activation_function` (`gelu`; `gelu_new` / `gelu_pytorch_tanh` as the tanh
//!   form), `layer_norm_epsilon`, `tie_word_embeddings`; refused unless at GPT-2's values:
//!   `scale_attn_weights` (true), `scale_attn_by_inverse_layer_idx`, `add_cross_attention`
//!   (false).
//! - Llama (`model_type = "llama"`): `vocab_size`, `hidden_size`, `intermediate_size`,
//!   `num_hidden_layers`, `num_attention_heads`, `num_key_value_heads`, `head_dim` (must be
//!   `hidden_size / num_attention_heads`), `max_position_embeddings`, `rms_norm_eps`,
//!   `rope_theta` or `rope_parameters.rope_theta`, `attention_bias` and `mlp_bias` (equal),
//!   `tie_word_embeddings`; refused unless at Llama's plain values: `hidden_act` (`silu`),
//!   `rope_scaling` (null), `rope_parameters.rope_type` (`default`), `pretraining_tp` (1).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use kiln_models::{GeluForm, GptConfig, GptShape, MlpKind, NormKind, PositionKind};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

use crate::{Architecture, Source, Spec, HF_CONFIG_FILE, HF_TOKENIZER_FILE, HF_WEIGHTS_FILE};

/// The index of a model saved in several safetensors files.
pub const HF_INDEX_FILE: &str = "model.safetensors.index.json";

/// What `config.json` says, as Kiln's `[model]` keys.
#[derive(Clone, Debug, PartialEq)]
pub struct HfConfig {
    /// Every architecture key set (`init_from` and `dropout` aside).
    pub model: GptConfig,
    /// The folder's `tokenizer.json`, when it has one.
    pub tokenizer: Option<PathBuf>,
}

/// Reads `dir/config.json`.
pub fn read_config(dir: &Path) -> Result<HfConfig> {
    let path = dir.join(HF_CONFIG_FILE);
    let text = fs::read_to_string(&path).with_context(|| {
        format!(
            "model.init_from = {:?}: cannot read {} (a Hugging Face model folder has config.json)",
            dir.display(),
            path.display()
        )
    })?;
    let json: Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    let c = Fields {
        json: &json,
        path: &path,
    };
    let model = match c.str("model_type")?.as_deref() {
        Some("gpt2") => c.gpt2()?,
        Some("llama") => c.llama()?,
        Some(other) => bail!(
            "{}: model_type = {other:?} is not supported; Kiln imports \"gpt2\" and \"llama\" models",
            path.display()
        ),
        None => bail!(
            "{}: no model_type; Kiln imports \"gpt2\" and \"llama\" models",
            path.display()
        ),
    };
    model
        .validate()
        .with_context(|| format!("{}", path.display()))?;
    let tokenizer = Some(dir.join(HF_TOKENIZER_FILE)).filter(|p| p.is_file());
    Ok(HfConfig { model, tokenizer })
}

/// `config.json`'s fields, read with messages naming the file and the field.
struct Fields<'a> {
    json: &'a Value,
    path: &'a Path,
}

impl Fields<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.json.get(key).filter(|v| !v.is_null())
    }

    fn usize(&self, key: &str) -> Result<Option<usize>> {
        self.get(key)
            .map(|v| {
                v.as_u64().map(|n| n as usize).with_context(|| {
                    format!("{}: {key} = {v} is not a whole number", self.path.display())
                })
            })
            .transpose()
    }

    fn need(&self, key: &str) -> Result<usize> {
        self.usize(key)?
            .with_context(|| format!("{}: no {key}", self.path.display()))
    }

    fn f64(&self, key: &str) -> Result<Option<f64>> {
        self.get(key)
            .map(|v| {
                v.as_f64().with_context(|| {
                    format!("{}: {key} = {v} is not a number", self.path.display())
                })
            })
            .transpose()
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key)
            .map(|v| {
                v.as_bool().with_context(|| {
                    format!("{}: {key} = {v} is not true or false", self.path.display())
                })
            })
            .transpose()
    }

    fn str(&self, key: &str) -> Result<Option<String>> {
        self.get(key)
            .map(|v| {
                v.as_str().map(str::to_string).with_context(|| {
                    format!("{}: {key} = {v} is not a string", self.path.display())
                })
            })
            .transpose()
    }

    /// Refuses `key` unless it is absent or `allowed` says its value is fine.
    fn refuse_unless(&self, key: &str, allowed: impl Fn(&Value) -> bool, why: &str) -> Result<()> {
        match self.get(key) {
            Some(v) if !allowed(v) => bail!(
                "{}: {key} = {v} is not supported ({why}); Kiln's GPT cannot compute this model",
                self.path.display()
            ),
            _ => Ok(()),
        }
    }

    fn gpt2(&self) -> Result<GptConfig> {
        self.refuse_unless(
            "scale_attn_weights",
            |v| v == true,
            "scores are scaled by 1/sqrt(head_dim)",
        )?;
        self.refuse_unless(
            "scale_attn_by_inverse_layer_idx",
            |v| v == false,
            "no per-layer scaling",
        )?;
        self.refuse_unless(
            "add_cross_attention",
            |v| v == false,
            "a decoder-only model",
        )?;
        let gelu = match self.str("activation_function")?.as_deref() {
            None | Some("gelu") => GeluForm::Exact,
            Some("gelu_new" | "gelu_pytorch_tanh") => GeluForm::Tanh,
            Some(other) => bail!(
                "{}: activation_function = {other:?} is not supported (gelu, gelu_new or gelu_pytorch_tanh)",
                self.path.display()
            ),
        };
        Ok(GptConfig {
            n_layer: self.need("n_layer")?,
            n_head: self.need("n_head")?,
            n_embd: self.need("n_embd")?,
            block_size: self.need("n_positions")?,
            bias: true,
            tie_weights: self.bool("tie_word_embeddings")?.unwrap_or(true),
            vocab_size: Some(self.need("vocab_size")?),
            gelu: Some(gelu),
            norm: Some(NormKind::LayerNorm),
            norm_epsilon: Some(self.f64("layer_norm_epsilon")?.unwrap_or(1e-5)),
            position: Some(PositionKind::Learned),
            rope_theta: None,
            mlp: Some(MlpKind::Gelu),
            mlp_hidden: self.usize("n_inner")?,
            n_kv_head: None,
            dropout: 0.0,
            init_from: None,
            lora: None,
        })
    }

    fn llama(&self) -> Result<GptConfig> {
        self.refuse_unless("hidden_act", |v| v == "silu", "the SwiGLU MLP uses silu")?;
        self.refuse_unless("rope_scaling", |v| v.is_null(), "plain RoPE only")?;
        self.refuse_unless("pretraining_tp", |v| v == 1, "no tensor-parallel slicing")?;
        let rope = self.get("rope_parameters");
        if let Some(kind) = rope.and_then(|r| r.get("rope_type")) {
            ensure!(
                kind == "default",
                "{}: rope_parameters.rope_type = {kind} is not supported (plain RoPE, \"default\", only); Kiln's GPT cannot compute this model",
                self.path.display()
            );
        }
        let theta = match rope
            .and_then(|r| r.get("rope_theta"))
            .and_then(Value::as_f64)
        {
            Some(theta) => Some(theta),
            None => self.f64("rope_theta")?,
        };
        let (n_embd, n_head) = (self.need("hidden_size")?, self.need("num_attention_heads")?);
        if let Some(head_dim) = self.usize("head_dim")? {
            ensure!(
                head_dim * n_head == n_embd,
                "{}: head_dim = {head_dim} is not hidden_size / num_attention_heads = {}; Kiln's GPT cannot compute this model",
                self.path.display(),
                n_embd / n_head.max(1)
            );
        }
        let attention_bias = self.bool("attention_bias")?.unwrap_or(false);
        let mlp_bias = self.bool("mlp_bias")?.unwrap_or(false);
        ensure!(
            attention_bias == mlp_bias,
            "{}: attention_bias = {attention_bias} and mlp_bias = {mlp_bias}: Kiln's model.bias covers both, so they must be equal",
            self.path.display()
        );
        Ok(GptConfig {
            n_layer: self.need("num_hidden_layers")?,
            n_head,
            n_embd,
            block_size: self.need("max_position_embeddings")?,
            bias: attention_bias,
            tie_weights: self.bool("tie_word_embeddings")?.unwrap_or(false),
            vocab_size: Some(self.need("vocab_size")?),
            gelu: None,
            norm: Some(NormKind::RmsNorm),
            norm_epsilon: Some(self.f64("rms_norm_eps")?.unwrap_or(1e-6)),
            position: Some(PositionKind::Rope),
            rope_theta: Some(theta.unwrap_or(10_000.0)),
            mlp: Some(MlpKind::SwiGlu),
            mlp_hidden: Some(self.need("intermediate_size")?),
            n_kv_head: Some(self.usize("num_key_value_heads")?.unwrap_or(n_head)),
            dropout: 0.0,
            init_from: None,
            lora: None,
        })
    }
}

/// Kiln's tensors, by checkpoint name: shape and values.
pub type KilnTensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Reads the weights of the folder `dir` for a Kiln GPT of `shape` (from [`read_config`]'s keys;
/// its `block_size` may be smaller than the folder's context: a GPT-2's position embedding is
/// then cut to its first `block_size` rows).
pub fn read_weights(dir: &Path, shape: &GptShape) -> Result<KilnTensors> {
    let architecture = Architecture::of(shape)?;
    let files = weight_files(dir)?;
    let mut hf: BTreeMap<String, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
    for file in &files {
        let bytes = fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        let st = SafeTensors::deserialize(&bytes)
            .with_context(|| format!("{}: not a safetensors file", file.display()))?;
        for (name, view) in st.tensors() {
            let values = to_f32(view.dtype(), view.data())
                .with_context(|| format!("{}: tensor {name}", file.display()))?;
            hf.insert(name, (view.shape().to_vec(), values));
        }
    }
    let (specs, positions) = match architecture {
        Architecture::Gpt2 => (crate::gpt2::specs(shape), Some(shape.block_size)),
        Architecture::Llama => (crate::llama::specs(shape), None),
    };
    let origin = || {
        files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut kiln = KilnTensors::new();
    for spec in specs {
        let found = take(&mut hf, &spec.name).with_context(|| {
            format!(
                "{}: no tensor {} (shape {:?})",
                origin(),
                spec.name,
                spec.shape
            )
        })?;
        let (have, values) = fit_positions(found, &spec, positions);
        ensure!(
            have == spec.shape,
            "{}: tensor {} has shape {have:?}, the model of config.json needs {:?}",
            origin(),
            spec.name,
            spec.shape
        );
        place(&mut kiln, &spec, &values);
    }
    // Buffers older checkpoints saved beside the weights, and a tied head saved anyway.
    hf.retain(|name, _| {
        !(name.ends_with(".attn.bias")
            || name.ends_with(".attn.masked_bias")
            || name.ends_with("rotary_emb.inv_freq")
            || (shape.tie_weights && name == "lm_head.weight"))
    });
    if !hf.is_empty() {
        let names: Vec<&str> = hf.keys().map(String::as_str).take(8).collect();
        bail!(
            "{}: unexpected tensor(s) {} for a {architecture:?} model of config.json",
            origin(),
            names.join(", ")
        );
    }
    Ok(kiln)
}

/// The sha256 (lowercase hex) of the folder's weights: of its safetensors files' bytes, one
/// after another in name order (for a single `model.safetensors`, what `sha256sum` prints). A
/// LoRA checkpoint records it to name the base its adapters belong to.
pub fn weights_sha256(dir: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for file in weight_files(dir)? {
        let mut f =
            fs::File::open(&file).with_context(|| format!("cannot read {}", file.display()))?;
        std::io::copy(&mut f, &mut hasher)
            .with_context(|| format!("cannot read {}", file.display()))?;
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The safetensors files of `dir`: those the index lists, or `model.safetensors`.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join(HF_INDEX_FILE);
    if index.is_file() {
        let json: Value = serde_json::from_str(&fs::read_to_string(&index)?)
            .with_context(|| format!("{}: not JSON", index.display()))?;
        let map = json
            .get("weight_map")
            .and_then(Value::as_object)
            .with_context(|| format!("{}: no weight_map", index.display()))?;
        let mut files: Vec<PathBuf> = map
            .values()
            .map(|f| f.as_str().map(|f| dir.join(f)))
            .collect::<Option<_>>()
            .with_context(|| {
                format!("{}: weight_map values must be file names", index.display())
            })?;
        files.sort();
        files.dedup();
        for f in &files {
            ensure!(
                f.is_file(),
                "{} lists {}, which does not exist",
                index.display(),
                f.display()
            );
        }
        return Ok(files);
    }
    let single = dir.join(HF_WEIGHTS_FILE);
    if single.is_file() {
        return Ok(vec![single]);
    }
    if dir.join("pytorch_model.bin").is_file() {
        bail!(
            "{}: the weights are a pickled pytorch_model.bin, which Kiln does not read; save the model with safetensors (model.save_pretrained(dir, safe_serialization=True))",
            dir.display()
        );
    }
    bail!(
        "{}: no {HF_WEIGHTS_FILE} and no {HF_INDEX_FILE}",
        dir.display()
    )
}

/// `name`, or the same name without GPT-2's `transformer.` prefix (older GPT-2 files).
fn take(
    hf: &mut BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    name: &str,
) -> Option<(Vec<usize>, Vec<f32>)> {
    hf.remove(name).or_else(|| {
        name.strip_prefix("transformer.")
            .and_then(|short| hf.remove(short))
    })
}

/// A GPT-2 position embedding with more rows than Kiln's `block_size`, cut to its first rows.
fn fit_positions(
    (shape, values): (Vec<usize>, Vec<f32>),
    spec: &Spec,
    positions: Option<usize>,
) -> (Vec<usize>, Vec<f32>) {
    match (positions, &spec.source, shape.as_slice()) {
        (Some(rows), Source::Copy(kiln), &[have, e]) if kiln == "wpe.weight" && have > rows => {
            (vec![rows, e], values[..rows * e].to_vec())
        }
        _ => (shape, values),
    }
}

/// Writes the values of the Hugging Face tensor `spec` into its place in Kiln's tensors.
fn place(kiln: &mut KilnTensors, spec: &Spec, values: &[f32]) {
    match &spec.source {
        Source::Copy(name) => {
            kiln.insert(name.clone(), (spec.shape.clone(), values.to_vec()));
        }
        Source::Transpose(name) => {
            let [rows, cols] = [spec.shape[0], spec.shape[1]];
            kiln.insert(
                name.clone(),
                (vec![cols, rows], crate::transpose(values, rows, cols)),
            );
        }
        Source::Columns {
            kiln: name,
            d_out,
            cols,
        } => {
            let d_in = spec.shape[1];
            let (_, t) = kiln
                .entry(name.clone())
                .or_insert_with(|| (vec![d_in, *d_out], vec![0.0; d_in * d_out]));
            for (i, c) in cols.clone().enumerate() {
                for r in 0..d_in {
                    t[r * d_out + c] = values[i * d_in + r];
                }
            }
        }
        Source::Slice {
            kiln: name,
            len,
            range,
        } => {
            let (_, t) = kiln
                .entry(name.clone())
                .or_insert_with(|| (vec![*len], vec![0.0; *len]));
            t[range.clone()].copy_from_slice(values);
        }
        Source::Zeros => {}
    }
}

/// Little-endian f32, bf16 or f16 values as f32.
fn to_f32(dtype: Dtype, data: &[u8]) -> Result<Vec<f32>> {
    let pairs = || {
        data.chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    Ok(match dtype {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::BF16 => pairs().map(|b| half::bf16::from_bits(b).to_f32()).collect(),
        Dtype::F16 => pairs().map(|b| half::f16::from_bits(b).to_f32()).collect(),
        other => bail!("dtype {other:?} is not supported (f32, bf16 or f16)"),
    })
}

/// For a run whose `[model]` sets `init_from`: fills the GPT's architecture keys from the
/// folder's `config.json` (a key the config sets itself must agree, except `block_size`, which
/// may be smaller than the folder's context), and `data.tokenizer` (text data) with the folder's
/// `tokenizer.json` when the config names none. Runs without `init_from` are left as they are.
pub fn fill_config(config: &mut kiln_core::Config) -> Result<()> {
    let Some(dir) = config.model.0.get("init_from") else {
        return Ok(());
    };
    let dir = dir
        .as_str()
        .map(PathBuf::from)
        .context("model.init_from: must be a folder path (a string)")?;
    if let Some(kind) = config.model.kind() {
        ensure!(
            kind == "gpt",
            "model.init_from: only a GPT (model.kind = \"gpt\") starts from a Hugging Face folder, this is model.kind = \"{kind}\""
        );
    }
    let hf = read_config(&dir)?;
    let toml::Value::Table(folder) =
        toml::Value::try_from(&hf.model).context("the folder's model as TOML")?
    else {
        unreachable!("a struct serializes to a table")
    };
    let section = &mut config.model.0;
    section.insert("kind".into(), "gpt".into());
    for (key, value) in folder {
        if key == "dropout" {
            continue;
        }
        match section.get(&key) {
            None => {
                section.insert(key, value);
            }
            Some(mine) if key == "block_size" => {
                let (mine_n, theirs) = (mine.as_integer().unwrap_or(0), value.as_integer().unwrap_or(0));
                ensure!(
                    mine_n >= 1 && mine_n <= theirs,
                    "model.block_size = {mine} is more than the context of {} ({theirs} positions); set at most {theirs}",
                    dir.display()
                );
            }
            Some(mine) if !same(mine, &value) => bail!(
                "model.{key} = {mine} differs from {}'s config.json ({value}); remove it: model.init_from takes the architecture from the folder",
                dir.display()
            ),
            Some(_) => {}
        }
    }
    if config.data.tokenizer.is_none()
        && config.data.format == Some(kiln_core::config::DataFormat::Text)
    {
        config.data.tokenizer = hf.tokenizer;
    }
    Ok(())
}

/// Whether two TOML values are equal, integers and floats by value.
fn same(a: &toml::Value, b: &toml::Value) -> bool {
    match (a, b) {
        (toml::Value::Integer(x), toml::Value::Float(y))
        | (toml::Value::Float(y), toml::Value::Integer(x)) => *x as f64 == *y,
        _ => a == b,
    }
}

/// Kiln's tensors as the bytes of a safetensors file (f32), to load into a model.
pub fn to_safetensors(tensors: &KilnTensors) -> Result<Vec<u8>> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, (shape, values))| {
            let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name.clone(), shape.clone(), data)
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, shape, data)| {
            Ok((
                name.as_str(),
                safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), data)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(safetensors::serialize(views, None)?)
}
