//! GPT: a decoder-only transformer language model (GPT-2's architecture).
//!
//! Token and position embeddings, then `n_layer` pre-LayerNorm blocks
//! (`x + attn(ln_1(x))`, `x + mlp(ln_2(x))`) with causal multi-head self-attention and a GELU MLP
//! four times as wide, a final LayerNorm and the LM head, optionally tied to the token embedding.
//! Initialization is GPT-2's: weights normal(0, 0.02), the residual projections normal(0,
//! 0.02 / sqrt(2 n_layer)), biases zero, LayerNorms one/zero. Parameter names follow GPT-2's
//! (`wte`, `wpe`, `h.N.attn.c_attn`, ...).

use std::collections::HashSet;

use anyhow::{bail, ensure, Result};
use burn::module::{Module, Param, ParamId};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear};
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use kiln_core::config::Precision;
use serde::{Deserialize, Serialize};

use crate::dropout::dropout;
use crate::init::HostInit;
use crate::precision::{affine, compute_dtype, linear, matmul};
use crate::{rank_one_params, Observer};
use kiln_kernels::add::add;

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
    /// The GELU form of the MLP, `"exact"` (unset) or `"tanh"` (GPT-2's `gelu_new`). Unset, it is
    /// not in the config hash, so configs written before it keep their hash.
    pub gelu: Option<GeluForm>,
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
        Ok(())
    }
}

/// The shape of a GPT, from the `[model]` section and the tokenizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    /// The MLP's GELU.
    pub gelu: GeluForm,
}

impl GptShape {
    /// Parameters of the GPT: embeddings, per block two LayerNorms, attention and MLP, the
    /// final LayerNorm and an untied head (GPT-2's count).
    pub fn param_count(&self) -> u128 {
        let (d, v) = (self.n_embd as u128, self.vocab_size as u128);
        let bias = u128::from(self.bias);
        let norm = d + bias * d;
        let linear = |d_in: u128, d_out: u128| d_in * d_out + bias * d_out;
        let block =
            2 * norm + linear(d, 3 * d) + linear(d, d) + linear(d, 4 * d) + linear(4 * d, d);
        let head = if self.tie_weights { 0 } else { d * v };
        v * d + self.block_size as u128 * d + self.n_layer as u128 * block + norm + head
    }

    /// The shape of `spec` for a tokenizer of `vocab` tokens (`model.vocab_size` may pad it).
    pub fn new(spec: &GptConfig, vocab: usize) -> Result<Self> {
        let vocab_size = spec.vocab_size.unwrap_or(vocab);
        ensure!(
            vocab_size >= vocab,
            "model.vocab_size = {vocab_size} is smaller than the tokenizer's vocabulary ({vocab} tokens); remove it or set at least {vocab}"
        );
        ensure!(
            spec.n_embd.is_multiple_of(spec.n_head),
            "model.n_embd = {} is not divisible by model.n_head = {}",
            spec.n_embd,
            spec.n_head
        );
        Ok(Self {
            vocab_size,
            n_layer: spec.n_layer,
            n_head: spec.n_head,
            n_embd: spec.n_embd,
            block_size: spec.block_size,
            bias: spec.bias,
            tie_weights: spec.tie_weights,
            gelu: spec.gelu.unwrap_or_default(),
        })
    }
}

/// Causal multi-head self-attention (GPT-2's names).
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// Query, key and value projections in one matrix.
    pub c_attn: Linear<B>,
    /// The output projection.
    pub c_proj: Linear<B>,
}

/// A block's feed-forward network: `n_embd -> 4 n_embd -> n_embd` with GELU.
#[derive(Module, Debug)]
pub struct MlpBlock<B: Backend> {
    /// The expansion.
    pub c_fc: Linear<B>,
    /// The projection back to `n_embd`.
    pub c_proj: Linear<B>,
}

/// A pre-norm transformer block: `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    /// The norm before attention.
    pub ln_1: LayerNorm<B>,
    /// Self-attention.
    pub attn: Attention<B>,
    /// The norm before the MLP.
    pub ln_2: LayerNorm<B>,
    /// The feed-forward network.
    pub mlp: MlpBlock<B>,
}

