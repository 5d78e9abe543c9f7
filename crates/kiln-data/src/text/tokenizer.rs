//! Reading text files and the character-level tokenizer.
//!
//! [`read_text`] reads a whole UTF-8 text file into memory. A
//! [`CharTokenizer`] built from that text maps every distinct character to a
//! token id: the vocabulary is the sorted set of the text's characters, so the
//! same text always gives the same ids. A tokenizer is saved as a small JSON
//! file (or embedded in a token file's sidecar, see
//! [`TokenMeta`](super::TokenMeta)):
//!
//! ```json
//! {
//!   "kind": "char",
//!   "vocab": ["\n", " ", "!", "..."]
//! }
//! ```
//!
//! Entry `i` of `vocab` is the character of token id `i`.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};

/// The `kind` of a character tokenizer in its JSON form.
const CHAR_KIND: &str = "char";

/// Character-level tokenizer: the vocabulary is the sorted set of distinct
/// chars of a text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CharTokenizer {
    /// The character of each token id.
    chars: Vec<char>,
    /// The token id of each character (the inverse of `chars`).
    index: HashMap<char, u32>,
}

/// The JSON form of a [`CharTokenizer`].
#[derive(Serialize, Deserialize)]
struct TokenizerJson {
    kind: String,
    vocab: Vec<String>,
}

impl CharTokenizer {
    /// Builds the tokenizer of `text`: one token per distinct character, in
    /// sorted (code point) order. Errors if `text` is empty.
    pub fn from_text(text: &str) -> Result<Self> {
        if text.is_empty() {
            bail!("cannot build a character tokenizer from an empty text; give it some text");
        }
        let mut chars: Vec<char> = text.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        Ok(Self::from_chars(chars))
    }

    /// Builds the tokenizer from a vocabulary already known to be non-empty
    /// and free of duplicates.
    fn from_chars(chars: Vec<char>) -> Self {
        // At most 0x110000 distinct chars exist, so every id fits a u32.
        let index = chars.iter().zip(0u32..).map(|(&c, id)| (c, id)).collect();
        CharTokenizer { chars, index }
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.chars.len()
    }

    /// The vocabulary: the character of token id `i` is `chars()[i]`.
    pub fn chars(&self) -> &[char] {
        &self.chars
    }

    /// The token id of `c`, or `None` if `c` is not in the vocabulary.
    pub fn id_of(&self, c: char) -> Option<u32> {
        self.index.get(&c).copied()
    }

    /// The token ids of `text`, one per character. Errors on the first
    /// character that is not in the vocabulary, naming it and its (0-based,
    /// counted in characters) position.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        text.chars()
            .enumerate()
            .map(|(position, c)| {
                self.id_of(c).ok_or_else(|| {
                    anyhow!(
                        "character {c:?} at position {position} is not in the tokenizer's \
                         vocabulary ({} characters); use only characters of the text the \
                         tokenizer was built from",
                        self.vocab_size()
                    )
                })
            })
            .collect()
    }

    /// The text of the token ids `ids`. Errors on the first id that is not in
    /// the vocabulary.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        ids.iter()
            .map(|&id| {
                self.token_str(id).ok_or_else(|| {
                    anyhow!(
                        "token id {id} is beyond the vocabulary ({} tokens); the ids come from \
                         a different tokenizer or a model with a larger vocab_size",
                        self.vocab_size()
                    )
                })
            })
            .collect()
    }

    /// The character of token `id`, or `None` if `id` is beyond the vocabulary.
    pub fn token_str(&self, id: u32) -> Option<char> {
        self.chars.get(usize::try_from(id).ok()?).copied()
    }

    /// The JSON form `{"kind": "char", "vocab": [...]}` (what [`save`](Self::save)
    /// writes, and what a token file's sidecar holds under `"tokenizer"`).
    pub fn to_json(&self) -> serde_json::Value {
        let json = TokenizerJson {
            kind: CHAR_KIND.to_string(),
            vocab: self.chars.iter().map(char::to_string).collect(),
        };
        serde_json::to_value(json).expect("a tokenizer always converts to JSON")
    }

    /// Reads the JSON form written by [`to_json`](Self::to_json). `origin`
    /// names where the JSON came from (a file) in error messages. Checks that
    /// `kind` is `"char"` and that the vocabulary is non-empty, made of single
    /// characters and free of duplicates.
    pub fn from_json(value: &serde_json::Value, origin: &Path) -> Result<Self> {
        let origin = origin.display();
        let json = TokenizerJson::deserialize(value).map_err(|e| {
            anyhow!(
                "{origin}: malformed tokenizer ({e}); expected {{\"kind\": \"char\", \
                 \"vocab\": [\"a\", \"b\", ...]}}, rebuild it with `kiln tokenize`"
            )
        })?;
        if json.kind != CHAR_KIND {
            bail!(
                "{origin}: tokenizer kind {:?} is not supported; Kiln reads \"char\" and \
                 \"huggingface\" tokenizers (or a bare Hugging Face tokenizer.json)",
                json.kind
            );
        }
        if json.vocab.is_empty() {
            bail!("{origin}: the tokenizer vocabulary is empty; rebuild it with `kiln tokenize`");
        }
        let mut chars = Vec::with_capacity(json.vocab.len());
        let mut seen = HashMap::with_capacity(json.vocab.len());
        for (i, entry) in json.vocab.iter().enumerate() {
            let mut it = entry.chars();
            let (Some(c), None) = (it.next(), it.next()) else {
                bail!(
                    "{origin}: vocabulary entry {i} is {entry:?}, not a single character; a \
                     character tokenizer needs exactly one character per entry"
                );
            };
            if let Some(first) = seen.insert(c, i) {
                bail!(
                    "{origin}: vocabulary entries {first} and {i} are both {c:?}; every \
                     character may appear only once, rebuild the tokenizer"
                );
            }
            chars.push(c);
        }
        Ok(Self::from_chars(chars))
    }

    /// Writes the tokenizer to `path` as pretty-printed JSON.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_json(path, &self.to_json())
    }

    /// Reads a tokenizer written by [`save`](Self::save).
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow!("cannot read tokenizer file {}: {e}", path.display()))?;
        let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            anyhow!(
                "{}: not valid JSON ({e}); a tokenizer file holds {{\"kind\": \"char\", \
                 \"vocab\": [...]}}",
                path.display()
            )
        })?;
        Self::from_json(&value, path)
    }
}

