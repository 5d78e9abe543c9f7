//! Text generation from a trained GPT: autoregressive sampling with temperature and top-k,
//! streaming each token as soon as it is drawn.
//!
//! With the key/value cache (the default) the prompt runs once and each later step runs the
//! model on the newest token alone ([`kiln_models::KvCache`]). Once the text outgrows the
//! model's context, each step runs on the last `block_size` tokens (what the model saw in
//! training), cached or not. Without the cache every step runs the whole window: slower, and
//! kept to check the cache against (`kiln generate --no-cache`).

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use kiln_core::Config;
use kiln_data::Tokenizer;
use kiln_models::{DataShape, Gpt, Model, ModelConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::weights;
use kiln_core::layout::TOKENIZER_FILE;

/// How to sample.
#[derive(Clone, Debug)]
pub struct Sampling {
    /// The text to continue (empty: start a new text).
    pub prompt: String,
    /// Number of tokens to generate.
    pub max_tokens: usize,
    /// Divides the logits; 0 picks the most likely token every time.
    pub temperature: f64,
    /// Sample only among the k most likely tokens.
    pub top_k: Option<usize>,
    /// Seed of the sampling: the same seed draws the same text.
    pub seed: u64,
    /// Keep the keys and values of earlier tokens instead of recomputing them each step.
    pub cache: bool,
}

/// What a generation drew.
#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    /// The text of the generated tokens (the prompt not included).
    pub text: String,
    /// The generated token ids.
    pub tokens: Vec<u32>,
}

/// Loads the GPT of a run (weights `weights_file`, the run's config and tokenizer) and streams
/// the text of `sampling.max_tokens` generated tokens to `out`.
pub fn generate<B: Backend>(
    config: &Config,
    run_dir: &Path,
    weights_file: &Path,
    sampling: &Sampling,
    device: &B::Device,
    out: &mut dyn Write,
) -> Result<Generation> {
    check_sampling(sampling)?;
    let tok_path = run_dir.join(TOKENIZER_FILE);
    if !tok_path.is_file() {
        bail!(
            "{} has no {TOKENIZER_FILE}: generation needs the tokenizer the run was trained with (runs on text data, or on token files written by `kiln tokenize`, save one)",
            run_dir.display()
        );
    }
    let tokenizer = Tokenizer::load(&tok_path)?;
    let shape = DataShape::Tokens {
        vocab_size: tokenizer.vocab_size(),
    };
    let model = Model::<B>::new(
        &ModelConfig::of(config)?,
        &shape,
        config.train.precision,
        config.run.seed,
        device,
    )?;
    // Model::new builds only a GPT from token data, so any other kind has failed above.
    let Model::Gpt(gpt) = weights::load_run(model, config, weights_file)? else {
        unreachable!("token data builds a GPT")
    };
    generate_with(&gpt, &tokenizer, sampling, device, out)
}