/// A GPT-2 style decoder-only language model, with GPT-2's parameter names.
#[derive(Module, Debug)]
pub struct Gpt<B: Backend> {
    /// The token embedding `[vocab, n_embd]`.
    pub wte: Embedding<B>,
    /// The learned position embedding `[block_size, n_embd]`.
    pub wpe: Embedding<B>,
    /// The transformer blocks.
    pub h: Vec<Block<B>>,
    /// The final norm.
    pub ln_f: LayerNorm<B>,
    /// `[n_embd, vocab]`; absent when the head is tied to `wte`.
    pub lm_head: Option<Param<Tensor<B, 2>>>,
    /// Attention heads per block.
    #[module(skip)]
    pub n_head: usize,
    /// The longest context, in tokens.
    #[module(skip)]
    pub block_size: usize,
    /// Outputs of the head.
    #[module(skip)]
    pub vocab_size: usize,
    /// Dropout on embeddings, attention and residuals while training.
    #[module(skip)]
    pub dropout: f64,
    /// The precision the layers compute in.
    #[module(skip)]
    pub precision: Precision,
    /// The MLP's GELU.
    #[module(skip)]
    pub gelu: GeluForm,
}

impl<B: Backend> Gpt<B> {
    /// What weight decay skips: biases and LayerNorm parameters (every parameter of rank 1),
    /// and the token and position embeddings.
    pub fn no_decay(&self) -> HashSet<ParamId> {
        let mut params = rank_one_params(self);
        params.insert(self.wte.weight.id);
        params.insert(self.wpe.weight.id);
        params
    }

    /// How an export quantizes each weight: the embeddings `[rows, dim]` with a scale per token
    /// or position (axis 0, which is also the output channel of the tied LM head), the rest as
    /// any model ([`crate::quant_axis`]).
    pub fn quant_axis(name: &str, shape: &[usize]) -> Option<usize> {
        match name {
            "wte.weight" | "wpe.weight" if shape.len() == 2 => Some(0),
            _ => crate::quant_axis(name, shape),
        }
    }

    /// A GPT of `shape` with initial weights from `init` (GPT-2's scheme), on `device`.
    pub fn new(
        shape: GptShape,
        dropout: f64,
        precision: Precision,
        init: &mut HostInit,
        device: &B::Device,
    ) -> Self {
        let GptShape {
            vocab_size,
            n_layer,
            n_embd,
            block_size,
            bias,
            ..
        } = shape;
        const STD: f32 = 0.02;
        let residual_std = STD / ((2 * n_layer) as f32).sqrt();
        let embedding = |rows: usize, init: &mut HostInit| {
            let mut e = EmbeddingConfig::new(rows, n_embd).init(device);
            e.weight = Param::from_tensor(init.normal_tensor([rows, n_embd], STD, device));
            e
        };
        let wte = embedding(vocab_size, init);
        let wpe = embedding(block_size, init);
        let norm = || {
            LayerNormConfig::new(n_embd)
                .with_epsilon(LAYER_NORM_EPSILON)
                .with_bias(bias)
                .init(device)
        };
        let h = (0..n_layer)
            .map(|_| Block {
                ln_1: norm(),
                attn: Attention {
                    c_attn: init.linear_normal(n_embd, 3 * n_embd, STD, bias, device),
                    c_proj: init.linear_normal(n_embd, n_embd, residual_std, bias, device),
                },
                ln_2: norm(),
                mlp: MlpBlock {
                    c_fc: init.linear_normal(n_embd, 4 * n_embd, STD, bias, device),
                    c_proj: init.linear_normal(4 * n_embd, n_embd, residual_std, bias, device),
                },
            })
            .collect();
        let lm_head = (!shape.tie_weights)
            .then(|| Param::from_tensor(init.normal_tensor([n_embd, vocab_size], STD, device)));
        Self {
            wte,
            wpe,
            h,
            ln_f: norm(),
            lm_head,
            n_head: shape.n_head,
            block_size,
            vocab_size,
            dropout,
            precision,
            gelu: shape.gelu,
        }
    }

    /// `[batch, t]` token ids (t <= block_size) -> `[batch, t, vocab]` next-token logits.
    pub fn forward(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.forward_observed(tokens, &mut ())
    }

