//! `kiln tokenize`: a text file as a token file for `data.format = "tokens"`, or a byte-level BPE
//! trained on it (`--bpe`).

use std::path::PathBuf;

use anyhow::{bail, Result};
use serde_json::json;

/// Tokenize a UTF-8 text file into a token file (little-endian u16/u32 ids) plus a .json sidecar
/// with the tokenizer, for `data.format = "tokens"`: by characters, or with `--tokenizer`. With
/// `--bpe N`, train a byte-level BPE of N tokens on the text instead and write its
/// tokenizer.json (for `data.tokenizer`).
#[derive(clap::Args)]
pub struct Args {
    /// The text file.
    input: PathBuf,
    /// The token file to write, e.g. datasets/text/shakespeare.bin (the sidecar is .json); with
    /// --bpe, the tokenizer.json to write.
    #[arg(long)]
    out: PathBuf,
    /// Element type of the token file.
    #[arg(long, default_value = "u16")]
    dtype: String,
    /// Tokenize with this Hugging Face tokenizer.json instead of by characters.
    #[arg(long, conflicts_with = "bpe")]
    tokenizer: Option<PathBuf>,
    /// Train a byte-level BPE with this many tokens (256 bytes, <|endoftext|> and the merges).
    #[arg(long)]
    bpe: Option<usize>,
}

/// Writes the token file (or the trained tokenizer) and prints a JSON summary.
pub fn exec(args: Args) -> Result<()> {
    if let Some(vocab_size) = args.bpe {
        if args.out.extension().is_none_or(|e| e != "json") {
            bail!(
                "--out {}: with --bpe, --out is the tokenizer.json to write (a .json file)",
                args.out.display()
            );
        }
        let tokenizer = kiln_data::train_bpe(&args.input, vocab_size)?;
        tokenizer.save(&args.out)?;
        let summary = json!({
            "input": args.input,
            "tokenizer": args.out,
            "vocab_size": tokenizer.vocab_size(),
            "special_tokens": [kiln_data::END_OF_TEXT],
        });
        println!("{summary}");
        return Ok(());
    }
    let dtype = args
        .dtype
        .parse::<kiln_data::TokenDtype>()
        .map_err(|e| anyhow::anyhow!("--dtype: {e}"))?;
    let tokenizer = match &args.tokenizer {
        Some(path) => Some(
            kiln_data::Tokenizer::load(path).map_err(|e| anyhow::anyhow!("--tokenizer: {e:#}"))?,
        ),
        None => None,
    };
    let summary = kiln_data::tokenize_file(&args.input, &args.out, dtype, tokenizer.as_ref())?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}