/// Streams the text of `sampling.max_tokens` tokens that `gpt` generates after the prompt to
/// `out` and returns them.
pub fn generate_with<B: Backend>(
    gpt: &Gpt<B>,
    tokenizer: &Tokenizer,
    sampling: &Sampling,
    device: &B::Device,
    out: &mut dyn Write,
) -> Result<Generation> {
    check_sampling(sampling)?;
    let mut context: Vec<i64> = if sampling.prompt.is_empty() {
        vec![i64::from(tokenizer.start_id())]
    } else {
        tokenizer
            .encode(&sampling.prompt)
            .context("--prompt")?
            .into_iter()
            .map(i64::from)
            .collect()
    };
    write!(out, "{}", sampling.prompt)?;
    let usable = tokenizer.vocab_size();
    let mut rng = ChaCha8Rng::seed_from_u64(sampling.seed);
    let mut generated: Vec<u32> = Vec::new();
    let mut text = String::new();
    let block_size = gpt.shape.block_size;
    let mut cache = sampling.cache.then(|| gpt.cache());
    // Tokens of the context that the cache does not hold yet.
    let mut pending = context.clone();
    for _ in 0..sampling.max_tokens {
        let ids = |tokens: &[i64]| {
            Tensor::<B, 2, Int>::from_data(
                TensorData::new(tokens.to_vec(), [1, tokens.len()]),
                device,
            )
        };
        let logits = match &mut cache {
            Some(cache) => {
                if cache.len() + pending.len() > block_size {
                    cache.clear();
                    pending = context[context.len().saturating_sub(block_size)..].to_vec();
                }
                let t = pending.len();
                let logits = gpt.forward_cached(ids(&pending), cache);
                pending.clear();
                logits.slice([0..1, t - 1..t])
            }
            None => {
                let window = &context[context.len().saturating_sub(block_size)..];
                let t = window.len();
                gpt.forward(ids(window)).slice([0..1, t - 1..t])
            }
        };
        let logits: Vec<f32> = logits
            .reshape([gpt.shape.vocab_size])
            .into_data()
            .to_vec()
            .map_err(|e| anyhow::anyhow!("cannot read logits: {e:?}"))?;
        // Padded vocabulary entries (model.vocab_size larger than the tokenizer's) never appear.
        let next = sample(&logits[..usable], sampling, &mut rng);
        context.push(next as i64);
        pending.push(next as i64);
        generated.push(next as u32);
        // A subword token may end inside a character (byte-level BPE): print what the tokens so
        // far decode to beyond what is already out, once it is whole.
        let decoded = tokenizer.decode(&generated)?;
        if decoded.len() > text.len()
            && decoded.starts_with(text.as_str())
            && !decoded.ends_with('\u{FFFD}')
        {
            write!(out, "{}", &decoded[text.len()..])?;
            out.flush()?;
            text = decoded;
        }
    }
    let decoded = tokenizer.decode(&generated)?;
    if let Some(rest) = decoded.strip_prefix(text.as_str()) {
        write!(out, "{rest}")?;
    }
    writeln!(out)?;
    Ok(Generation {
        text: decoded,
        tokens: generated,
    })
}

fn check_sampling(sampling: &Sampling) -> Result<()> {
    if sampling.temperature < 0.0 || !sampling.temperature.is_finite() {
        bail!(
            "--temperature {}: must be a number >= 0 (0 = always the most likely token)",
            sampling.temperature
        );
    }
    if sampling.top_k == Some(0) {
        bail!("--top-k 0: must be at least 1");
    }
    Ok(())
}

/// Draws a token index from `logits` with temperature and top-k.
fn sample(logits: &[f32], s: &Sampling, rng: &mut ChaCha8Rng) -> usize {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i)
    };
    if s.temperature == 0.0 {
        return argmax();
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    order.truncate(s.top_k.unwrap_or(logits.len()).min(logits.len()));
    let max = logits[order[0]] as f64;
    let weights: Vec<f64> = order
        .iter()
        .map(|&i| ((logits[i] as f64 - max) / s.temperature).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let mut u = rng.random::<f64>() * total;
    for (&i, w) in order.iter().zip(&weights) {
        if u < *w {
            return i;
        }
        u -= w;
    }
    *order.last().expect("at least one candidate")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling(temperature: f64, top_k: Option<usize>) -> Sampling {
        Sampling {
            prompt: String::new(),
            max_tokens: 0,
            temperature,
            top_k,
            seed: 1,
            cache: true,
        }
    }

    #[test]
    fn zero_temperature_is_greedy_and_top_k_limits_the_candidates() {
        let logits = [0.1f32, 3.0, 2.9, -1.0];
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        assert_eq!(sample(&logits, &sampling(0.0, None), &mut rng), 1);
        let mut seen = [0usize; 4];
        for _ in 0..2000 {
            seen[sample(&logits, &sampling(1.0, Some(2)), &mut rng)] += 1;
        }
        assert_eq!((seen[0], seen[3]), (0, 0), "{seen:?}");
        // exp(3.0) : exp(2.9) is about 52.5% : 47.5%.
        assert!(seen[1] > 950 && seen[2] > 850, "{seen:?}");
    }
}
