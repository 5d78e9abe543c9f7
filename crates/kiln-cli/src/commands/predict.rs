//! `kiln predict`: run a Kiln export on files or a prompt.

use std::path::PathBuf;

use anyhow::{bail, Result};
use burn::tensor::backend::Backend;
use kiln_export::predict::{self, Task};
use kiln_infer::Sampling;

use super::{on_device, OnDevice};
use crate::args::{BackendArgs, SamplingArgs};

/// Run a Kiln export: classifiers and regressions take images (PNG, JPEG), IDX image files or
/// table rows and print one JSON line per input; a GPT takes a prompt and prints its
/// continuation as JSON.
#[derive(clap::Args)]
pub struct Args {
    /// The export's directory (from `kiln export --format kiln`).
    export: PathBuf,
    /// Input files (.png / .jpg / .jpeg or folders of them, .idx / *-ubyte / .gz, .csv /
    /// .parquet) for a classifier or regression, or the prompt for a GPT.
    #[arg(required = true)]
    inputs: Vec<String>,
    /// Also print the logits (a GPT prints the logits of every prompt position instead of
    /// generating).
    #[arg(long)]
    logits: bool,
    /// GPT: number of characters to generate.
    #[arg(long, default_value_t = 200)]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    backend: BackendArgs,
}

/// Prints one JSON line per input (a classifier) or the continuation (a GPT).
pub fn exec(args: Args) -> Result<()> {
    let sampling = args.sampling.sampling(String::new(), args.max_tokens);
    let work = Predict {
        export: args.export,
        inputs: args.inputs,
        logits: args.logits,
        sampling,
    };
    on_device(args.backend.kind()?, work)
}

struct Predict {
    export: PathBuf,
    inputs: Vec<String>,
    logits: bool,
    sampling: Sampling,
}

impl OnDevice for Predict {
    type Output = ();
    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        let loaded = predict::load::<B>(&self.export, &device)?;
        let mut out = std::io::stdout().lock();
        match &loaded.task {
            Task::Samples { .. } => {
                let paths: Vec<PathBuf> = self.inputs.iter().map(PathBuf::from).collect();
                let records = predict::read_samples(&loaded.task, &paths)?;
                predict::predict_samples(&loaded, &records, self.logits, &device, &mut out)
            }
            Task::Language { .. } => {
                let [prompt] = self.inputs.as_slice() else {
                    bail!(
                        "a GPT export takes one prompt, got {} arguments; quote the prompt",
                        self.inputs.len()
                    );
                };
                if self.logits {
                    predict::prompt_logits(&loaded, prompt, &device, &mut out)
                } else {
                    let sampling = Sampling {
                        prompt: prompt.clone(),
                        ..self.sampling
                    };
                    predict::complete(&loaded, &sampling, &device, &mut out)
                }
            }
        }
    }
}
