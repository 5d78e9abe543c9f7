//! GPT: a decoder-only transformer language model, GPT-2's architecture by default and Llama's
//! by options.
//!
//! Token embeddings (plus learned position embeddings, GPT-2), then `n_layer` pre-norm blocks
//! (`x + attn(ln_1(x))`, `x + mlp(ln_2(x))`) with causal self-attention and an MLP, a final
//! norm and the LM head, optionally tied to the token embedding. The Llama-style options
//! ([`GptConfig`]) change the parts in place: RMSNorm for LayerNorm, rotary position embeddings
//! on queries and keys for `wpe`, a SwiGLU MLP for the GELU one, fewer key/value heads than
//! query heads (grouped-query attention) and no biases.
//!
//! Initialization is GPT-2's: weights normal(0, 0.02), the residual projections normal(0,
//! 0.02 / sqrt(2 n_layer)), biases zero, norms one/zero. Parameter names follow GPT-2's (`wte`,
//! `wpe`, `h.N.ln_1`, `h.N.attn.c_attn`, `h.N.mlp.c_fc`, ...): `c_attn` computes
//! `[q | k | v]` (`n_embd` query columns, then `n_kv_head` heads of keys and of values), and a
//! SwiGLU `c_fc` computes `[gate | up]`. Linear weights are `[d_in, d_out]`.

use std::collections::HashSet;

use burn::module::{Module, Param, ParamId};
use burn::nn::{Embedding, EmbeddingConfig, Linear};
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use kiln_core::config::Precision;
use kiln_kernels::add::add;
use kiln_kernels::rope::Rope;

use crate::dropout::dropout;
use crate::init::HostInit;
use crate::precision::{affine, compute_dtype, matmul};
use crate::{rank_one_params, Observer};

mod cache;
mod config;
mod lora;

pub use cache::KvCache;
pub use config::{
    default_block_size, GeluForm, GptConfig, GptShape, MlpKind, NormKind, PositionKind,
    DEFAULT_NORM_EPSILON, DEFAULT_ROPE_THETA,
};
use lora::adapted;
pub use lora::{Lora, LoraSpec, LoraTarget};

/// A LayerNorm (`gamma`, and `beta` when the model has biases) or an RMSNorm (`gamma` only), as
/// the shape says; the names are burn's LayerNorm's, so checkpoints keep their layout.
#[derive(Module, Debug)]
pub struct Norm<B: Backend> {
    /// The scale.
    pub gamma: Param<Tensor<B, 1>>,
    /// The shift (LayerNorm with biases only).
    pub beta: Option<Param<Tensor<B, 1>>>,
}

/// Causal self-attention (GPT-2's names).
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// Query, key and value projections in one matrix, `[n_embd, qkv_width]`.
    pub c_attn: Linear<B>,
    /// The output projection.
    pub c_proj: Linear<B>,
    /// A LoRA adapter of `c_attn` (fine-tuning only).
    pub c_attn_lora: Option<Lora<B>>,
    /// A LoRA adapter of `c_proj` (fine-tuning only).
    pub c_proj_lora: Option<Lora<B>>,
}

/// A block's feed-forward network: `n_embd -> mlp_hidden -> n_embd`, GELU or SwiGLU.
#[derive(Module, Debug)]
pub struct MlpBlock<B: Backend> {
    /// The expansion (`[gate | up]` for SwiGLU).
    pub c_fc: Linear<B>,
    /// The projection back to `n_embd`.
    pub c_proj: Linear<B>,
    /// A LoRA adapter of `c_fc` (fine-tuning only).
    pub c_fc_lora: Option<Lora<B>>,
    /// A LoRA adapter of `c_proj` (fine-tuning only).
    pub c_proj_lora: Option<Lora<B>>,
}

/// A pre-norm transformer block: `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    /// The norm before attention.
    pub ln_1: Norm<B>,
    /// Self-attention.
    pub attn: Attention<B>,
    /// The norm before the MLP.
    pub ln_2: Norm<B>,
    /// The feed-forward network.
    pub mlp: MlpBlock<B>,
}

