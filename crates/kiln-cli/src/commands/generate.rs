//! `kiln generate`: text from a trained GPT, streamed to stdout.

use std::path::PathBuf;

use anyhow::Result;
use burn::tensor::backend::Backend;
use kiln_core::rundir::TrainedRun;
use kiln_infer::Sampling;

use super::{on_device, OnDevice};
use crate::args::{BackendArgs, SamplingArgs};

/// Generate text with a trained GPT, streamed to stdout.
#[derive(clap::Args)]
pub struct Args {
    /// A run directory (its latest checkpoint), a step-<N> directory or a .safetensors file
    /// inside a run directory.
    run: PathBuf,
    /// Text to continue (default: start a new text).
    #[arg(long, default_value = "")]
    prompt: String,
    /// Number of tokens (characters) to generate.
    #[arg(long, default_value_t = 500)]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    backend: BackendArgs,
}

/// Streams the generated text to stdout.
pub fn exec(args: Args) -> Result<()> {
    let run = TrainedRun::find(&args.run)?;
    let sampling = args.sampling.sampling(args.prompt, args.max_tokens);
    on_device(args.backend.kind()?, Generate { run, sampling })
}

struct Generate {
    run: TrainedRun,
    sampling: Sampling,
}

impl OnDevice for Generate {
    type Output = ();
    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        let mut out = std::io::stdout().lock();
        let r = &self.run;
        let start = std::time::Instant::now();
        let generation = kiln_infer::generate::<B>(
            &r.config,
            &r.run_dir,
            &r.weights,
            &self.sampling,
            &device,
            &mut out,
        )?;
        let secs = start.elapsed().as_secs_f64();
        tracing::info!(
            "generated {} tokens in {secs:.2} s ({:.1} tokens/s, key/value cache {}; model loading included)",
            generation.tokens.len(),
            generation.tokens.len() as f64 / secs.max(1e-9),
            if self.sampling.cache { "on" } else { "off" }
        );
        Ok(())
    }
}
