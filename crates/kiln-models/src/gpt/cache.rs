//! The key/value cache of generation: each block's keys and values of the tokens seen so far,
//! so that generating a token runs the model on that token alone instead of the whole context.
//!
//! The first call ([`Gpt::forward_cached`] on an empty cache) runs the prompt exactly as
//! [`Gpt::forward`] does and keeps its keys and values; each later call runs only the new tokens,
//! their queries attending over the kept keys and values (with RoPE, rotated at their own
//! positions). A cache holds at most `block_size` tokens: a caller whose context grows beyond it
//! clears the cache and starts again from the last `block_size` tokens, which is what the
//! uncached model computes for such a window.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

use super::Gpt;

/// The keys and values of the tokens a GPT has seen, per block.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    pub(super) layers: Vec<LayerCache<B>>,
    len: usize,
}

/// One block's keys and values, `[batch, n_kv_head, len, head_dim]`.
#[derive(Debug, Clone)]
pub(super) struct LayerCache<B: Backend> {
    kv: Option<(Tensor<B, 4>, Tensor<B, 4>)>,
}

impl<B: Backend> KvCache<B> {
    /// Tokens held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no token.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every token.
    pub fn clear(&mut self) {
        self.len = 0;
        for layer in &mut self.layers {
            layer.kv = None;
        }
    }

    /// Counts `t` more tokens (after every block has appended theirs).
    pub(super) fn advance(&mut self, t: usize) {
        self.len += t;
    }
}

impl<B: Backend> LayerCache<B> {
    /// Appends the keys and values of new tokens and returns all of them.
    pub(super) fn append(
        &mut self,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let (k, v) = match self.kv.take() {
            Some((k0, v0)) => (Tensor::cat(vec![k0, k], 2), Tensor::cat(vec![v0, v], 2)),
            None => (k, v),
        };
        self.kv = Some((k.clone(), v.clone()));
        (k, v)
    }
}

impl<B: Backend> Gpt<B> {
    /// An empty cache for this model.
    pub fn cache(&self) -> KvCache<B> {
        KvCache {
            layers: self.h.iter().map(|_| LayerCache { kv: None }).collect(),
            len: 0,
        }
    }

    /// The logits `[batch, t, vocab]` of `tokens` `[batch, t]` continuing the sequence that
    /// `cache` holds, whose keys and values it then holds too. The cache and the tokens together
    /// must fit in `block_size`.
    pub fn forward_cached(
        &self,
        tokens: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
    ) -> Tensor<B, 3> {
        self.run(tokens, Some(cache), &mut ())
    }
}