/// A decoder-only language model, with GPT-2's parameter names.
#[derive(Module, Debug)]
pub struct Gpt<B: Backend> {
    /// The token embedding `[vocab, n_embd]`.
    pub wte: Embedding<B>,
    /// The learned position embedding `[block_size, n_embd]` (absent with RoPE).
    pub wpe: Option<Embedding<B>>,
    /// The transformer blocks.
    pub h: Vec<Block<B>>,
    /// The final norm.
    pub ln_f: Norm<B>,
    /// `[n_embd, vocab]`; absent when the head is tied to `wte`.
    pub lm_head: Option<Param<Tensor<B, 2>>>,
    /// The architecture and sizes.
    #[module(skip)]
    pub shape: GptShape,
    /// Dropout on embeddings, attention and residuals while training.
    #[module(skip)]
    pub dropout: f64,
    /// The precision the layers compute in.
    #[module(skip)]
    pub precision: Precision,
}

impl<B: Backend> Gpt<B> {
    /// What weight decay skips: biases and norm parameters (every parameter of rank 1), and the
    /// token and position embeddings.
    pub fn no_decay(&self) -> HashSet<ParamId> {
        let mut params = rank_one_params(self);
        params.insert(self.wte.weight.id);
        if let Some(wpe) = &self.wpe {
            params.insert(wpe.weight.id);
        }
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
        let wpe = (shape.position == PositionKind::Learned).then(|| embedding(block_size, init));
        let norm = || Norm {
            gamma: Param::from_tensor(Tensor::ones([n_embd], device)),
            beta: (bias && shape.norm == NormKind::LayerNorm)
                .then(|| Param::from_tensor(Tensor::zeros([n_embd], device))),
        };
        let (qkv, fc, hidden) = (shape.qkv_width(), shape.fc_width(), shape.mlp_hidden);
        let h = (0..n_layer)
            .map(|_| Block {
                ln_1: norm(),
                attn: Attention {
                    c_attn: init.linear_normal(n_embd, qkv, STD, bias, device),
                    c_proj: init.linear_normal(n_embd, n_embd, residual_std, bias, device),
                    c_attn_lora: None,
                    c_proj_lora: None,
                },
                ln_2: norm(),
                mlp: MlpBlock {
                    c_fc: init.linear_normal(n_embd, fc, STD, bias, device),
                    c_proj: init.linear_normal(hidden, n_embd, residual_std, bias, device),
                    c_fc_lora: None,
                    c_proj_lora: None,
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
            shape,
            dropout,
            precision,
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
        self.run(tokens, None, observer)
    }

    /// The forward pass; with a `cache`, the tokens continue the sequence it holds (see
    /// [`KvCache`]).
    fn run(
        &self,
        tokens: Tensor<B, 2, Int>,
        mut cache: Option<&mut KvCache<B>>,
        observer: &mut dyn Observer<B>,
    ) -> Tensor<B, 3> {
        let [batch, t] = tokens.dims();
        let offset = cache.as_ref().map_or(0, |c| c.len());
        assert!(
            offset + t <= self.shape.block_size,
            "a GPT with block_size {} got a sequence of {} tokens",
            self.shape.block_size,
            offset + t
        );
        let x = self.wte.forward(tokens.clone());
        let x = match &self.wpe {
            Some(wpe) => {
                let positions = Tensor::<B, 1, Int>::arange(
                    offset as i64..(offset + t) as i64,
                    &tokens.device(),
                );
                add(x, wpe.forward(positions.reshape([1, t])))
            }
            None => x,
        };
        let mut x = dropout(x, self.dropout);
        let rows = |x: &Tensor<B, 3>| {
            let [b, t, d] = x.dims();
            x.clone().reshape([b * t, d])
        };
        for (i, block) in self.h.iter().enumerate() {
            let normed = self.norm(&block.ln_1, x.clone());
            observer.observe(&|| format!("h.{i}.attn.c_attn.weight"), &|| rows(&normed));
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            let attended = self.attention(&block.attn, normed, offset, layer_cache, &mut |y| {
                observer.observe(&|| format!("h.{i}.attn.c_proj.weight"), &|| rows(y));
            });
            x = add(x, attended);
            let m = &block.mlp;
            let normed = self.norm(&block.ln_2, x.clone());
            observer.observe(&|| format!("h.{i}.mlp.c_fc.weight"), &|| rows(&normed));
            let hidden = adapted(&m.c_fc, &m.c_fc_lora, normed, self.precision);
            let hidden = match (self.shape.mlp, self.shape.gelu) {
                (MlpKind::Gelu, GeluForm::Exact) => kiln_kernels::gelu(hidden),
                (MlpKind::Gelu, GeluForm::Tanh) => kiln_kernels::gelu_tanh(hidden),
                (MlpKind::SwiGlu, _) => kiln_kernels::swiglu::swiglu(hidden),
            };
            observer.observe(&|| format!("h.{i}.mlp.c_proj.weight"), &|| rows(&hidden));
            x = add(
                x,
                dropout(
                    adapted(&m.c_proj, &m.c_proj_lora, hidden, self.precision),
                    self.dropout,
                ),
            );
        }
        if let Some(cache) = cache {
            cache.advance(t);
        }
        let x = self.norm(&self.ln_f, x);
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
            self.shape.vocab_size,
        ])
    }

    /// `norm(x)`: on the CPU backends by Kiln's one-pass kernels, elsewhere by burn's
    /// operations (as burn's `LayerNorm` and `RmsNorm` compute them).
    fn norm(&self, norm: &Norm<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let gamma = norm.gamma.val();
        let epsilon = self.shape.norm_epsilon;
        match self.shape.norm {
            NormKind::LayerNorm => {
                let beta = norm.beta.as_ref().map(|b| b.val());
                kiln_kernels::layer_norm::layer_norm(x, gamma.clone(), beta.clone(), epsilon)
                    .unwrap_or_else(|x| {
                        let (var, mean) = x.clone().var_mean_bias(2);
                        let y = x.sub(mean).div(var.add_scalar(epsilon).sqrt());
                        let y = y.mul(gamma.unsqueeze());
                        match beta {
                            Some(beta) => y.add(beta.unsqueeze()),
                            None => y,
                        }
                    })
            }
            NormKind::RmsNorm => kiln_kernels::layer_norm::rms_norm(x, gamma.clone(), epsilon)
                .unwrap_or_else(|x| {
                    let rms = x.clone().square().mean_dim(2).add_scalar(epsilon).sqrt();
                    x.div(rms).mul(gamma.unsqueeze())
                }),
        }
    }

    /// Causal self-attention of `x` (`[batch, t, n_embd]`) at positions `offset..offset + t`;
    /// with a `cache`, its keys and values are kept, and after the first call (`offset > 0`) the
    /// queries attend over all kept keys and values. `before_proj` sees the heads'
    /// concatenated output, the input of `c_proj`.
    fn attention(
        &self,
        attn: &Attention<B>,
        x: Tensor<B, 3>,
        offset: usize,
        cache: Option<&mut cache::LayerCache<B>>,
        before_proj: &mut dyn FnMut(&Tensor<B, 3>),
    ) -> Tensor<B, 3> {
        let s = &self.shape;
        let [batch, t, n_embd] = x.dims();
        let (heads, kv_heads, head_dim) = (s.n_head, s.n_kv_head, s.head_dim());
        let qkv = adapted(&attn.c_attn, &attn.c_attn_lora, x, self.precision);
        let qkv = match s.position {
            PositionKind::Learned => qkv,
            PositionKind::Rope => Rope {
                rotated: heads + kv_heads,
                head_dim,
                offset,
                theta: s.rope_theta,
            }
            .apply(qkv),
        };
        let part = |qkv: &Tensor<B, 3>, from: usize, n: usize| {
            qkv.clone()
                .slice([0..batch, 0..t, from * head_dim..(from + n) * head_dim])
                .reshape([batch, t, n, head_dim])
                .swap_dims(1, 2)
        };
        let y = match cache {
            // Continuing a cached sequence: the new queries against all keys and values.
            Some(cache) if offset > 0 => {
                let (k, v) = cache.append(
                    part(&qkv, heads, kv_heads),
                    part(&qkv, heads + kv_heads, kv_heads),
                );
                self.attend(part(&qkv, 0, heads), k, v, false)
                    .swap_dims(1, 2)
                    .reshape([batch, t, n_embd])
            }
            cache => {
                if let Some(cache) = cache {
                    cache.append(
                        part(&qkv, heads, kv_heads),
                        part(&qkv, heads + kv_heads, kv_heads),
                    );
                }
                // In f32 with no dropout on the weights (none configured, or evaluating), the
                // CPU backends run the whole attention as Kiln's kernel: no split, transposes or
                // copies of the heads.
                let fused = compute_dtype(self.precision).is_none()
                    && (self.dropout == 0.0 || !B::ad_enabled(&qkv.device()));
                let attended = if fused {
                    kiln_kernels::attention::causal_self_attention(qkv, heads, kv_heads)
                } else {
                    Err(qkv)
                };
                match attended {
                    Ok(y) => y,
                    Err(qkv) => {
                        let (q, k, v) = (
                            part(&qkv, 0, heads),
                            part(&qkv, heads, kv_heads),
                            part(&qkv, heads + kv_heads, kv_heads),
                        );
                        self.attend(q, k, v, true)
                            .swap_dims(1, 2)
                            .reshape([batch, t, n_embd])
                    }
                }
            }
        };
        before_proj(&y);
        dropout(
            adapted(&attn.c_proj, &attn.c_proj_lora, y, self.precision),
            self.dropout,
        )
    }

    /// `softmax(q kᵀ / √head_dim) v` for `q` `[batch, n_head, t, head_dim]` and keys and values
    /// `[batch, n_kv_head, len, head_dim]`, each key/value head serving its group of query heads;
    /// `causal`: query `i` sees keys `0..=i` (`len = t`), otherwise all of them.
    fn attend(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        causal: bool,
    ) -> Tensor<B, 4> {
        let [batch, heads, t, head_dim] = q.dims();
        let [_, kv_heads, len, _] = k.dims();
        let shared = |x: Tensor<B, 4>| {
            if kv_heads == heads {
                return x;
            }
            x.unsqueeze_dim::<5>(2)
                .repeat_dim(2, heads / kv_heads)
                .reshape([batch, heads, len, head_dim])
        };
        let (k, v) = (shared(k), shared(v));
        let scores = matmul(q, k.swap_dims(2, 3), self.precision);
        let scale = 1.0 / (head_dim as f64).sqrt();
        let weights = kiln_kernels::softmax::softmax(scores, scale, causal, |scores| {
            let scores = scores.mul_scalar(scale);
            let scores = if causal {
                let mask = causal_mask::<B>(t, &scores.device());
                scores.mask_fill(mask.expand([batch, heads, t, t]), f32::NEG_INFINITY)
            } else {
                scores
            };
            softmax(scores, 3)
        });
        let weights = dropout(weights, self.dropout);
        matmul(weights, v, self.precision)
    }
}

/// `[1, 1, t, t]`, true where a position would see a later one.
fn causal_mask<B: Backend>(t: usize, device: &B::Device) -> Tensor<B, 4, Bool> {
    let later: Vec<bool> = (0..t * t).map(|i| i % t > i / t).collect();
    Tensor::from_data(TensorData::new(later, [1, 1, t, t]), device)
}

#[cfg(test)]
mod tests;
