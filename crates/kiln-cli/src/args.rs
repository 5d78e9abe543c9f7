//! Flag groups that several commands share (`#[command(flatten)]`).

use anyhow::Result;
use kiln_core::BackendKind;

/// `--backend`.
#[derive(clap::Args)]
pub struct BackendArgs {
    /// auto (CUDA if compiled in and a GPU is present, else flex), flex, ndarray, wgpu or cuda.
    #[arg(long, value_name = "BACKEND", default_value = "auto")]
    backend: String,
}

impl BackendArgs {
    /// The backend named; parsed here rather than by clap so that a bad name gets Kiln's
    /// one-line error.
    pub fn kind(&self) -> Result<BackendKind> {
        self.backend
            .parse()
            .map_err(|e| anyhow::anyhow!("--backend: {e}"))
    }
}

/// How a GPT samples the tokens it generates.
#[derive(clap::Args)]
pub struct SamplingArgs {
    /// Sampling temperature: below 1 is more conservative, 0 always picks the likeliest token.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f64,
    /// Sample among the k likeliest tokens only.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Seed of the sampling: the same seed generates the same text.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Recompute the whole context for every token instead of keeping its keys and values
    /// (slower; the same tokens).
    #[arg(long)]
    pub no_cache: bool,
}

impl SamplingArgs {
    /// The sampling of `max_tokens` tokens after `prompt`.
    pub fn sampling(&self, prompt: String, max_tokens: usize) -> kiln_infer::Sampling {
        kiln_infer::Sampling {
            prompt,
            max_tokens,
            temperature: self.temperature,
            top_k: self.top_k,
            seed: self.seed,
            cache: !self.no_cache,
        }
    }
}