    /// [`Gpt::forward`], showing the input of every linear layer and of the LM head to
    /// `observer`.
    pub fn forward_observed(
        &self,
        tokens: Tensor<B, 2, Int>,
        observer: &mut dyn Observer<B>,
    ) -> Tensor<B, 3> {
        let [batch, t] = tokens.dims();
        assert!(
            t <= self.block_size,
            "a GPT with block_size {} got a sequence of {t} tokens",
            self.block_size
        );
        let device = tokens.device();
        let positions = Tensor::<B, 1, Int>::arange(0..t as i64, &device).reshape([1, t]);
        let x = add(self.wte.forward(tokens), self.wpe.forward(positions));
        let mut x = dropout(x, self.dropout);
        let mask = causal_mask::<B>(t, &device);
        let rows = |x: &Tensor<B, 3>| {
            let [b, t, d] = x.dims();
            x.clone().reshape([b * t, d])
        };
        for (i, block) in self.h.iter().enumerate() {
            let normed = layer_norm(&block.ln_1, x.clone());
            observer.observe(&|| format!("h.{i}.attn.c_attn.weight"), &|| rows(&normed));
            let attended = self.attention(&block.attn, normed, mask.clone(), &mut |y| {
                observer.observe(&|| format!("h.{i}.attn.c_proj.weight"), &|| rows(y));
            });
            x = add(x, attended);
            let m = &block.mlp;
            let normed = layer_norm(&block.ln_2, x.clone());
            observer.observe(&|| format!("h.{i}.mlp.c_fc.weight"), &|| rows(&normed));
            let hidden = linear(&m.c_fc, normed, self.precision);
            let hidden = match self.gelu {
                GeluForm::Exact => kiln_kernels::gelu(hidden),
                GeluForm::Tanh => kiln_kernels::gelu_tanh(hidden),
            };
            observer.observe(&|| format!("h.{i}.mlp.c_proj.weight"), &|| rows(&hidden));
            x = add(
                x,
                dropout(linear(&m.c_proj, hidden, self.precision), self.dropout),
            );
        }
        let x = layer_norm(&self.ln_f, x);
        let n_embd = x.dims()[2];
        let head_name = if self.lm_head.is_some() {
            "lm_head"
        } else {
            "wte.weight"
        };
        observer.observe(&|| head_name.to_string(), &|| rows(&x));
        let head = match &self.lm_head {
            Some(w) => w.val(),
            None => self.wte.weight.val().transpose(),
        };
        affine(x.reshape([batch * t, n_embd]), head, None, self.precision).reshape([
            batch,
            t,
            self.vocab_size,
        ])
    }

    /// Causal multi-head self-attention of `x` (`[batch, t, n_embd]`).
    /// `before_proj` sees the heads' concatenated output, the input of `c_proj`.
    fn attention(
        &self,
        attn: &Attention<B>,
        x: Tensor<B, 3>,
        mask: Tensor<B, 4, Bool>,
        before_proj: &mut dyn FnMut(&Tensor<B, 3>),
    ) -> Tensor<B, 3> {
        let [batch, t, n_embd] = x.dims();
        let (heads, head_dim) = (self.n_head, n_embd / self.n_head);
        let qkv = linear(&attn.c_attn, x, self.precision);
        // In f32 with no dropout on the weights (none configured, or evaluating), the CPU
        // backends run the whole attention as Kiln's kernel: no split, transposes or copies of
        // the heads.
        let fused = compute_dtype(self.precision).is_none()
            && (self.dropout == 0.0 || !B::ad_enabled(&qkv.device()));
        let attended = if fused {
            kiln_kernels::attention::causal_self_attention(qkv, heads, heads)
        } else {
            Err(qkv)
        };
        let y = attended.unwrap_or_else(|qkv| {
            let mut qkv = qkv
                .chunk(3, 2)
                .into_iter()
                .map(|p| p.reshape([batch, t, heads, head_dim]).swap_dims(1, 2));
            let (q, k, v) = (
                qkv.next().expect("q"),
                qkv.next().expect("k"),
                qkv.next().expect("v"),
            );
            let scores = matmul(q, k.swap_dims(2, 3), self.precision);
            let scale = 1.0 / (head_dim as f64).sqrt();
            let weights = kiln_kernels::softmax::softmax(scores, scale, true, |scores| {
                let scores = scores
                    .mul_scalar(scale)
                    .mask_fill(mask.expand([batch, heads, t, t]), f32::NEG_INFINITY);
                softmax(scores, 3)
            });
            let weights = dropout(weights, self.dropout);
            matmul(weights, v, self.precision)
                .swap_dims(1, 2)
                .reshape([batch, t, n_embd])
        });
        before_proj(&y);
        dropout(linear(&attn.c_proj, y, self.precision), self.dropout)
    }
}

