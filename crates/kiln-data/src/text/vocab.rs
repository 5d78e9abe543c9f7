//! A run's tokenizer: characters (the default for text) or subwords (a Hugging Face
//! `tokenizer.json`, `data.tokenizer`).
//!
//! Runs, token-file sidecars and exports store it in Kiln's JSON form, `{"kind": "char",
//! "vocab": [...]}` or `{"kind": "huggingface", "tokenizer": {...}}` (the whole
//! `tokenizer.json` inside); [`Tokenizer::from_json`] also takes a bare `tokenizer.json`.

use std::path::Path;

use anyhow::{anyhow, Result};
use serde_json::json;

use super::subword::SubwordTokenizer;
use super::tokenizer::CharTokenizer;

/// The `kind` of a subword tokenizer in Kiln's JSON form.
const HF_KIND: &str = "huggingface";

/// The tokenizer of a text run.
#[derive(Clone, Debug, PartialEq)]
pub enum Tokenizer {
    /// One token per character of the training text.
    Char(CharTokenizer),
    /// A Hugging Face tokenizer (BPE, WordPiece, Unigram, ...).
    Subword(SubwordTokenizer),
}

impl Tokenizer {
    /// Number of token ids.
    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Char(t) => t.vocab_size(),
            Tokenizer::Subword(t) => t.vocab_size(),
        }
    }

    /// The token ids of `text`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Tokenizer::Char(t) => t.encode(text),
            Tokenizer::Subword(t) => t.encode(text),
        }
    }

    /// The text of `ids`.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match self {
            Tokenizer::Char(t) => t.decode(ids),
            Tokenizer::Subword(t) => t.decode(ids),
        }
    }

    /// Kiln's JSON form (see the module doc).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Tokenizer::Char(t) => t.to_json(),
            Tokenizer::Subword(t) => json!({"kind": HF_KIND, "tokenizer": t.to_json()}),
        }
    }

    /// Reads Kiln's JSON form, or a bare Hugging Face `tokenizer.json`; `origin` names where the
    /// JSON came from in errors.
    pub fn from_json(value: &serde_json::Value, origin: &Path) -> Result<Self> {
        match value.get("kind").and_then(|k| k.as_str()) {
            Some(HF_KIND) => {
                let inner = value.get("tokenizer").ok_or_else(|| {
                    anyhow!(
                        "{}: a \"huggingface\" tokenizer without its \"tokenizer\" JSON",
                        origin.display()
                    )
                })?;
                Ok(Tokenizer::Subword(SubwordTokenizer::from_json(
                    inner, origin,
                )?))
            }
            Some(_) => Ok(Tokenizer::Char(CharTokenizer::from_json(value, origin)?)),
            None => Ok(Tokenizer::Subword(SubwordTokenizer::from_json(
                value, origin,
            )?)),
        }
    }

    /// Reads a file in either form.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow!("cannot read tokenizer file {}: {e}", path.display()))?;
        let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            anyhow!(
                "{}: not valid JSON ({e}); a tokenizer file is a Hugging Face tokenizer.json \
                 or Kiln's {{\"kind\": \"char\", \"vocab\": [...]}}",
                path.display()
            )
        })?;
        Self::from_json(&value, path)
    }

    /// Writes Kiln's JSON form to `path`.
    pub fn save(&self, path: &Path) -> Result<()> {
        match self {
            Tokenizer::Char(t) => t.save(path),
            Tokenizer::Subword(_) => super::tokenizer::write_json(path, &self.to_json()),
        }
    }

    /// The token a text without a prompt starts from: a subword vocabulary's end-of-text token
    /// ([`END_OF_TEXT`](super::subword::END_OF_TEXT)) when it has one, else a line break's first
    /// token when the vocabulary has one, else id 0.
    pub fn start_id(&self) -> u32 {
        let end_of_text = match self {
            Tokenizer::Subword(t) => t.token_id(super::subword::END_OF_TEXT),
            Tokenizer::Char(_) => None,
        };
        end_of_text
            .or_else(|| self.encode("\n").ok()?.first().copied())
            .unwrap_or(0)
    }

    /// The character tokenizer, if this is one.
    pub fn as_char(&self) -> Option<&CharTokenizer> {
        match self {
            Tokenizer::Char(t) => Some(t),
            Tokenizer::Subword(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_kinds_round_trip_through_kilns_json() {
        let dir = tempfile::tempdir().unwrap();
        let corpus = dir.path().join("corpus.txt");
        std::fs::write(
            &corpus,
            "the cat sat on the mat\nthe dog sat on the log\n".repeat(20),
        )
        .unwrap();
        let subword = Tokenizer::Subword(super::super::subword::train_bpe(&corpus, 280).unwrap());
        let chars = Tokenizer::Char(CharTokenizer::from_text("abc").unwrap());
        for tok in [chars, subword] {
            let path = dir.path().join("tok.json");
            tok.save(&path).unwrap();
            let back = Tokenizer::load(&path).unwrap();
            assert_eq!(back, tok);
            let ids = back.encode("cab").unwrap();
            assert_eq!(back.decode(&ids).unwrap(), "cab");
        }
    }
}
