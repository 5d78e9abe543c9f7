//! Pre-tokenized token files.
//!
//! A token file is a raw array of little-endian `u16` or `u32` token ids with
//! no header, like nanoGPT's `train.bin`. It is memory-mapped by
//! [`TokenFile::open`], never read whole into memory, so it may be far larger
//! than RAM; [`TokenFile::read_into`] copies just the tokens a batch needs.
//!
//! Next to `NAME.bin` there may be a sidecar `NAME.json` ([`TokenMeta`],
//! found with [`meta_path`] and read with [`read_meta`]):
//!
//! ```json
//! {
//!   "format": "kiln-tokens",
//!   "dtype": "u16",
//!   "tokens": 1008759,
//!   "vocab_size": 66,
//!   "tokenizer": { "kind": "char", "vocab": ["\n", " ", "!", "..."] }
//! }
//! ```
//!
//! `tokenizer` is optional. [`write_token_file`] writes a token file from any
//! stream of ids, and [`tokenize_file`] is what `kiln tokenize` does: a text
//! file in, a token file and its sidecar out.

use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{anyhow, bail, Context, Result};
use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use super::tokenizer::{read_text, CharTokenizer};
use super::vocab::Tokenizer;

/// The `format` of a token file's sidecar.
const META_FORMAT: &str = "kiln-tokens";

/// The integer type of the ids in a token file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenDtype {
    /// Little-endian `u16`: vocabularies of up to 65,536 tokens.
    U16,
    /// Little-endian `u32`.
    U32,
}

impl TokenDtype {
    /// Bytes per token.
    pub fn width(self) -> usize {
        match self {
            TokenDtype::U16 => 2,
            TokenDtype::U32 => 4,
        }
    }

    /// The largest token id this dtype holds.
    fn max_id(self) -> u32 {
        match self {
            TokenDtype::U16 => u32::from(u16::MAX),
            TokenDtype::U32 => u32::MAX,
        }
    }

    /// The other dtype.
    fn other(self) -> TokenDtype {
        match self {
            TokenDtype::U16 => TokenDtype::U32,
            TokenDtype::U32 => TokenDtype::U16,
        }
    }
}

impl fmt::Display for TokenDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenDtype::U16 => "u16",
            TokenDtype::U32 => "u32",
        })
    }
}

impl FromStr for TokenDtype {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "u16" => Ok(TokenDtype::U16),
            "u32" => Ok(TokenDtype::U32),
            _ => bail!("unknown token dtype {s:?}; expected \"u16\" or \"u32\""),
        }
    }
}

/// A memory-mapped token file.
pub struct TokenFile {
    mmap: Mmap,
    dtype: TokenDtype,
    len: usize,
    path: PathBuf,
}

impl fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenFile")
            .field("path", &self.path)
            .field("dtype", &self.dtype)
            .field("len", &self.len)
            .finish()
    }
}

impl TokenFile {
    /// Opens and maps `path`, whose tokens are `dtype`. Errors if the file is
    /// missing, empty, or its size is not a multiple of the dtype's width.
    ///
    /// The file must not be modified while it is open (for instance by
    /// re-running `kiln tokenize` onto it during training): the mapping would
    /// change under the reader, which is undefined behaviour. Replacing it by
    /// a rename, as [`write_token_file`] does, is safe.
    pub fn open(path: &Path, dtype: TokenDtype) -> Result<TokenFile> {
        let file = File::open(path)
            .map_err(|e| anyhow!("cannot open token file {}: {e}", path.display()))?;
        let size = file
            .metadata()
            .map_err(|e| anyhow!("cannot read the size of token file {}: {e}", path.display()))?
            .len();
        if size == 0 {
            bail!(
                "{}: the token file is empty; tokenize some text into it with `kiln tokenize`",
                path.display()
            );
        }
        let width = dtype.width() as u64;
        if size % width != 0 {
            let other = dtype.other();
            let hint = if size % other.width() as u64 == 0 {
                format!("it may hold {other} tokens: open it with dtype {other}")
            } else {
                "the file is truncated or not a token file; tokenize the text again".to_string()
            };
            bail!(
                "{}: size {size} bytes is not a multiple of {width} bytes, the width of a \
                 {dtype} token; {hint}",
                path.display()
            );
        }
        let len = usize::try_from(size / width).map_err(|_| {
            anyhow!(
                "{}: {size} bytes do not fit this machine's address space",
                path.display()
            )
        })?;
        // SAFETY: the file is opened read-only and the map is only ever read.
        // Memory-mapping is still unsound if another process truncates or
        // rewrites the file while it is mapped; Kiln documents that token
        // files must not be modified while training reads them.
        let mmap = unsafe { Mmap::map(&file) }
            .map_err(|e| anyhow!("cannot memory-map token file {}: {e}", path.display()))?;
        Ok(TokenFile {
            mmap,
            dtype,
            len,
            path: path.to_path_buf(),
        })
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the file holds no tokens (never true: [`open`](Self::open)
    /// refuses empty files).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The path the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The integer type of the ids.
    pub fn dtype(&self) -> TokenDtype {
        self.dtype
    }

    /// Copies the tokens `[start, start + out.len())` into `out`.
    ///
    /// # Panics
    /// If the range reaches past the end of the file (a caller bug).
    pub fn read_into(&self, start: usize, out: &mut [u32]) {
        assert!(
            start
                .checked_add(out.len())
                .is_some_and(|end| end <= self.len),
            "token range {start}..{}+{} is out of bounds for {} ({} tokens)",
            start,
            out.len(),
            self.path.display(),
            self.len
        );
        let width = self.dtype.width();
        let bytes = &self.mmap[start * width..(start + out.len()) * width];
        match self.dtype {
            TokenDtype::U16 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = u32::from(u16::from_le_bytes([b[0], b[1]]));
                }
            }
            TokenDtype::U32 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
        }
    }