/// The epsilon of every LayerNorm (GPT-2's).
const LAYER_NORM_EPSILON: f64 = 1e-5;

/// `norm(x)`: on the CPU backends by Kiln's one-pass kernel, elsewhere by burn's module.
fn layer_norm<B: Backend>(norm: &LayerNorm<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    let gamma = norm.gamma.val();
    let beta = norm.beta.as_ref().map(|b| b.val());
    kiln_kernels::layer_norm::layer_norm(x, gamma, beta, LAYER_NORM_EPSILON)
        .unwrap_or_else(|x| norm.forward(x))
}

/// `[1, 1, t, t]`, true where a position would see a later one.
fn causal_mask<B: Backend>(t: usize, device: &B::Device) -> Tensor<B, 4, Bool> {
    let later: Vec<bool> = (0..t * t).map(|i| i % t > i / t).collect();
    Tensor::from_data(TensorData::new(later, [1, 1, t, t]), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    fn tiny(tie: bool) -> Gpt<Flex> {
        let shape = GptShape {
            vocab_size: 11,
            n_layer: 2,
            n_head: 2,
            n_embd: 8,
            block_size: 6,
            bias: true,
            tie_weights: tie,
            gelu: GeluForm::Exact,
        };
        Gpt::new(
            shape,
            0.0,
            Precision::F32,
            &mut HostInit::new(5),
            &Default::default(),
        )
    }

    fn logits(model: &Gpt<Flex>, ids: &[i64]) -> Vec<f32> {
        let t = Tensor::from_data(
            TensorData::new(ids.to_vec(), [1, ids.len()]),
            &Default::default(),
        );
        model.forward(t).into_data().to_vec().unwrap()
    }

    #[test]
    fn changing_a_later_token_never_changes_earlier_logits() {
        for tie in [true, false] {
            let model = tiny(tie);
            let base = [3i64, 1, 4, 1, 5, 9];
            let a = logits(&model, &base);
            for changed in 1..base.len() {
                let mut other = base;
                other[changed] = (other[changed] + 3) % 11;
                let b = logits(&model, &other);
                let v = 11;
                // Positions before `changed` are identical, bit for bit; the changed one differs.
                assert_eq!(
                    a[..changed * v],
                    b[..changed * v],
                    "tie {tie}, changed {changed}"
                );
                assert_ne!(
                    a[changed * v..(changed + 1) * v],
                    b[changed * v..(changed + 1) * v]
                );
            }
        }
    }

    #[test]
    fn shorter_sequences_give_the_same_prefix_logits() {
        let model = tiny(true);
        let full = logits(&model, &[3, 1, 4, 1, 5, 9]);
        let short = logits(&model, &[3, 1, 4]);
        for (x, y) in short.iter().zip(&full) {
            assert!((x - y).abs() < 1e-5, "{x} vs {y}");
        }
    }

    #[test]
    fn parameter_count_matches_gpt2_formula() {
        // wte 11x8 + wpe 6x8 + per block (ln 2x2x8, c_attn 8x24+24, c_proj 8x8+8, c_fc 8x32+32,
        // c_proj 32x8+8) + ln_f 16; the tied head adds nothing, the untied one 8x11.
        let per_block = 2 * 16 + (8 * 24 + 24) + (8 * 8 + 8) + (8 * 32 + 32) + (32 * 8 + 8);
        let tied = 11 * 8 + 6 * 8 + 2 * per_block + 16;
        assert_eq!(tiny(true).num_params(), tied);
        assert_eq!(tiny(false).num_params(), tied + 8 * 11);
    }
}
