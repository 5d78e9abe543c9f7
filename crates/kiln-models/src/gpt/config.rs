//! The GPT's `[model]` keys and the shape they resolve to.
//!
//! The defaults are GPT-2's architecture. The Llama-style options are each a key: `norm =
//! "rmsnorm"`, `position = "rope"` (with `rope_theta`), `mlp = "swiglu"` (with `mlp_hidden`),
//! `n_kv_head` (grouped-query attention) and `bias = false`. Every key added after the first
//! version is optional and, unset, is not in the config hash, so earlier configs keep theirs.

use anyhow::{bail, ensure, Result};
use serde::{Deserialize, Serialize};

/// The GELU in the GPT's MLP (`model.gelu`).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum GeluForm {
    /// `x Φ(x)` with the normal CDF by `erf` (transformers' `"gelu"`, nanoGPT's).
    #[default]
    Exact,
    /// GPT-2's tanh approximation, `x/2 (1 + tanh(√(2/π) (x + 0.044715 x³)))` (transformers'
    /// `"gelu_new"`).
    Tanh,
}

/// The normalization before attention, before the MLP and before the head (`model.norm`).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NormKind {
    /// GPT-2's LayerNorm: centred, scaled, shifted (when `bias`).
    #[default]
    LayerNorm,
    /// Llama's RMSNorm: `x / sqrt(mean(x²) + ε) γ`, no centring and no shift.
    RmsNorm,
}

/// How the model knows positions (`model.position`).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PositionKind {
    /// GPT-2's learned position embedding `wpe`, added to the token embedding.
    #[default]
    Learned,
    /// Rotary position embeddings on queries and keys (Llama's), no `wpe`.
    Rope,
}

/// The feed-forward network of each block (`model.mlp`).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MlpKind {
    /// GPT-2's `c_proj(gelu(c_fc(x)))`.
    #[default]
    Gelu,
    /// Llama's `c_proj(silu(gate(x)) * up(x))`, gate and up as one matrix `c_fc`.
    SwiGlu,
}

/// `[model]` with `kind = "gpt"`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GptConfig {
    /// Dropout on embeddings, attention and residual branches, while training.
    #[serde(default)]
    pub dropout: f64,
    /// Transformer blocks.
    #[serde(default = "four")]
    pub n_layer: usize,
    /// Attention heads per block (must divide n_embd).
    #[serde(default = "four")]
    pub n_head: usize,
    /// Width of the residual stream.
    #[serde(default = "width")]
    pub n_embd: usize,
    /// Context length in tokens; training windows hold block_size + 1 tokens.
    #[serde(default = "default_block_size")]
    pub block_size: usize,
    /// Biases in the linear layers and LayerNorms.
    #[serde(default = "yes")]
    pub bias: bool,
    /// The LM head shares the token embedding matrix.
    #[serde(default = "yes")]
    pub tie_weights: bool,
    /// Vocabulary size of the embedding and head; defaults to the tokenizer's, may be larger
    /// (padding to a multiple of 64 speeds up GPU matmuls).
    pub vocab_size: Option<usize>,
    /// The GELU form of the MLP, `"exact"` (unset) or `"tanh"` (GPT-2's `gelu_new`).
    pub gelu: Option<GeluForm>,
    /// `"layernorm"` (unset) or `"rmsnorm"`.
    pub norm: Option<NormKind>,
    /// The norms' epsilon (unset: 1e-5).
    pub norm_epsilon: Option<f64>,
    /// `"learned"` (unset) or `"rope"`.
    pub position: Option<PositionKind>,
    /// The base of RoPE's angles (unset: 10000); only with `position = "rope"`.
    pub rope_theta: Option<f64>,
    /// `"gelu"` (unset) or `"swiglu"`.
    pub mlp: Option<MlpKind>,
    /// The MLP's hidden width (unset: `4 n_embd` for GELU, `8 n_embd / 3` rounded up to a
    /// multiple of 32 for SwiGLU, which then has about the GELU MLP's parameters).
    pub mlp_hidden: Option<usize>,
    /// Key/value heads (unset: `n_head`); fewer share each key/value head among
    /// `n_head / n_kv_head` query heads (grouped-query attention).
    pub n_kv_head: Option<usize>,
    /// A Hugging Face folder (GPT-2 or Llama) whose architecture and weights the run starts
    /// from; `kiln train` fills the architecture keys from its `config.json`.
    pub init_from: Option<String>,
    /// LoRA adapters from the run's `[finetune]` section (not a `[model]` key): set by
    /// [`crate::ModelConfig::of`].
    #[serde(skip)]
    pub lora: Option<super::lora::LoraSpec>,
}