    /// Checks that every token id is `< vocab_size`, scanning `chunk` tokens
    /// at a time (a `chunk` of 0 counts as 1), so the check never holds more
    /// than one chunk of converted tokens. Errors on the first id out of range.
    pub fn check_vocab(&self, vocab_size: usize, chunk: usize) -> Result<()> {
        let chunk = chunk.clamp(1, self.len.max(1));
        let mut buf = vec![0u32; chunk];
        let mut start = 0;
        while start < self.len {
            let n = chunk.min(self.len - start);
            let ids = &mut buf[..n];
            self.read_into(start, ids);
            if let Some(i) = ids.iter().position(|&id| id as usize >= vocab_size) {
                bail!(
                    "{}: token id {} at position {} is beyond the vocabulary ({vocab_size} \
                     tokens); the file was written with a different tokenizer, or model/data \
                     vocab_size is too small",
                    self.path.display(),
                    ids[i],
                    start + i
                );
            }
            start += n;
        }
        Ok(())
    }
}

/// A token file's sidecar metadata (`NAME.json` next to `NAME.bin`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TokenMeta {
    /// Always `"kiln-tokens"`.
    pub format: String,
    /// The integer type of the ids.
    pub dtype: TokenDtype,
    /// Number of tokens in the file.
    pub tokens: u64,
    /// Size of the vocabulary the ids are drawn from.
    pub vocab_size: usize,
    /// The tokenizer that wrote the file, if known: for a character tokenizer
    /// the JSON of [`CharTokenizer::to_json`] (read it back with
    /// [`CharTokenizer::from_json`]).
    #[serde(default)]
    pub tokenizer: Option<serde_json::Value>,
}

/// The sidecar path of a token file: `NAME.bin` -> `NAME.json`.
pub fn meta_path(token_file: &Path) -> PathBuf {
    token_file.with_extension("json")
}

/// Reads the sidecar of `token_file`: `Ok(None)` if there is none, an error
/// if it exists but cannot be read or is malformed.
pub fn read_meta(token_file: &Path) -> Result<Option<TokenMeta>> {
    let path = meta_path(token_file);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => bail!("cannot read token metadata {}: {e}", path.display()),
    };
    let meta: TokenMeta = serde_json::from_str(&text).map_err(|e| {
        anyhow!(
            "{}: malformed token metadata ({e}); expected {{\"format\": \"kiln-tokens\", \
             \"dtype\": \"u16\", \"tokens\": N, \"vocab_size\": V}}; fix or delete the file",
            path.display()
        )
    })?;
    if meta.format != META_FORMAT {
        bail!(
            "{}: format is {:?}, not \"{META_FORMAT}\"; this is not the metadata of a Kiln \
             token file, move it away or fix it",
            path.display(),
            meta.format
        );
    }
    Ok(Some(meta))
}

