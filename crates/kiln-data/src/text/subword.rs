//! Subword tokenizers: any Hugging Face `tokenizer.json`, and training a byte-level BPE.
//!
//! A [`SubwordTokenizer`] wraps the `tokenizers` crate (Hugging Face's own Rust library, the one
//! behind transformers' fast tokenizers), so a `tokenizer.json` encodes here exactly as
//! `AutoTokenizer` encodes it in Python. [`train_bpe`] trains a GPT-2-style byte-level BPE on a
//! text: bytes as the base alphabet (every text encodes, nothing is unknown), no prefix space,
//! and an end-of-text special token ([`END_OF_TEXT`]) with the first id.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer, TokenizerBuilder, TokenizerImpl};

/// The special token that [`train_bpe`] adds (GPT-2's), id 0.
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// A Hugging Face tokenizer (the JSON of a `tokenizer.json`).
#[derive(Clone)]
pub struct SubwordTokenizer {
    /// Shared: a tokenizer is large and read-only.
    inner: Arc<Tokenizer>,
    /// The largest id plus one (added tokens included).
    vocab_size: usize,
}

impl std::fmt::Debug for SubwordTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubwordTokenizer")
            .field("vocab_size", &self.vocab_size)
            .finish_non_exhaustive()
    }
}

impl PartialEq for SubwordTokenizer {
    fn eq(&self, other: &Self) -> bool {
        self.to_json() == other.to_json()
    }
}

impl SubwordTokenizer {
    /// Reads the JSON of a `tokenizer.json`; `origin` names where it came from in errors.
    pub fn from_json(value: &serde_json::Value, origin: &Path) -> Result<Self> {
        Self::from_str_at(&value.to_string(), origin)
    }

    /// Reads a Hugging Face `tokenizer.json` file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow!("cannot read tokenizer file {}: {e}", path.display()))?;
        Self::from_str_at(&text, path)
    }

    fn from_str_at(text: &str, origin: &Path) -> Result<Self> {
        let inner = Tokenizer::from_str(text).map_err(|e| {
            anyhow!(
                "{}: not a Hugging Face tokenizer ({e}); give the tokenizer.json that \
                 `tokenizer.save_pretrained` or `kiln tokenize --bpe` writes",
                origin.display()
            )
        })?;
        let vocab_size = inner
            .get_vocab(true)
            .values()
            .max()
            .map(|&id| id as usize + 1)
            .unwrap_or(0);
        if vocab_size == 0 {
            bail!(
                "{}: the tokenizer's vocabulary is empty; train or choose another",
                origin.display()
            );
        }
        Ok(Self {
            inner: Arc::new(inner),
            vocab_size,
        })
    }

    /// Number of token ids (the largest plus one, special tokens included).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The token ids of `text`, as `tokenizer(text)["input_ids"]` gives them in transformers
    /// (the tokenizer's own post-processing, if any, applied).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, true)
            .map_err(|e| anyhow!("tokenizing: {e}"))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The text of `ids` (special tokens kept). Errors on an id beyond the vocabulary.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            bail!(
                "token id {id} is beyond the vocabulary ({} tokens); the ids come from a \
                 different tokenizer or a model with a larger vocab_size",
                self.vocab_size
            );
        }
        self.inner
            .decode(ids, false)
            .map_err(|e| anyhow!("decoding token ids: {e}"))
    }

    /// The id of a token (e.g. [`END_OF_TEXT`]), if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The `tokenizer.json` content.
    pub fn to_json(&self) -> serde_json::Value {
        let text = self
            .inner
            .to_string(false)
            .unwrap_or_else(|e| unreachable!("a loaded tokenizer serializes: {e}"));
        serde_json::from_str(&text).unwrap_or_else(|e| unreachable!("tokenizers writes JSON: {e}"))
    }

    /// Writes `tokenizer.json` to `path` (pretty-printed, as `save_pretrained` does).
    pub fn save(&self, path: &Path) -> Result<()> {
        self.inner.save(path, true).map_err(|e| {
            anyhow!(
                "cannot write tokenizer file {}: {e}; check that the folder exists and is writable",
                path.display()
            )
        })
    }
}

/// The byte-level BPE tokenizer of `vocab_size` tokens (the 256 bytes, [`END_OF_TEXT`] and the
/// merges learned) trained on the UTF-8 text file `corpus`.
pub fn train_bpe(corpus: &Path, vocab_size: usize) -> Result<SubwordTokenizer> {
    let base = ByteLevel::alphabet().len() + 1;
    if vocab_size < base {
        bail!(
            "--bpe {vocab_size}: a byte-level BPE needs at least {base} tokens (256 bytes and \
             {END_OF_TEXT}); choose a larger vocabulary, e.g. 2000"
        );
    }
    let text = super::read_text(corpus)?;
    let mut trainer = BpeTrainerBuilder::new()
        .show_progress(false)
        .vocab_size(vocab_size)
        .min_frequency(0)
        .special_tokens(vec![AddedToken::from(END_OF_TEXT, true)])
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut tokenizer: TokenizerImpl<BPE, NormalizerWrapper, ByteLevel, ByteLevel, ByteLevel> =
        TokenizerBuilder::new()
            .with_model(BPE::default())
            .with_normalizer(None)
            .with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)))
            .with_post_processor(Some(ByteLevel::default().trim_offsets(false)))
            .with_decoder(Some(ByteLevel::default()))
            .build()
            .map_err(|e| anyhow!("building the BPE tokenizer: {e}"))?;
    // Line by line with the line endings kept, as `train_from_files` reads a file.
    tokenizer
        .train(&mut trainer, text.split_inclusive('\n'))
        .map_err(|e| anyhow!("training BPE on {}: {e}", corpus.display()))?;
    let json = tokenizer
        .to_string(false)
        .map_err(|e| anyhow!("serializing the trained tokenizer: {e}"))?;
    SubwordTokenizer::from_str_at(&json, corpus)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::tokenizer::tests::shakespeare_path;

    #[test]
    fn a_trained_bpe_round_trips_shakespeare_and_compresses_it() {
        let tok = train_bpe(&shakespeare_path(), 500).unwrap();
        assert_eq!(tok.vocab_size(), 500);
        assert_eq!(tok.token_id(END_OF_TEXT), Some(0));
        let text = crate::read_text(&shakespeare_path()).unwrap();
        let ids = tok.encode(&text).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), text);
        let ratio = text.len() as f64 / ids.len() as f64;
        assert!(ratio > 1.5, "{ratio} bytes per token (characters: 1)");
        // Training is deterministic: the same corpus gives the same tokenizer.
        assert_eq!(train_bpe(&shakespeare_path(), 500).unwrap(), tok);
    }

    #[test]
    fn a_file_that_is_not_a_tokenizer_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        for content in ["{\"kind\": \"char\"}", "[1, 2]", "not json"] {
            std::fs::write(&path, content).unwrap();
            let msg = SubwordTokenizer::load(&path).unwrap_err().to_string();
            assert!(
                msg.starts_with(&format!("{}: not a Hugging Face tokenizer", path.display())),
                "{msg}"
            );
        }
    }

    #[test]
    fn a_tiny_vocabulary_is_refused() {
        let msg = train_bpe(&shakespeare_path(), 100).unwrap_err().to_string();
        assert!(msg.contains("at least 257 tokens"), "{msg}");
    }
}