fn four() -> usize {
    4
}
fn width() -> usize {
    128
}
/// `model.block_size` when unset.
pub fn default_block_size() -> usize {
    64
}
fn yes() -> bool {
    true
}

/// The norms' epsilon when `model.norm_epsilon` is unset (GPT-2's).
pub const DEFAULT_NORM_EPSILON: f64 = 1e-5;
/// RoPE's base when `model.rope_theta` is unset (Llama 2's).
pub const DEFAULT_ROPE_THETA: f64 = 10_000.0;

impl GptConfig {
    /// The keys of the section (besides `kind`).
    pub const KEYS: &'static [&'static str] = &[
        "dropout",
        "n_layer",
        "n_head",
        "n_embd",
        "block_size",
        "bias",
        "tie_weights",
        "vocab_size",
        "gelu",
        "norm",
        "norm_epsilon",
        "position",
        "rope_theta",
        "mlp",
        "mlp_hidden",
        "n_kv_head",
        "init_from",
    ];

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("model.dropout: must be in [0, 1)");
        }
        for (key, v) in [
            ("model.n_layer", self.n_layer),
            ("model.n_head", self.n_head),
            ("model.n_embd", self.n_embd),
            ("model.block_size", self.block_size),
        ] {
            ensure!(v > 0, "{key}: must be at least 1");
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            bail!(
                "model.n_embd = {} is not divisible by model.n_head = {}: each head gets n_embd / n_head dimensions; choose e.g. n_embd = {} or an n_head that divides {}",
                self.n_embd,
                self.n_head,
                self.n_embd.div_ceil(self.n_head) * self.n_head,
                self.n_embd
            );
        }
        ensure!(
            self.vocab_size != Some(0),
            "model.vocab_size: must be at least 1"
        );
        if let Some(e) = self.norm_epsilon {
            ensure!(
                e > 0.0 && e.is_finite(),
                "model.norm_epsilon = {e}: must be a positive number (e.g. 1e-5, or Llama's 1e-6)"
            );
        }
        let rope = self.position == Some(PositionKind::Rope);
        match self.rope_theta {
            Some(_) if !rope => bail!(
                "model.rope_theta: only with model.position = \"rope\" (this model learns its position embedding); set position = \"rope\" or remove rope_theta"
            ),
            Some(theta) => ensure!(
                theta > 1.0 && theta.is_finite(),
                "model.rope_theta = {theta}: must be a number above 1 (10000 in Llama 2, 500000 in Llama 3)"
            ),
            None => {}
        }
        if rope && !(self.n_embd / self.n_head).is_multiple_of(2) {
            bail!(
                "model.position = \"rope\" rotates pairs of a head's dimensions, and n_embd / n_head = {} is odd; choose an even head size",
                self.n_embd / self.n_head
            );
        }
        if self.mlp == Some(MlpKind::SwiGlu) && self.gelu.is_some() {
            bail!("model.gelu: the SwiGLU MLP (model.mlp = \"swiglu\") has no GELU; remove gelu or use mlp = \"gelu\"");
        }
        ensure!(
            self.mlp_hidden != Some(0),
            "model.mlp_hidden: must be at least 1"
        );
        if let Some(kv) = self.n_kv_head {
            ensure!(
                kv > 0 && self.n_head.is_multiple_of(kv),
                "model.n_kv_head = {kv} does not divide model.n_head = {}: each key/value head serves n_head / n_kv_head query heads; choose a divisor of {} (n_head itself is ordinary multi-head attention)",
                self.n_head,
                self.n_head
            );
        }
        Ok(())
    }
}

/// The shape of a GPT, from the `[model]` section and the tokenizer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GptShape {
    /// Rows of the token embedding (and outputs of the head).
    pub vocab_size: usize,
    /// Transformer blocks.
    pub n_layer: usize,
    /// Attention heads per block.
    pub n_head: usize,
    /// The width of the residual stream.
    pub n_embd: usize,
    /// The longest context, in tokens.
    pub block_size: usize,
    /// Whether linear layers and LayerNorms have biases.
    pub bias: bool,
    /// Whether the head reuses the token embedding.
    pub tie_weights: bool,
    /// The MLP's GELU (with [`MlpKind::Gelu`]).
    pub gelu: GeluForm,
    /// LayerNorm or RMSNorm.
    pub norm: NormKind,
    /// The norms' epsilon.
    pub norm_epsilon: f64,
    /// Learned positions or RoPE.
    pub position: PositionKind,
    /// RoPE's base (with [`PositionKind::Rope`]).
    pub rope_theta: f64,
    /// GELU or SwiGLU MLP.
    pub mlp: MlpKind,
    /// The MLP's hidden width.
    pub mlp_hidden: usize,
    /// Key/value heads per block (divides `n_head`).
    pub n_kv_head: usize,
}

