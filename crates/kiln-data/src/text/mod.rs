//! Text data for language models, in host memory.
//!
//! - [`tokenizer`]: reading UTF-8 text files ([`read_text`]) and the
//!   character-level [`CharTokenizer`].
//! - [`subword`]: Hugging Face tokenizers ([`SubwordTokenizer`]) and training a
//!   byte-level BPE ([`train_bpe`]).
//! - [`vocab`]: a run's [`Tokenizer`], either kind.
//! - [`tokens`]: pre-tokenized token files (raw little-endian `u16`/`u32`
//!   arrays, memory-mapped) with their JSON sidecar, and [`tokenize_file`],
//!   which turns a text file into one.
//! - [`windows`]: the token streams of training and evaluation: spans of
//!   tokens, split by position, cut into `(x, y)` windows of `block_size`
//!   tokens where `y` is `x` shifted by one.
//!
//! A typical run: read the text (or open a token file), split it with
//! [`TokenSpan::split_tail`], [`check_span`] both parts, then draw
//! [`random_windows`] for every training step and walk [`eval_windows`] for
//! validation.

pub mod subword;
pub mod tokenizer;
pub mod tokens;
pub mod vocab;
pub mod windows;

pub use subword::{train_bpe, SubwordTokenizer, END_OF_TEXT};
pub use tokenizer::{read_text, CharTokenizer};
pub use tokens::{
    meta_path, read_meta, tokenize_file, write_token_file, TokenDtype, TokenFile, TokenMeta,
    TokenizeSummary,
};
pub use vocab::Tokenizer;
pub use windows::{
    check_span, eval_window_count, eval_windows, random_windows, random_windows_from, TokenBatch,
    TokenSource, TokenSpan,
};