/// Writes a tokenizer's JSON to `path`, pretty-printed.
pub(crate) fn write_json(path: &Path, json: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(json)?;
    std::fs::write(path, text + "\n").map_err(|e| {
        anyhow!(
            "cannot write tokenizer file {}: {e}; check that the folder exists and is writable",
            path.display()
        )
    })
}

/// Reads a UTF-8 text file. Errors if it cannot be read (naming the path), is
/// not UTF-8 (naming the byte offset of the first invalid byte) or is empty.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path)
        .map_err(|e| anyhow!("cannot read text file {}: {e}", path.display()))?;
    if bytes.is_empty() {
        bail!(
            "{}: the text file is empty; a text dataset needs some text",
            path.display()
        );
    }
    String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        let byte = e.as_bytes()[offset];
        anyhow!(
            "{}: invalid UTF-8 byte 0x{byte:02x} at byte offset {offset}; the file must be \
             UTF-8 text (convert it, e.g. with `iconv -t UTF-8`)",
            path.display()
        )
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::path::PathBuf;

    /// The shipped Shakespeare text.
    pub(crate) fn shakespeare_path() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../datasets/text/shakespeare.txt")
    }

    #[test]
    fn shakespeare_round_trips_through_the_tokenizer() {
        let text = read_text(&shakespeare_path()).unwrap();
        let tok = CharTokenizer::from_text(&text).unwrap();
        let distinct: HashSet<char> = text.chars().collect();
        assert_eq!(tok.vocab_size(), distinct.len());
        assert_eq!(
            tok.vocab_size(),
            66,
            "the dataset README says 66 characters"
        );
        assert!(
            tok.chars().windows(2).all(|w| w[0] < w[1]),
            "sorted, unique"
        );
        let ids = tok.encode(&text).unwrap();
        assert_eq!(ids.len(), text.chars().count());
        assert!(ids.iter().all(|&id| (id as usize) < tok.vocab_size()));
        assert_eq!(tok.decode(&ids).unwrap(), text);
    }

    #[test]
    fn ids_follow_sorted_characters() {
        let tok = CharTokenizer::from_text("hello, world\n").unwrap();
        assert_eq!(
            tok.chars(),
            &['\n', ' ', ',', 'd', 'e', 'h', 'l', 'o', 'r', 'w']
        );
        assert_eq!(tok.encode("hold").unwrap(), vec![5, 7, 6, 3]);
        assert_eq!(tok.token_str(0), Some('\n'));
        assert_eq!(tok.token_str(10), None);
        assert_eq!(tok.token_str(u32::MAX), None);
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        let tok = CharTokenizer::from_text("To be, or not to be:\n\"that\" é ✓").unwrap();
        tok.save(&path).unwrap();
        let loaded = CharTokenizer::load(&path).unwrap();
        assert_eq!(loaded, tok);
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(json["kind"], "char");
        assert_eq!(json["vocab"][0], "\n");
        assert_eq!(json["vocab"][1], " ");
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .contains("\n  \"kind\""));
    }

    #[test]
    fn unknown_character_is_named_with_its_position() {
        let tok = CharTokenizer::from_text("abc").unwrap();
        let msg = tok.encode("abca\tb").unwrap_err().to_string();
        assert!(
            msg.starts_with("character '\\t' at position 4 is not in the tokenizer's vocabulary"),
            "{msg}"
        );
        assert!(msg.contains("(3 characters)"), "{msg}");
        // Positions count characters, not bytes.
        let msg = tok.encode("ééx").unwrap_err().to_string();
        assert!(msg.starts_with("character 'é' at position 0"), "{msg}");
        let msg = tok.encode("abx").unwrap_err().to_string();
        assert!(msg.starts_with("character 'x' at position 2"), "{msg}");
    }

    #[test]
    fn out_of_range_id_fails_to_decode() {
        let tok = CharTokenizer::from_text("abc").unwrap();
        assert_eq!(tok.decode(&[2, 0, 1]).unwrap(), "cab");
        let msg = tok.decode(&[0, 3]).unwrap_err().to_string();
        assert!(
            msg.starts_with("token id 3 is beyond the vocabulary (3 tokens)"),
            "{msg}"
        );
    }

    #[test]
    fn empty_text_has_no_tokenizer() {
        let msg = CharTokenizer::from_text("").unwrap_err().to_string();
        assert!(msg.contains("empty text"), "{msg}");
    }

    #[test]
    fn load_rejects_malformed_tokenizers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tok.json");
        let cases = [
            (
                r#"{"kind":"bpe","vocab":["a"]}"#,
                "tokenizer kind \"bpe\" is not supported",
            ),
            (r#"{"kind":"char","vocab":[]}"#, "vocabulary is empty"),
            (
                r#"{"kind":"char","vocab":["a","bc"]}"#,
                "vocabulary entry 1 is \"bc\", not a single character",
            ),
            (
                r#"{"kind":"char","vocab":["a",""]}"#,
                "vocabulary entry 1 is \"\", not a single character",
            ),
            (
                r#"{"kind":"char","vocab":["a","b","a"]}"#,
                "vocabulary entries 0 and 2 are both 'a'",
            ),
            (r#"{"kind":"char"}"#, "malformed tokenizer"),
            ("{not json", "not valid JSON"),
        ];
        for (content, expected) in cases {
            std::fs::write(&path, content).unwrap();
            let msg = CharTokenizer::load(&path).unwrap_err().to_string();
            assert!(msg.starts_with(&path.display().to_string()), "{msg}");
            assert!(msg.contains(expected), "{content}: {msg}");
        }
        let missing = dir.path().join("absent.json");
        let msg = CharTokenizer::load(&missing).unwrap_err().to_string();
        assert!(
            msg.starts_with(&format!("cannot read tokenizer file {}", missing.display())),
            "{msg}"
        );
    }

    #[test]
    fn read_text_reports_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let latin1 = dir.path().join("latin1.txt");
        std::fs::write(&latin1, b"caf\xe9 au lait").unwrap();
        let msg = read_text(&latin1).unwrap_err().to_string();
        assert!(msg.starts_with(&latin1.display().to_string()), "{msg}");
        assert!(
            msg.contains("invalid UTF-8 byte 0xe9 at byte offset 3"),
            "{msg}"
        );
        assert!(msg.contains("must be UTF-8 text"), "{msg}");

        let empty = dir.path().join("empty.txt");
        std::fs::write(&empty, b"").unwrap();
        let msg = read_text(&empty).unwrap_err().to_string();
        assert!(msg.starts_with(&empty.display().to_string()), "{msg}");
        assert!(msg.contains("empty"), "{msg}");

        let missing = dir.path().join("absent.txt");
        let msg = read_text(&missing).unwrap_err().to_string();
        assert!(
            msg.starts_with(&format!("cannot read text file {}", missing.display())),
            "{msg}"
        );

        let good = dir.path().join("good.txt");
        std::fs::write(&good, "héllo\n").unwrap();
        assert_eq!(read_text(&good).unwrap(), "héllo\n");
    }
}