impl GptShape {
    /// GPT-2's architecture with these sizes (what `[model]` gives with no style keys).
    pub fn gpt2(vocab_size: usize, n_layer: usize, n_head: usize, n_embd: usize) -> Self {
        Self {
            vocab_size,
            n_layer,
            n_head,
            n_embd,
            block_size: default_block_size(),
            bias: true,
            tie_weights: true,
            gelu: GeluForm::Exact,
            norm: NormKind::LayerNorm,
            norm_epsilon: DEFAULT_NORM_EPSILON,
            position: PositionKind::Learned,
            rope_theta: DEFAULT_ROPE_THETA,
            mlp: MlpKind::Gelu,
            mlp_hidden: 4 * n_embd,
            n_kv_head: n_head,
        }
    }

    /// Columns of one attention head.
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// Outputs of `c_attn`: the queries, then the keys and the values of `n_kv_head` heads.
    pub fn qkv_width(&self) -> usize {
        self.n_embd + 2 * self.n_kv_head * self.head_dim()
    }

    /// Outputs of `c_fc`: the hidden width, twice for SwiGLU (`[gate | up]`).
    pub fn fc_width(&self) -> usize {
        match self.mlp {
            MlpKind::Gelu => self.mlp_hidden,
            MlpKind::SwiGlu => 2 * self.mlp_hidden,
        }
    }

    /// Parameters: embeddings, per block two norms, attention and MLP, the final norm and an
    /// untied head (GPT-2's count with the defaults).
    pub fn param_count(&self) -> u128 {
        let (d, v) = (self.n_embd as u128, self.vocab_size as u128);
        let bias = u128::from(self.bias);
        let norm = match self.norm {
            NormKind::LayerNorm => d + bias * d,
            NormKind::RmsNorm => d,
        };
        let linear = |d_in: u128, d_out: u128| d_in * d_out + bias * d_out;
        let hidden = self.mlp_hidden as u128;
        let block = 2 * norm
            + linear(d, self.qkv_width() as u128)
            + linear(d, d)
            + linear(d, self.fc_width() as u128)
            + linear(hidden, d);
        let head = if self.tie_weights { 0 } else { d * v };
        let positions = match self.position {
            PositionKind::Learned => self.block_size as u128 * d,
            PositionKind::Rope => 0,
        };
        v * d + positions + self.n_layer as u128 * block + norm + head
    }

    /// The shape of `spec` for a tokenizer of `vocab` tokens (`model.vocab_size` may pad it).
    pub fn new(spec: &GptConfig, vocab: usize) -> Result<Self> {
        spec.validate()?;
        let vocab_size = spec.vocab_size.unwrap_or(vocab);
        ensure!(
            vocab_size >= vocab,
            "model.vocab_size = {vocab_size} is smaller than the tokenizer's vocabulary ({vocab} tokens); remove it or set at least {vocab}"
        );
        let mlp = spec.mlp.unwrap_or_default();
        let mlp_hidden = spec.mlp_hidden.unwrap_or(match mlp {
            MlpKind::Gelu => 4 * spec.n_embd,
            MlpKind::SwiGlu => (8 * spec.n_embd).div_ceil(3).div_ceil(32) * 32,
        });
        Ok(Self {
            vocab_size,
            n_layer: spec.n_layer,
            n_head: spec.n_head,
            n_embd: spec.n_embd,
            block_size: spec.block_size,
            bias: spec.bias,
            tie_weights: spec.tie_weights,
            gelu: spec.gelu.unwrap_or_default(),
            norm: spec.norm.unwrap_or_default(),
            norm_epsilon: spec.norm_epsilon.unwrap_or(DEFAULT_NORM_EPSILON),
            position: spec.position.unwrap_or_default(),
            rope_theta: spec.rope_theta.unwrap_or(DEFAULT_ROPE_THETA),
            mlp,
            mlp_hidden,
            n_kv_head: spec.n_kv_head.unwrap_or(spec.n_head),
        })
    }
}