/// `path` with `.tmp` appended (`train.bin` -> `train.bin.tmp`).
fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Streams `tokens` into the token file `path` and returns how many were
/// written. The file is written to `path.tmp` through a buffered writer and
/// renamed to `path` at the end, so a failed write never leaves a partial
/// `path`. Errors if a token does not fit `dtype` (over 65,535 for `u16`).
pub fn write_token_file(
    path: &Path,
    dtype: TokenDtype,
    tokens: impl IntoIterator<Item = u32>,
) -> Result<u64> {
    let tmp = tmp_path(path);
    let result = write_tokens(&tmp, dtype, tokens).and_then(|count| {
        std::fs::rename(&tmp, path)
            .map_err(|e| anyhow!("cannot rename {} to {}: {e}", tmp.display(), path.display()))?;
        Ok(count)
    });
    if result.is_err() {
        // Best effort: the error that matters is the one returned.
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes `tokens` to `path` and returns their count.
fn write_tokens(
    path: &Path,
    dtype: TokenDtype,
    tokens: impl IntoIterator<Item = u32>,
) -> Result<u64> {
    let file = File::create(path).map_err(|e| {
        anyhow!(
            "cannot create token file {}: {e}; check that the folder exists and is writable",
            path.display()
        )
    })?;
    let write_error =
        |e: std::io::Error| anyhow!("cannot write token file {}: {e}", path.display());
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut count = 0u64;
    for id in tokens {
        if id > dtype.max_id() {
            bail!(
                "token id {id} at position {count} does not fit a {dtype} token file (at most \
                 {}); write the file with dtype u32",
                dtype.max_id()
            );
        }
        match dtype {
            TokenDtype::U16 => out.write_all(&(id as u16).to_le_bytes()),
            TokenDtype::U32 => out.write_all(&id.to_le_bytes()),
        }
        .map_err(write_error)?;
        count += 1;
    }
    let file = out.into_inner().map_err(|e| write_error(e.into_error()))?;
    file.sync_all().map_err(write_error)?;
    Ok(count)
}

/// What [`tokenize_file`] did.
#[derive(Clone, Debug, Serialize)]
pub struct TokenizeSummary {
    /// The text file read.
    pub input: PathBuf,
    /// The token file written.
    pub output: PathBuf,
    /// Its sidecar metadata.
    pub meta: PathBuf,
    /// Number of tokens written.
    pub tokens: u64,
    /// Size of the character vocabulary.
    pub vocab_size: usize,
    /// The integer type of the ids.
    pub dtype: TokenDtype,
}

/// Whether `a` and `b` name the same existing file.
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// What `kiln tokenize INPUT --out OUTPUT [--dtype u16|u32] [--tokenizer T]` does: reads the
/// UTF-8 text `input`, tokenizes it with `tokenizer` (unset: the [`CharTokenizer`] of the
/// text), writes the ids to the token file `output` and the metadata, tokenizer included, to
/// its sidecar ([`meta_path`]).
pub fn tokenize_file(
    input: &Path,
    output: &Path,
    dtype: TokenDtype,
    tokenizer: Option<&Tokenizer>,
) -> Result<TokenizeSummary> {
    let meta = meta_path(output);
    if meta == output {
        bail!(
            "{}: the token file must not end in .json, which is the name of its metadata \
             file; name it e.g. {}",
            output.display(),
            output.with_extension("bin").display()
        );
    }
    for written in [output, &meta] {
        if same_file(input, written) {
            bail!(
                "{}: tokenizing would overwrite the input text; choose another --out",
                written.display()
            );
        }
    }
    let text = read_text(input)?;
    let tokenizer = match tokenizer {
        Some(t) => t.clone(),
        None => Tokenizer::Char(CharTokenizer::from_text(&text)?),
    };
    let vocab_size = tokenizer.vocab_size();
    if vocab_size > dtype.max_id() as usize + 1 {
        bail!(
            "{}: the tokenizer has {vocab_size} tokens, more than the {} ids of a {dtype} \
             token file; use dtype u32",
            input.display(),
            dtype.max_id() as u64 + 1
        );
    }
    let tokens = match &tokenizer {
        // Every character of the text is in its own vocabulary: stream the ids instead of
        // holding a second copy of the text as a Vec<u32>.
        Tokenizer::Char(chars) => write_token_file(
            output,
            dtype,
            text.chars().map(|c| {
                chars
                    .id_of(c)
                    .expect("the tokenizer was built from this text")
            }),
        )?,
        Tokenizer::Subword(_) => {
            let ids = tokenizer
                .encode(&text)
                .with_context(|| format!("tokenizing {}", input.display()))?;
            write_token_file(output, dtype, ids)?
        }
    };
    let sidecar = TokenMeta {
        format: META_FORMAT.to_string(),
        dtype,
        tokens,
        vocab_size,
        tokenizer: Some(tokenizer.to_json()),
    };
    let json = serde_json::to_string_pretty(&sidecar)?;
    std::fs::write(&meta, json + "\n")
        .map_err(|e| anyhow!("cannot write token metadata {}: {e}", meta.display()))?;
    Ok(TokenizeSummary {
        input: input.to_path_buf(),
        output: output.to_path_buf(),
        meta,
        tokens,
        vocab_size,
        dtype,
    })
}

#[cfg(test)]
mod tests;
