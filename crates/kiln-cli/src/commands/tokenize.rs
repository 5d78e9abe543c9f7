//! `kiln tokenize`: a text file as a token file for `data.format = "tokens"`.

use std::path::PathBuf;

use anyhow::Result;

/// Tokenize a UTF-8 text file by characters into a token file (little-endian u16/u32 ids)
/// plus a .json sidecar with the vocabulary, for `data.format = "tokens"`.
#[derive(clap::Args)]
pub struct Args {
    /// The text file.
    input: PathBuf,
    /// The token file to write, e.g. datasets/text/shakespeare.bin (the sidecar is .json).
    #[arg(long)]
    out: PathBuf,
    /// Element type of the token file.
    #[arg(long, default_value = "u16")]
    dtype: String,
}

/// Writes the token file and prints a JSON summary.
pub fn exec(args: Args) -> Result<()> {
    let dtype = args
        .dtype
        .parse::<kiln_data::TokenDtype>()
        .map_err(|e| anyhow::anyhow!("--dtype: {e}"))?;
    let summary = kiln_data::tokenize_file(&args.input, &args.out, dtype)?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}
